"""One training loop for every objective, handed its parts as MONAI's ``SupervisedTrainer`` is.

A :class:`Trainer` builds nothing: it is given the objective (a pre-training ``Method``, or a
head on an encoder for fine-tuning), the optimiser and scheduler, the epoch loader, the run
folder, the precision and device. It owns the training step -- autocast, loss scaling, the
finiteness of the loss, the gradient norm (checked, optionally clipped), the optimiser and
scheduler steps -- and what surrounds it: gradient accumulation, ``metrics.csv`` and
TensorBoard, the progress bar, per-epoch diagnostics and the collapse warning, atomic
checkpoints and bit-identical resume.

The objective is an ``nn.Module`` with:

- ``forward(batch) -> (loss, logs)``: the scalar loss of a batch (a dict of tensors) and
  floats to log;
- ``prepare_epoch(epoch, context) -> sampler | None`` (see :class:`EpochContext`) and
  ``after_step(step, total_steps)``, hooks that may do nothing;
- ``monitors_collapse`` and, for the :class:`~medssl.train.handlers.CollapseMonitor` handler,
  ``diagnostics(views) -> dict``.

What only some runs need comes as handlers (:mod:`medssl.train.handlers`): checkpoints,
early stopping, collapse diagnostics, the training features DeepCluster clusters.

Each epoch reseeds every random generator from (seed, epoch), and the loader draws the views
of a subject from (seed, epoch, subject), so a run resumed from its last checkpoint ends with
the same weights as an uninterrupted one.

Example:
    >>> trainer = Trainer(method, optimizer, EpochLoader(dataset, batch_size=8), "runs/x",
    ...                   Schedule(epochs=10, steps_per_epoch=len(dataset) // 8), handlers=[Checkpointing()])
    >>> result = trainer.run()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar, cast

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.text import Text
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from medssl.errors import CheckpointError, TrainingError
from medssl.files import remove_stale_temporaries
from medssl.progress import progress_bar
from medssl.train.checkpoint import restore_rng, restore_scaler
from medssl.train.distributed import DistributedContext, barrier, reduce_mean
from medssl.train.handlers import Checkpointing, Handler, TrainingFeatures, checkpoint_path
from medssl.train.loading import BatchViewsLoader, EpochLoader
from medssl.train.metrics_log import MetricsLog
from medssl.train.setup import autocast, seed_everything

H = TypeVar("H", bound=Handler)


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    first_loss: float
    last_loss: float
    evaluation: dict | None = None
    notes: list[str] = field(default_factory=list)
    main_process: bool = True


@dataclass(frozen=True)
class Schedule:
    """How long a trainer runs and how it steps.

    Args:
        epochs: epochs of the run (fewer if early stopping ends it).
        steps_per_epoch: optimiser steps per epoch.
        accumulate: micro-batches per optimiser step.
        grad_clip: clip the gradient norm to this (None: the norm is still logged and checked).
        seed: the run's seed; epoch ``e`` runs under seed ``seed * 1000 + e``.
        lr_key: the recipe key a non-finite loss or gradient advises to lower.
        label: prefix of progress bars and error messages (``"seed 1, "``).
    """

    epochs: int
    steps_per_epoch: int
    accumulate: int = 1
    grad_clip: float | None = None
    seed: int = 0
    lr_key: str = "train.lr"
    label: str = ""


class EpochContext:
    """What an objective's ``prepare_epoch`` may use: features of the training cohort, the
    optimiser's state, and the epoch's log row."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.logs: dict[str, float] = {}

    def extract_features(self, encoder: nn.Module) -> np.ndarray:
        source = next((h for h in self.trainer.handlers if isinstance(h, TrainingFeatures)), None)
        if source is None:
            raise TrainingError(
                "the objective clusters features of the training cohort: hand the trainer a TrainingFeatures handler"
            )
        return source.extract(encoder)

    def forget_optimizer_state(self, parameters: Iterable[nn.Parameter]) -> None:
        for parameter in parameters:
            self.trainer.optimizer.state.pop(parameter, None)

    def log(self, values: dict[str, float]) -> None:
        self.logs.update(values)


class ObjectiveHooks(Protocol):
    """What the trainer calls on its objective besides ``nn.Module``'s own methods (see the module docstring)."""

    monitors_collapse: bool

    def prepare_epoch(self, epoch: int, context: EpochContext) -> Sampler | None: ...

    def after_step(self, step: int, total_steps: int) -> None: ...

    def diagnostics(self, views: torch.Tensor) -> dict[str, float]: ...


