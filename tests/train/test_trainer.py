"""The trainer built from small parts: resume, the checks of the training step, clipping, the loss scale, early stopping."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from medssl.errors import CheckpointError, TrainingError
from medssl.train.checkpoint import load_checkpoint
from medssl.train.handlers import Checkpointing, EarlyStopping, TrainingFeatures
from medssl.train.loading import EpochLoader
from medssl.train.trainer import EpochContext, Runtime, Schedule, Trainer


class Points(Dataset):
    """16 noisy points of a line, as dict items; the noise is drawn per (seed, epoch, item) by the loader."""

    def __init__(self, n: int = 16):
        self.x = torch.linspace(-1, 1, n)[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index] + 0.05 * torch.randn(1), "y": 3 * self.x[index, 0] - 1}


class LineFit(nn.Module):
    """A least-squares objective with the hooks a trainer calls."""

    monitors_collapse = False

    def __init__(self, transform=None):
        super().__init__()
        self.line = nn.Linear(1, 1)
        self.transform = transform or (lambda loss, step: loss)
        self.steps = 0

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        self.steps += 1
        loss = (self.line(batch["x"])[:, 0] - batch["y"]).pow(2).mean()
        return self.transform(loss, self.steps), {}

    def prepare_epoch(self, epoch: int, context: EpochContext):
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        pass


def line_trainer(run_dir, epochs: int = 3, transform=None, lr: float = 0.1, **options) -> Trainer:
    torch.manual_seed(0)
    objective = LineFit(transform)
    optimizer = torch.optim.SGD(objective.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)
    loader = EpochLoader(Points(), batch_size=4, seed=0)
    settings = options.pop("schedule", {})
    every = settings.pop("checkpoint_every", 1)
    handlers = [Checkpointing(every=every), *options.pop("handlers", [])]
    runtime = Runtime(**options) if options else None
    schedule = Schedule(epochs=epochs, steps_per_epoch=len(loader) // settings.get("accumulate", 1), **settings)
    return Trainer(
        objective, optimizer, loader, run_dir, schedule, scheduler=scheduler, runtime=runtime, handlers=handlers
    )


class Stop(Exception):
    pass


def stop_after_epoch(last: int):
    def stop(epoch: int) -> None:
        if epoch == last:
            raise Stop

    return stop


def test_a_run_stopped_after_an_epoch_resumes_to_the_weights_and_metrics_of_a_straight_run(tmp_path):
    straight = line_trainer(tmp_path / "straight")
    straight.run()
    stopped = line_trainer(tmp_path / "stopped")
    with pytest.raises(Stop):
        stopped.run(on_epoch_end=stop_after_epoch(0))
    resumed = line_trainer(tmp_path / "stopped")
    result = resumed.run(load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt"))
    assert any("after epoch 1 (step 4)" in note for note in result.notes)
    assert torch.equal(straight.objective.line.weight, resumed.objective.line.weight)
    assert result.last_loss < result.first_loss / 2  # it did learn
    columns = ["kind", "epoch", "step", "loss", "lr", "grad_norm"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "straight" / "metrics.csv")[columns],
        pd.read_csv(tmp_path / "stopped" / "metrics.csv")[columns],
    )
    # the rows kept from before the resume read as they were written: empty cells stay empty, not "nan"
    resumed_text, straight_text = ((tmp_path / run / "metrics.csv").read_text() for run in ("stopped", "straight"))
    assert "nan" not in resumed_text and resumed_text.count(",,") == straight_text.count(",,") > 0


def test_a_resume_on_another_number_of_processes_says_the_global_batch_changes(tmp_path):
    line_trainer(tmp_path / "run", epochs=1).run()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["processes"] == 1
    state["processes"] = 2  # as if trained under torchrun --nproc_per_node 2
    result = line_trainer(tmp_path / "run", epochs=2).run(state)
    changed = [note for note in result.notes if "trained on 2 processes" in note]
    assert changed and "global batch goes from 8 to 4 subjects" in changed[0]
    assert "trained on 2 processes" in (tmp_path / "run" / "run_notes.txt").read_text()
    result = line_trainer(tmp_path / "run", epochs=3).run(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert not any("processes" in note for note in result.notes)  # same count: nothing to say


def test_a_checkpoint_of_another_objective_is_refused_before_the_folder_is_touched(tmp_path):
    line_trainer(tmp_path / "a", epochs=1).run()
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    state["method"] = {"other.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"last\.pt: does not fit the recipe's objective model"):
        line_trainer(tmp_path / "b", epochs=2).run(state)
    assert not (tmp_path / "b").exists()


def test_non_finite_loss_names_the_epoch_the_step_and_the_learning_rate_key(tmp_path):
    trainer = line_trainer(
        tmp_path / "run",
        transform=lambda loss, step: loss * math.nan if step == 6 else loss,
        schedule={"lr_key": "finetune.lr", "label": "seed 3, "},
    )
    with pytest.raises(TrainingError, match=r"^seed 3, epoch 2, step 6: the loss is nan; lower finetune.lr"):
        trainer.run()


def test_non_finite_gradient_norm_stops_the_run(tmp_path):
    # sqrt has an infinite derivative at 0: the loss value is unchanged, its gradient is not finite
    trainer = line_trainer(tmp_path / "run", transform=lambda loss, step: loss + torch.sqrt(loss - loss.detach()))
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: non-finite gradient norm"):
        trainer.run()


def test_clipping_bounds_the_step_of_plain_sgd_and_logs_the_norm_before_it(tmp_path):
    torch.manual_seed(0)
    objective = LineFit()
    optimizer = torch.optim.SGD(objective.parameters(), lr=1.0)
    before = [p.detach().clone() for p in objective.parameters()]
    trainer = Trainer(
        objective,
        optimizer,
        EpochLoader(Points(), batch_size=4),
        tmp_path / "run",
        Schedule(epochs=1, steps_per_epoch=1, grad_clip=1e-2),
    )
    trainer.run()
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(objective.parameters(), before))).item()
    assert step == pytest.approx(1e-2, rel=1e-4)
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["grad_norm"].iloc[0] > 1.0


def test_accumulated_micro_batches_take_one_optimiser_step(tmp_path):
    trainer = line_trainer(tmp_path / "run", epochs=1, schedule={"accumulate": 2})
    trainer.run()
    steps = pd.read_csv(tmp_path / "run" / "metrics.csv").query("kind == 'step'")
    assert list(steps["step"]) == [1, 2] and trainer.objective.steps == 4


def test_the_fp16_loss_scale_is_checkpointed_and_restored(tmp_path):
    # fp16 loss scaling runs on CUDA; an enabled CPU GradScaler stands in for it.
    first = line_trainer(tmp_path / "run", epochs=1, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**7))
    first.run()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] == 2.0**7
    resumed = line_trainer(tmp_path / "run", epochs=2, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**3))
    resumed.run(state)
    assert resumed.scaler.get_scale() == 2.0**7


def test_an_objective_asking_for_features_without_an_extractor_is_a_training_error(tmp_path):
    trainer = line_trainer(tmp_path / "run")
    with pytest.raises(TrainingError, match="hand the trainer a TrainingFeatures handler"):
        EpochContext(trainer).extract_features(nn.Identity())
    trainer.handlers.append(TrainingFeatures(lambda encoder: "features"))
    assert EpochContext(trainer).extract_features(nn.Identity()) == "features"


# ----------------------------------------------------------------------------- early stopping
def validation_losses(values):
    """A validation loss that follows ``values``, one per call."""
    calls = iter(values)
    return lambda: next(calls)


def test_early_stopping_ends_the_run_after_patience_and_restores_the_best_epochs_weights(tmp_path):
    best = {}

    def on_epoch_end(epoch):
        if epoch == 1:  # the best of the losses below
            best.update({key: value.clone() for key, value in trainer.objective.state_dict().items()})

    losses = [1.0, 0.5, 0.7, 0.6, 0.4]
    trainer = line_trainer(tmp_path / "run", epochs=5)
    trainer.handlers.append(EarlyStopping(validation_losses(losses), trainer.objective, patience=2))
    result = trainer.run(on_epoch_end=on_epoch_end)
    assert result.epochs_done == 4 and trainer.handler(EarlyStopping).best_epoch == 2
    assert all(torch.equal(value, best[key]) for key, value in trainer.objective.state_dict().items())
    epochs = pd.read_csv(tmp_path / "run" / "metrics.csv").query("kind == 'epoch'")
    assert list(epochs["val_loss"]) == losses[:4] and list(epochs["best_epoch"]) == [1, 2, 2, 2]
    assert [entry["val_loss"] for entry in trainer.handler(EarlyStopping).history] == losses[:4]


def test_early_stopping_state_survives_a_resume(tmp_path):
    losses = [1.0, 0.5, 0.7, 0.6, 0.4]
    straight = line_trainer(tmp_path / "straight", epochs=5)
    straight.handlers.append(EarlyStopping(validation_losses(losses), straight.objective, patience=2))
    straight.run()
    stopped = line_trainer(tmp_path / "stopped", epochs=5)
    stopped.handlers.append(EarlyStopping(validation_losses(losses), stopped.objective, patience=2))
    with pytest.raises(Stop):
        stopped.run(on_epoch_end=stop_after_epoch(2))
    resumed = line_trainer(tmp_path / "stopped", epochs=5)
    resumed.handlers.append(EarlyStopping(validation_losses(losses[3:]), resumed.objective, patience=2))
    resumed.run(load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt"))
    assert resumed.handler(EarlyStopping).history == straight.handler(EarlyStopping).history
    assert torch.equal(resumed.objective.line.weight, straight.objective.line.weight)


def test_a_resume_says_how_many_metrics_rows_of_unsaved_steps_it_drops(tmp_path):
    stopped = line_trainer(tmp_path / "run", epochs=4, schedule={"checkpoint_every": 2})
    with pytest.raises(Stop):
        stopped.run(on_epoch_end=stop_after_epoch(2))  # killed after epoch 3; the checkpoint holds 2
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    unsaved = int((logged["epoch"] >= 2).sum())
    assert unsaved > 0
    resumed = line_trainer(tmp_path / "run", epochs=4, schedule={"checkpoint_every": 2})
    result = resumed.run(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert any(f"after epoch 2 (step 8); the {unsaved} metrics.csv rows" in note for note in result.notes), result.notes
    assert not pd.read_csv(tmp_path / "run" / "metrics.csv").duplicated(["kind", "step"]).any()


def test_a_plain_dataloader_is_refused_naming_the_loader_the_trainer_needs(tmp_path):
    objective = LineFit()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(Points(), batch_size=4)
    with pytest.raises(TypeError, match="loader must be a medssl EpochLoader .*got DataLoader"):
        Trainer(objective, optimizer, loader, tmp_path / "run", Schedule(epochs=1, steps_per_epoch=4))  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_an_epoch_without_a_batch_is_an_error_not_a_checkpoint(tmp_path):
    objective = LineFit()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    loader = EpochLoader(Points(9), batch_size=32, seed=0, drop_last=True)  # 9 items fill no batch of 32
    trainer = Trainer(objective, optimizer, loader, tmp_path / "run", Schedule(epochs=1, steps_per_epoch=1))
    with pytest.raises(
        TrainingError, match="epoch 1: the loader gave no batch .9 items, batch_size 32, drop_last True"
    ):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_the_progress_bar_in_an_80_column_log_keeps_its_times_whole(tmp_path):
    import io
    import re

    from rich.console import Console

    log = io.StringIO()  # not a terminal: rich prints each bar once, at its end, 80 columns wide
    trainer = line_trainer(tmp_path, epochs=100, schedule={"label": "seed 10, "}, console=Console(file=log, width=80))
    with pytest.raises(Stop):
        trainer.run(on_epoch_end=stop_after_epoch(0))
    text = log.getvalue()
    assert "seed 10, epoch 1/100" in text and "4/4" in text and "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert len(re.findall(r"\b\d+:\d\d:\d\d\b", text)) == 2, text  # elapsed and remaining, neither cut
