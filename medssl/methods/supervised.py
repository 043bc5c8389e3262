"""The supervised baseline: the encoder trained end-to-end on the label it will be probed for.

Every self-supervised method is read against it: on OpenBHB the seeds' "baseline l1"
(an L1 age regression on a ResNet-18) reaches 2.67 / 4.18 years MAE internal / external
(Dufumier et al., NeuroImage 2022). Each augmented view is one training sample, so the
encoder sees the same views as the self-supervised methods.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medssl.config import METHOD_NAME_FIELD, MethodSection, RecipeSections
from medssl.errors import RecipeError
from medssl.methods.base import Method, MethodEntry, fold_views
from medssl.models import Encoder


class SupervisedMethod(Method):
    """Encoder + a linear output trained with L1 (regression) or cross-entropy (classification).

    Regression targets are standardised with the median and mean absolute deviation of the
    first training batch (gathered over processes, then kept as buffers, so checkpoints
    and resumes carry them): the output layer starts at the right scale, where a raw-years
    target would leave Adam thousands of steps of bias to learn. The loss is the L1 in those
    units, which has the same minimiser as the L1 in years.

    Example:
        >>> method = SupervisedMethod(build_encoder("resnet18"), task="regression")
        >>> loss, logs = method.training_loss({"views": views, "label": ages})
    """

    has_projection = False
    # buffers (register_buffer in __init__)
    label_center: torch.Tensor
    label_scale: torch.Tensor

    def __init__(self, encoder: Encoder, task: str = "regression", classes: int = 2):
        super().__init__(encoder, nn.Identity())
        self.task = task
        self.classes = classes
        self.output = nn.Linear(encoder.feature_dim, 1 if task == "regression" else classes)
        self.register_buffer("label_center", torch.tensor(float("nan")))
        self.register_buffer("label_scale", torch.tensor(float("nan")))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        views = batch["views"]
        outputs = self.output(self.encoder(fold_views(views)))
        labels = batch["label"].repeat(views.shape[1])  # view-major, as fold_views
        if self.task == "classification":
            return self.classification_loss(outputs, labels)
        if torch.isnan(self.label_center):
            self.standardise_from(self.gather(batch["label"]).float())
        scale = self.label_scale
        predicted = self.label_center + scale * outputs[:, 0].float()
        loss = F.l1_loss(predicted / scale, labels.float() / scale)
        return loss, {"train_mae": float((predicted - labels).abs().mean().detach())}

    def classification_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        targets = labels.long()
        if targets.min() < 0 or targets.max() >= self.classes:
            raise RecipeError(
                f"method.classes = {self.classes}: the label has class index {int(targets.max())}; "
                "set method.classes to the number of classes of data.label"
            )
        loss = F.cross_entropy(outputs.float(), targets)
        accuracy = (outputs.argmax(1) == targets).float().mean()
        return loss, {"train_accuracy": float(accuracy.detach())}

    @torch.no_grad()
    def standardise_from(self, labels: torch.Tensor) -> None:
        center = labels.median()
        self.label_center.copy_(center)
        self.label_scale.copy_((labels - center).abs().mean().clamp_min(1e-3))


class SupervisedConfig(MethodSection):
    """Supervised baseline: the encoder trained end-to-end on data.label (Dufumier et al., NeuroImage 2022)."""

    name: Annotated[Literal["supervised"], METHOD_NAME_FIELD] = "supervised"
    task: Literal["regression", "classification"] = Field(
        "regression", description="L1 regression of data.label, or cross-entropy classification."
    )
    classes: int = Field(2, ge=2, description="Classification: number of classes of data.label.")


def build_supervised(section: SupervisedConfig, recipe: RecipeSections, encoder: Encoder) -> SupervisedMethod:
    return SupervisedMethod(encoder, task=section.task, classes=section.classes)


SUPERVISED_METHOD = MethodEntry(SupervisedConfig, build_supervised, label=True)
