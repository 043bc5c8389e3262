"""DINO: self-distillation with no labels, with global and local 3D crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses import DINOLoss
from medssl.methods.base import Method, fold_views, unfold_views
from medssl.methods.ema import cosine_momentum, ema_update, make_target
from medssl.models import DINOHead, Encoder


def local_crops(views: torch.Tensor, n_crops: int, scale: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
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
        box = views[:, source, :, starts[0]:starts[0] + edges[0], starts[1]:starts[1] + edges[1], starts[2]:starts[2] + edges[2]]
        crops.append(F.interpolate(box, size=out_shape, mode="trilinear", align_corners=False))
    return torch.stack(crops, dim=1)


class DINO(Method):
    """DINO (Caron et al., ICCV 2021): a student network matches the centred, sharpened
    output distribution of an EMA teacher across crops; the teacher sees the 2 global views,
    the student the global views and ``n_local_crops`` local crops.

    Example:
        >>> method = DINO(build_encoder("resnet18"), out_dim=4096)
    """

    monitors_collapse = True

    def __init__(self, encoder: Encoder, hidden_dim: int = 512, out_dim: int = 4096, n_local_crops: int = 4,
                 local_crop_scale: tuple[float, float] = (0.3, 0.5), momentum: float = 0.996,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.04, center_momentum: float = 0.9):
        super().__init__(encoder, DINOHead(encoder.feature_dim, hidden_dim=hidden_dim, out_dim=out_dim))
        self.teacher_encoder = make_target(encoder)
        self.teacher_head = make_target(self.head)
        self.n_local_crops = n_local_crops
        self.local_crop_scale = local_crop_scale
        self.base_momentum = momentum
        self.loss = DINOLoss(out_dim=out_dim, student_temperature=student_temperature,
                             teacher_temperature=teacher_temperature, center_momentum=center_momentum)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
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
