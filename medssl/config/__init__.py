"""The sections of a recipe: typed, documented models of each step of the data path.

A recipe mirrors the data path: ``data`` -> ``views`` -> ``model`` -> ``method`` -> ``train`` ->
``eval`` (and ``finetune``). Every field has a default and a one-line description (shown by
``medssl recipes --fields``).

The package, one idea a module (every name below is importable from ``medssl.config``):
:mod:`medssl.config.sections` (data, views, model, train, eval, finetune),
:mod:`medssl.config.methods` (the base of every method's section and the knobs methods share;
each method's own section lives beside its builder in :mod:`medssl.methods`) and
:mod:`medssl.config.parts` (what the layers below the whole recipe read of it).
The whole recipe, assembled from these sections and the table of methods, and its reading from
YAML are :mod:`medssl.recipe`.
"""

from __future__ import annotations

from medssl.config.methods import (
    METHOD_NAME_FIELD,
    EmaMomentum,
    Eps,
    Kernel,
    MethodSection,
    PredictorHiddenDim,
    ReferenceCode,
    SectionT,
    ShuffleLabels,
    Sigma,
    Temperature,
)
from medssl.config.parts import RecipeSections
from medssl.config.sections import (
    CACHE_READS,
    EVALUATE_READS_OF_TRAIN,
    FINETUNE_COUNTERPARTS,
    NARROW_RESNET_WIDTHS,
    AffineConfig,
    BlurConfig,
    CropConfig,
    CutoutConfig,
    DataConfig,
    EncoderName,
    EvalConfig,
    FinetuneConfig,
    FlipConfig,
    HeadConfig,
    ModelConfig,
    NoiseConfig,
    OnlineProbeConfig,
    Section,
    SyntheticCohortConfig,
    TrainConfig,
    ViewsConfig,
    refuse_unread_cache_overrides,
    refuse_unread_evaluate_overrides,
    refuse_unread_finetune_overrides,
)

__all__ = [
    "Section",
    "SyntheticCohortConfig",
    "DataConfig",
    "CACHE_READS",
    "refuse_unread_cache_overrides",
    "CropConfig",
    "CutoutConfig",
    "FlipConfig",
    "BlurConfig",
    "NoiseConfig",
    "AffineConfig",
    "ViewsConfig",
    "HeadConfig",
    "EncoderName",
    "NARROW_RESNET_WIDTHS",
    "ModelConfig",
    "TrainConfig",
    "OnlineProbeConfig",
    "EvalConfig",
    "EVALUATE_READS_OF_TRAIN",
    "refuse_unread_evaluate_overrides",
    "FinetuneConfig",
    "FINETUNE_COUNTERPARTS",
    "refuse_unread_finetune_overrides",
    "METHOD_NAME_FIELD",
    "Temperature",
    "Sigma",
    "Kernel",
    "ReferenceCode",
    "Eps",
    "ShuffleLabels",
    "EmaMomentum",
    "PredictorHiddenDim",
    "SectionT",
    "MethodSection",
    "RecipeSections",
]

# Names this package held before the whole recipe moved above the table of methods: importing one
# says where it lives now (the recipe and its reading: medssl.recipe; each method's section: medssl.methods).
MOVED = {
    **dict.fromkeys(
        """
    Recipe load_recipe recipe_from_dict dump_recipe smoke_recipe smoke_shape with_overrides
    apply_overrides parse_override read_yaml RecipeLoader yaml_problem SWITCH_VALUES flatten_keys
    list_recipe_names shipped_recipes shipped_recipes_dir RECIPES_DIR resolve_recipe_path field_docs
    yaml_value EMBEDDED_PROFILE BUILTIN_PROFILES LINKED_KEYS LEGACY_BUDGET_SECTIONS chosen_profile
    profile_layer merge_layers move_legacy_budget move_legacy_method_keys check_profile_keys
    RENAMED_METHOD_KEYS renamed_keys rename_method_keys trim_flat_method_section
    FLAT_METHOD_SECTION_KEYS FLAT_METHOD_SECTION_MARKERS
        """.split(),
        "medssl.recipe",
    ),
    **dict.fromkeys(
        """
    MethodConfig METHOD_SECTIONS METHOD_NAMES DEFAULT_METHOD EmbeddingSection YAwareConfig
    ThresholdConfig ExponentialConfig SimCLRConfig DecoupledConfig SupConConfig EpsSupInfoNCEConfig
    EpsSupConConfig BarlowTwinsConfig VICRegConfig BYOLConfig SimSiamConfig DINOConfig
    DeepClusterConfig SupervisedConfig FairKLDebias AdversarialDebias Debias DebiasKey DEBIAS_NAMES
        """.split(),
        "medssl.methods",
    ),
}


def __getattr__(name: str) -> object:
    # ImportError, not AttributeError: ``from medssl.config import X`` shows only an ImportError's
    # message. hasattr() on a moved name raises it too, which code still using the name needs to hear.
    if name in MOVED:
        raise ImportError(f"medssl.config.{name} moved: from {MOVED[name]} import {name}")
    raise AttributeError(f"module 'medssl.config' has no attribute {name!r}")
