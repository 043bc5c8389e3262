"""Pre-training from a recipe end to end on tiny runs: resume, determinism, precision, failures, budgets, collapse.

Where a test needs an unusual method (a broken loss, a collapsed head), it builds one and
hands it to ``pretrain``, as a user with their own method would."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn

from medssl.errors import CheckpointError, RecipeError, TrainingError
from medssl.methods import build_method
from medssl.pipeline import pretrain
from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, smoke_recipe
from medssl.train.handlers import COLLAPSE_RATIO
from medssl.train.pretraining import build_pretraining
from medssl.train.setup import bf16_conv_hazards, epochs_from_steps


def quick_recipe(name: str = "simclr", *overrides: str):
    """A shipped recipe at smoke size (8 subjects, 16^3, batch 4, 2 steps per epoch) on the small
    3D AlexNet, without evaluation, then ``overrides``."""
    smoke = smoke_recipe(load_recipe(name)).model_dump(mode="json")
    return recipe_from_dict(apply_overrides(smoke, ["model.encoder=alexnet", "eval.after_pretrain=false", *overrides]))


def method_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["method"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if isinstance(a[key], torch.Tensor) and not torch.equal(a[key], b[key])]
    assert different == []


def metrics(run_dir, kind: str) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "metrics.csv")
    # throughput depends on the machine's load, everything else must be reproducible
    return table[table["kind"] == kind].drop(columns=["volumes_per_s"]).reset_index(drop=True)


class Interrupted(Exception):
    pass


def stop_after_first_epoch(epoch: int) -> None:
    if epoch == 0:
        raise Interrupted


def seeded_method(recipe):
    """The recipe's method as ``pretrain`` would build it: seeded."""
    torch.manual_seed(recipe.train.seed)
    return build_method(recipe)


def method_with_loss(recipe, transform):
    """The recipe's method, whose loss is ``transform(loss, call_number)``."""
    method = seeded_method(recipe)
    original, calls = method.training_loss, []

    def training_loss(batch):
        loss, logs = original(batch)
        calls.append(1)
        return transform(loss, len(calls)), logs

    method.training_loss = training_loss
    return method


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("simclr", ["train.scheduler=cosine", "train.warmup_epochs=1"]),
        ("byol", []),  # EMA target network, BatchNorm heads, cosine momentum
        ("dino", []),  # teacher centre buffer, random local crops
        ("deepcluster", []),  # re-clustering, re-initialised classifier, cluster sampler, NMI to the last epoch
    ],
)
def test_run_interrupted_after_epoch_one_resumes_to_the_weights_and_metrics_of_a_straight_run(
    tmp_path, name, overrides
):
    recipe = quick_recipe(name, "train.epochs=2", *overrides)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(recipe, straight)
    with pytest.raises(Interrupted):
        pretrain(recipe, resumed, on_epoch_end=stop_after_first_epoch)
    assert torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["epochs_done"] == 1
    result = pretrain(recipe, resumed, resume=True)

    assert any("Resuming" in note and "after epoch 1" in note for note in result.notes)
    notes = (resumed / "run_notes.txt").read_text().splitlines()
    # the first run's notes are kept, the resume's appended after them
    budget = [i for i, line in enumerate(notes) if "embedded synthetic cohort" in line]
    resuming = [i for i, line in enumerate(notes) if "Resuming" in line and "after epoch 1" in line]
    assert len(budget) == 2 and len(resuming) == 1 and budget[1] < resuming[0]
    assert "[" not in "".join(notes)  # console markup stripped
    assert_same_state(method_state(straight), method_state(resumed))
    assert_same_state(
        torch.load(straight / "encoder.pt", weights_only=True), torch.load(resumed / "encoder.pt", weights_only=True)
    )
    pd.testing.assert_frame_equal(metrics(straight, "epoch"), metrics(resumed, "epoch"))
    pd.testing.assert_frame_equal(metrics(straight, "step"), metrics(resumed, "step"))
    assert list(metrics(resumed, "epoch")["epoch"]) == [0, 1]
    assert b"\r" not in (resumed / "metrics.csv").read_bytes()  # plain newlines, as every other file


