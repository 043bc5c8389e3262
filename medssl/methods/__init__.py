"""Methods: how an encoder, a head, views and a loss combine into a training objective.

``build_method(recipe)`` is the only place that maps a method name to its constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medssl.config import Recipe
from medssl.losses import (
    BarlowTwinsLoss,
    DecoupledNTXentLoss,
    EpsSupConLoss,
    EpsSupInfoNCELoss,
    ExponentialLoss,
    NTXentLoss,
    SupConLoss,
    ThresholdLoss,
    VICRegLoss,
    YAwareLoss,
)
from medssl.methods.base import Method, fold_views, unfold_views
from medssl.methods.bootstrap import BYOL, SimSiam
from medssl.methods.contrastive import EmbeddingLossMethod
from medssl.methods.deepcluster import DeepCluster
from medssl.methods.dino import DINO
from medssl.methods.supervised import SupervisedMethod
from medssl.models import Encoder, ProjectionHead, build_encoder

# Methods whose loss needs the recipe's label column.
LABEL_METHODS = {"yaware", "threshold", "exponential", "supcon", "eps_supinfonce", "eps_supcon", "supervised"}
# Methods that train on one view per subject (the others on views.n_views, at least 2).
SINGLE_VIEW_METHODS = {"deepcluster"}
# Methods whose per-epoch step (DeepCluster's clustering of the whole cohort) runs on one process.
SINGLE_PROCESS_METHODS = {"deepcluster"}


@dataclass(frozen=True)
class MethodNeeds:
    """What a method asks of the engine before it is built: the engine reads these, never a method name."""

    name: str
    label: bool
    views: int
    distributed: bool


def method_needs(recipe: Recipe) -> MethodNeeds:
    """The needs of the recipe's method (label column, views per subject, DDP support)."""
    name = recipe.method.name
    views = 1 if name in SINGLE_VIEW_METHODS else max(recipe.views.n_views, 2)
    return MethodNeeds(name, name in LABEL_METHODS, views, name not in SINGLE_PROCESS_METHODS)


def _embedding_method(make_loss: Callable, uses_label: bool = False, monitors_collapse: bool = False):
    def build(recipe: Recipe, encoder: Encoder) -> Method:
        head = _head(recipe, encoder)
        return EmbeddingLossMethod(encoder, head, make_loss(recipe.method), uses_label, monitors_collapse,
                                   shuffle_labels=uses_label and recipe.method.shuffle_labels)
    return build


def _head(recipe: Recipe, encoder: Encoder) -> ProjectionHead:
    config = recipe.model.head
    return ProjectionHead(encoder.feature_dim, config.hidden_dim, config.out_dim, config.layers, config.batch_norm)


METHODS: dict[str, Callable[[Recipe, Encoder], Method]] = {
    "simclr": _embedding_method(lambda m: NTXentLoss(temperature=m.temperature)),
    "decoupled": _embedding_method(lambda m: DecoupledNTXentLoss(temperature=m.temperature)),
    "yaware": _embedding_method(lambda m: YAwareLoss(temperature=m.temperature, sigma=m.sigma, kernel=m.kernel), uses_label=True),
    "threshold": _embedding_method(lambda m: ThresholdLoss(temperature=m.temperature, sigma=m.sigma, kernel=m.kernel, reference_code=m.reference_code), uses_label=True),
    "exponential": _embedding_method(lambda m: ExponentialLoss(temperature=m.temperature, sigma=m.sigma, kernel=m.kernel, reference_code=m.reference_code), uses_label=True),
    "supcon": _embedding_method(lambda m: SupConLoss(temperature=m.temperature), uses_label=True),
    "eps_supinfonce": _embedding_method(lambda m: EpsSupInfoNCELoss(temperature=m.temperature, eps=m.eps), uses_label=True),
    "eps_supcon": _embedding_method(lambda m: EpsSupConLoss(temperature=m.temperature, eps=m.eps), uses_label=True),
    "barlow_twins": _embedding_method(lambda m: BarlowTwinsLoss(lambd=m.lambd), monitors_collapse=True),
    "vicreg": _embedding_method(lambda m: VICRegLoss(sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight, form=m.vicreg_form), monitors_collapse=True),
    "byol": lambda r, e: BYOL(e, _head(r, e), predictor_hidden_dim=r.method.predictor_hidden_dim, momentum=r.method.momentum),
    "simsiam": lambda r, e: SimSiam(e, _head(r, e), predictor_hidden_dim=r.method.predictor_hidden_dim),
    "dino": lambda r, e: DINO(e, hidden_dim=r.model.head.hidden_dim, out_dim=r.method.out_dim, n_local_crops=r.method.local_crops,
                              local_crop_scale=r.method.local_crop_scale, momentum=r.method.momentum,
                              student_temperature=r.method.temperature, teacher_temperature=r.method.teacher_temperature,
                              center_momentum=r.method.center_momentum, warmup_teacher_temperature=r.method.warmup_teacher_temperature,
                              # The embedded budget may shorten the run below the warm-up.
                              warmup_teacher_temperature_epochs=min(r.method.warmup_teacher_temperature_epochs, r.train.epochs),
                              epochs=r.train.epochs),
    "supervised": lambda r, e: SupervisedMethod(e, task=r.method.task, classes=r.method.classes),
    "deepcluster": lambda r, e: DeepCluster(e, clusters=r.method.clusters, pca_dim=r.method.pca_dim,
                                            kmeans_iters=r.method.kmeans_iters, seed=r.train.seed),
}


def build_encoder_for(recipe: Recipe) -> Encoder:
    model = recipe.model
    return build_encoder(model.encoder, in_channels=model.in_channels, conv1_stride=model.conv1_stride, widths=model.widths,
                         activation_checkpointing=model.activation_checkpointing)


def build_method(recipe: Recipe, encoder: Encoder | None = None) -> Method:
    """The method the recipe names, around ``encoder`` (a fresh one from the recipe if None)."""
    return METHODS[recipe.method.name](recipe, encoder if encoder is not None else build_encoder_for(recipe))


__all__ = ["LABEL_METHODS", "METHODS", "MethodNeeds", "method_needs", "Method", "BYOL", "SimSiam", "DINO", "DeepCluster", "EmbeddingLossMethod", "SupervisedMethod",
           "build_method", "build_encoder_for", "fold_views", "unfold_views"]
