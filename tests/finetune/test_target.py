"""finetune.target: the task and classes of the predicted column."""

from __future__ import annotations

import pytest

from medssl.data.cohort import load_cohort
from medssl.errors import RecipeError
from medssl.finetune.target import resolve_target

from .helpers import tiny_recipe


def test_target_task_is_inferred_from_the_column(tiny_cohort):
    table = load_cohort(tiny_cohort).table
    recipe = tiny_recipe(tiny_cohort)
    assert resolve_target(table, recipe.finetune).classes == ["control", "patient"]
    recipe.finetune.positive_class = "control"
    assert resolve_target(table, recipe.finetune).classes == ["patient", "control"]
    recipe.finetune.target, recipe.finetune.positive_class = "age", None
    assert resolve_target(table, recipe.finetune).task == "regression"
    recipe.finetune.target = "handedness"
    with pytest.raises(RecipeError, match="finetune.target = 'handedness': no such column"):
        resolve_target(table, recipe.finetune)
