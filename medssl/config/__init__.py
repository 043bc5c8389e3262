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
