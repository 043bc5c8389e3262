"""Methods that predict one view's embedding from another's: BYOL and SimSiam."""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from medssl.config import METHOD_NAME_FIELD, EmaMomentum, MethodSection, PredictorHiddenDim, RecipeSections
from medssl.losses import BYOLLoss, SimSiamLoss
from medssl.methods.base import Method, MethodEntry, fold_views, projection_head
from medssl.methods.ema import cosine_momentum, ema_update, make_target
from medssl.models import Encoder, ProjectionHead


class BYOL(Method):
    """BYOL (Grill et al., NeurIPS 2020): an online encoder + projector + predictor regresses
    the projection of an exponential-moving-average target network on the other view.
    The target's momentum follows the cosine schedule m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2.

    Example:
        >>> method = BYOL(build_encoder("resnet18"), ProjectionHead(512, batch_norm=True))
    """

    monitors_collapse = True

    def __init__(
        self, encoder: Encoder, head: ProjectionHead, predictor_hidden_dim: int = 512, momentum: float = 0.996
    ):
        super().__init__(encoder, head)
        self.predictor = ProjectionHead(head.out_dim, predictor_hidden_dim, head.out_dim, layers=2, batch_norm=True)
        self.target_encoder = make_target(encoder)
        self.target_head = make_target(head)
        self.base_momentum = momentum
        self.loss = BYOLLoss()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        views = batch["views"]
        z = self.embed(views)
        p1, p2 = self.predictor(z[:, 0]), self.predictor(z[:, 1])
        with torch.no_grad():
            target = self.target_head(self.target_encoder(fold_views(views[:, :2])))
        return self.loss(torch.stack([p1, p2], dim=1), torch.stack(target.chunk(2), dim=1)), {}

    def after_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_head, self.head, momentum)


class SimSiam(Method):
    """SimSiam (Chen & He, CVPR 2021): like BYOL without a momentum encoder; the
    stop-gradient on the target branch alone prevents collapse.

    Example:
        >>> method = SimSiam(build_encoder("resnet18"), ProjectionHead(512, batch_norm=True))
    """

    monitors_collapse = True

    def __init__(self, encoder: Encoder, head: ProjectionHead, predictor_hidden_dim: int = 512):
        super().__init__(encoder, head)
        self.predictor = ProjectionHead(head.out_dim, predictor_hidden_dim, head.out_dim, layers=2, batch_norm=True)
        self.loss = SimSiamLoss()

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.embed(batch["views"])
        z1, z2 = z[:, 0], z[:, 1]
        return self.loss(torch.stack([self.predictor(z1), self.predictor(z2)], dim=1), z[:, :2]), {}


class BYOLConfig(MethodSection):
    """BYOL (Grill et al., NeurIPS 2020): a predictor regresses an EMA target network's projection."""

    name: Annotated[Literal["byol"], METHOD_NAME_FIELD] = "byol"
    momentum: EmaMomentum = 0.996
    predictor_hidden_dim: PredictorHiddenDim = 512


class SimSiamConfig(MethodSection):
    """SimSiam (Chen & He, CVPR 2021): BYOL without the EMA target, a stop-gradient instead."""

    name: Annotated[Literal["simsiam"], METHOD_NAME_FIELD] = "simsiam"
    predictor_hidden_dim: PredictorHiddenDim = 512


def build_byol(section: BYOLConfig, recipe: RecipeSections, encoder: Encoder) -> BYOL:
    return BYOL(
        encoder,
        projection_head(recipe.model.head, encoder),
        predictor_hidden_dim=section.predictor_hidden_dim,
        momentum=section.momentum,
    )


def build_simsiam(section: SimSiamConfig, recipe: RecipeSections, encoder: Encoder) -> SimSiam:
    return SimSiam(
        encoder, projection_head(recipe.model.head, encoder), predictor_hidden_dim=section.predictor_hidden_dim
    )


BYOL_METHOD = MethodEntry(BYOLConfig, build_byol)
SIMSIAM_METHOD = MethodEntry(SimSiamConfig, build_simsiam)