def test_pretrain_from_python_refuses_a_folder_holding_a_run_unless_resumed(tmp_path):
    from medssl.errors import MedsslError

    recipe = quick_recipe("simclr")
    pretrain(recipe, tmp_path / "run")
    encoder = (tmp_path / "run" / "encoder.pt").read_bytes()
    with pytest.raises(MedsslError, match="already holds a run"):
        pretrain(recipe, tmp_path / "run")
    assert (tmp_path / "run" / "encoder.pt").read_bytes() == encoder


def test_run_killed_in_the_middle_of_an_epoch_drops_its_rows_and_resumes_from_the_last_checkpoint(tmp_path):
    recipe = quick_recipe("simclr", "train.epochs=2")
    pretrain(recipe, tmp_path / "straight")
    method = seeded_method(recipe)
    after_step = method.after_step

    def killed_after_step_four(step, total_steps):
        after_step(step, total_steps)
        if step == 4:  # the last step of the second epoch, before its checkpoint
            raise KeyboardInterrupt

    method.after_step = killed_after_step_four
    with pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path / "killed", method=method)
    partial = pd.read_csv(tmp_path / "killed" / "metrics.csv")
    assert (partial["epoch"] == 1).any()  # a row of the unfinished epoch was written
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["epochs_done"] == 1

    pretrain(recipe, tmp_path / "killed", resume=True)
    assert_same_state(method_state(tmp_path / "straight"), method_state(tmp_path / "killed"))
    pd.testing.assert_frame_equal(metrics(tmp_path / "straight", "step"), metrics(tmp_path / "killed", "step"))


def test_resume_without_a_checkpoint_starts_from_scratch_and_says_so(tmp_path):
    result = pretrain(quick_recipe("simclr", "train.max_steps_per_epoch=1"), tmp_path / "run", resume=True)
    assert any("No checkpoint" in note for note in result.notes)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_resuming_a_run_in_steps_reports_no_change_of_the_epochs_they_gave(tmp_path):
    # epochs from train.steps (2 steps per epoch -> 2 epochs), not from train.epochs
    recipe = quick_recipe("simclr", "train.steps=3")
    first = pretrain(recipe, tmp_path / "run")
    assert first.epochs_done == 2
    again = pretrain(recipe, tmp_path / "run", resume=True)
    assert again.epochs_done == 2 and not any("Resuming with" in note for note in again.notes), again.notes


def test_resuming_a_finished_run_says_nothing_is_left_and_records_its_changes_once(tmp_path):
    recipe = quick_recipe("simclr", "train.max_steps_per_epoch=1")
    pretrain(recipe, tmp_path / "run")
    changed = quick_recipe("simclr", "train.max_steps_per_epoch=1", "eval.folds=3")
    resumed = pretrain(changed, tmp_path / "run", resume=True)
    assert any("eval.folds: 2 -> 3" in note for note in resumed.notes), resumed.notes
    assert any("nothing left to train" in note for note in resumed.notes)
    again = pretrain(changed, tmp_path / "run", resume=True)  # the checkpoint now holds eval.folds = 3
    assert not any("Resuming with" in note for note in again.notes), again.notes


def test_resuming_from_the_checkpoint_of_another_architecture_is_a_checkpoint_error(tmp_path):
    run = tmp_path / "run"
    pretrain(quick_recipe("simclr", "train.max_steps_per_epoch=1"), run)
    other = quick_recipe("simclr", "train.max_steps_per_epoch=1", "model.head.out_dim=8")
    with pytest.raises(CheckpointError, match=r"last\.pt.*does not fit"):
        pretrain(other, run, resume=True)


