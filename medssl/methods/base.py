"""What every method shares: turning a batch of views into embeddings, and diagnostics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.config import HeadConfig, MethodSection, RecipeSections
from medssl.losses import alignment, uniformity
from medssl.models import Encoder, ProjectionHead


def fold_views(views: torch.Tensor) -> torch.Tensor:
    """(B, V, C, D, H, W) -> (V*B, C, D, H, W), view-major (all first views, then all second...)."""
    return views.transpose(0, 1).reshape(-1, *views.shape[2:])


def unfold_views(z: torch.Tensor, n_views: int) -> torch.Tensor:
    """(V*B, d) view-major -> (B, V, d)."""
    return z.reshape(n_views, -1, z.shape[-1]).transpose(0, 1)


def projection_head(config: HeadConfig, encoder: Encoder) -> ProjectionHead:
    """The projection head the recipe's ``model.head`` describes, on top of ``encoder``'s features."""
    return ProjectionHead(encoder.feature_dim, config.hidden_dim, config.out_dim, config.layers, config.batch_norm)


def keep_local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, the BatchNorm layers of ``module`` normalise with the batch's own
    statistics; their running statistics and modes are restored afterwards."""
    saved = [
        (norm, norm.training, {name: buffer.clone() for name, buffer in norm.named_buffers(recurse=False)})
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm)
    ]
    for norm, _, _ in saved:
        norm.train()
    try:
        yield
    finally:
        for norm, training, buffers in saved:
            norm.train(training)
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)


class EpochServices(Protocol):
    """What the training loop offers ``Method.prepare_epoch`` (``medssl.train.trainer.EpochContext``):
    features of the training cohort, the optimiser's state, and the epoch's log row."""

    def extract_features(self, encoder: nn.Module) -> np.ndarray: ...

    def forget_optimizer_state(self, parameters: Iterable[nn.Parameter]) -> None: ...

    def log(self, values: dict[str, float]) -> None: ...


class Method(nn.Module):
    """An encoder, a projection head and a loss: ``training_loss(batch)`` returns the loss.

    Subclasses may override ``after_step`` (EMA updates) and ``prepare_epoch`` (DeepCluster's
    clustering). The engine knows nothing else about a method.
    """

    # Whether the method projects features into an embedding (alignment, uniformity and
    # collapse are measured on it); False for a method that trains a classifier or regressor.
    has_projection = True
    # Whether the engine warns when the embedding collapses (methods without negatives).
    monitors_collapse = False

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head
        # Under DDP the engine replaces this by an all-gather with gradients (rows = subjects).
        self.gather = keep_local

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """(B, V, C, D, H, W) views -> (B, V, d) projected embeddings."""
        z = self.head(self.encoder(fold_views(views)))
        return unfold_views(z, views.shape[1])

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        # DistributedDataParallel synchronises gradients of what forward computes.
        return self.training_loss(batch)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts from 1)."""

    def prepare_epoch(self, epoch: int, context: EpochServices) -> torch.utils.data.Sampler | None:
        """Called before each epoch; may return the sampler of that epoch."""
        return None

    @torch.no_grad()
    def diagnostics(self, views: torch.Tensor) -> dict[str, float]:
        """Alignment and uniformity (Wang & Isola, ICML 2020) and the per-dimension std of the
        normalised embeddings of two views (collapse: std -> 0; healthy: about 1/sqrt(d)).

        BatchNorm layers normalise with the statistics of ``views``, as in training: early on,
        their running statistics are still near their initial values and would make healthy
        embeddings look collapsed."""
        with batch_statistics(self):
            z = F.normalize(self.embed(views[:, :2]).float(), dim=-1)
        z1, z2 = z[:, 0], z[:, 1]
        both = torch.cat([z1, z2])
        std = both.std(dim=0).mean().item()
        return {
            "alignment": alignment(z1, z2).item(),
            "uniformity": uniformity(both).item(),
            "embedding_std": std,
            "embedding_std_ratio": std * z.shape[-1] ** 0.5,
        }


# "augmented": views.n_views views of each subject, each drawn with the recipe's views section.
# "global": DINO's 2 global views, drawn the same way; the method cuts its local crops from them.
ViewKind = Literal["augmented", "global"]


@dataclass(frozen=True)
class MethodEntry:
    """One method in the table of methods: its recipe section, how it is built from that section,
    and what it asks of the engine. Each method's module defines its entry beside its section."""

    config: type[MethodSection]
    build: Callable[[Any, RecipeSections, Encoder], Method]  # (its section, the recipe, the encoder) -> the method
    label: bool = False  # trains on the recipe's data.label
    views: int | None = None  # views per subject; None: views.n_views, at least 2
    view_kind: ViewKind = "augmented"
    distributed: bool = True  # False: its per-epoch step (DeepCluster's clustering) runs on one process only
    training_features: bool = False  # clusters features of the training cohort each epoch (DeepCluster)

    @property
    def name(self) -> str:
        return self.config.method_name()
