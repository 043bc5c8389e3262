"""The training engine shared by every method: recipe -> cohort -> views -> encoder -> loss
-> checkpoint -> evaluation.

``pretrain(recipe, run_dir)`` runs a recipe end to end and writes the run folder:

    recipe.yaml            the resolved recipe (every field)
    metrics.csv            one row per step and per epoch (loss, lr, volumes/s, diagnostics)
    tensorboard/           the same scalars for TensorBoard
    checkpoints/last.pt    written atomically after every epoch; ``resume=True`` continues from it
    encoder.pt / .json     the trained MONAI network's state dict and how to rebuild it
    loss.png               the loss curve
    eval/                  metrics.json, metrics.csv and plots, when the recipe asks for evaluation

Each epoch reseeds every random generator from (seed, epoch), so an interrupted run that
resumes from its last checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from medssl.config import Recipe, dump_recipe
from medssl.data.cohort import Cohort, check_same_shape, load_cohort
from medssl.data.synthetic import embedded_cohort
from medssl.data.views import MultiViewDataset, build_view_transform, resize_transform, seed_worker
from medssl.errors import CheckpointError, RecipeError, TrainingError
from medssl.files import atomic_write_text, remove_stale_temporaries
from medssl.methods import Method, build_method, method_needs
from medssl.models import save_encoder
from medssl.train.checkpoint import load_checkpoint, restore_rng, restore_scaler, save_checkpoint
from medssl.train.distributed import (
    DistributedContext,
    barrier,
    gather_with_grad,
    init_distributed,
    reduce_mean,
    shutdown_distributed,
)
from medssl.train.lars import LARS
from medssl.train.loading import EpochSampler, EpochSeededDataset
from medssl.train.metrics_log import MetricsLog

COLLAPSE_RATIO = 0.1  # embedding std below 10% of a uniform spread's 1/sqrt(d) means collapse


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    first_loss: float
    last_loss: float
    evaluation: dict | None = None
    notes: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists twenty device types, most of which medssl never runs on
        raise RecipeError(f"train.device = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise RecipeError(f"train.device = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device = {name!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return device


def apply_embedded_budget(recipe: Recipe) -> tuple[Recipe, str | None]:
    """When no cohort is given, train on the embedded synthetic cohort with its budget:
    batch size, learning rate and encoder of ``train.embedded`` (epochs follow from its
    steps once the cohort is open, see :func:`embedded_epochs`)."""
    if not recipe.uses_embedded_cohort:
        return recipe, None
    budget = recipe.train.embedded
    resolved = recipe.model_copy(deep=True)
    if budget.epochs is not None:
        resolved.train.epochs = budget.epochs
    resolved.train.batch_size = budget.batch_size
    if budget.lr is not None:
        resolved.train.lr = budget.lr
    if budget.encoder is not None:
        resolved.model = resolved.model.model_copy(update={"encoder": budget.encoder, "widths": budget.widths})
    synthetic = recipe.data.synthetic
    length = f"{budget.epochs} epochs" if budget.epochs is not None else f"{budget.steps} steps"
    widths = f" ({'-'.join(map(str, resolved.model.widths))} channels)" if resolved.model.widths else ""
    note = (f"data.root not set: using the embedded synthetic cohort ({synthetic.subjects} subjects, {synthetic.sites} sites, "
            f"{synthetic.shape}^3 voxels) with its budget: {resolved.model.encoder}{widths}, {length} of batch {budget.batch_size}.")
    return resolved, note


def embedded_epochs(recipe: Recipe, original_epochs: int, steps_per_epoch: int) -> None:
    """Set the epochs of an embedded run from its budget's steps, scaling the warm-up with them.

    The warm-up keeps the share of the run it has in the recipe's real-data schedule (10 of
    100 epochs stays a tenth), so schedules scale with the budget actually run.
    """
    budget = recipe.train.embedded
    if not recipe.uses_embedded_cohort or budget.epochs is not None:
        return
    epochs = max(1, math.ceil(budget.steps / max(steps_per_epoch, 1)))
    if recipe.train.warmup_epochs:
        recipe.train.warmup_epochs = min(epochs - 1, round(recipe.train.warmup_epochs * epochs / original_epochs))
    recipe.train.epochs = epochs


def open_cohort(recipe: Recipe, console: Console | None = None) -> Cohort:
    """The recipe's cohort: ``data.root``, or the embedded synthetic cohort (generated once, cached)."""
    root = recipe.data.root
    if root is None:
        root = embedded_cohort(recipe.data.synthetic, progress=console is not None)
    return load_cohort(root, openbhb_modality=recipe.data.openbhb_modality, openbhb_masks=recipe.data.openbhb_masks)