def test_resuming_from_a_corrupt_checkpoint_is_a_checkpoint_error(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        pretrain(quick_recipe("simclr", "train.max_steps_per_epoch=1"), tmp_path / "run", resume=True)


# ----------------------------------------------------------------------------- determinism
def test_two_runs_with_the_same_seed_end_with_identical_weights_and_another_seed_does_not(tmp_path):
    recipe = quick_recipe("simclr")
    pretrain(recipe, tmp_path / "a")
    pretrain(recipe, tmp_path / "b")
    assert_same_state(method_state(tmp_path / "a"), method_state(tmp_path / "b"))
    pd.testing.assert_frame_equal(metrics(tmp_path / "a", "step"), metrics(tmp_path / "b", "step"))

    pretrain(quick_recipe("simclr", "train.seed=1"), tmp_path / "c")
    a, c = method_state(tmp_path / "a"), method_state(tmp_path / "c")
    assert not all(torch.equal(a[key], c[key]) for key in a)


# ----------------------------------------------------------------------------- precision
def test_bf16_conv_hazards_names_3x3x3_convolutions_that_see_depth_two():
    model = nn.Sequential(
        nn.Conv3d(1, 2, 1), nn.Conv3d(2, 2, 3, padding=1), nn.Conv3d(2, 2, (1, 3, 3), padding=(0, 1, 1))
    )
    assert bf16_conv_hazards(model, torch.zeros(1, 1, 2, 4, 4)) == ["1"]
    assert bf16_conv_hazards(model, torch.zeros(1, 1, 4, 4, 4)) == []
    assert all(not module._forward_hooks for module in model)  # the probe leaves no hook behind


def test_bf16_on_cpu_falls_back_to_fp32_with_a_note_when_a_hazard_exists(tmp_path, monkeypatch):
    from medssl.train import setup

    # the hazard check runs on CPUs with native bf16; on others bf16 falls back before it (tested below)
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    # 16^3 volumes reach the AlexNet's last 3x3x3 convolutions with depth 2
    pretraining = build_pretraining(
        quick_recipe("simclr", "train.precision=bf16", "train.device=cpu", "train.max_steps_per_epoch=1"),
        tmp_path / "run",
    )
    assert pretraining.trainer.precision == "fp32"
    result = pretraining.trainer.run()
    assert any("falls back to fp32" in note and "features." in note for note in result.notes)
    assert math.isfinite(result.last_loss)
    # recipe.yaml keeps the precision asked for; run_notes.txt says what ran
    assert "precision: bf16" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert "train.precision = 'bf16' falls back to fp32" in (tmp_path / "run" / "run_notes.txt").read_text()


# ----------------------------------------------------------------------------- failures
def test_non_finite_loss_stops_with_a_training_error_naming_epoch_and_step(tmp_path):
    recipe = quick_recipe("simclr")
    method = method_with_loss(recipe, lambda loss, call: loss * float("nan") if call == 2 else loss)
    with pytest.raises(TrainingError, match=r"epoch 1, step 2: the loss is nan; lower train.lr"):
        pretrain(recipe, tmp_path / "run", method=method)


def test_non_finite_gradient_stops_with_a_training_error_naming_epoch_and_step(tmp_path):
    # sqrt has an infinite derivative at 0: the loss value is unchanged, its gradient is not finite
    recipe = quick_recipe("simclr")
    method = method_with_loss(recipe, lambda loss, call: loss + torch.sqrt(loss - loss.detach()))
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: non-finite gradient norm"):
        pretrain(recipe, tmp_path / "run", method=method)


# ----------------------------------------------------------------------------- optimisation
def test_gradient_accumulation_takes_one_optimiser_step_per_accumulated_batches(tmp_path):
    run = tmp_path / "run"
    pretrain(quick_recipe("simclr", "train.accumulate=2", "train.epochs=2"), run)
    steps = metrics(run, "step")
    assert list(steps["step"]) == [1, 2]  # 2 batches per epoch, 2 epochs, accumulate 2
    optimizer = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert {float(state["step"]) for state in optimizer["state"].values()} == {2.0}


def test_accumulating_more_batches_than_an_epoch_has_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"train.accumulate = 3: an epoch has only 2 batches"):
        pretrain(quick_recipe("simclr", "train.accumulate=3"), tmp_path / "run")


