"""finetune.seeds: the four modes on a tiny cohort (what each trains, at which rate) and early stopping."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from medssl.data.cohort import load_cohort
from medssl.finetune.inputs import make_loader, volume_dataset
from medssl.finetune.protocol import FineTuner
from medssl.finetune.splits import split_cohort
from medssl.finetune.target import resolve_target
from medssl.models import build_encoder
from medssl.train.finetuning import (
    FinetuneModel,
    HeadObjective,
    LabelledInputs,
    TargetLoss,
    class_weights,
    finetune_optimizer,
    validation_loss,
)
from medssl.train.handlers import Checkpointing, EarlyStopping
from medssl.train.loading import EpochLoader
from medssl.train.trainer import Schedule, Trainer

from .helpers import tiny_recipe


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
        handlers=[Checkpointing(), stopping],
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
        make_loader(validation, 4, recipe.data),
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
    assert result.epochs_done == 1 and trainer.handler(EarlyStopping).best_epoch == 1
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
    stopping = trainer.handler(EarlyStopping)
    losses = [entry["val_loss"] for entry in stopping.history]
    assert stopping.best_epoch == int(np.argmin(losses)) + 1
    assert result.epochs_done == min(6, stopping.best_epoch + 2)
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(head(features), labels).item()
    assert final == pytest.approx(min(losses), rel=1e-5)