def label_encoder_for(cohort: Cohort, label: str | None) -> dict[str, int] | None:
    """Map a categorical label column (sex, diagnosis, site) to integers; None for numeric ones."""
    if label is None:
        return None
    if label not in cohort.table.columns:
        raise RecipeError(f"data.label = {label!r}: no such column in the participants table (columns: {', '.join(cohort.table.columns)})")
    values = cohort.table[label]
    if values.isna().any():
        raise RecipeError(f"data.label = {label!r}: the column has missing values")
    # pandas >= 3 reads text columns as StringDtype, which numpy cannot interpret: ask pandas.
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return None
    return {value: index for index, value in enumerate(sorted(values.astype(str).unique()))}


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then constant, cosine or per-epoch step decay."""
    train = recipe.train
    total = max(train.epochs * steps_per_epoch, 1)
    warmup = train.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.scheduler == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if train.scheduler == "step":
            return train.step_gamma ** (step // steps_per_epoch)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(parameters: Iterable[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    train = recipe.train
    parameters = [p for p in parameters if p.requires_grad]
    # One fused kernel per step instead of ~10 passes over the weights: 7x faster on CPU for
    # ResNet-18's 33M weights (benchmarks/README.md), also the fastest path on CUDA.
    fused = bool(parameters) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "lars":
        return LARS(parameters, lr=train.lr, weight_decay=train.weight_decay, momentum=train.momentum)
    raise RecipeError(f"train.optimizer = {train.optimizer!r}: expected adam, adamw, sgd or lars")


def bf16_conv_hazards(model: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Conv3d layers with a 3x3x3 kernel whose input has depth 2.

    torch 2.13 on CPU computes wrong weight gradients for such bf16 convolutions, so the
    engine falls back to float32 when this returns anything.
    """
    hazards: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv3d) and tuple(module.kernel_size) == (3, 3, 3):
            def record(module, inputs, output, name=name):
                if inputs[0].shape[2] == 2:
                    hazards.append(name)
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return hazards


# Settings a resumed run may change: they only say how far to go, how often to save, how to read
# the data, what to evaluate or how a later fine-tuning runs, so the folder stays true to what was
# trained. Any other change would be overridden by the checkpoint's optimiser state or contradict
# the epochs already run.
RESUMABLE_CHANGES = ("name", "description", "train.epochs", "train.embedded.epochs", "train.embedded.steps",
                     "train.checkpoint_every", "data.num_workers", "eval.", "finetune.")


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {key: value for name, child in tree.items() for key, value in _flatten(child, f"{prefix}{name}.").items()}


def resume_differences(saved_yaml: str, current_yaml: str) -> tuple[list[str], list[str]]:
    """``KEY: SAVED -> NOW`` for every recipe key that differs, split into (refused, allowed)."""
    import yaml

    saved, current = _flatten(yaml.safe_load(saved_yaml) or {}), _flatten(yaml.safe_load(current_yaml) or {})
    refused, allowed = [], []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            change = f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
            # a key the saved recipe lacks is a setting added to medssl since: not the user's change
            (allowed if key.startswith(RESUMABLE_CHANGES) or key not in saved else refused).append(change)
    return refused, allowed


