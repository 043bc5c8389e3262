"""Pre-training parts built from a recipe: cohort -> views -> method -> optimiser -> :class:`Trainer`.

:func:`build_pretraining` turns a recipe into a trainer and its parts (the embedded budget,
the cohort and its views, the method, bf16 hazards, DistributedDataParallel, the optimiser and
its schedule) and checks a resume before anything in the run folder is touched;
:func:`train_encoder` runs it and writes ``encoder.pt``. Evaluating the encoder afterwards is
``medssl.pipeline.pretrain``'s part. A run folder holds:

    recipe.yaml            the resolved recipe (every field)
    metrics.csv            one row per step and per epoch (loss, lr, volumes/s, diagnostics)
    tensorboard/           the same scalars for TensorBoard
    checkpoints/last.pt    written atomically after every epoch; ``resume=True`` continues from it
    run_notes.txt          every note the run printed (keys read under new names, budget, precision fall-back,
                           resume, the evaluation's notes), time-stamped
    encoder.pt / .json     the trained MONAI network's state dict and how to rebuild it
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torchio as tio
from rich.console import Console

from medssl.config import ViewsConfig
from medssl.data.batched_views import build_batched_views
from medssl.data.cache import check_cache_dtype
from medssl.data.cohort import Cohort, check_same_shape
from medssl.data.views import MultiViewDataset, build_view_transform, resize_transform
from medssl.errors import RecipeError
from medssl.methods import Method, MethodNeeds, build_method, method_needs
from medssl.models import save_encoder
from medssl.models.features import extract_features
from medssl.recipe import Recipe, dump_recipe
from medssl.train.checkpoint import resumable_checkpoint
from medssl.train.distributed import DistributedContext, gather_with_grad, init_distributed, shutdown_distributed
from medssl.train.handlers import Checkpointing, CollapseMonitor, Handler, TrainingFeatures
from medssl.train.loading import BatchViewsLoader, EpochLoader
from medssl.train.setup import (
    bias_classes_for,
    check_input_size,
    embedded_cohort_note,
    epochs_from_steps,
    label_encoder_for,
    make_optimizer,
    make_scheduler,
    open_cohort,
    resolve_device,
    safe_precision,
)
from medssl.train.trainer import RunResult, Runtime, Schedule, Trainer


@dataclass
class TrainingData:
    """The training cohort as the trainer reads it."""

    cohort: Cohort  # the whole cohort (evaluation uses every split)
    train_cohort: Cohort  # the subjects trained on
    dataset: MultiViewDataset
    loader: EpochLoader | BatchViewsLoader
    steps_per_epoch: int

    @property
    def bias_classes(self) -> int | None:
        """Classes of ``data.bias`` in the batches (method.debias), None when they carry none."""
        return int(self.dataset.biases.max()) + 1 if int(self.dataset.biases.min()) >= 0 else None


@dataclass
class Pretraining:
    """A pre-training run ready to start: the trainer, its method and where it came from."""

    trainer: Trainer
    method: Method
    recipe: Recipe  # as resolved: embedded budget and its epochs applied
    data: TrainingData
    resume_from: dict | None  # the checkpoint state to continue from, already checked


class Notes(list):
    """Notes of a run, printed as they come by the main process."""

    def __init__(self, console: Console | None, main: bool):
        super().__init__()
        self.console = console if main else None

    def say(self, message: str) -> None:
        self.append(message)
        if self.console is not None:
            self.console.print(message)


def check_label(recipe: Recipe, needs: MethodNeeds) -> None:
    """A method that trains on a label needs ``data.label`` (a fine-tuning recipe has none: it is not for pretrain)."""
    if needs.label and recipe.data.label is None:
        raise RecipeError(
            f"method.name = {needs.name!r} needs a label: set data.label (e.g. age); "
            "a fine-tuning recipe (finetune_diagnosis) runs with medssl finetune"
        )


def training_views(recipe: Recipe, needs: MethodNeeds, train: Cohort) -> MultiViewDataset:
    """The training subjects' random views, with the label and bias (site) the method reads."""
    check_label(recipe, needs)
    label = recipe.data.label if needs.label else None
    shape = recipe.data.volume_shape
    if not shape:
        check_same_shape(train)  # else the first batch fails in torch.stack without naming a file
    # A cohort cached at this shape (medssl data cache) needs no per-item resampling.
    preprocess = resize_transform(shape) if shape and train.stored_shape() != tuple(shape) else None
    on_device = recipe.views.device == "batch"  # then each volume is loaded once, its views drawn on the device
    check_cache_dtype(train, recipe.data.cache_dtype)
    keep_float16 = on_device and preprocess is None  # a float16 cache's volumes are cast on the device
    return MultiViewDataset(
        train.subjects(keep_float16=keep_float16),
        tio.Compose({}) if on_device else build_view_transform(recipe.views),
        n_views=1 if on_device else needs.views,
        preprocess=preprocess,
        label_key=label,
        label_encoder=label_encoder_for(train, label),
        bias_key=recipe.data.bias if needs.bias else None,
        bias_classes=bias_classes_for(train, recipe.data.bias) if needs.bias else None,
        keep_float16=keep_float16,
    )