def test_gradient_clipping_bounds_the_update_of_plain_sgd(tmp_path):
    clip = 1e-3
    run = tmp_path / "run"
    recipe = quick_recipe(
        "simclr",
        "train.optimizer=sgd",
        "train.momentum=0",
        "train.weight_decay=0",
        "train.lr=1.0",
        f"train.grad_clip={clip}",
        "train.max_steps_per_epoch=1",
    )
    method = seeded_method(recipe)
    initial = {key: value.detach().clone() for key, value in method.named_parameters()}
    pretrain(recipe, run, method=method)
    final = method_state(run)
    update = torch.sqrt(sum(((final[key] - value) ** 2).sum() for key, value in initial.items()))
    assert metrics(run, "step")["grad_norm"].iloc[0] > 10 * clip  # the logged norm is the one before clipping
    assert 0.5 * clip < update <= clip * (1 + 1e-3)


# ----------------------------------------------------------------------------- budget and notes
def test_embedded_cohort_run_prints_the_budget_note(tmp_path):
    stream = io.StringIO()
    result = pretrain(
        quick_recipe("simclr", "train.max_steps_per_epoch=1"), tmp_path / "run", console=Console(file=stream, width=300)
    )
    printed = stream.getvalue()
    assert "data.root not set: using the embedded synthetic cohort (16 subjects, 4 sites, 16^3 voxels)" in printed
    assert "with profile embedded: alexnet, 1 epoch of batch 4." in printed
    assert any("embedded synthetic cohort" in note for note in result.notes)


def test_run_on_a_cohort_folder_has_no_budget_note_and_keeps_train_epochs(tmp_path, tiny_cohort):
    recipe = quick_recipe("simclr", f"data.root={tiny_cohort}", "train.epochs=2", "train.max_steps_per_epoch=1")
    result = pretrain(recipe, tmp_path / "run")
    assert not any("embedded" in note for note in result.notes)
    assert list(metrics(tmp_path / "run", "epoch")["epoch"]) == [0, 1]


def test_command_line_epochs_override_applies_to_the_embedded_budget(tmp_path):
    pretrain(quick_recipe("simclr", "train.epochs=2", "train.max_steps_per_epoch=1"), tmp_path / "run")
    assert list(metrics(tmp_path / "run", "epoch")["epoch"]) == [0, 1]


# ----------------------------------------------------------------------------- collapse monitor
def test_collapse_monitor_logs_a_healthy_embedding_spread_for_vicreg(tmp_path):
    recipe = smoke_recipe(load_recipe("vicreg", ["eval.after_pretrain=false"]))
    stream = io.StringIO()
    pretrain(recipe, tmp_path / "run", console=Console(file=stream, width=300))
    epoch = metrics(tmp_path / "run", "epoch").iloc[-1]
    d = recipe.model.head.out_dim
    assert epoch["embedding_std"] > 2 * COLLAPSE_RATIO / math.sqrt(d)
    assert epoch["embedding_std_ratio"] == pytest.approx(epoch["embedding_std"] * math.sqrt(d))
    assert "collapsing" not in stream.getvalue()


class ConstantHead(nn.Module):
    """Outputs the same embedding for every input (a collapsed network), still trainable."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.value = nn.Parameter(torch.linspace(-1, 1, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.value.expand(features.shape[0], -1) + 0 * features[:, :1]


def collapsed_method(recipe):
    """The recipe's method projecting all volumes to one constant embedding."""
    method = seeded_method(recipe)
    method.head = ConstantHead(recipe.model.head.out_dim)
    return method


