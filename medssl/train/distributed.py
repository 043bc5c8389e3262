"""Scale-out on PyTorch's own engine: DistributedDataParallel launched by ``torchrun``.

Contrastive losses need the whole batch as negatives, so embeddings and labels are
all-gathered *with gradients* (``torch.distributed.nn.all_gather``): each process
contrasts its views against the global batch and gradients flow back to their owners.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (1 process when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping gradients to each source."""
    import torch.distributed.nn  # registers the autograd-aware collectives

    return torch.cat(torch.distributed.nn.all_gather(tensor.contiguous()), dim=0)


def reduce_mean(value: float, context: DistributedContext, device: torch.device) -> float:
    """Average a logged scalar over processes."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
