"""Methods: how an encoder, a head, views and a loss combine into a training objective.

``METHODS`` is the table of methods, one entry per method, each defined in the method's module
beside its recipe section and builder: the section (``DINOConfig`` in :mod:`medssl.methods.dino`),
the function that builds the method from it, and what it asks of the engine (a label column, how
many views per subject, whether it runs under DDP). :data:`MethodConfig`, the recipe's ``method``
section, is the union of the table's sections on ``method.name``. The engine reads the table
through :func:`method_needs` and :func:`build_method` and never a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union

from pydantic import BeforeValidator, Field

from medssl.config import MethodSection, ModelConfig, RecipeSections
from medssl.errors import RecipeError
from medssl.methods.base import Method, MethodEntry, ViewKind, fold_views, projection_head, unfold_views
from medssl.methods.bootstrap import BYOL, BYOL_METHOD, SIMSIAM_METHOD, BYOLConfig, SimSiam, SimSiamConfig
from medssl.methods.contrastive import (
    CONTRASTIVE_METHODS,
    DecoupledConfig,
    EmbeddingLossMethod,
    EpsSupConConfig,
    EpsSupInfoNCEConfig,
    ExponentialConfig,
    SimCLRConfig,
    SupConConfig,
    ThresholdConfig,
    YAwareConfig,
    embedding_loss,
)
from medssl.methods.debias import (
    DEBIAS_NAMES,
    AdversarialDebias,
    Debias,
    DebiasKey,
    EmbeddingSection,
    FairKLDebias,
    build_debias,
)
from medssl.methods.deepcluster import DEEPCLUSTER_METHOD, DeepCluster, DeepClusterConfig
from medssl.methods.dino import DINO, DINO_METHOD, DINOConfig
from medssl.methods.redundancy import REDUNDANCY_METHODS, BarlowTwinsConfig, VICRegConfig
from medssl.methods.supervised import SUPERVISED_METHOD, SupervisedConfig, SupervisedMethod
from medssl.models import Encoder, build_encoder
from medssl.models.encoders import ArchitectureOptions

METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        *CONTRASTIVE_METHODS,
        BYOL_METHOD,
        SIMSIAM_METHOD,
        *REDUNDANCY_METHODS,
        DINO_METHOD,
        DEEPCLUSTER_METHOD,
        SUPERVISED_METHOD,
    )
}
METHOD_SECTIONS: dict[str, type[MethodSection]] = {name: entry.config for name, entry in METHODS.items()}
METHOD_NAMES = tuple(METHODS)
DEFAULT_METHOD = "yaware"


def _default_method_name(raw: Any) -> Any:
    """A method section without ``name`` is the default method's."""
    return {"name": DEFAULT_METHOD, **raw} if isinstance(raw, dict) and "name" not in raw else raw


if TYPE_CHECKING:  # type checkers see the base of every section; a method reads its own by isinstance
    MethodConfig: TypeAlias = MethodSection
else:
    # The recipe's method section: one of the table's sections, told apart by method.name.
    MethodConfig = Annotated[
        Union[tuple(METHOD_SECTIONS.values())],  # noqa: UP007 (field_docs recognises typing.Union)
        Field(discriminator="name"),
        BeforeValidator(_default_method_name),
    ]


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


def method_needs(recipe: RecipeSections) -> MethodNeeds:
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


def build_encoder_for(model: ModelConfig) -> Encoder:
    """The encoder the recipe's ``model`` section describes, freshly initialised."""
    return build_encoder(
        model.encoder,
        in_channels=model.in_channels,
        conv1_stride=model.conv1_stride,
        widths=model.widths,
        activation_checkpointing=model.activation_checkpointing,
        options=architecture_options(model),
    )


def build_method(recipe: RecipeSections, encoder: Encoder | None = None, bias_classes: int | None = None) -> Method:
    """The method the recipe names, built from its section around ``encoder`` (a fresh one from the recipe if None),
    with its ``method.debias`` term over ``bias_classes`` classes of ``data.bias``."""
    method = METHODS[recipe.method.name].build(
        recipe.method, recipe, encoder if encoder is not None else build_encoder_for(recipe.model)
    )
    debias = getattr(recipe.method, "debias", None)
    if debias is not None:
        if bias_classes is None or not isinstance(method, EmbeddingLossMethod):
            raise RecipeError(f"method.debias: method {recipe.method.name!r} built without the classes of data.bias")
        method.debias = build_debias(debias, method.encoder.feature_dim, bias_classes, recipe.train.seed)
    return method


__all__ = [
    "METHODS",
    "METHOD_SECTIONS",
    "METHOD_NAMES",
    "DEFAULT_METHOD",
    "MethodConfig",
    "MethodSection",
    "EmbeddingSection",
    "YAwareConfig",
    "ThresholdConfig",
    "ExponentialConfig",
    "SimCLRConfig",
    "DecoupledConfig",
    "SupConConfig",
    "EpsSupInfoNCEConfig",
    "EpsSupConConfig",
    "BarlowTwinsConfig",
    "VICRegConfig",
    "BYOLConfig",
    "SimSiamConfig",
    "DINOConfig",
    "DeepClusterConfig",
    "SupervisedConfig",
    "FairKLDebias",
    "AdversarialDebias",
    "Debias",
    "DebiasKey",
    "DEBIAS_NAMES",
    "ViewKind",
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