class EpochContext:
    """What a method's ``prepare_epoch`` may use: feature extraction, optimiser, logging."""

    def __init__(self, engine: Trainer):
        self.engine = engine
        self.logs: dict[str, float] = {}

    def extract_features(self, encoder: torch.nn.Module) -> np.ndarray:
        from medssl.eval.features import extract_features

        return extract_features(encoder, self.engine.train_cohort, self.engine.recipe, device=self.engine.device,
                                description="clustering features", console=self.engine.console)

    def forget_optimizer_state(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for parameter in parameters:
            self.engine.optimizer.state.pop(parameter, None)

    def log(self, values: dict[str, float]) -> None:
        self.logs.update(values)


class Trainer:
    """One pre-training run. Use :func:`pretrain` rather than this class directly."""

    def __init__(self, recipe: Recipe, run_dir: Path, console: Console | None = None):
        self.console = console
        self.notes: list[str] = []
        self.original_epochs = recipe.train.epochs
        self.recipe, note = apply_embedded_budget(recipe)
        if note:
            self.say(note)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(self.recipe.train.device)
        self.dist: DistributedContext = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.needs = method_needs(self.recipe)
        if self.dist.enabled and not self.needs.distributed:
            raise RecipeError(f"method.name = {self.needs.name!r} runs on one process: launch it without torchrun")

    def say(self, message: str) -> None:
        self.notes.append(message)
        if self.console is not None and self.dist_is_main():
            self.console.print(message)

    def dist_is_main(self) -> bool:
        return getattr(self, "dist", DistributedContext()).is_main

    # -------------------------------------------------------------- set-up
    def build_data(self) -> None:
        recipe = self.recipe
        self.cohort = open_cohort(recipe, self.console if self.dist_is_main() else None)
        train = self.cohort.subset("train")
        if len(train) == 0:
            raise RecipeError(f"{self.cohort.root}: no participant has split 'train'")
        if recipe.data.max_subjects is not None:
            train = train.head(recipe.data.max_subjects)
        self.train_cohort = train
        label = recipe.data.label if self.needs.label else None
        if self.needs.label and label is None:
            raise RecipeError(f"method.name = {self.needs.name!r} needs a label: set data.label (e.g. age)")
        self.label_encoder = label_encoder_for(train, label)
        shape = recipe.data.volume_shape
        if not shape:
            check_same_shape(train)  # else the first batch fails in torch.stack without naming a file
        # A cohort cached at this shape (medssl data cache) needs no per-item resampling.
        preprocess = resize_transform(shape) if shape and train.stored_shape() != tuple(shape) else None
        self.dataset = MultiViewDataset(train.subjects(), build_view_transform(recipe.views), n_views=self.needs.views,
                                        preprocess=preprocess, label_key=label, label_encoder=self.label_encoder)
        batch_size = recipe.train.batch_size
        per_process = len(train) // self.dist.world_size
        if batch_size > per_process:
            self.say(f"train.batch_size = {batch_size} is more than the {per_process} training subjects per process: using {per_process}.")
            batch_size = per_process
        self.batch_size = batch_size
        steps = per_process // batch_size
        if recipe.train.max_steps_per_epoch is not None:
            steps = min(steps, recipe.train.max_steps_per_epoch * recipe.train.accumulate)
        if steps < recipe.train.accumulate:
            # Otherwise the epoch would end with gradients accumulated but never applied.
            raise RecipeError(f"train.accumulate = {recipe.train.accumulate}: an epoch has only {steps} batches of {batch_size} "
                              "subjects per process; lower train.accumulate or train.batch_size")
        self.micro_steps_per_epoch = steps
        self.steps_per_epoch = steps // recipe.train.accumulate
        embedded_epochs(recipe, self.original_epochs, self.steps_per_epoch)

    def loader(self, epoch: int, sampler: torch.utils.data.Sampler | None) -> DataLoader:
        """The epoch's batches: shuffled indices (or ``sampler``), views seeded by (seed, epoch, subject).

        One ``DataLoader`` serves every epoch, so worker processes persist across epochs;
        memory is pinned on GPU so host-to-device copies overlap compute (``non_blocking``).
        """
        recipe = self.recipe
        if sampler is None:
            if self.dist.enabled:
                sampler = DistributedSampler(self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                             shuffle=True, seed=recipe.train.seed, drop_last=True)
                sampler.set_epoch(epoch)
            else:
                generator = torch.Generator().manual_seed(recipe.train.seed * 1000 + epoch)
                sampler = RandomSampler(self.dataset, generator=generator)
        if getattr(self, "_loader", None) is None:
            self._epoch_keys = EpochSampler()
            workers = recipe.data.num_workers
            self._loader = DataLoader(EpochSeededDataset(self.dataset, recipe.train.seed), batch_size=self.batch_size,
                                      sampler=self._epoch_keys, drop_last=True, num_workers=workers,
                                      worker_init_fn=seed_worker, pin_memory=self.device.type == "cuda",
                                      persistent_workers=workers > 0)
        self._epoch_keys.set_epoch(epoch, sampler)
        return self._loader

    def build_model(self) -> None:
        recipe = self.recipe
        torch.manual_seed(recipe.train.seed)
        self.method: Method = build_method(recipe).to(self.device)
        self.memory_format = torch.channels_last_3d if recipe.train.channels_last else torch.contiguous_format
        if recipe.train.channels_last:
            self.method.to(memory_format=torch.channels_last_3d)
        self.precision = recipe.train.precision
        self.check_input_size()
        if self.precision == "bf16" and self.device.type == "cpu":
            sample = self.sample_volume()
            self.method.encoder.eval()
            hazards = bf16_conv_hazards(self.method.encoder, sample)
            self.method.encoder.train()
            if hazards:
                self.say(f"train.precision = 'bf16' falls back to fp32: on CPU, 3x3x3 convolutions with depth-2 inputs "
                         f"({', '.join(hazards[:3])}) get wrong bf16 gradients in this torch version.")
                self.precision = "fp32"
        if recipe.train.compile:
            self.method.encoder.network.compile()
        if self.dist.enabled:
            self.method.gather = gather_with_grad
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, device_ids=device_ids)
        else:
            self.model = self.method
        self.optimizer = make_optimizer(self.method.parameters(), recipe)
        self.scheduler = make_scheduler(self.optimizer, recipe, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16" and self.device.type == "cuda")

    def sample_volume(self) -> torch.Tensor:
        volume = self.dataset[0]["views"][:1]
        return volume.to(self.device, memory_format=self.memory_format)

    def check_input_size(self) -> None:
        sample = self.sample_volume()
        was_training = self.method.encoder.training
        self.method.encoder.eval()
        try:
            with torch.no_grad():
                self.method.encoder(sample)
        except RuntimeError as exc:
            raise RecipeError(f"model.encoder = {self.recipe.model.encoder!r} cannot take volumes of shape "
                              f"{tuple(sample.shape[2:])} ({str(exc).splitlines()[0]}); use larger volumes (data.volume_shape)") from None
        finally:
            self.method.encoder.train(was_training)

    def autocast(self):
        enabled = self.precision in ("bf16", "fp16")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)

    # -------------------------------------------------------------- run
    def run(self, resume: bool = False, on_epoch_end: Callable[[int], None] | None = None) -> RunResult:
        recipe = self.recipe
        seed_everything(recipe.train.seed)
        main = self.dist.is_main
        checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        # Everything that can refuse the resume runs before the run folder is touched.
        state = self.resumable_state(checkpoint_path) if resume and checkpoint_path.is_file() else None
        self.build_data()
        self.build_model()
        epochs_done, step = self.restore(state, checkpoint_path) if state is not None else (0, 0)
        recipe_yaml = dump_recipe(recipe)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir, checkpoint_path.parent)
            atomic_write_text(self.run_dir / "recipe.yaml", recipe_yaml)
        # purge_step: TensorBoard drops the events of steps the resumed run is about to redo.
        self.log = MetricsLog(self.run_dir, enabled=main, purge_step=step + 1 if state is not None else None)
        if state is not None:
            self.log.truncate_after(epochs_done)
            self.say(f"Resuming {self.run_dir} after epoch {epochs_done} (step {step}).")
        elif resume:
            self.say(f"No checkpoint in {checkpoint_path.parent}: starting from scratch.")
        total_steps = recipe.train.epochs * self.steps_per_epoch
        diagnostic_views = self.diagnostic_batch()
        try:
            for epoch in range(epochs_done, recipe.train.epochs):
                step = self.run_epoch(epoch, step, total_steps, diagnostic_views)
                if main and ((epoch + 1) % recipe.train.checkpoint_every == 0 or epoch + 1 == recipe.train.epochs):
                    save_checkpoint(checkpoint_path, method=self.method, optimizer=self.optimizer, scheduler=self.scheduler,
                                    epoch=epoch + 1, step=step, recipe_yaml=recipe_yaml, scaler=self.scaler)
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
            # Every process leaves only once the last checkpoint is on disk (a resume may follow at once).
            barrier(self.dist)
        finally:
            self.log.close()
            self._loader = None  # ends persistent workers
        result = RunResult(self.run_dir, recipe.train.epochs, *self.loss_range(), notes=self.notes)
        if main:
            self.finish(result)
        shutdown_distributed(self.dist)
        return result

    def resumable_state(self, checkpoint_path: Path) -> dict:
        """The checkpoint, once its recipe is known to agree with this one (see :func:`resume_differences`)."""
        state = load_checkpoint(checkpoint_path)
        refused, allowed = resume_differences(state.get("recipe", ""), dump_recipe(self.recipe))
        if refused:
            raise CheckpointError(f"{checkpoint_path}: does not fit the recipe, which changes settings the run was trained with "
                                  f"({'; '.join(refused)}); resume with the run's recipe, or start a new --out")
        epochs_done = int(state["epochs_done"])
        if self.recipe.train.epochs < epochs_done:
            raise RecipeError(f"train.epochs = {self.recipe.train.epochs}: {checkpoint_path} already holds "
                              f"{epochs_done} epochs; resume with train.epochs >= {epochs_done}")
        if allowed:
            self.say(f"Resuming with {'; '.join(allowed)} (recorded in recipe.yaml).")
        return state

    def restore(self, state: dict, checkpoint_path: Path) -> tuple[int, int]:
        """Load weights, optimiser, scheduler and RNG state; return (epochs done, step)."""
        recipe = self.recipe
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_scaler(state, self.scaler)
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
            raise CheckpointError(f"{checkpoint_path}: does not fit the recipe's {recipe.model.encoder} / {recipe.method.name} "
                                  f"model ({detail}); resume with the recipe of that run or use another --out") from None
        restore_rng(state)
        return int(state["epochs_done"]), int(state["step"])

    def diagnostic_batch(self) -> torch.Tensor | None:
        """A fixed batch of two augmented views of held-out subjects (internal test, else train),
        drawn once, on which alignment, uniformity and collapse are measured every epoch."""
        if not self.method.has_projection:
            return None
        held_out = self.cohort.subset("internal_test")
        cohort = held_out if len(held_out) >= 2 else self.train_cohort
        dataset = MultiViewDataset(cohort.head(16).subjects(), self.dataset.transform, n_views=2,
                                   preprocess=self.dataset.preprocess)
        state = torch.get_rng_state()
        torch.manual_seed(self.recipe.train.seed + 12345)
        views = torch.stack([dataset[index]["views"] for index in range(len(dataset))])
        torch.set_rng_state(state)
        return views

    def run_epoch(self, epoch: int, step: int, total_steps: int, diagnostic_views: torch.Tensor | None) -> int:
        recipe = self.recipe
        seed_everything(recipe.train.seed * 1000 + epoch)
        context = EpochContext(self)
        self.method.train()
        sampler = self.method.prepare_epoch(epoch, context)
        accumulate = recipe.train.accumulate
        losses = []
        progress = self.progress_bar(epoch)
        task = progress.add_task(f"epoch {epoch + 1}/{recipe.train.epochs}", total=self.steps_per_epoch, loss="-", lr="-", speed="-")
        with progress:
            started = time.perf_counter()
            micro = 0
            for batch in self.loader(epoch, sampler):
                if micro >= self.steps_per_epoch * accumulate:
                    break
                batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
                # Under DDP, gradients are all-reduced only on the micro-batch that ends an optimiser step.
                syncing = (micro + 1) % accumulate == 0 or not self.dist.enabled
                with (nullcontext() if syncing else self.model.no_sync()):
                    with self.autocast():
                        loss, extra = self.model(batch)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: the loss is {loss.item()}; lower train.lr, set train.grad_clip or use train.precision fp32")
                    self.scaler.scale(loss / accumulate).backward()
                micro += 1
                losses.append(loss.item())
                if micro % accumulate:
                    continue
                grad_norm = self.optimizer_step(epoch, step)
                step += 1
                self.method.after_step(step, total_steps)
                elapsed = time.perf_counter() - started
                volumes = batch["views"].shape[0] * batch["views"].shape[1] * accumulate * self.dist.world_size
                speed = volumes / max(elapsed, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                step_loss = reduce_mean(float(np.mean(losses[-accumulate:])), self.dist, self.device)
                self.log.log("step", epoch, step, loss=step_loss, lr=lr, volumes_per_s=speed, grad_norm=grad_norm, **extra)
                progress.update(task, advance=1, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", speed=f"{speed:.1f}")
                started = time.perf_counter()
        self.end_of_epoch(epoch, step, losses, context, diagnostic_views)
        return step

    def optimizer_step(self, epoch: int, step: int) -> float:
        self.scaler.unscale_(self.optimizer)
        clip = self.recipe.train.grad_clip
        if clip is None:  # the norm is still logged and checked, without a pass rescaling every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.method.parameters() if p.grad is not None])
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.method.parameters(), clip)
        if not torch.isfinite(grad_norm):
            raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: non-finite gradient norm ({grad_norm.item()}); "
                                "lower train.lr, set train.grad_clip or use train.precision fp32")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(grad_norm)

    def end_of_epoch(self, epoch: int, step: int, losses: list[float], context: EpochContext, diagnostic_views: torch.Tensor | None) -> None:
        self.method.eval()
        values = dict(context.logs)
        if diagnostic_views is not None:
            with self.autocast():
                values.update(self.method.diagnostics(diagnostic_views.to(self.device)))
        self.method.train()
        values["loss"] = reduce_mean(float(np.mean(losses)) if losses else float("nan"), self.dist, self.device)
        self.log.log("epoch", epoch, step, **values)
        ratio = values.get("embedding_std_ratio")
        if self.method.monitors_collapse and ratio is not None and ratio < COLLAPSE_RATIO:
            self.say(f"[yellow]warning:[/] epoch {epoch + 1}: embeddings are collapsing (per-dimension std is "
                     f"{ratio:.3f} x 1/sqrt(d)); check the learning rate, the predictor and the augmentations.")

    def progress_bar(self, epoch: int) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} vol/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=self.console is None or not self.dist.is_main, transient=False,
        )

    def loss_range(self) -> tuple[float, float]:
        table = self.log.table()
        epochs = table[table["kind"] == "epoch"]["loss"].astype(float) if len(table) else []
        if len(epochs) == 0:
            return float("nan"), float("nan")
        return float(epochs.iloc[0]), float(epochs.iloc[-1])

    def finish(self, result: RunResult) -> None:
        from medssl.eval.plots import plot_loss_curve

        save_encoder(self.method.encoder, self.run_dir / "encoder.pt")
        table = self.log.table()
        if len(table):
            plot_loss_curve(table[table["kind"] == "step"], self.run_dir / "loss.png")
        if self.recipe.eval.after_pretrain:
            from medssl.eval.run import evaluate_encoder

            result.evaluation = evaluate_encoder(self.method.encoder, self.cohort, self.recipe, self.run_dir / "eval",
                                                 device=self.device, console=self.console)


def pretrain(recipe: Recipe, run_dir: str | Path, resume: bool = False, console: Console | None = None,
             on_epoch_end: Callable[[int], None] | None = None) -> RunResult:
    """Pre-train the recipe's encoder with its method; see the module docstring for the run folder."""
    return Trainer(recipe, Path(run_dir), console=console).run(resume=resume, on_epoch_end=on_epoch_end)

