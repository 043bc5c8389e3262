"""finetune.protocol end to end: both test splits over seeds, `medssl finetune --smoke`, the notes, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medssl.cli import app, main
from medssl.data.cohort import load_cohort
from medssl.errors import CheckpointError
from medssl.finetune.protocol import finetune_encoder
from medssl.models import build_encoder, save_encoder
from medssl.recipe import Recipe, load_recipe, smoke_recipe

from .helpers import tiny_recipe


def test_linear_probe_end_to_end_reports_both_splits_over_seeds(tmp_path, tiny_cohort):
    save_encoder(build_encoder("resnet18"), tmp_path / "pre" / "encoder.pt")
    recipe = tiny_recipe(tiny_cohort, mode="linear", seeds=[0, 1], epochs=3)
    results = finetune_encoder(recipe, tmp_path / "pre", tmp_path / "out")
    assert results["settings"]["mode"] == "linear" and results["settings"]["encoder_lr"] is None
    for split in ("internal_test", "external_test"):
        per_seed = [run[split]["balanced_accuracy"] for run in results["runs"]]
        assert results["summary"][split]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(per_seed))
        assert (tmp_path / "out" / f"roc_{split}.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "out" / "finetune.csv")
    assert set(table["seed"].astype(str)) == {"0", "1", "mean", "std"}
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert set(predictions["split"]) == {"internal_test", "external_test"}
    assert np.allclose(predictions[["prob_control", "prob_patient"]].sum(axis=1), 1.0, atol=1e-5)


def test_regression_end_to_end_reports_mae(tmp_path, tiny_cohort):
    save_encoder(build_encoder("resnet18"), tmp_path / "encoder.pt")
    recipe = tiny_recipe(tiny_cohort, mode="linear", target="age", task="auto")
    results = finetune_encoder(recipe, tmp_path / "encoder.pt", tmp_path / "out")
    assert results["settings"]["task"] == "regression"
    assert set(results["summary"]["external_test"]) == {"mae", "r2", "n"}
    assert results["summary"]["external_test"]["mae"]["mean"] > 0
    assert (tmp_path / "out" / "predictions_external_test.png").is_file()


def test_smoke_recipe_shrinks_fine_tuning():
    smoke = smoke_recipe(load_recipe("finetune_diagnosis"))
    assert smoke.finetune.max_steps_per_epoch == 2 and smoke.finetune.epochs == 1
    assert len(smoke.finetune.seeds) <= 2 and smoke.data.synthetic.subjects <= 16
    assert smoke.data.synthetic.diagnosis


@pytest.mark.parametrize("encoder", ["run_folder", "none"])
def test_cli_smoke_writes_tables_and_roc_curves(tmp_path, encoder):
    source, mode = "none", []
    if encoder == "run_folder":
        save_encoder(build_encoder("resnet18"), tmp_path / "run" / "encoder.pt")
        source, mode = str(tmp_path / "run"), ["--mode", "lower_lr"]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "finetune_diagnosis",
            "model.encoder=resnet18",
            "--encoder",
            source,
            *mode,
            "--smoke",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "finetune.json").read_text())
    assert results["settings"]["mode"] == ("scratch" if encoder == "none" else "lower_lr")
    assert set(results["summary"]) == {"internal_test", "external_test"}
    assert {"roc_auc", "balanced_accuracy"} <= set(results["summary"]["external_test"])
    assert (
        (out / "finetune.csv").is_file()
        and (out / "roc_internal_test.png").is_file()
        and (out / "roc_external_test.png").is_file()
    )
    assert "roc_auc" in result.output


def test_cli_smoke_keeps_the_command_line_overrides(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "finetune_diagnosis",
            "model.encoder=resnet18",
            "finetune.epochs=2",
            "--encoder",
            "none",
            "--smoke",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune.json").read_text())["settings"]["epochs"] == 2  # the smoke budget alone gives 1


def test_a_train_size_above_the_training_split_says_that_all_subjects_are_used(tmp_path, tiny_cohort):
    recipe = tiny_recipe(tiny_cohort, seeds=[0], epochs=1)
    recipe.finetune.train_size = 1000
    results = finetune_encoder(recipe, None, tmp_path / "run")
    n_train = len(load_cohort(tiny_cohort).subset("train"))
    assert (
        f"finetune.train_size = 1000 is more than the {n_train} training subjects: "
        f"all {n_train} are used (fit and validation parts together)." in results["notes"]
    )
    assert results["runs"][0]["n_train_subjects"] == n_train


@pytest.mark.parametrize(
    "override, says",
    [
        ("method.sigma=3", "fine-tuning reads no method.* key"),
        ("train.epochs=2", "does not read train.epochs; use finetune.epochs"),
        ("train.embedded.batch_size=8", "use profiles.embedded.finetune.*"),
        ("train.steps=8", "use finetune.epochs"),
        ("train.scheduler=cosine", "does not read train.scheduler"),
    ],
)
def test_an_override_fine_tuning_would_not_read_is_refused_not_ignored(tmp_path, monkeypatch, capsys, override, says):
    argv = ["medssl", "finetune", "finetune_diagnosis", override, "--encoder", "none", "--out", str(tmp_path / "x")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"command-line override {override}" in lines[0] and says in lines[0]
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def killed_at_epoch_end(number: int):
    """Raise after the ``number``-th epoch of the whole run (all seeds), once its checkpoint is written."""
    calls = []

    def on_epoch_end(epoch):
        calls.append(epoch)
        if len(calls) == number:
            raise Killed

    return on_epoch_end


def resumable_recipe(tiny_cohort) -> Recipe:
    """Full fine-tuning of a narrow network on augmented views, two seeds of three epochs, no early stop."""
    recipe = tiny_recipe(tiny_cohort, seeds=[0, 1], epochs=3, patience=5, augment=True)
    recipe.model.widths = [4, 8, 8, 8]
    recipe.views.noise.p = 1.0
    return recipe


def test_fine_tuning_killed_mid_seed_resumes_to_the_results_of_a_straight_run(tmp_path, tiny_cohort):
    recipe = resumable_recipe(tiny_cohort)
    straight = finetune_encoder(recipe, None, tmp_path / "straight")
    with pytest.raises(Killed):  # seed 0 done, seed 1 stopped after its second epoch
        finetune_encoder(recipe, None, tmp_path / "killed", on_epoch_end=killed_at_epoch_end(5))
    assert (tmp_path / "killed" / "seeds" / "seed0" / "result.json").is_file()
    assert (
        torch.load(tmp_path / "killed" / "seeds" / "seed1" / "checkpoints" / "last.pt", weights_only=True)[
            "epochs_done"
        ]
        == 2
    )
    resumed = finetune_encoder(recipe, None, tmp_path / "killed", resume=True)
    assert resumed["runs"] == straight["runs"]
    for name in ("predictions.csv", "history.csv", "finetune.csv"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "straight" / name).read_text(), name
    assert not (tmp_path / "killed" / "seeds" / "seed1" / "checkpoints" / "last.pt").exists()  # results kept instead
    metrics = pd.read_csv(tmp_path / "killed" / "seeds" / "seed1" / "metrics.csv")
    assert list(metrics.query("kind == 'epoch'")["epoch"]) == [0, 1, 2] and "val_loss" in metrics


def test_resuming_a_fine_tuning_with_other_settings_is_refused_naming_them(tmp_path, tiny_cohort):
    recipe = resumable_recipe(tiny_cohort)
    with pytest.raises(Killed):
        finetune_encoder(recipe, None, tmp_path / "run", on_epoch_end=killed_at_epoch_end(1))
    before = (tmp_path / "run" / "recipe.yaml").read_text()
    recipe.finetune.lr = 0.5
    with pytest.raises(CheckpointError, match=r"seed0.*last\.pt: does not fit the recipe.*finetune\.lr: 0\.01 -> 0\.5"):
        finetune_encoder(recipe, None, tmp_path / "run", resume=True)
    save_encoder(build_encoder("resnet18", widths=[4, 8, 8, 8]), tmp_path / "pre" / "encoder.pt")
    recipe.finetune.lr = 1e-2
    with pytest.raises(CheckpointError, match=r"encoder: none -> "):
        finetune_encoder(recipe, tmp_path / "pre", tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "recipe.yaml").read_text() == before


def test_cli_finetune_resume_of_a_finished_run_reads_every_seed_back(tmp_path):
    out = tmp_path / "out"
    command = [
        "finetune",
        "finetune_diagnosis",
        "model.encoder=resnet18",
        "--encoder",
        "none",
        "--smoke",
        "--out",
        str(out),
    ]
    assert CliRunner().invoke(app, command).exit_code == 0
    first = json.loads((out / "finetune.json").read_text())
    again = CliRunner().invoke(app, [*command, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "finetune.json").read_text())["runs"] == first["runs"]
    assert "epoch 1/" not in again.output  # nothing trained again


def test_ctrl_c_during_finetune_prints_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    import medssl.finetune.label_efficiency  # noqa: F401  # imported before the patch: it keeps the real function
    import medssl.finetune.protocol

    def interrupted(recipe, encoder, out_dir, **kwargs):
        out_dir.mkdir()
        (out_dir / "recipe.yaml").touch()  # what a fine-tuning writes first
        raise KeyboardInterrupt

    monkeypatch.setattr(medssl.finetune.protocol, "finetune_encoder", interrupted)
    monkeypatch.setattr(
        "sys.argv", ["medssl", "finetune", "finetune_diagnosis", "--encoder", "none", "--out", str(tmp_path / "ft")]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 130
    assert (
        capsys.readouterr().err.strip() == "interrupted: continue from the last checkpoint with: "
        f"medssl finetune finetune_diagnosis --encoder none --resume --out {tmp_path / 'ft'}"
    )
