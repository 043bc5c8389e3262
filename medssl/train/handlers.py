"""What only some training runs need, handed to the :class:`~medssl.train.trainer.Trainer` as
handlers, as MONAI's trainers take ``train_handlers`` and Lightning's ``Trainer`` callbacks.

A handler overrides the events it needs (every one does nothing by default):

- ``started(trainer)``: the run folder exists, nothing is trained yet;
- ``epoch_started(trainer, epoch, context)``: before the epoch's first batch;
- ``epoch_values(trainer, epoch, values) -> dict``: values added to the epoch's row of
  ``metrics.csv`` (``values`` holds the row so far: the objective's logs and the mean loss);
- ``epoch_ended(trainer, epoch, step, values)``: the row is logged;
- ``finished(trainer)``: the last epoch ran;
- ``stop_requested``: end the run after this epoch;
- ``checkpoint_key``, ``state_dict()``, ``load_state_dict(state)``: a handler with a state keeps
  it in the trainer's checkpoints, so a resumed run goes on as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medssl.files import atomic_write_text
from medssl.train.checkpoint import save_checkpoint
from medssl.train.setup import autocast

if TYPE_CHECKING:
    from medssl.train.trainer import EpochContext, Trainer

COLLAPSE_RATIO = 0.1  # embedding std below 10% of a uniform spread's 1/sqrt(d) means collapse
IMPROVEMENT = 1e-6  # a validation loss must drop by more than this to count as better


class Handler:
    """Base of the handlers: every event does nothing (see the module docstring)."""

    checkpoint_key: str | None = None

    def started(self, trainer: Trainer) -> None:
        return None

    def epoch_started(self, trainer: Trainer, epoch: int, context: EpochContext) -> None:
        return None

    def epoch_values(self, trainer: Trainer, epoch: int, values: dict[str, float]) -> dict[str, float]:
        return {}

    def epoch_ended(self, trainer: Trainer, epoch: int, step: int, values: dict[str, float]) -> None:
        return None

    def finished(self, trainer: Trainer) -> None:
        return None

    @property
    def stop_requested(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class Checkpointing(Handler):
    """Write the run's files when it starts and ``checkpoints/last.pt`` (atomically) every
    ``every`` epochs, after the last one and when a handler stops the run.

    Args:
        settings: the recipe as YAML, stored in each checkpoint and compared on resume.
        run_files: texts written into the run folder when the run starts (``recipe.yaml``).
        every: epochs between checkpoints.
        name: what is trained, in the message of a checkpoint that does not fit it.
    """

    def __init__(
        self, settings: str = "", run_files: dict[str, str] | None = None, every: int = 1, name: str = "objective"
    ):
        self.settings, self.run_files, self.every, self.name = settings, run_files or {}, every, name

    def started(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            for name, text in self.run_files.items():
                atomic_write_text(trainer.run_dir / name, text)

    def epoch_ended(self, trainer: Trainer, epoch: int, step: int, values: dict[str, float]) -> None:
        done = epoch + 1
        if trainer.dist.is_main and (done % self.every == 0 or done == trainer.schedule.epochs or trainer.stopped):
            self.save(trainer, done, step)

    def save(self, trainer: Trainer, epochs_done: int, step: int) -> None:
        extra: dict[str, Any] = {"processes": trainer.dist.world_size}
        extra.update({h.checkpoint_key: h.state_dict() for h in trainer.handlers if h.checkpoint_key})
        save_checkpoint(
            checkpoint_path(trainer.run_dir),
            method=trainer.objective,
            optimizer=trainer.optimizer,
            scheduler=trainer.scheduler,
            epoch=epochs_done,
            step=step,
            recipe_yaml=self.settings,
            scaler=trainer.scaler,
            extra=extra,
        )


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


class CollapseMonitor(Handler):
    """Run the objective's ``diagnostics(views)`` on a fixed batch every epoch (embedding spread,
    alignment...) and warn when the embeddings collapse (an objective with ``monitors_collapse``).

    Args:
        views: a fixed (B, 2, C, D, H, W) batch.
    """

    def __init__(self, views: torch.Tensor):
        self.views = views

    def epoch_values(self, trainer: Trainer, epoch: int, values: dict[str, float]) -> dict[str, float]:
        trainer.objective.eval()
        with autocast(trainer.precision, trainer.device):
            found = trainer.hooks.diagnostics(self.views.to(trainer.device))
        trainer.objective.train()
        return found

    def epoch_ended(self, trainer: Trainer, epoch: int, step: int, values: dict[str, float]) -> None:
        ratio = values.get("embedding_std_ratio")
        if trainer.hooks.monitors_collapse and ratio is not None and ratio < COLLAPSE_RATIO:
            trainer.say(
                f"[yellow]warning:[/] epoch {epoch + 1}: embeddings are collapsing (per-dimension std is "
                f"{ratio:.3f} x 1/sqrt(d)); check the learning rate, the predictor and the augmentations."
            )


class TrainingFeatures(Handler):
    """Features of the training cohort for objectives that cluster them: DeepCluster's
    reassignment at the start of each epoch reads them through ``EpochContext.extract_features``.

    Args:
        extract: ``encoder -> (n, d)`` features of the training cohort.
    """

    def __init__(self, extract: Callable[[nn.Module], np.ndarray]):
        self.extract = extract


class EarlyStopping(Handler):
    """Validate after every epoch; stop after ``patience`` epochs without a validation loss lower
    than the best by more than ``improvement``; restore the best epoch's weights at the end.

    Its state (best loss and weights, waited epochs, history) goes into the trainer's
    checkpoints, so a resumed run stops where an uninterrupted one stops.

    Args:
        validation_loss: computes the current validation loss.
        module: whose weights are kept and restored (the network, not the loss).
        patience: epochs without improvement before stopping.
        improvement: the smallest decrease that counts as one.
    """

    checkpoint_key = "early_stopping"

    def __init__(
        self, validation_loss: Callable[[], float], module: nn.Module, patience: int, improvement: float = IMPROVEMENT
    ):
        self.validation_loss = validation_loss
        self.module = module
        self.patience = patience
        self.improvement = improvement
        self.best_loss, self.best_epoch, self.waited = float("inf"), 0, 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    @property
    def stop_requested(self) -> bool:
        return self.waited >= self.patience

    stopped = stop_requested

    def epoch_values(self, trainer: Trainer, epoch: int, values: dict[str, float]) -> dict[str, float]:
        return self.update(epoch, values["loss"])

    def update(self, epoch: int, train_loss: float) -> dict[str, float]:
        """Validate after ``epoch`` (0-based); return what goes into the epoch's log row."""
        val_loss = self.validation_loss()
        self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < self.best_loss - self.improvement:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch + 1, 0
            self.best_state = {key: value.detach().clone() for key, value in self.module.state_dict().items()}
        else:
            self.waited += 1
        return {"val_loss": val_loss, "best_epoch": self.best_epoch}

    def finished(self, trainer: Trainer) -> None:
        self.restore_best()

    def restore_best(self) -> None:
        if self.best_state:
            self.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "best_state": self.best_state,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_epoch, self.waited = state["best_loss"], state["best_epoch"], state["waited"]
        device = next(iter(self.module.state_dict().values())).device
        self.best_state = {key: value.to(device) for key, value in state["best_state"].items()}
        self.history = [dict(entry) for entry in state["history"]]
