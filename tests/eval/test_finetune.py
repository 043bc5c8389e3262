"""Fine-tuning: splits without leaks, metrics on hand-worked cases, encoder loading errors,
the four modes on a tiny cohort, resume, and `medssl finetune --smoke` end to end."""

from __future__ import annotations

import io
import json
import math
import re
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from medssl.cli import app, main
from medssl.config import Recipe, load_recipe, smoke_recipe
from medssl.data.cohort import load_cohort
from medssl.errors import CheckpointError, CohortError, RecipeError
from medssl.eval.finetune import (
    FineTuner,
    check_no_leakage,
    classification_metrics,
    finetune_encoder,
    intensity_probe,
    load_pretrained_encoder,
    make_loader,
    mean_std,
    mean_std_text,
    print_finetune_report,
    regression_metrics,
    resolve_target,
    split_cohort,
    validation_split,
    volume_dataset,
)
from medssl.eval.plots import plot_roc_curves
from medssl.eval.probes import quiet_fits
from medssl.models import build_encoder, save_encoder
from medssl.train.finetuning import (
    EarlyStopping,
    FinetuneModel,
    HeadObjective,
    LabelledInputs,
    TargetLoss,
    class_weights,
    finetune_optimizer,
    validation_loss,
)
from medssl.train.loading import EpochLoader
from medssl.train.trainer import Schedule, Trainer


