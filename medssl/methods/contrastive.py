"""Contrastive methods: embeddings of every view of every subject go into one loss.

Covers SimCLR, y-aware, threshold, exponential, SupCon, eps-SupInfoNCE, eps-SupCon and
decoupled InfoNCE, and the two non-contrastive losses that also see a plain (N, V, d)
batch of embeddings: Barlow Twins and VICReg.
"""

from __future__ import annotations

import torch
from torch import nn

from medssl.methods.base import Method, fold_views, unfold_views
from medssl.methods.debias import AdversarialSiteHead
from medssl.models import Encoder, ProjectionHead


class EmbeddingLossMethod(Method):
    """Encoder + head + a loss called as ``loss(z, y)`` on (N, V, d) embeddings.

    Example:
        >>> method = EmbeddingLossMethod(build_encoder("resnet18"), ProjectionHead(512), YAwareLoss())
        >>> loss, logs = method.training_loss({"views": views, "label": ages})
    """

    def __init__(
        self,
        encoder: Encoder,
        head: ProjectionHead,
        loss: nn.Module,
        uses_label: bool,
        monitors_collapse: bool = False,
        shuffle_labels: bool = False,
    ):
        super().__init__(encoder, head)
        self.loss = loss
        self.uses_label = uses_label
        self.monitors_collapse = monitors_collapse
        # A control that breaks the method on purpose: labels no longer belong to their subjects.
        self.shuffle_labels = shuffle_labels
        # A debiasing term (medssl.methods.debias), set by build_method from method.debias; reads batch["bias"].
        self.debias: nn.Module | None = None

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        views = batch["views"]
        features = self.encoder(fold_views(views))
        z = self.gather(unfold_views(self.head(features), views.shape[1]))
        y = self.gather(batch["label"]) if self.uses_label else None
        if y is not None and self.shuffle_labels:
            y = y[torch.randperm(len(y), device=y.device)]
        loss = self.loss(z, y)
        if self.debias is None:
            return loss, {}
        if isinstance(self.debias, AdversarialSiteHead):  # on this process's features, view-major like them
            term, logs = self.debias(features, batch["bias"].repeat(views.shape[1]))
        else:  # on every process's embeddings, as the loss (bias labels are small integers: exact as floats)
            term, logs = self.debias(z, self.gather(batch["bias"].float()).long())
        return loss + term, {"method_loss": loss.item(), **logs}

    def after_step(self, step: int, total_steps: int) -> None:
        if isinstance(self.debias, AdversarialSiteHead):
            self.debias.set_progress(step, total_steps)