def pretraining_data(
    recipe: Recipe,
    needs: MethodNeeds,
    dist: DistributedContext,
    device: torch.device,
    notes: Notes,
    console: Console | None,
) -> TrainingData:
    """Open the recipe's cohort, its training subjects' views and the epoch loader; size the epochs."""
    cohort = open_cohort(recipe, console if dist.is_main else None)
    train = cohort.subset("train")
    if len(train) == 0:
        raise RecipeError(f"{cohort.root}: no participant has split 'train'")
    if recipe.data.max_subjects is not None:
        train = train.head(recipe.data.max_subjects)
    dataset = training_views(recipe, needs, train)
    batch_size, per_process = recipe.train.batch_size, len(train) // dist.world_size
    if batch_size > per_process:
        notes.say(
            f"train.batch_size = {batch_size} is more than the {per_process} training subjects per process: using {per_process}."
        )
        batch_size = per_process
    batches = per_process // batch_size
    accumulate = recipe.train.accumulate
    if recipe.train.max_steps_per_epoch is not None:
        batches = min(batches, recipe.train.max_steps_per_epoch * accumulate)
    if batches < accumulate:
        # Otherwise the epoch would end with gradients accumulated but never applied.
        raise RecipeError(
            f"train.accumulate = {accumulate}: an epoch has only {batches} batch{'es' if batches != 1 else ''} of {batch_size} "
            "subjects per process; lower train.accumulate or train.batch_size"
        )
    epochs = EpochLoader(
        dataset,
        batch_size,
        seed=recipe.train.seed,
        num_workers=recipe.data.num_workers,
        pin_memory=device.type == "cuda",
        world_size=dist.world_size,
        rank=dist.rank,
    )
    loader: EpochLoader | BatchViewsLoader = epochs
    if recipe.views.device == "batch":
        views = build_batched_views(recipe.views)
        views.n_views = needs.views
        loader = BatchViewsLoader(epochs, views, device, seed=recipe.train.seed, rank=dist.rank)
    return TrainingData(cohort, train, dataset, loader, batches // accumulate)


def prepared_method(
    recipe: Recipe,
    method: Method | None,
    sample: torch.Tensor,
    device: torch.device,
    notes: Notes,
    bias_classes: int | None = None,
) -> tuple[Method, str]:
    """The recipe's method (or ``method``) on ``device``, memory format set, input size checked,
    encoder compiled if asked; and the precision it can train in."""
    if method is None:
        torch.manual_seed(recipe.train.seed)
        method = build_method(recipe, bias_classes=bias_classes)
    method = method.to(device)
    if recipe.train.channels_last:
        # torch's stubs omit to()'s memory_format keyword, which Module.to documents and accepts
        method.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    check_input_size(method.encoder, sample, recipe.model.encoder)
    precision, note = safe_precision(recipe.train.precision, device, method.encoder, sample)
    if note:
        notes.say(note)
    if recipe.train.compile:
        method.encoder.network.compile()
    return method, precision


def diagnostic_batch(method: Method, data: TrainingData, seed: int, views: ViewsConfig) -> torch.Tensor | None:
    """A fixed batch of two augmented views of held-out subjects (internal test, else train),
    drawn once, on which alignment, uniformity and collapse are measured every epoch."""
    if not method.has_projection:
        return None
    held_out = data.cohort.subset("internal_test")
    cohort = held_out if len(held_out) >= 2 else data.train_cohort
    # TorchIO's views whatever views.device: the batch's views are only drawn in the training step
    dataset = MultiViewDataset(
        cohort.head(16).subjects(), build_view_transform(views), n_views=2, preprocess=data.dataset.preprocess
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 12345)
        return torch.stack([dataset[index]["views"] for index in range(len(dataset))])


def build_pretraining(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    method: Method | None = None,
) -> Pretraining:
    """Every part of a pre-training run from ``recipe``; ``method`` replaces the recipe's (seeded
    and built by the caller). With ``resume``, the run folder's checkpoint is checked against
    the recipe first: a refused resume leaves the folder as it was."""
    recipe = recipe.model_copy(deep=True)  # the steps set its epochs below
    device = resolve_device(recipe.train.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    notes = Notes(console, dist.is_main)
    for note in recipe.notes:  # keys of earlier medssl versions, read under their new names
        notes.say(note)
    budget_note = embedded_cohort_note(recipe)
    if budget_note:
        per_process = f" per process ({dist.world_size} processes)." if dist.enabled else "."
        notes.say(budget_note.removesuffix(".") + per_process)
    needs = method_needs(recipe)
    if dist.enabled and not needs.distributed:
        raise RecipeError(f"method.name = {needs.name!r} runs on one process: launch it without torchrun")
    data = pretraining_data(recipe, needs, dist, device, notes, console)
    rounding_note = epochs_from_steps(recipe.train, data.steps_per_epoch)
    if rounding_note:
        notes.say(rounding_note)
    # Compared once the epochs of a run in steps are known (the saved recipe holds those); still
    # before anything in the run folder is touched.
    checkpoint = Path(run_dir) / "checkpoints" / "last.pt"
    resume_from = None
    if resume and checkpoint.is_file():
        resume_from, allowed = resumable_checkpoint(checkpoint, dump_recipe(recipe), recipe.train.epochs)
        if allowed:
            notes.say(f"Resuming with {'; '.join(allowed)} (recorded in recipe.yaml).")
    elif resume:
        notes.say(f"No checkpoint in {checkpoint.parent}: starting from scratch.")
    memory_format = torch.channels_last_3d if recipe.train.channels_last else torch.contiguous_format
    sample = data.dataset[0]["views"][:1].to(device, torch.float32, memory_format=memory_format)
    method, precision = prepared_method(recipe, method, sample, device, notes, data.bias_classes)
    trainer = pretraining_trainer(recipe, run_dir, method, data, precision, device, dist, console, notes)
    return Pretraining(trainer, method, recipe, data, resume_from)


def pretraining_trainer(
    recipe: Recipe,
    run_dir: str | Path,
    method: Method,
    data: TrainingData,
    precision: str,
    device: torch.device,
    dist: DistributedContext,
    console: Console | None,
    notes: Notes,
) -> Trainer:
    model: torch.nn.Module = method
    if dist.enabled:
        method.gather = gather_with_grad
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=device_ids)
    optimizer = make_optimizer(method.parameters(), recipe)
    train = recipe.train
    schedule = Schedule(
        epochs=train.epochs,
        steps_per_epoch=data.steps_per_epoch,
        accumulate=train.accumulate,
        grad_clip=train.grad_clip,
        seed=train.seed,
    )
    recipe_yaml = dump_recipe(recipe)
    handlers: list[Handler] = [
        Checkpointing(
            recipe_yaml,
            run_files={"recipe.yaml": recipe_yaml},
            every=train.checkpoint_every,
            name=f"{recipe.model.encoder} / {recipe.method.name}",
        )
    ]
    if method_needs(recipe).training_features:
        features = partial(
            extract_features,
            cohort=data.train_cohort,
            recipe=recipe,
            device=device,
            description="clustering features",
            console=console if dist.is_main else None,
        )
        handlers.append(TrainingFeatures(features))
    views = diagnostic_batch(method, data, train.seed, recipe.views)
    if views is not None:
        handlers.append(CollapseMonitor(views))
    runtime = Runtime(device=device, precision=precision, model=model, dist=dist, console=console, notes=notes)
    return Trainer(
        method,
        optimizer,
        data.loader,
        run_dir,
        schedule,
        scheduler=make_scheduler(optimizer, recipe.train, data.steps_per_epoch),
        runtime=runtime,
        handlers=handlers,
    )


def run_pretraining(pretraining: Pretraining, on_epoch_end: Callable[[int], None] | None = None) -> RunResult:
    """Run the trainer, write ``encoder.pt`` (main process) and leave the process group."""
    trainer = pretraining.trainer
    result = trainer.run(pretraining.resume_from, on_epoch_end)
    if result.main_process:
        save_encoder(pretraining.method.encoder, trainer.run_dir / "encoder.pt")
    shutdown_distributed(trainer.dist)
    return result


def train_encoder(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    method: Method | None = None,
) -> RunResult:
    """Pre-train the recipe's encoder (or ``method``'s) without evaluating it; see the module docstring."""
    return run_pretraining(
        build_pretraining(recipe, run_dir, resume=resume, console=console, method=method), on_epoch_end
    )