def clinical_table(seed: int = 0) -> pd.DataFrame:
    """5 sites x 12 subjects, half patients, two sessions for every third subject."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in "ABCDE":
        for k in range(12):
            subject = f"{site}{k:02d}"
            for session in range(2 if k % 3 == 0 else 1):
                rows.append(
                    {
                        "participant_id": subject,
                        "session": session,
                        "site": site,
                        "diagnosis": "patient" if k % 2 else "control",
                        "age": float(rng.uniform(20, 80)),
                    }
                )
    return pd.DataFrame(rows)


def tiny_recipe(tiny_cohort, **finetune) -> Recipe:
    settings = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "seeds": [0], "lr": 1e-2, "patience": 1}
    settings.update(finetune)
    return Recipe.model_validate(
        {"data": {"root": str(tiny_cohort), "label": None}, "model": {"encoder": "resnet18"}, "finetune": settings}
    )


# ----------------------------------------------------------------------------- splits
def test_validation_split_keeps_every_session_of_a_subject_in_one_part():
    table = clinical_table()
    for seed in range(5):
        fit_idx, val_idx = validation_split(table, 0.25, seed=seed, stratify=("site", "diagnosis"))
        fit_ids, val_ids = set(table["participant_id"].iloc[fit_idx]), set(table["participant_id"].iloc[val_idx])
        assert not fit_ids & val_ids
        assert sorted(np.concatenate([fit_idx, val_idx])) == list(range(len(table)))
        assert len(val_ids) == round(0.25 * table["participant_id"].nunique())


def test_validation_split_is_stratified_on_site_and_class():
    table = clinical_table()
    firsts = table.drop_duplicates("participant_id")
    fit_idx, val_idx = validation_split(firsts, 0.25, seed=3, stratify=("site", "diagnosis"))
    validation = firsts.iloc[val_idx]
    counts = validation.groupby(["site", "diagnosis"]).size()
    # 15 of 60 subjects over 10 strata of 6: every stratum gets 1 or 2
    assert len(counts) == 10 and counts.min() >= 1 and counts.max() <= 2
    assert validation_split(firsts, 0.25, seed=4, stratify=("site",))[1].tolist() != val_idx.tolist()


def test_validation_split_rejects_a_fraction_outside_zero_one():
    with pytest.raises(RecipeError, match="val_fraction"):
        validation_split(clinical_table(), 1.0)


def test_split_cohort_leaks_no_subject_and_no_external_site(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    target = resolve_target(cohort.table, tiny_recipe(tiny_cohort).finetune)
    train_ids = set(cohort.subset("train").table["participant_id"])
    for seed in range(4):
        parts = split_cohort(cohort, target, 0.25, seed).as_dict()
        ids = {name: set(part.table["participant_id"]) for name, part in parts.items()}
        names = list(ids)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                assert not ids[first] & ids[second], (first, second)
        assert ids["fit"] | ids["validation"] == train_ids
        assert ids["validation"] and ids["fit"]
        external_sites = set(parts["external_test"].table["site"])
        assert external_sites
        for name in ("fit", "validation", "internal_test"):
            assert not external_sites & set(parts[name].table["site"])


def test_check_no_leakage_names_a_shared_subject_and_a_trained_external_site():
    table = clinical_table().drop_duplicates("participant_id")
    fit_part, val_part, external = table.iloc[:20], table.iloc[20:30], table[table["site"] == "E"]
    with pytest.raises(CohortError, match="in both fit and external_test"):
        check_no_leakage({"fit": fit_part, "validation": val_part, "external_test": table.iloc[:1]})
    with pytest.raises(CohortError, match="site 'E' is in external_test and in fit"):
        check_no_leakage({"fit": table[table["site"] != "D"].iloc[:5].assign(site="E"), "external_test": external})
    check_no_leakage({"fit": fit_part, "validation": val_part})  # disjoint parts pass


# ----------------------------------------------------------------------------- metrics
def test_binary_auc_and_balanced_accuracy_on_a_hand_worked_case():
    # patient scores 0.35 and 0.8 against control scores 0.1 and 0.4: 3 of 4 pairs ordered -> AUC 0.75
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    metrics = classification_metrics(
        ["control", "control", "patient", "patient"], probabilities, ["control", "patient"]
    )
    assert metrics["roc_auc"] == pytest.approx(0.75)
    # predictions control, control, control, patient: recalls 1 and 1/2
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    # column 1 scores the positive class: naming it "control" makes the same scores rank controls first
    swapped = classification_metrics(
        ["control", "control", "patient", "patient"], probabilities, ["patient", "control"]
    )
    assert swapped["roc_auc"] == pytest.approx(0.25)


def test_balanced_accuracy_weights_classes_not_subjects():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    metrics = classification_metrics(["a", "a", "a", "b"], probabilities, ["a", "b"])
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_multiclass_auc_is_the_mean_one_vs_rest_auc():
    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    metrics = classification_metrics(["x", "y", "z", "x"], probabilities, ["x", "y", "z"])
    # x vs rest: 0.8 and 0.3 against 0.1 and 0.1 -> 1; y vs rest: 0.8 against 0.1, 0.1, 0.4 -> 1;
    # z vs rest: 0.8 against 0.1, 0.1, 0.3 -> 1
    assert metrics["roc_auc"] == pytest.approx(1.0)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_auc_of_a_single_class_split_is_undefined():
    metrics = classification_metrics(["a", "a"], np.array([[0.6, 0.4], [0.3, 0.7]]), ["a", "b"])
    assert math.isnan(metrics["roc_auc"])


def test_regression_mae_and_r2_on_a_hand_worked_case():
    metrics = regression_metrics([1, 2, 3], [2, 2, 5])
    assert metrics["mae"] == pytest.approx(1.0)
    assert metrics["r2"] == pytest.approx(1 - 5 / 2)
    assert metrics["n"] == 3


def test_mean_std_over_seeds_uses_the_sample_std_and_skips_undefined_runs():
    assert mean_std([0.7, 0.8, 0.9]) == pytest.approx({"mean": 0.8, "std": 0.1, "n_seeds": 3})
    assert mean_std([0.6, float("nan"), 0.8]) == pytest.approx({"mean": 0.7, "std": math.sqrt(0.02), "n_seeds": 2})
    assert mean_std([0.6]) == {"mean": 0.6, "std": 0.0, "n_seeds": 1}
    assert mean_std([float("nan")])["n_seeds"] == 0


def test_class_weights_are_inverse_frequencies():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    # a class absent from the fit part has no term in the loss; its weight changes nothing
    assert class_weights(torch.tensor([0, 0, 2]), 3).tolist() == pytest.approx([0.75, 1.0, 1.5])


# ----------------------------------------------------------------------------- targets
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


# ----------------------------------------------------------------------------- encoders
def test_an_encoder_carries_its_network_whatever_the_recipes_model_section(tmp_path, tiny_cohort):
    """The recipe's model section builds from-scratch networks; a pre-trained encoder is built from its encoder.json,
    the recipe set to it (recipe.yaml says which network was fine-tuned) and one note names what changed."""
    encoder = build_encoder("resnet18", widths=[8, 8, 16, 16])
    save_encoder(encoder, tmp_path / "encoder.pt")
    recipe = tiny_recipe(tiny_cohort)
    recipe.model.encoder = "densenet121"
    loaded, resolved, notes = load_pretrained_encoder(tmp_path, recipe)
    assert loaded.spec == encoder.spec
    assert (resolved.model.encoder, resolved.model.widths) == ("resnet18", [8, 8, 16, 16])
    assert notes == [
        "the encoder carries its network: model.encoder=resnet18 model.conv1_stride=2 model.widths=[8,8,16,16] "
        "(from its encoder.json; the recipe's model section is for training from scratch)."
    ]
    recipe.model.encoder, recipe.model.widths = "resnet18", [8, 8, 16, 16]
    assert load_pretrained_encoder(tmp_path, recipe)[2] == []


def test_missing_and_corrupt_encoder_files_are_clear_errors(tmp_path, tiny_cohort):
    recipe = tiny_recipe(tiny_cohort)
    with pytest.raises(CheckpointError, match="encoder weights not found"):
        load_pretrained_encoder(tmp_path / "nothing" / "encoder.pt", recipe)
    save_encoder(build_encoder("resnet18"), tmp_path / "encoder.pt")
    (tmp_path / "encoder.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as a state dict") as error:
        load_pretrained_encoder(tmp_path / "encoder.pt", recipe)
    assert "\n" not in str(error.value)
    (tmp_path / "encoder.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not a medssl encoder description"):
        load_pretrained_encoder(tmp_path / "encoder.pt", recipe)


def test_cli_prints_an_encoder_error_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "sys.argv", ["medssl", "finetune", "finetune_diagnosis", "--encoder", str(tmp_path / "missing.pt")]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "missing.pt: encoder weights not found" in lines[0]


# ----------------------------------------------------------------------------- modes
def head_trainer(
    network, loss, fit_data, validation_loader, run_dir, epochs: int, patience: int, optimizer, steps: int | None = None
) -> Trainer:
    """The trainer ``FineTuner`` builds for a seed: the head objective, early stopping on the validation loss."""
    loader = EpochLoader(fit_data, 4, drop_last=len(fit_data) % 4 == 1)
    stopping = EarlyStopping(
        partial(validation_loss, network, loss, validation_loader, torch.device("cpu")), network, patience
    )
    return Trainer(
        HeadObjective(network, loss),
        optimizer,
        loader,
        run_dir,
        Schedule(epochs=epochs, steps_per_epoch=steps or len(loader)),
        early_stopping=stopping,
    )


def train_briefly(tiny_cohort, tmp_path, mode: str, augment: bool = False):
    """Two steps of fine-tuning a fresh resnet18 in ``mode``; returns the model, its encoder state before, the optimiser."""
    recipe = tiny_recipe(tiny_cohort, mode=mode if mode != "scratch" else "full", augment=augment)
    recipe.views.noise.p = 1.0
    cohort = load_cohort(tiny_cohort)
    target = resolve_target(cohort.table, recipe.finetune)
    parts = split_cohort(cohort, target, 0.25, seed=0)
    torch.manual_seed(0)
    model = FinetuneModel(build_encoder("resnet18"), target.n_outputs, freeze_encoder=mode == "linear")
    before = {key: value.clone() for key, value in model.encoder.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    fit_data, validation = (
        LabelledInputs(volume_dataset(part, recipe, augment and name == "fit"), target.encode(part.table))
        for name, part in (("fit", parts.fit), ("validation", parts.validation))
    )
    optimizer = finetune_optimizer(model, recipe, mode)
    trainer = head_trainer(
        model,
        TargetLoss("classification", class_weights(target.encode(parts.fit.table), 2)),
        fit_data,
        make_loader(validation, 4, recipe),
        tmp_path / mode,
        epochs=1,
        patience=1,
        optimizer=optimizer,
        steps=2,
    )
    result = trainer.run()
    return model, before, head_before, optimizer, result, trainer


def changed(model: FinetuneModel, before: dict) -> list[str]:
    return [key for key, value in model.encoder.state_dict().items() if not torch.equal(value, before[key])]


def test_linear_probe_leaves_every_encoder_weight_and_statistic_unchanged(tiny_cohort, tmp_path):
    model, before, head_before, optimizer, result, trainer = train_briefly(
        tiny_cohort, tmp_path, "linear", augment=True
    )
    assert changed(model, before) == []  # BatchNorm running statistics included
    assert not torch.equal(model.head.weight, head_before)
    assert [group["name"] for group in optimizer.param_groups] == ["head"]
    assert result.epochs_done == 1 and trainer.early_stopping.best_epoch == 1
    steps = pd.read_csv(tmp_path / "linear" / "metrics.csv").query("kind == 'step'")
    assert len(steps) == 2 and steps["grad_norm"].map(math.isfinite).all()  # the trainer's step: norm measured, logged


def test_full_fine_tuning_changes_the_encoder_at_the_head_learning_rate(tiny_cohort, tmp_path):
    model, before, head_before, optimizer, _, _ = train_briefly(tiny_cohort, tmp_path, "full")
    assert any("conv" in key and "weight" in key for key in changed(model, before))
    assert not torch.equal(model.head.weight, head_before)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == {"head": 1e-2, "encoder": 1e-2}


def test_lower_lr_puts_the_encoder_in_its_own_group_at_the_smaller_rate(tiny_cohort, tmp_path):
    model, before, _, optimizer, _, _ = train_briefly(tiny_cohort, tmp_path, "lower_lr")
    head, encoder = optimizer.param_groups
    assert head["name"] == "head" and head["lr"] == pytest.approx(1e-2)
    assert encoder["name"] == "encoder" and encoder["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert changed(model, before)


def test_scratch_baseline_trains_a_fresh_seeded_encoder_at_the_full_rate(tiny_cohort, tmp_path):
    tuner = FineTuner(tiny_recipe(tiny_cohort, mode="lower_lr"), "none")
    assert tuner.mode == "scratch" and tuner.pretrained is None
    assert any("from scratch" in note for note in tuner.notes)
    tuner.target = resolve_target(load_cohort(tiny_cohort).table, tuner.recipe.finetune)
    first, again, other = tuner.new_model(0), tuner.new_model(0), tuner.new_model(1)
    assert torch.equal(first.encoder.network.conv1.weight, again.encoder.network.conv1.weight)
    assert not torch.equal(first.encoder.network.conv1.weight, other.encoder.network.conv1.weight)
    rates = [group["lr"] for group in finetune_optimizer(first, tuner.recipe, tuner.mode).param_groups]
    assert rates == [1e-2, 1e-2]
    model, before, _, _, _, _ = train_briefly(tiny_cohort, tmp_path, "scratch")
    assert changed(model, before)


def test_early_stopping_keeps_the_epoch_of_lowest_validation_loss(tmp_path):
    torch.manual_seed(0)
    features, labels = torch.randn(12, 4), torch.tensor([0, 1] * 6)
    head = torch.nn.Linear(4, 2)
    data = LabelledInputs(features, labels)
    optimizer = torch.optim.SGD(head.parameters(), lr=50.0)  # large steps: the validation loss goes up and down
    trainer = head_trainer(
        head,
        TargetLoss("classification"),
        data,
        torch.utils.data.DataLoader(data, batch_size=4),
        tmp_path / "run",
        epochs=6,
        patience=2,
        optimizer=optimizer,
    )
    result = trainer.run()
    stopping = trainer.early_stopping
    losses = [entry["val_loss"] for entry in stopping.history]
    assert stopping.best_epoch == int(np.argmin(losses)) + 1
    assert result.epochs_done == min(6, stopping.best_epoch + 2)
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(head(features), labels).item()
    assert final == pytest.approx(min(losses), rel=1e-5)


# ----------------------------------------------------------------------------- end to end
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
    assert smoke.finetune.max_steps_per_epoch == 2 and smoke.finetune.embedded.epochs == 1
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
            "finetune.embedded.epochs=2",
            "--encoder",
            "none",
            "--smoke",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune.json").read_text())["settings"]["epochs"] == 2  # the smoke budget alone gives 1


def test_roc_plot_accepts_a_curve_without_both_classes(tmp_path):
    path = plot_roc_curves(
        {
            "seed 0": (np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])),
            "seed 1": (np.array([1, 1]), np.array([0.2, 0.3])),
        },
        tmp_path / "roc.png",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "labels", [np.array(["0", "1", "0", "1"]), np.array(["control", "patient"] * 2), [-1, 1, -1, 1]]
)
def test_roc_plot_refuses_labels_that_would_all_read_as_positive(tmp_path, labels):
    from medssl.eval.score import EvaluationError

    with pytest.raises(EvaluationError, match="is_positive must be booleans or 0 / 1"):
        plot_roc_curves({"seed 0": (labels, np.array([0.1, 0.9, 0.2, 0.8]))}, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_pretraining_run_with_other_inputs_gives_a_warning(tmp_path, tiny_cohort):
    from medssl.config import dump_recipe
    from medssl.eval.finetune import pretraining_differences

    pretraining = Recipe.model_validate(
        {"model": {"encoder": "resnet18"}, "views": {"normalize": "minmax"}, "data": {"synthetic": {"shape": 32}}}
    )
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    recipe = tiny_recipe(tiny_cohort)
    recipe.data.volume_shape = [16, 16, 16]
    notes = pretraining_differences(tmp_path, recipe)
    assert len(notes) == 2
    assert "'minmax'" in notes[0] and "(32, 32, 32)" in notes[1]
    recipe.views.normalize, recipe.data.volume_shape = "minmax", [32, 32, 32]
    assert pretraining_differences(tmp_path / "encoder.pt", recipe) == []


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
    import medssl.eval.finetune
    import medssl.eval.label_efficiency  # noqa: F401  # imported before the patch: it keeps the real function

    def interrupted(recipe, encoder, out_dir, **kwargs):
        out_dir.mkdir()
        (out_dir / "recipe.yaml").touch()  # what a fine-tuning writes first
        raise KeyboardInterrupt

    monkeypatch.setattr(medssl.eval.finetune, "finetune_encoder", interrupted)
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


# ----------------------------------------------------------------------------- label efficiency
def test_train_size_keeps_that_many_training_subjects_a_new_draw_per_seed(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    target = resolve_target(cohort.table, tiny_recipe(tiny_cohort).finetune)
    kept = []
    for seed in range(3):
        parts = split_cohort(cohort, target, 0.25, seed, train_size=6)
        ids = set(parts.fit.table["participant_id"]) | set(parts.validation.table["participant_id"])
        assert len(ids) == 6 and ids <= set(cohort.subset("train").table["participant_id"])
        assert set(parts.fit.table["diagnosis"]) == {"patient", "control"}  # stratified on class
        assert len(parts.internal_test) == len(cohort.subset("internal_test"))  # tests are never shrunk
        kept.append(ids)
    assert len({frozenset(ids) for ids in kept}) > 1


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


def test_the_train_size_note_and_the_curve_count_the_same_subjects(tmp_path, tiny_cohort):
    from medssl.eval.label_efficiency import curve_rows

    recipe = tiny_recipe(tiny_cohort, seeds=[0, 1], train_size=20)
    recipe.data.max_subjects = 8  # as --smoke sets it: fewer subjects than the train split holds
    results = finetune_encoder(recipe, None, tmp_path / "run")
    n_split = len(load_cohort(tiny_cohort).subset("train"))
    assert n_split > 8
    assert (
        f"finetune.train_size = 20 is more than the 8 training subjects ({n_split} in the train split; "
        "data.max_subjects = 8): all 8 are used (fit and validation parts together)." in results["notes"]
    )
    assert all(run["n_fit"] + run["n_validation"] == 8 for run in results["runs"])
    assert {row["n_train"] for row in curve_rows(results, "scratch", 20)} == {8}
    assert results["settings"]["subjects"]["train"] == 8  # finetune.json counts the subjects the runs drew from
    assert len(results["settings"]["sites"]["train"]) <= 8


@pytest.mark.parametrize(
    ("labels", "probe", "note"),
    [
        (["a"] * 5 + ["b"] * 4, "GridSearchCV", ""),
        (["a"] * 2 + ["b"] * 3, "GridSearchCV", "2-fold inner CV"),
        (["a"] * 1 + ["b"] * 3, "Pipeline", "C fixed at 1, no inner CV"),
        (["b"] * 4, "DummyClassifier", "class frequencies"),
    ],
)
def test_the_intensity_probe_fits_every_training_part_the_command_accepts(labels, probe, note):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(labels), 5))
    fitted, said = intensity_probe(np.array(labels, dtype=object), classification=True)
    assert type(fitted).__name__ == probe and (note in said if note else said == "")
    with quiet_fits(features):
        fitted.fit(features, np.array(labels, dtype=object))
    probabilities = fitted.predict_proba(features)
    assert probabilities.shape == (len(labels), len(set(labels)))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    if probe == "GridSearchCV":
        assert fitted.n_splits_ == min(3, min(labels.count(label) for label in set(labels)))


def test_fine_tuning_on_four_training_subjects_scores_every_baseline_and_says_how(tmp_path, tiny_cohort):
    recipe = tiny_recipe(tiny_cohort, seeds=[0, 1, 2], train_size=4)
    results = finetune_encoder(recipe, None, tmp_path / "run")
    for run in results["runs"]:
        assert run["n_fit"] + run["n_validation"] == 4
        for split in ("internal_test", "external_test"):
            assert 0.0 <= run["baselines"]["intensity"][split]["balanced_accuracy"] <= 1.0
        # four subjects leave no class three members: never the usual 3-fold inner CV, and a note says so
        assert run["baseline_note"].startswith("intensity baseline: ")
        assert any(note.startswith(run["baseline_note"]) and str(run["seed"]) in note for note in results["notes"])


def test_train_sizes_refuse_a_size_given_twice():
    from medssl.eval.label_efficiency import parse_train_sizes

    assert parse_train_sizes("20,50,all") == [20, 50, None]
    with pytest.raises(RecipeError, match="appears twice"):
        parse_train_sizes("20,20")


def test_train_sizes_not_below_the_training_subjects_are_one_run_with_all_of_them():
    from medssl.eval.label_efficiency import sizes_below

    assert sizes_below([4, 20, 50, None], available=30) == ([4, 20, None], [50])
    assert sizes_below([4, 20, 50], available=20) == ([4, None], [20, 50])
    assert sizes_below([4, 20, None], available=100) == ([4, 20, None], [])


def test_label_efficiency_cli_writes_the_curve_resumes_without_refitting_and_refuses_other_settings(tmp_path):
    save_encoder(build_encoder("resnet18"), tmp_path / "run" / "encoder.pt")
    out = tmp_path / "curve"
    command = [
        "finetune",
        "finetune_diagnosis",
        "model.encoder=resnet18",
        "--encoder",
        str(tmp_path / "run"),
        "--train-sizes",
        "4,1000",  # the smallest size the command accepts, and one above the smoke run's 8 subjects
        "--smoke",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "--train-sizes 1000: not below the 8 training subjects, trained once with all of them" in " ".join(
        result.output.split()
    )
    assert not (out / "scratch-n1000").exists()
    table = pd.read_csv(out / "label_efficiency.csv")
    assert set(table["encoder"]) == {"pretrained", "scratch", "constant baseline", "intensity baseline"}
    assert set(table["train_size"].astype(str)) == {"4", "all"}
    assert set(table["split"]) == {"internal_test", "external_test"}
    four = table[(table["train_size"].astype(str) == "4")]
    assert (four["n_train"] == 4).all()
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns == stamp
    assert pd.read_csv(out / "label_efficiency.csv").equals(table)
    # the same encoder named by its file is the same run
    by_file = [str(tmp_path / "run" / "encoder.pt") if part == str(tmp_path / "run") else part for part in command]
    assert CliRunner().invoke(app, by_file).exit_code == 0
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns == stamp
    # other settings are refused, not answered with the old results; --overwrite fine-tunes again
    refused = CliRunner().invoke(app, [*command, "--mode", "full"])
    assert isinstance(refused.exception, CheckpointError)
    assert "finetune.mode" in str(refused.exception) and "--overwrite" in str(refused.exception)
    only_four = ["4" if part == "4,1000" else part for part in command]  # one size is enough here
    again = CliRunner().invoke(app, [*only_four, "--mode", "full", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns != stamp
    assert json.loads((out / "pretrained-n4" / "finetune.json").read_text())["settings"]["mode"] == "full"
    assert not (out / "scratch-nall").exists()  # the earlier run's folders went with --overwrite


def test_label_efficiency_cli_ends_with_the_curve_as_a_table(tmp_path, monkeypatch, capsys):
    import medssl.eval.label_efficiency as module
    from medssl import cli

    rows = [
        {"encoder": encoder, "train_size": size, "n_train": n, "split": split, "metric": metric}
        | {"mean": mean + (0.1 if encoder == "pretrained" else 0.0) + n / 1000, "std": 0.05, "n_seeds": 3}
        for size, n in (("20", 20), ("all", 64))
        for split in ("internal_test", "external_test")
        for encoder in ("pretrained", "scratch", "constant baseline", "intensity baseline")
        for metric, mean in (("roc_auc", 0.6), ("balanced_accuracy", 0.55))
    ]
    monkeypatch.setattr(module, "label_efficiency", lambda *args, **kwargs: pd.DataFrame(rows))
    monkeypatch.setattr(cli, "console", Console(width=80))
    arguments = ["finetune", "finetune_diagnosis", "--encoder", tmp_path / "run", "--train-sizes", "20,all"]
    monkeypatch.setattr("sys.argv", ["medssl", *map(str, [*arguments, "--out", tmp_path / "curve"])])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    output = capsys.readouterr().out
    assert "Label efficiency: roc auc ↑ (mean ± sd over seeds)" in output
    internal = [line for line in output.splitlines() if line.strip().startswith("internal_test")]
    assert [line.split()[1:] for line in internal] == [
        ["20", "0.720", "0.620", "0.620", "0.620"],
        ["64", "0.764", "0.664", "0.664", "0.664"],
    ]
    assert "…" not in output and max(len(line) for line in output.splitlines()) <= 80
    assert output.index("Label-efficiency curve written to") > output.index("internal_test")


def test_train_sizes_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "sys.argv",
        [
            "medssl",
            "finetune",
            "finetune_diagnosis",
            "--encoder",
            str(tmp_path),
            "--train-sizes",
            "3,all",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--train-sizes '3,all'" in lines[0]
    assert not (tmp_path / "x").exists()


def test_reports_carry_the_constant_and_intensity_baselines_on_the_same_splits(tmp_path, tiny_cohort):
    results = finetune_encoder(tiny_recipe(tiny_cohort, seeds=[0, 1]), None, tmp_path / "out")
    baselines = results["baselines"]
    assert set(baselines) == {"constant", "intensity"}
    for split in ("internal_test", "external_test"):
        assert baselines["constant"][split]["roc_auc"]["mean"] == pytest.approx(0.5)  # one score for everyone
        assert 0.0 <= baselines["intensity"][split]["roc_auc"]["mean"] <= 1.0
    assert all(set(run["baselines"]["intensity"]) == {"internal_test", "external_test"} for run in results["runs"])


def test_the_report_keeps_split_and_metric_names_whole_in_80_columns(tmp_path, tiny_cohort):
    results = finetune_encoder(tiny_recipe(tiny_cohort, seeds=[0, 1, 2]), None, tmp_path / "out")
    stream = io.StringIO()
    print_finetune_report(results, Console(file=stream, width=80), notes=False)
    lines = stream.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for header in ("metric", "mean ± std", "(3 seeds)", "constant", "intensity", "per seed"):
        assert any(header in line for line in lines), header
    for split, entry in results["summary"].items():
        title = next(k for k, line in enumerate(lines) if line.startswith(f"{split} (n = {entry['n']})"))
        for metric in ("roc_auc", "balanced_accuracy"):
            row = next(line for line in lines[title:] if line.startswith(metric + " "))  # the name is never cut
            texts = [mean_std_text(entry[metric])]
            texts += [mean_std_text(results["baselines"][name][split][metric]) for name in ("constant", "intensity")]
            assert all(text in row for text in texts), (texts, row)  # "x.xxx ± y.yyy" whole, on its row
    # every number whole on one line: a cut one would leave a digit run without its three decimals
    numbers = [token for line in lines for token in re.findall(r"\d[\d.]*", line)]
    assert numbers and all(token.isdigit() or re.fullmatch(r"\d+\.\d{3}", token) for token in numbers), numbers


def test_per_seed_values_without_room_in_the_table_are_listed_under_it_not_cut():
    value = {"mean": -123.456, "std": 10.5, "n_seeds": 3}
    runs = [{"seed": seed, "internal_test": {"r2": -120.0 - seed, "n": 5}} for seed in range(3)]
    results = {
        "settings": {"target": "score", "task": "regression", "mode": "full", "encoder": None, "seeds": [0, 1, 2]},
        "summary": {"internal_test": {"r2": value, "n": 5}},
        "baselines": {name: {"internal_test": {"r2": value}} for name in ("constant", "intensity")},
        "runs": runs,
    }
    for width, listed_under in ((80, False), (72, True)):
        stream = io.StringIO()
        print_finetune_report(results, Console(file=stream, width=width), notes=False)
        lines = stream.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width
        assert sum("-123.456 ± 10.500" in line for line in lines) == 1  # the row holds all three, whole
        assert any(line.count("-123.456 ± 10.500") == 3 for line in lines)
        assert any(line.startswith("r2 per seed: -120.000, -121.000, -122.000") for line in lines) == listed_under


@pytest.mark.parametrize(
    "override, says",
    [
        ("method.sigma=3", "fine-tuning reads no method.* key"),
        ("train.epochs=2", "does not read train.epochs; use finetune.epochs"),
        ("train.embedded.batch_size=8", "use finetune.embedded.*"),
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


def test_smoke_fine_tuning_takes_the_cubic_shape_its_encoder_was_pre_trained_on(tmp_path, tiny_cohort):
    from medssl.config import dump_recipe
    from medssl.eval.finetune import pretraining_differences, smoke_at_pretraining_shape

    pretraining = smoke_recipe(load_recipe("simclr"))  # 16^3
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    smoke = smoke_recipe(load_recipe("finetune_diagnosis"))  # DenseNet121: 32^3
    assert smoke.data.synthetic.shape == 32 and pretraining_differences(tmp_path, smoke) != []
    aligned = smoke_at_pretraining_shape(smoke, tmp_path / "encoder.pt")
    assert aligned.data.synthetic.shape == 16 and pretraining_differences(tmp_path, aligned) == []
    assert smoke.data.synthetic.shape == 32  # the given recipe is not modified
    on_a_folder = smoke_at_pretraining_shape(tiny_recipe(tiny_cohort), tmp_path)
    assert on_a_folder.data.volume_shape == [16, 16, 16]
    # no recipe beside the encoder, or a shape that is not a cube: unchanged
    assert smoke_at_pretraining_shape(smoke, tmp_path / "elsewhere" / "encoder.pt") is smoke
    pretraining.data.volume_shape = [16, 20, 16]
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    assert smoke_at_pretraining_shape(smoke, tmp_path) is smoke


def test_frozen_features_constant_on_the_fit_subjects_are_centred_not_blown_up():
    from medssl.eval.finetune import standardize_features

    fit = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])  # feature 0: a ReLU unit silent on every fit subject
    test = torch.tensor([[0.02, 3.0]])
    scaled = standardize_features({"fit": fit, "internal_test": test})
    assert scaled["internal_test"][0, 0].item() == pytest.approx(0.02)  # was 0.02 / 1e-6 = 2e4
    torch.testing.assert_close(scaled["fit"][:, 1], (fit[:, 1] - 3.0) / fit[:, 1].std(unbiased=False))
    assert scaled["fit"].dtype == torch.float32


def test_label_efficiency_figure_keeps_auc_axes_within_0_and_1_and_its_legend_off_the_panels():
    import matplotlib.text

    from medssl.eval.label_efficiency import label_efficiency_figure

    rows = [
        {"encoder": encoder, "n_train": n, "split": split, "metric": "roc_auc", "mean": mean, "std": 0.7}
        for encoder, mean in (("pretrained", 0.6), ("scratch", 0.5))
        for n in (4, 8)
        for split in ("internal_test", "external_test")
    ]
    figure = label_efficiency_figure(pd.DataFrame(rows), title="finetune_diagnosis: linear fine-tuning of run")
    for axis in figure.axes:
        low, high = axis.get_ylim()
        assert 0.0 <= low and high <= 1.02  # a spread of 0.7 would reach -0.1 and 1.3
    assert figure.axes[0].get_legend() is None and figure.axes[-1].get_legend() is not None
    texts = [text.get_text() for text in figure.findobj(matplotlib.text.Text)]  # get_suptitle needs matplotlib 3.8
    assert "finetune_diagnosis: linear fine-tuning of run" in texts
