"""``medssl pretrain`` end to end: the online probe that joins training and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl.data.cohort import Cohort
from medssl.errors import RecipeError
from medssl.pipeline import OnlineProbe, pretrain
from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, smoke_recipe


def online_recipe(*overrides: str):
    smoke = smoke_recipe(load_recipe("yaware_age")).model_dump(mode="json")
    fast = ["model.encoder=alexnet", "eval.after_pretrain=false", "train.epochs=2", "data.max_subjects=16"]
    return recipe_from_dict(apply_overrides(smoke, [*fast, *overrides]))


def test_a_pretraining_with_an_online_probe_logs_knn_and_ridge_age_mae_every_epoch(tmp_path):
    pretrain(online_recipe("eval.online.every=1", "eval.online.holdout=0.5"), tmp_path / "run")
    epochs = pd.read_csv(tmp_path / "run" / "metrics.csv").query("kind == 'epoch'")
    assert list(epochs["epoch"]) == [0, 1]
    for column in ("online_knn_age_mae", "online_ridge_age_mae"):
        assert np.isfinite(epochs[column]).all() and (epochs[column] > 0).all(), epochs


def test_without_eval_online_no_probe_runs(tmp_path):
    pretrain(online_recipe(), tmp_path / "run")
    assert "online_knn_age_mae" not in pd.read_csv(tmp_path / "run" / "metrics.csv").columns


def cohort(n: int, sites: int = 2, age: bool = True) -> Cohort:
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i}" for i in range(n)],
            "site": [f"s{i % sites}" for i in range(n)],
            "split": "train",
            "path": [f"/x/{i}.npy" for i in range(n)],
        }
    )
    if age:
        table["age"] = np.where(np.arange(n) == 3, np.nan, 20.0 + np.arange(n))  # one subject without an age
    return Cohort(root=Path("/x"), table=table)


def test_the_online_probe_splits_the_training_subjects_with_an_age_once_and_by_site():
    recipe = online_recipe("eval.online.every=2", "eval.online.holdout=0.25")
    probe = OnlineProbe(cohort(17), recipe)
    assert len(probe.cohort) == 16 and "sub-3" not in set(probe.cohort.table["participant_id"])  # aged only
    assert not set(probe.fit) & set(probe.test) and len(probe.fit) + len(probe.test) == 16 and len(probe.test) == 4
    assert set(probe.cohort.table["site"].iloc[probe.test]) == {"s0", "s1"}  # stratified by site
    again = OnlineProbe(cohort(17), recipe)
    assert list(again.test) == list(probe.test)  # drawn from train.seed


def test_an_online_probe_without_ages_is_refused_naming_the_key():
    with pytest.raises(RecipeError, match="eval.online.every = 1: the cohort has no age column"):
        OnlineProbe(cohort(8, age=False), online_recipe("eval.online.every=1"))