@dataclass
class Runtime:
    """Where and how a trainer runs: device, autocast precision (fp32, bf16, fp16), the fp16 loss
    scaler (default: enabled for fp16 on CUDA), the objective as called in training (``model``,
    e.g. wrapped in DistributedDataParallel; default the objective), this process's place in the
    process group, and where notes and progress bars go (``console``; ``notes`` collects them)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    model: nn.Module | None = None
    dist: DistributedContext = field(default_factory=DistributedContext)
    console: Console | None = None
    notes: list[str] = field(default_factory=list)


class Trainer:
    """Train ``objective`` with ``optimizer`` on the batches of ``loader``; see the module docstring.

    Args:
        objective: the module whose ``forward(batch)`` returns ``(loss, logs)``.
        optimizer: steps the objective's trainable parameters.
        loader: an :class:`~medssl.train.loading.EpochLoader` (``epoch(e, sampler)``, ``close()``).
        run_dir: the run folder (``metrics.csv``, ``tensorboard/``, ``run_notes.txt``).
        schedule: epochs, steps, accumulation, clipping, seed.
        scheduler: stepped after every optimiser step (None: constant learning rate).
        runtime: device, precision, processes, console (:class:`Runtime`).
        handlers: what only some runs need (:mod:`medssl.train.handlers`); default: checkpoints
            every epoch.
    """

    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: EpochLoader | BatchViewsLoader,
        run_dir: str | Path,
        schedule: Schedule,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        runtime: Runtime | None = None,
        handlers: Sequence[Handler] | None = None,
    ):
        if not (hasattr(loader, "epoch") and hasattr(loader, "close")):
            raise TypeError(
                f"Trainer: loader must be a medssl EpochLoader (batches per epoch, resumable), got {type(loader).__name__}"
            )
        self.objective, self.optimizer, self.scheduler, self.loader = objective, optimizer, scheduler, loader
        # The same module, typed by its hooks: nn.Module types its other attributes as tensors or submodules.
        self.hooks = cast(ObjectiveHooks, objective)
        self.run_dir, self.schedule = Path(run_dir), schedule
        runtime = runtime if runtime is not None else Runtime()
        self.device, self.precision = torch.device(runtime.device), runtime.precision
        self.scaler = (
            runtime.scaler
            if runtime.scaler is not None
            else torch.amp.GradScaler("cuda", enabled=self.precision == "fp16" and self.device.type == "cuda")
        )
        self.model = runtime.model if runtime.model is not None else objective
        self.dist, self.console, self.notes = runtime.dist, runtime.console, runtime.notes
        self.handlers: list[Handler] = list(handlers) if handlers is not None else [Checkpointing()]
        self.log: MetricsLog | None = None
        self.notes_written: int | None = None  # notes already in run_notes.txt; None until the run folder exists

    def handler(self, kind: type[H]) -> H | None:
        """The first handler of type ``kind``, if the trainer has one."""
        return next((h for h in self.handlers if isinstance(h, kind)), None)

    @property
    def name(self) -> str:
        checkpointing = self.handler(Checkpointing)
        return checkpointing.name if checkpointing is not None else "objective"

    def say(self, message: str) -> None:
        self.notes.append(message)
        if self.console is not None and self.dist.is_main:
            self.console.print(message)
        if self.notes_written is not None:
            self.write_notes()

    def write_notes(self) -> None:
        """Append the notes not yet in ``run_notes.txt`` (the main process, once the run folder exists):
        what the console said (a precision fall-back, the embedded budget, a resume) stays with the run."""
        if not self.dist.is_main or self.notes_written is None:
            return
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        with open(self.run_dir / "run_notes.txt", "a", encoding="utf-8") as stream:
            stream.writelines(f"{stamp}  {Text.from_markup(note).plain}\n" for note in self.notes[self.notes_written :])
        self.notes_written = len(self.notes)

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir)

    # -------------------------------------------------------------- run
    def run(self, resume_from: dict | None = None, on_epoch_end: Callable[[int], None] | None = None) -> RunResult:
        """Train from scratch, or from the checkpoint state ``resume_from``; ``on_epoch_end(epoch)``
        runs after each epoch's checkpoint."""
        schedule, main = self.schedule, self.dist.is_main
        seed_everything(schedule.seed)
        # A checkpoint that does not fit the objective is refused before the folder is touched.
        epochs_done, step = self.restore(resume_from) if resume_from is not None else (0, 0)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir, self.checkpoint_path.parent)
            self.notes_written = 0
            self.write_notes()
        for handler in self.handlers:
            handler.started(self)
        # purge_step: TensorBoard drops the events of steps the resumed run is about to redo.
        self.log = MetricsLog(self.run_dir, enabled=main, purge_step=step + 1 if resume_from is not None else None)
        if resume_from is not None:
            dropped = self.log.truncate_after(epochs_done)
            redone = (
                f"; the {dropped} metrics.csv rows logged after it are dropped, their steps run again"
                if dropped
                else ""
            )
            self.say(f"Resuming {self.run_dir} after epoch {epochs_done} (step {step}){redone}.")
            self.note_other_process_count(resume_from.get("processes"))
            if epochs_done >= self.schedule.epochs:
                epochs = self.schedule.epochs
                trained = f"All {epochs} epochs were" if epochs != 1 else "The 1 epoch was"
                self.say(f"{trained} trained already: nothing left to train.")
                checkpointing = self.handler(Checkpointing)
                if main and checkpointing is not None:  # it records the settings last resumed with, as recipe.yaml
                    checkpointing.save(self, epochs_done, step)
        try:
            epochs_done, step = self.run_epochs(epochs_done, step, on_epoch_end)
            # Every process leaves only once the last checkpoint is on disk (a resume may follow at once).
            barrier(self.dist)
        finally:
            self.log.close()
            self.loader.close()  # ends persistent workers
        for handler in self.handlers:
            handler.finished(self)
        return RunResult(self.run_dir, epochs_done, *self.loss_range(), notes=self.notes, main_process=main)

    def run_epochs(self, epochs_done: int, step: int, on_epoch_end: Callable[[int], None] | None) -> tuple[int, int]:
        schedule = self.schedule
        total_steps = schedule.epochs * schedule.steps_per_epoch
        for epoch in range(epochs_done, schedule.epochs):
            if self.stopped:
                break
            step = self.run_epoch(epoch, step, total_steps)
            epochs_done = epoch + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        return epochs_done, step

    @property
    def stopped(self) -> bool:
        """A handler asked to end the run (early stopping)."""
        return any(handler.stop_requested for handler in self.handlers)

    def note_other_process_count(self, trained_on: int | None) -> None:
        """A resume on another number of processes trains on, with another global batch: say so."""
        now = self.dist.world_size
        if trained_on is None or trained_on == now:
            return
        per_process = self.loader.batch_size
        self.say(
            f"The checkpoint was trained on {trained_on} process{'es' if trained_on > 1 else ''} and this resume runs "
            f"{now}: the global batch goes from {trained_on * per_process} to {now * per_process} subjects, so the run "
            f"will not match one left uninterrupted; relaunch on {trained_on} to continue it exactly."
        )

    def restore(self, state: dict) -> tuple[int, int]:
        """Load weights, optimiser, scheduler, loss scale, early stopping and RNG state; return (epochs done, step)."""
        try:
            self.objective.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            restore_scaler(state, self.scaler)
            for handler in self.handlers:
                if handler.checkpoint_key:
                    handler.load_state_dict(state[handler.checkpoint_key])
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
            raise CheckpointError(
                f"{self.checkpoint_path}: does not fit the recipe's {self.name} model ({detail}); "
                "resume with the recipe of that run or use another --out"
            ) from None
        restore_rng(state)
        return int(state["epochs_done"]), int(state["step"])

    # -------------------------------------------------------------- one epoch
    def run_epoch(self, epoch: int, step: int, total_steps: int) -> int:
        """Train one epoch from optimiser step ``step``; return the step reached."""
        schedule = self.schedule
        seed_everything(schedule.seed * 1000 + epoch)
        context = EpochContext(self)
        self.objective.train()
        for handler in self.handlers:
            handler.epoch_started(self, epoch, context)
        sampler = self.hooks.prepare_epoch(epoch, context)
        losses: list[float] = []
        assert self.log is not None, "run() opens the metrics log"
        progress = self.progress_bar()
        task = progress.add_task(
            f"{schedule.label}epoch {epoch + 1}/{schedule.epochs}",
            total=schedule.steps_per_epoch,
            loss="-",
            lr="-",
            speed="-",
        )
        with progress:
            started = time.perf_counter()
            for micro, batch in enumerate(self.loader.epoch(epoch, sampler)):
                if micro >= schedule.steps_per_epoch * schedule.accumulate:
                    break
                loss, extra = self.forward_backward(batch, micro, epoch, step)
                losses.append(loss)
                if (micro + 1) % schedule.accumulate:
                    continue
                grad_norm = self.optimizer_step(epoch, step)
                step += 1
                self.hooks.after_step(step, total_steps)
                speed = (
                    batch_volumes(batch)
                    * schedule.accumulate
                    * self.dist.world_size
                    / max(time.perf_counter() - started, 1e-9)
                )
                lr = self.optimizer.param_groups[0]["lr"]
                step_loss = reduce_mean(float(np.mean(losses[-schedule.accumulate :])), self.dist, self.device)
                self.log.log(
                    "step", epoch, step, loss=step_loss, lr=lr, volumes_per_s=speed, grad_norm=grad_norm, **extra
                )
                progress.update(task, advance=1, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", speed=f"{speed:.1f}")
                started = time.perf_counter()
        if not losses:  # a checkpoint of an untrained epoch would pass for a trained one
            raise TrainingError(f"epoch {epoch + 1}: the loader gave no batch ({self.loader_size()})")
        self.end_of_epoch(epoch, step, losses, context)
        return step

    def loader_size(self) -> str:
        dataset, batch_size = getattr(self.loader, "dataset", None), getattr(self.loader, "batch_size", None)
        items = f"{len(dataset)} items" if dataset is not None else "its dataset"
        return f"{items}, batch_size {batch_size}, drop_last {getattr(self.loader, 'drop_last', None)}"

    def forward_backward(self, batch: dict, micro: int, epoch: int, step: int) -> tuple[float, dict]:
        """Loss of one micro-batch, checked finite, and its scaled gradient (summed over the accumulated ones)."""
        accumulate = self.schedule.accumulate
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        # Under DDP, gradients are all-reduced only on the micro-batch that ends an optimiser step.
        syncing = (micro + 1) % accumulate == 0 or not self.dist.enabled
        # not syncing only under DDP, where the model is the DistributedDataParallel wrapper
        with nullcontext() if syncing else cast(DistributedDataParallel, self.model).no_sync():
            with autocast(self.precision, self.device):
                loss, extra = self.model(batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{self.schedule.label}epoch {epoch + 1}, step {step + 1}: the loss is {loss.item()}; {self.advice}"
                )
            self.scaler.scale(loss / accumulate).backward()
        return loss.item(), extra

    @property
    def advice(self) -> str:
        return f"lower {self.schedule.lr_key}, set train.grad_clip or use train.precision fp32"

    def optimizer_step(self, epoch: int, step: int) -> float:
        """Unscale, measure (and clip) the gradient norm, refuse a non-finite one, step; return the norm."""
        self.scaler.unscale_(self.optimizer)
        clip = self.schedule.grad_clip
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        if clip is None:  # the norm is still logged and checked, without a pass rescaling every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
        if not torch.isfinite(grad_norm):
            raise TrainingError(
                f"{self.schedule.label}epoch {epoch + 1}, step {step + 1}: non-finite gradient norm "
                f"({grad_norm.item()}); {self.advice}"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return float(grad_norm)

    def end_of_epoch(self, epoch: int, step: int, losses: list[float], context: EpochContext) -> None:
        """The epoch's row: the objective's logs, the mean loss and what the handlers add; then the handlers' turn."""
        values = dict(context.logs)
        values["loss"] = reduce_mean(float(np.mean(losses)) if losses else float("nan"), self.dist, self.device)
        for handler in self.handlers:
            values.update(handler.epoch_values(self, epoch, values))
        assert self.log is not None, "run() opens the metrics log"
        self.log.log("epoch", epoch, step, **values)
        for handler in self.handlers:
            handler.epoch_ended(self, epoch, step, values)

    def progress_bar(self) -> Progress:
        return progress_bar(
            self.console,
            "step loss {task.fields[loss]}",
            "lr {task.fields[lr]}",
            "{task.fields[speed]} vol/s",
            elapsed=True,
            disable=self.console is None or not self.dist.is_main,
        )

    def loss_range(self) -> tuple[float, float]:
        """The mean loss of the first and of the last epoch (NaN before any)."""
        table = self.log.table() if self.log is not None else None
        if table is None or not len(table):
            return float("nan"), float("nan")
        epochs = table[table["kind"] == "epoch"]["loss"].astype(float)
        if len(epochs) == 0:
            return float("nan"), float("nan")
        return float(epochs.iloc[0]), float(epochs.iloc[-1])


def batch_volumes(batch: dict) -> int:
    """Volumes in a batch: subjects x views of pre-training, else the items of fine-tuning."""
    views = batch.get("views")
    if views is not None:
        return int(views.shape[0] * views.shape[1])
    return len(next(iter(batch.values())))
