"""Every shipped pre-training recipe trains a few steps at smoke size and writes its run folder."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from medssl.models import load_encoder
from medssl.pipeline import pretrain
from medssl.recipe import RECIPES_DIR, list_recipe_names, load_recipe, smoke_recipe


def pretraining_recipes() -> list[str]:
    """Shipped recipes of `medssl pretrain` (fine-tuning recipes have a `finetune:` section instead)."""
    return [
        name
        for name in list_recipe_names()
        if "finetune" not in yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    ]


def test_every_method_family_has_a_shipped_pretraining_recipe():
    methods = {load_recipe(name).method.name for name in pretraining_recipes()}
    assert {
        "yaware",
        "simclr",
        "threshold",
        "exponential",
        "supcon",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "dino",
        "deepcluster",
    } <= methods


def assert_run_folder(run_dir, recipe) -> None:
    resolved = recipe
    assert load_recipe(run_dir / "recipe.yaml") == resolved  # every field, as trained
    table = pd.read_csv(run_dir / "metrics.csv")
    steps, epochs = table[table["kind"] == "step"], table[table["kind"] == "epoch"]
    assert list(steps["step"]) == [1, 2] and list(epochs["epoch"]) == [0]
    assert steps["loss"].map(math.isfinite).all() and steps["grad_norm"].map(math.isfinite).all()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epochs_done"] == 1 and checkpoint["step"] == 2
    encoder = load_encoder(run_dir / "encoder.pt")
    assert json.loads((run_dir / "encoder.json").read_text())["name"] == resolved.model.encoder
    shape = recipe.data.synthetic.shape
    with torch.no_grad():
        assert encoder.eval()(torch.zeros(1, 1, shape, shape, shape)).shape == (1, encoder.feature_dim)
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", pretraining_recipes())
def test_shipped_recipe_trains_at_smoke_size_and_writes_the_run_folder(tmp_path, name):
    recipe = smoke_recipe(load_recipe(name, ["eval.after_pretrain=false"]))
    run_dir = tmp_path / name
    result = pretrain(recipe, run_dir)
    assert math.isfinite(result.first_loss) and result.epochs_done == 1
    assert_run_folder(run_dir, recipe)
    assert not (run_dir / "eval").exists()
    # ResNet checkpoints weigh hundreds of MB: keep the test's temporary folders small
    for heavy in (run_dir / "checkpoints" / "last.pt", run_dir / "encoder.pt"):
        heavy.unlink()


def test_smoke_run_with_evaluation_writes_the_challenge_metrics(tmp_path):
    recipe = smoke_recipe(
        load_recipe("simclr", ["eval.after_pretrain=true", "eval.baseline=false", "model.encoder=alexnet"])
    )
    result = pretrain(recipe, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert {"mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"} <= set(
        metrics["pretrained"]
    )
    assert math.isfinite(metrics["pretrained"]["challenge_score"])
    assert "baseline" not in metrics or metrics["baseline"] is None
    assert result.evaluation is not None
