"""Scale-out on PyTorch's own engine: DistributedDataParallel launched by ``torchrun``.

Contrastive losses need the whole batch as negatives, so embeddings and labels are
all-gathered *with gradients* (:func:`gather_with_grad`): each process computes the loss
of the global batch and gradients flow back to the rows each process owns.

The factor of the world size W. Every process computes the same global loss L (the mean
over the global batch). The backward of :func:`gather_with_grad` **sums** over processes
the gradient each one computed for a process's rows, so process r holds
W * dL/dz_r for its local embeddings z_r, and its parameter gradient is W times its share
of dL/dtheta. DistributedDataParallel then *averages* parameter gradients over the W
processes: (1/W) sum_r W dL/dz_r dz_r/dtheta = dL/dtheta, exactly the gradient of one
process on the concatenated batch. Methods whose loss is local (BYOL, SimSiam) need no
gather: the average of per-process means is the global mean (equal batch sizes).
``tests/train/test_distributed.py`` pins both facts.

BatchNorm layers keep per-process batch statistics (as in the y-aware and SimCLR PyTorch
code bases); ``torch.nn.SyncBatchNorm`` only runs on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (1 process when not launched by torchrun).

    ``owns_group`` is True when :func:`init_distributed` created the process group (and
    :func:`shutdown_distributed` should destroy it); False when the caller had already
    initialised one (tests, notebooks) and keeps it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

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
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group
    )


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums every process's gradient of this process's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # all_reduce + slice works on every backend (gloo has no reduce_scatter).
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order, keeping gradients.

    Every process must pass a tensor of the same shape. Tensors that do not require
    gradients (labels) are gathered without building a graph.

    Example:
        >>> z = gather_with_grad(method.embed(views))      # (W * B, V, d)
        >>> y = gather_with_grad(labels)                   # (W * B,)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    return _GatherWithGrad.apply(tensor)


def reduce_mean(value: float, context: DistributedContext, device: torch.device) -> float:
    """Average a logged scalar over processes."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op on one process)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if context.enabled and context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
