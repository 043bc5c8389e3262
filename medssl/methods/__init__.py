"""Methods: how an encoder, a head, views and a loss combine into a training objective.

``METHODS`` is the table of methods, one entry per method: its recipe section (a model in
``medssl.config``), the function that builds it from that section, and what it asks of the
engine (a label column, how many views per subject, whether it runs under DDP). The engine
reads these through :func:`method_needs` and :func:`build_method` and never a method's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from medssl.config import (
    BarlowTwinsConfig,
    BYOLConfig,
    DecoupledConfig,
    DeepClusterConfig,
    DINOConfig,
    EpsSupConConfig,
    EpsSupInfoNCEConfig,
    ExponentialConfig,
    MethodSection,
    ModelConfig,
    Recipe,
    SimCLRConfig,
    SimSiamConfig,
    SupConConfig,
    SupervisedConfig,
    ThresholdConfig,
    VICRegConfig,
    YAwareConfig,
)
from medssl.errors import RecipeError
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
from medssl.methods.base import Method, fold_views, projection_head, unfold_views
from medssl.methods.bootstrap import BYOL, SimSiam, build_byol, build_simsiam
from medssl.methods.contrastive import EmbeddingLossMethod
from medssl.methods.debias import build_debias
from medssl.methods.deepcluster import DeepCluster, build_deepcluster
from medssl.methods.dino import DINO, build_dino
from medssl.methods.supervised import SupervisedMethod, build_supervised
from medssl.models import Encoder, build_encoder
from medssl.models.encoders import ArchitectureOptions

# "augmented": views.n_views views of each subject, each drawn with the recipe's views section.
# "global": DINO's 2 global views, drawn the same way; the method cuts its local crops from them.
ViewKind = Literal["augmented", "global"]


@dataclass(frozen=True)
class MethodEntry:
    """One method: its recipe section, how it is built from that section, and what it asks of the engine."""

    config: type[MethodSection]
    build: Callable[[Any, Recipe, Encoder], Method]  # (its section, the recipe, the encoder) -> the method
    label: bool = False  # trains on the recipe's data.label
    views: int | None = None  # views per subject; None: views.n_views, at least 2
    view_kind: ViewKind = "augmented"
    distributed: bool = True  # False: its per-epoch step (DeepCluster's clustering) runs on one process only
    training_features: bool = False  # clusters features of the training cohort each epoch (DeepCluster)

    @property
    def name(self) -> str:
        return self.config.method_name()


def embedding_loss(
    config: type[MethodSection],
    make_loss: Callable[[Any], nn.Module],
    label: bool = False,
    monitors_collapse: bool = False,
) -> MethodEntry:
    """The entry of a method that is one loss on the (N, V, d) projections of every view
    (:class:`EmbeddingLossMethod`); ``make_loss`` builds the loss from the method's section."""

    def build(section: Any, recipe: Recipe, encoder: Encoder) -> Method:
        return EmbeddingLossMethod(
            encoder,
            projection_head(recipe.model.head, encoder),
            make_loss(section),
            uses_label=label,
            monitors_collapse=monitors_collapse,
            shuffle_labels=label and section.shuffle_labels,
        )

    return MethodEntry(config, build, label=label)


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
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
        embedding_loss(
            EpsSupInfoNCEConfig, lambda m: EpsSupInfoNCELoss(temperature=m.temperature, eps=m.eps), label=True
        ),
        embedding_loss(EpsSupConConfig, lambda m: EpsSupConLoss(temperature=m.temperature, eps=m.eps), label=True),
        embedding_loss(DecoupledConfig, lambda m: DecoupledNTXentLoss(temperature=m.temperature)),
        embedding_loss(BarlowTwinsConfig, lambda m: BarlowTwinsLoss(lambd=m.lambd), monitors_collapse=True),
        embedding_loss(
            VICRegConfig,
            lambda m: VICRegLoss(
                sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight, form=m.form
            ),
            monitors_collapse=True,
        ),
        MethodEntry(BYOLConfig, build_byol),
        MethodEntry(SimSiamConfig, build_simsiam),
        MethodEntry(DINOConfig, build_dino, views=2, view_kind="global"),
        MethodEntry(DeepClusterConfig, build_deepcluster, views=1, distributed=False, training_features=True),
        MethodEntry(SupervisedConfig, build_supervised, label=True),
    )
}


@dataclass(frozen=True)
class MethodNeeds:
    """What a method asks of the engine before it is built: the engine reads these, never a method name."""

    name: str
    label: bool
    views: int
    distributed: bool
    view_kind: ViewKind = "augmented"
    bias: bool = False  # batches carry data.bias as integer classes (method.debias)
    training_features: bool = False  # the trainer hands it features of the training cohort each epoch


def method_needs(recipe: Recipe) -> MethodNeeds:
    """The needs of the recipe's method (label column, views per subject and their kind, DDP support, bias labels)."""
    entry = METHODS[recipe.method.name]
    views = entry.views if entry.views is not None else max(recipe.views.n_views, 2)
    bias = getattr(recipe.method, "debias", None) is not None
    return MethodNeeds(
        entry.name, entry.label, views, entry.distributed, entry.view_kind, bias, entry.training_features
    )


def architecture_options(model: ModelConfig) -> ArchitectureOptions:
    """The model section's architecture switches (``model.bias_downsample`` ...)."""
    return ArchitectureOptions(
        bias_downsample=model.bias_downsample,
        shortcut_type=model.shortcut_type,
        stage_dilations=tuple(model.stage_dilations),
        final_norm=model.final_norm,
        final_relu=model.final_relu,
    )


def build_encoder_for(recipe: Recipe) -> Encoder:
    model = recipe.model
    return build_encoder(
        model.encoder,
        in_channels=model.in_channels,
        conv1_stride=model.conv1_stride,
        widths=model.widths,
        activation_checkpointing=model.activation_checkpointing,
        options=architecture_options(model),
    )


def build_method(recipe: Recipe, encoder: Encoder | None = None, bias_classes: int | None = None) -> Method:
    """The method the recipe names, built from its section around ``encoder`` (a fresh one from the recipe if None),
    with its ``method.debias`` term over ``bias_classes`` classes of ``data.bias``."""
    method = METHODS[recipe.method.name].build(
        recipe.method, recipe, encoder if encoder is not None else build_encoder_for(recipe)
    )
    debias = getattr(recipe.method, "debias", None)
    if debias is not None:
        if bias_classes is None or not isinstance(method, EmbeddingLossMethod):
            raise RecipeError(f"method.debias: method {recipe.method.name!r} built without the classes of data.bias")
        method.debias = build_debias(debias, method.encoder.feature_dim, bias_classes, recipe.train.seed)
    return method


__all__ = [
    "METHODS",
    "MethodEntry",
    "MethodNeeds",
    "method_needs",
    "embedding_loss",
    "Method",
    "BYOL",
    "SimSiam",
    "DINO",
    "DeepCluster",
    "EmbeddingLossMethod",
    "SupervisedMethod",
    "build_method",
    "build_encoder_for",
    "architecture_options",
    "fold_views",
    "unfold_views",
    "projection_head",
]
