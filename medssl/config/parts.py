"""What the layers below the recipe read of it.

:class:`medssl.recipe.Recipe` is assembled above the table of methods (its ``method`` section is
the union of every method's own section), so data, models and methods cannot import it; they
take any object with these sections, which a ``Recipe`` is.
"""

from __future__ import annotations

from typing import Protocol

from medssl.config.methods import MethodSection
from medssl.config.sections import DataConfig, EvalConfig, FinetuneConfig, ModelConfig, TrainConfig, ViewsConfig


class RecipeSections(Protocol):
    """The sections of a recipe, one per step of the data path."""

    data: DataConfig
    views: ViewsConfig
    model: ModelConfig
    method: MethodSection
    train: TrainConfig
    eval: EvalConfig
    finetune: FinetuneConfig
