"""DINO: self-distillation with no labels, with global and local 3D crops."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from medssl.config import METHOD_NAME_FIELD, EmaMomentum, MethodSection, RecipeSections
from medssl.losses import DINOLoss
from medssl.methods.base import Method, MethodEntry, fold_views, unfold_views
from medssl.methods.ema import cosine_momentum, ema_update, make_target
from medssl.models import DINOHead, Encoder


def local_crops(
    views: torch.Tensor, n_crops: int, scale: tuple[float, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random sub-volumes of the global views, resized to half their edge.

    (B, V, C, D, H, W) -> (B, n_crops, C, D/2, H/2, W/2). Each crop takes a random global
    view of its subject, a random edge fraction in ``scale`` and a random position.
    """
    batch, n_views, channels, *shape = views.shape
    out_shape = [max(size // 2, 1) for size in shape]
    crops = []
    for _ in range(n_crops):
        fraction = float(torch.empty(1).uniform_(*scale, generator=generator))
        edges = [max(int(round(size * fraction)), 1) for size in shape]
        starts = [int(torch.randint(0, size - edge + 1, (1,), generator=generator)) for size, edge in zip(shape, edges)]
        source = int(torch.randint(0, n_views, (1,), generator=generator))
        box = views[
            :,
            source,
            :,
            starts[0] : starts[0] + edges[0],
            starts[1] : starts[1] + edges[1],
            starts[2] : starts[2] + edges[2],
        ]
        crops.append(F.interpolate(box, size=out_shape, mode="trilinear", align_corners=False))
    return torch.stack(crops, dim=1)


def teacher_temperature_schedule(
    warmup_temperature: float, temperature: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Teacher temperature of each epoch, as DINO's ``DINOLoss.teacher_temp_schedule``
    (facebookresearch/dino ``main_dino.py``, commit 7c446df): linear from ``warmup_temperature``
    to ``temperature`` over the first ``warmup_epochs`` epochs (both ends included), then constant.
    The authors warm up because a too high temperature makes the start of training unstable."""
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"DINO: warmup_teacher_temperature_epochs={warmup_epochs} must be in [0, epochs={epochs}]")
    return np.concatenate(
        (np.linspace(warmup_temperature, temperature, warmup_epochs), np.ones(epochs - warmup_epochs) * temperature)
    )


def _keep_temperature_of_older_checkpoints(module: DINO, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the schedule existed hold no temperature: those runs had a
    constant one, which is the schedule's without warm-up, so they resume with the current value."""
    state_dict.setdefault(prefix + "scheduled_teacher_temperature", module.scheduled_teacher_temperature.clone())


class DINO(Method):
    """DINO (Caron et al., ICCV 2021): a student network matches the centred, sharpened
    output distribution of an EMA teacher across crops; the teacher sees the 2 global views,
    the student the global views and ``n_local_crops`` local crops.

    The teacher temperature follows :func:`teacher_temperature_schedule` over the ``epochs`` of
    the run: the epoch of a step is derived from the step and the run's total steps (the engine
    calls ``after_step(step, total_steps)``), and the temperature of the next step is kept in a
    buffer, so a checkpoint resumes with it. With ``warmup_teacher_temperature_epochs = 0`` (the
    authors' default, and their ResNet-50 run) it is ``teacher_temperature`` throughout.

    Example:
        >>> method = DINO(build_encoder("resnet18"), out_dim=4096)
    """

    monitors_collapse = True
    scheduled_teacher_temperature: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        encoder: Encoder,
        hidden_dim: int = 512,
        out_dim: int = 4096,
        n_local_crops: int = 4,
        local_crop_scale: tuple[float, float] = (0.3, 0.5),
        momentum: float = 0.996,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
        warmup_teacher_temperature: float = 0.04,
        warmup_teacher_temperature_epochs: int = 0,
        epochs: int = 1,
    ):
        super().__init__(encoder, DINOHead(encoder.feature_dim, hidden_dim=hidden_dim, out_dim=out_dim))
        self.teacher_encoder = make_target(encoder)
        self.teacher_head = make_target(self.head)
        self.n_local_crops = n_local_crops
        self.local_crop_scale = local_crop_scale
        self.base_momentum = momentum
        self.loss = DINOLoss(
            out_dim=out_dim,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            center_momentum=center_momentum,
        )
        self.epochs = epochs
        self.teacher_temperatures = teacher_temperature_schedule(
            warmup_teacher_temperature, teacher_temperature, warmup_teacher_temperature_epochs, epochs
        )
        # float64 so that the checkpointed value is exactly the schedule's.
        self.register_buffer(
            "scheduled_teacher_temperature", torch.tensor(self.teacher_temperatures[0], dtype=torch.float64)
        )
        self.register_load_state_dict_pre_hook(_keep_temperature_of_older_checkpoints)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        self.loss.teacher_temperature = self.scheduled_teacher_temperature.item()
        global_views = batch["views"][:, :2]
        student = [self.embed(global_views)]
        if self.n_local_crops:
            student.append(self.embed(local_crops(global_views, self.n_local_crops, self.local_crop_scale)))
        with torch.no_grad():
            teacher = unfold_views(self.teacher_head(self.teacher_encoder(fold_views(global_views))), 2)
        return self.loss(torch.cat(student, dim=1), teacher), {}

    def after_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        # ``step`` steps are done; the next one (0-based index ``step``) lies in this epoch.
        epoch = min(step * self.epochs // total_steps, self.epochs - 1)
        self.scheduled_teacher_temperature.fill_(float(self.teacher_temperatures[epoch]))


class DINOConfig(MethodSection):
    """DINO (Caron et al., ICCV 2021): a student matches an EMA teacher's centred, sharpened outputs across crops."""

    name: Annotated[Literal["dino"], METHOD_NAME_FIELD] = "dino"
    renamed_keys: ClassVar[dict[str, str]] = {"temperature": "student_temperature", "local_crops": "n_local_crops"}
    student_temperature: float = Field(0.1, gt=0, description="Student softmax temperature.")
    teacher_temperature: float = Field(
        0.04, gt=0, description="Teacher temperature (sharpening), reached after the warm-up."
    )
    warmup_teacher_temperature: float = Field(
        0.04, gt=0, description="Teacher temperature of the first epoch, raised linearly to teacher_temperature."
    )
    warmup_teacher_temperature_epochs: int = Field(
        0, ge=0, description="Epochs of the teacher-temperature warm-up (at most train.epochs; DINO's ViT recipes: 30)."
    )
    center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the teacher centre.")
    momentum: EmaMomentum = 0.996
    out_dim: int = Field(4096, ge=2, description="Prototypes (output dimension of the DINO head).")
    n_local_crops: int = Field(4, ge=0, description="Local crops per subject, cut from the 2 global views.")
    local_crop_scale: tuple[float, float] = Field(
        (0.3, 0.5), description="Local crop edge as a fraction of the volume edge."
    )

    def smoke(self) -> DINOConfig:
        return self.model_copy(update={"out_dim": min(self.out_dim, 64), "n_local_crops": min(self.n_local_crops, 2)})


def build_dino(section: DINOConfig, recipe: RecipeSections, encoder: Encoder) -> DINO:
    return DINO(
        encoder,
        hidden_dim=recipe.model.head.hidden_dim,
        out_dim=section.out_dim,
        n_local_crops=section.n_local_crops,
        local_crop_scale=section.local_crop_scale,
        momentum=section.momentum,
        student_temperature=section.student_temperature,
        teacher_temperature=section.teacher_temperature,
        center_momentum=section.center_momentum,
        warmup_teacher_temperature=section.warmup_teacher_temperature,
        # The embedded budget may shorten the run below the warm-up.
        warmup_teacher_temperature_epochs=min(section.warmup_teacher_temperature_epochs, recipe.train.epochs),
        epochs=recipe.train.epochs,
    )


DINO_METHOD = MethodEntry(DINOConfig, build_dino, views=2, view_kind="global")
