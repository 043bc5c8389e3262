"""Contrastive methods: embeddings of every view of every subject go into one loss.

Covers SimCLR, y-aware, threshold, exponential, SupCon, eps-SupInfoNCE, eps-SupCon and
decoupled InfoNCE: each one's recipe section and table entry are here. The engine of these
methods, :class:`EmbeddingLossMethod` (and :func:`embedding_loss`, the entry of such a method), also
runs the redundancy-reduction losses (:mod:`medssl.methods.redundancy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from torch import nn

from medssl.config import (
    METHOD_NAME_FIELD,
    Eps,
    Kernel,
    MethodSection,
    RecipeSections,
    ReferenceCode,
    ShuffleLabels,
    Sigma,
    Temperature,
)
from medssl.losses import (
    DecoupledNTXentLoss,
    EpsSupConLoss,
    EpsSupInfoNCELoss,
    ExponentialLoss,
    NTXentLoss,
    SupConLoss,
    ThresholdLoss,
    YAwareLoss,
)
from medssl.methods.base import Method, MethodEntry, fold_views, projection_head, unfold_views
from medssl.methods.debias import AdversarialSiteHead, DebiasKey, EmbeddingSection
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


def embedding_loss(
    config: type[MethodSection],
    make_loss: Callable[[Any], nn.Module],
    label: bool = False,
    monitors_collapse: bool = False,
) -> MethodEntry:
    """The entry of a method that is one loss on the (N, V, d) projections of every view
    (:class:`EmbeddingLossMethod`); ``make_loss`` builds the loss from the method's section."""

    def build(section: Any, recipe: RecipeSections, encoder: Encoder) -> Method:
        return EmbeddingLossMethod(
            encoder,
            projection_head(recipe.model.head, encoder),
            make_loss(section),
            uses_label=label,
            monitors_collapse=monitors_collapse,
            shuffle_labels=label and section.shuffle_labels,
        )

    return MethodEntry(config, build, label=label)


# ----------------------------------------------------------------------------- the methods
class LabelKernelSection(EmbeddingSection):
    """The keys of a loss that weighs pairs of subjects by a kernel on their labels."""

    temperature: Temperature = 0.1
    sigma: Sigma = 5.0
    kernel: Kernel = "rbf"


class MarginSection(EmbeddingSection):
    """The keys of a supervised loss with a margin between positive and negative similarities."""

    temperature: Temperature = 0.1
    eps: Eps = 0.0


class YAwareConfig(LabelKernelSection):
    """y-aware InfoNCE (Dufumier et al., MICCAI 2021): positives weighted by a kernel on the label."""

    name: Annotated[Literal["yaware"], METHOD_NAME_FIELD] = "yaware"
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class ThresholdConfig(LabelKernelSection):
    """Threshold loss L^thr (Barbano et al., ISBI 2023): negatives farther in label than the positive repel."""

    name: Annotated[Literal["threshold"], METHOD_NAME_FIELD] = "threshold"
    reference_code: ReferenceCode = False
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class ExponentialConfig(LabelKernelSection):
    """Exponential loss L^exp (Barbano et al., ISBI 2023): negatives repel in proportion to label distance."""

    name: Annotated[Literal["exponential"], METHOD_NAME_FIELD] = "exponential"
    reference_code: ReferenceCode = False
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class SimCLRConfig(EmbeddingSection):
    """SimCLR's NT-Xent (Chen et al., ICML 2020): the other view of the same subject is the positive."""

    name: Annotated[Literal["simclr"], METHOD_NAME_FIELD] = "simclr"
    temperature: Temperature = 0.1
    debias: DebiasKey = None


class DecoupledConfig(EmbeddingSection):
    """Decoupled contrastive learning (Yeh et al., ECCV 2022): NT-Xent without the positive in the denominator."""

    name: Annotated[Literal["decoupled"], METHOD_NAME_FIELD] = "decoupled"
    temperature: Temperature = 0.1
    debias: DebiasKey = None


class SupConConfig(EmbeddingSection):
    """SupCon (Khosla et al., NeurIPS 2020): subjects of the same class are positives."""

    name: Annotated[Literal["supcon"], METHOD_NAME_FIELD] = "supcon"
    temperature: Temperature = 0.1
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class EpsSupInfoNCEConfig(MarginSection):
    """eps-SupInfoNCE (Barbano et al., ICLR 2023): each positive beats every negative by a margin eps."""

    name: Annotated[Literal["eps_supinfonce"], METHOD_NAME_FIELD] = "eps_supinfonce"
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class EpsSupConConfig(MarginSection):
    """eps-SupCon (Barbano et al., ICLR 2023): SupCon with a margin eps on the negatives."""

    name: Annotated[Literal["eps_supcon"], METHOD_NAME_FIELD] = "eps_supcon"
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


CONTRASTIVE_METHODS = (
    embedding_loss(
        YAwareConfig, lambda m: YAwareLoss(temperature=m.temperature, sigma=m.sigma, kernel=m.kernel), label=True
    ),
    embedding_loss(SimCLRConfig, lambda m: NTXentLoss(temperature=m.temperature)),
    embedding_loss(
        ThresholdConfig,
        lambda m: ThresholdLoss(
            temperature=m.temperature, sigma=m.sigma, kernel=m.kernel, reference_code=m.reference_code
        ),
        label=True,
    ),
    embedding_loss(
        ExponentialConfig,
        lambda m: ExponentialLoss(
            temperature=m.temperature, sigma=m.sigma, kernel=m.kernel, reference_code=m.reference_code
        ),
        label=True,
    ),
    embedding_loss(SupConConfig, lambda m: SupConLoss(temperature=m.temperature), label=True),
    embedding_loss(EpsSupInfoNCEConfig, lambda m: EpsSupInfoNCELoss(temperature=m.temperature, eps=m.eps), label=True),
    embedding_loss(EpsSupConConfig, lambda m: EpsSupConLoss(temperature=m.temperature, eps=m.eps), label=True),
    embedding_loss(DecoupledConfig, lambda m: DecoupledNTXentLoss(temperature=m.temperature)),
)