def test_collapse_monitor_warns_when_every_embedding_is_the_same(tmp_path):
    stream = io.StringIO()
    recipe = quick_recipe("vicreg", "train.max_steps_per_epoch=1")
    result = pretrain(
        recipe, tmp_path / "run", console=Console(file=stream, width=300), method=collapsed_method(recipe)
    )
    assert metrics(tmp_path / "run", "epoch")["embedding_std"].iloc[-1] < 1e-6
    assert "epoch 1: embeddings are collapsing" in stream.getvalue()
    assert any("collapsing" in note for note in result.notes)


def test_contrastive_methods_are_not_monitored_for_collapse(tmp_path):
    recipe = quick_recipe("simclr", "train.max_steps_per_epoch=1")
    result = pretrain(recipe, tmp_path / "run", method=collapsed_method(recipe))
    assert not any("collapsing" in note for note in result.notes)


def test_a_run_in_steps_runs_whole_epochs_and_scales_the_warm_up():
    recipe = load_recipe("vicreg")  # the embedded profile: 500 steps, 10 warm-up epochs of the paper's 300
    assert recipe.model.encoder == "resnet18" and recipe.model.widths == [16, 32, 64, 128]
    note = epochs_from_steps(recipe.train, steps_per_epoch=14)
    assert recipe.train.epochs == 36  # ceil(500 / 14): at least the steps asked for
    assert note == "train.steps = 500, in whole epochs: 36 epochs x 14 steps = 504 optimiser steps."
    assert recipe.train.warmup_epochs == round(10 * 36 / 300) == 1
    explicit = load_recipe("vicreg", ["train.epochs=3"])
    assert epochs_from_steps(explicit.train, steps_per_epoch=14) is None
    assert explicit.train.epochs == 3


def test_the_embedded_profile_runs_bf16_recipes_in_fp32_unless_asked():
    paper = load_recipe("simclr", ["profile=paper"])  # real data: bf16 + channels_last_3d
    assert (paper.train.precision, paper.train.channels_last) == ("bf16", True)
    recipe = load_recipe("simclr")
    assert (recipe.train.precision, recipe.train.channels_last) == ("fp32", False)
    asked = load_recipe("simclr", ["train.precision=bf16", "train.channels_last=true"])
    assert (asked.train.precision, asked.train.channels_last) == ("bf16", True)


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_a_note(monkeypatch):
    import medssl.train.setup as setup

    network = nn.Conv3d(1, 1, 3, padding=1)
    sample = torch.zeros(1, 1, 4, 4, 4)
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    assert setup.safe_precision("bf16", torch.device("cpu"), network, sample) == ("bf16", None)
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: False)
    precision, note = setup.safe_precision("bf16", torch.device("cpu"), network, sample)
    assert precision == "fp32" and "no native bfloat16" in note
    assert setup.safe_precision("fp32", torch.device("cpu"), network, sample) == ("fp32", None)


def test_an_encoder_named_on_the_command_line_wins_over_the_embedded_profile():
    recipe = load_recipe("simclr", ["model.encoder=alexnet"])
    assert recipe.model.encoder == "alexnet" and recipe.model.widths is None
    recipe = load_recipe("simclr", ["model.widths=[8,16,32,64]"])
    assert recipe.model.encoder == "resnet18" and recipe.model.widths == [8, 16, 32, 64]


def test_the_engine_names_no_method():
    from pathlib import Path

    import medssl.train
    from medssl.methods import METHOD_NAMES

    sources = {path.name: path.read_text() for path in Path(medssl.train.__file__).parent.glob("*.py")}
    named = [
        (file, name)
        for file, text in sources.items()
        for name in METHOD_NAMES
        if f'"{name}"' in text or f"'{name}'" in text
    ]
    assert named == []


def test_method_needs_say_label_views_and_processes():
    from medssl.methods import method_needs

    assert (
        method_needs(load_recipe("deepcluster")).views == 1 and not method_needs(load_recipe("deepcluster")).distributed
    )
    needs = method_needs(load_recipe("yaware_age"))
    assert needs.label and needs.views == 2 and needs.distributed
    assert not method_needs(load_recipe("simclr")).label
