"""Fine-tuning a pre-trained encoder on a small labelled (clinical) cohort: ``medssl finetune``.

The protocol of the fine-tuning tables of Dufumier et al., "Contrastive learning with
continuous proxy meta-data for 3D MRI classification" (MICCAI 2021): an encoder
pre-trained on a large healthy cohort gets a linear head and is trained to classify
patients vs. controls (or to regress a score); it is tested on held-out subjects of the
training sites (**internal** test, split ``internal_test``) and on sites never seen in
training (**external** test, split ``external_test``), and every number is the mean +- std
over repeated runs. A randomly initialised encoder trained with the same recipe
(``--encoder none``) is the baseline pre-training must beat.

One run, for one seed:

1. the ``train`` split is cut into a *fit* part and a *validation* part
   (:func:`validation_split`: stratified on site and class, a subject never in both);
2. the head (and, by ``finetune.mode``, the encoder) is trained on the fit part with a
   class-weighted cross-entropy (or an L1 loss on the standardised target for regression);
   the epoch of lowest validation loss is kept (early stopping with ``finetune.patience``);
3. the kept model predicts both test splits: ROC AUC and balanced accuracy for
   classification, MAE and R^2 for regression;
4. the trivial baselines are scored on the same splits (:func:`baseline_metrics`): the
   constant predictor and a linear probe on intensity percentiles.

Modes: ``linear`` (frozen encoder in eval mode, so not even BatchNorm statistics move: a
linear probe), ``full`` (everything at ``finetune.lr``), ``lower_lr`` (the encoder at
``finetune.lr * finetune.encoder_lr_factor``, the head at ``finetune.lr``) and ``scratch``
(no pre-trained encoder: a fresh one, seeded, trained like ``full``). In mode ``linear``
without augmentation the features are computed once, standardised with the fit part's
statistics (as the probes of ``medssl evaluate`` are) and only the head is trained on them:
seconds instead of minutes on a CPU.

Files written to the run folder: ``finetune.json`` (settings, summary, baselines, every run, notes),
``finetune.csv`` (one row per seed and test split, then ``mean`` and ``std`` rows),
``predictions.csv`` (every test subject, every seed), ``history.csv`` (losses per epoch),
``roc_internal_test.png`` / ``roc_external_test.png`` (``predictions_<split>.png`` for
regression) and the resolved ``recipe.yaml``.

Example:
    >>> from medssl.config import load_recipe
    >>> recipe = load_recipe("finetune_diagnosis", ["finetune.mode=linear"])
    >>> results = finetune_encoder(recipe, "runs/yaware_age-20250101-120000", "runs/finetune")
    >>> results["summary"]["external_test"]["roc_auc"]
    {'mean': ..., 'std': ..., 'n_seeds': 3}
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.config import FinetuneConfig, Recipe, dump_recipe, load_recipe
from medssl.data.cohort import Cohort
from medssl.data.views import VolumeDataset, build_eval_transform, build_view_transform, resize_transform, seed_worker
from medssl.errors import CheckpointError, CohortError, MedsslError, RecipeError, TrainingError
from medssl.eval.features import IntensityStatistics, extract_features
from medssl.eval.probes import classification_probe, is_continuous, quiet_fits, regression_probe, roc_auc
from medssl.eval.score import TEST_SPLITS, as_labels, balanced_accuracy, r2
from medssl.files import atomic_write_text, json_ready
from medssl.methods import build_encoder_for
from medssl.models import Encoder, encoder_spec, load_encoder
from medssl.train.setup import (
    apply_embedded_budget,
    bf16_conv_hazards,
    make_optimizer,
    open_cohort,
    resolve_device,
    seed_everything,
)

MODES = ("linear", "full", "lower_lr", "scratch")
CLASSIFICATION_METRICS = ("roc_auc", "balanced_accuracy")
REGRESSION_METRICS = ("mae", "r2")
MISSING_TEXT = {"", "nan", "none", "n/a", "na"}  # how a missing label looks once the cohort loader made it text
IMPROVEMENT = 1e-6  # a validation loss must drop by more than this to count as better


# ----------------------------------------------------------------------------- metrics
def classification_metrics(y_true: Iterable, probabilities: np.ndarray, classes: list[str]) -> dict[str, float]:
    """ROC AUC and balanced accuracy of class probabilities.

    Args:
        y_true: true class labels (strings, one of ``classes``), shape (n,).
        probabilities: (n, n_classes) scores, columns in the order of ``classes``.
        classes: class labels; for two classes ``classes[1]`` is the positive one.

    Returns:
        ``roc_auc`` (binary, or the macro one-vs-rest mean over the classes present; NaN
        with a single class), ``balanced_accuracy`` of the argmax prediction and ``n``.

    Example:
        >>> classification_metrics(["a", "a", "b", "b"], np.array([[.9, .1], [.6, .4], [.65, .35], [.2, .8]]), ["a", "b"])
        {'roc_auc': 0.75, 'balanced_accuracy': 0.75, 'n': 4}
    """
    y_true = np.asarray(list(y_true), dtype=object)
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(classes, dtype=object)
    predicted = labels[np.argmax(probabilities, axis=1)] if len(y_true) else labels[:0]
    return {
        "roc_auc": roc_auc(y_true, probabilities, labels) if len(y_true) else float("nan"),
        "balanced_accuracy": balanced_accuracy(y_true, predicted) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
    }


def regression_metrics(y_true: Iterable, y_pred: Iterable) -> dict[str, float]:
    """MAE and R^2 (NaN for a constant target).

    Example:
        >>> regression_metrics([1, 2, 3], [2, 2, 5])["mae"]
        1.0
    """
    y_true = np.asarray(list(y_true), dtype=float)
    y_pred = np.asarray(list(y_pred), dtype=float)
    if not len(y_true):
        return {"mae": float("nan"), "r2": float("nan"), "n": 0}
    return {"mae": float(np.mean(np.abs(y_true - y_pred))), "r2": r2(y_true, y_pred), "n": int(len(y_true))}


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1) over runs; NaN values are left out.

    One finite value has std 0; none gives NaN for both.

    Example:
        >>> mean_std([0.7, 0.8, 0.9])
        {'mean': 0.8, 'std': 0.1, 'n_seeds': 3}
    """
    finite = np.array([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if not len(finite):
        return {"mean": float("nan"), "std": float("nan"), "n_seeds": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n_seeds": int(len(finite))}


# ----------------------------------------------------------------------------- target
@dataclass
class Target:
    """What is predicted: a participants column, its task and, for classification, its classes."""

    column: str
    task: str
    classes: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def values(self, table: pd.DataFrame) -> np.ndarray:
        """Class labels (strings) or floats of the column, row by row."""
        column = table[self.column]
        if self.task == "classification":
            return as_labels(column).to_numpy(dtype=object)
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)

    def encode(self, table: pd.DataFrame) -> torch.Tensor:
        """Class indices (int64) or raw values (float32) for the loss."""
        values = self.values(table)
        if self.task == "classification":
            index = {label: position for position, label in enumerate(self.classes)}
            return torch.tensor([index[value] for value in values], dtype=torch.long)
        return torch.tensor(values, dtype=torch.float32)


def known_rows(table: pd.DataFrame, column: str) -> np.ndarray:
    """Rows whose ``column`` holds a value (NaN, and "nan" written by the cohort loader, are missing)."""
    values = table[column]
    missing = values.isna().to_numpy() | values.astype(str).str.strip().str.lower().isin(MISSING_TEXT).to_numpy()
    return ~missing


def resolve_target(table: pd.DataFrame, config: FinetuneConfig) -> Target:
    """Check ``finetune.target`` against the train rows and pick the task and the classes.

    ``task: auto`` means regression for a numeric column with fractional values or more
    than 10 distinct values (the rule of ``medssl evaluate``'s probes), classification
    otherwise (text, or a few integer codes). Classes
    are sorted; the positive one (``finetune.positive_class``, else the last) comes last.
    """
    column = config.target
    if column not in table.columns:
        raise RecipeError(f"finetune.target = {column!r}: no such column in the participants table "
                          f"(columns: {', '.join(map(str, table.columns))})")
    train = table[table["split"] == "train"]
    train = train[known_rows(train, column)]
    if train.empty:
        raise CohortError(f"finetune.target = {column!r}: no train subject has a value")
    numbers = pd.to_numeric(train[column], errors="coerce")
    task = config.task
    if task == "auto":
        fractional = bool(numbers.notna().all() and (numbers % 1 != 0).any())
        task = "regression" if numbers.notna().all() and (is_continuous(numbers) or fractional) else "classification"
    if task == "regression":
        if numbers.isna().any():
            bad = train[column][numbers.isna()].iloc[0]
            raise RecipeError(f"finetune.task = 'regression': column {column!r} holds {bad!r}, not a number")
        return Target(column, "regression")
    classes = sorted(as_labels(train[column]).unique())
    if len(classes) < 2:
        raise CohortError(f"finetune.target = {column!r}: the train split has a single class ({classes[0]!r}); two are needed")
    if config.positive_class is not None:
        if config.positive_class not in classes:
            raise RecipeError(f"finetune.positive_class = {config.positive_class!r}: not a class of {column!r} "
                              f"(classes: {', '.join(classes)})")
        classes = [label for label in classes if label != config.positive_class] + [config.positive_class]
    return Target(column, "classification", classes)


# ----------------------------------------------------------------------------- splits
def validation_split(table: pd.DataFrame, fraction: float = 0.2, seed: int = 0, stratify: tuple[str, ...] = ("site",),
                     group_col: str = "participant_id") -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation part out of a training table, stratified, whole subjects only.

    Subjects (rows sharing ``group_col``) are drawn per stratum (the combination of the
    ``stratify`` columns, e.g. site x class) in proportion to the stratum's size; the
    rounding is resolved by largest remainder, so the validation part has
    ``round(fraction * n_subjects)`` subjects (at least 1, and at least 1 left to fit) and
    every stratum gets its share to within one subject. All rows of a subject go to the
    same part.

    Args:
        table: the training rows.
        fraction: share of the subjects held out, in (0, 1).
        seed: seed of the draw.
        stratify: columns whose combination defines the strata.
        group_col: column identifying a subject.

    Returns:
        ``(fit_idx, val_idx)``: sorted row positions, disjoint, covering every row.

    Example:
        >>> fit_idx, val_idx = validation_split(train_table, 0.2, seed=0, stratify=("site", "diagnosis"))
    """
    if not 0 < fraction < 1:
        raise RecipeError(f"finetune.val_fraction = {fraction!r}: expected a number in (0, 1)")
    table = table.reset_index(drop=True)
    for column in (group_col, *stratify):
        if column not in table.columns:
            raise CohortError(f"participants table: missing column {column!r} (columns: {', '.join(map(str, table.columns))})")
    groups = table[group_col].astype(str)
    firsts = table.loc[~groups.duplicated()]
    if len(firsts) < 2:
        raise CohortError(f"the train split has {len(firsts)} subject(s): a validation part needs at least 2")
    strata = firsts[list(stratify)].astype(str).agg("|".join, axis=1) if stratify else pd.Series("all", index=firsts.index)
    n_val = min(max(int(round(fraction * len(firsts))), 1), len(firsts) - 1)

    rng = np.random.default_rng(seed)
    counts = strata.value_counts().sort_index()
    quotas = counts * (n_val / len(firsts))
    taken = np.floor(quotas).astype(int)
    remainders = (quotas - taken).to_numpy()
    # largest remainders first; ties broken at random
    order = sorted(range(len(counts)), key=lambda k: (-round(remainders[k], 9), rng.random()))
    for k in order[: n_val - int(taken.sum())]:
        taken.iloc[k] += 1
    val_groups: set[str] = set()
    for stratum, n_take in taken.items():
        members = groups[firsts.index[(strata == stratum).to_numpy()]].to_numpy()
        val_groups.update(rng.permutation(members)[:n_take].tolist())
    in_val = groups.isin(val_groups).to_numpy()
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def check_no_leakage(parts: dict[str, pd.DataFrame], group_col: str = "participant_id", site_col: str = "site") -> None:
    """Raise a :class:`CohortError` if a subject is in two parts, or an external site is trained on.

    ``parts`` maps part names (``fit``, ``validation``, ``internal_test``,
    ``external_test``) to their rows. The sites of ``external_test`` must appear in no
    other part: the external test measures generalisation to unseen scanners.
    """
    owner: dict[str, str] = {}
    for name, rows in parts.items():
        for subject in rows[group_col].astype(str).unique():
            if subject in owner:
                raise CohortError(f"participant {subject} is in both {owner[subject]} and {name}: a subject must be in one part only")
            owner[subject] = name
    external = parts.get("external_test")
    if external is None or external.empty:
        return
    external_sites = set(external[site_col].astype(str))
    for name, rows in parts.items():
        if name == "external_test":
            continue
        shared = sorted(external_sites & set(rows[site_col].astype(str)))
        if shared:
            raise CohortError(f"site {shared[0]!r} is in external_test and in {name}: external sites must be held out entirely "
                              f"(check the 'split' column of the participants table)")


# ----------------------------------------------------------------------------- model
class FinetuneModel(nn.Module):
    """An encoder with a linear head: (B, C, D, H, W) volumes -> (B, n_outputs) scores.

    With ``freeze_encoder`` the encoder gets no gradient and stays in eval mode even when
    the model trains, so its BatchNorm statistics do not move either: a linear probe.

    Example:
        >>> model = FinetuneModel(build_encoder("resnet18"), n_outputs=2, freeze_encoder=True)
        >>> model(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 2])
    """

    def __init__(self, encoder: Encoder, n_outputs: int, freeze_encoder: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_outputs)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            features = self.encoder(volumes)
        return self.head(features)

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self


def build_optimizer(model: FinetuneModel, recipe: Recipe, mode: str) -> torch.optim.Optimizer:
    """The recipe's optimiser (``train.optimizer``, weight decay...) with two parameter groups.

    ``param_groups[0]`` ("head") runs at ``finetune.lr``; ``param_groups[1]`` ("encoder")
    at the same rate in modes ``full`` and ``scratch``, at ``lr * encoder_lr_factor`` in
    ``lower_lr``, and does not exist in ``linear``.
    """
    if mode not in MODES:
        raise RecipeError(f"finetune.mode = {mode!r}: expected one of {', '.join(MODES)}")
    settings = recipe.model_copy(deep=True)
    settings.train.lr = recipe.finetune.lr
    optimizer = make_optimizer(model.head.parameters(), settings)
    optimizer.param_groups[0]["name"] = "head"
    if mode != "linear":
        factor = recipe.finetune.encoder_lr_factor if mode == "lower_lr" else 1.0
        optimizer.add_param_group({"params": [p for p in model.encoder.parameters() if p.requires_grad],
                                   "lr": recipe.finetune.lr * factor, "name": "encoder"})
    return optimizer


def pretraining_differences(source: str | Path, recipe: Recipe) -> list[str]:
    """Input settings of the pre-training run (its ``recipe.yaml``, when beside the encoder)
    that differ from the fine-tuning recipe: the encoder still loads, but sees other inputs."""
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        pretraining = load_recipe(folder / "recipe.yaml") if (folder / "recipe.yaml").is_file() else None
    except MedsslError:
        return []
    if pretraining is None:
        return []
    notes = []
    if pretraining.views.normalize != recipe.views.normalize:
        notes.append(f"views.normalize is {recipe.views.normalize!r} but the encoder was pre-trained with {pretraining.views.normalize!r}")
    shapes = [input_shape(pretraining), input_shape(recipe)]
    if None not in shapes and shapes[0] != shapes[1]:
        notes.append(f"volumes are {shapes[1]} but the encoder was pre-trained on {shapes[0]} (data.volume_shape)")
    return [f"warning: {note}." for note in notes]


def input_shape(recipe: Recipe) -> tuple[int, ...] | None:
    """The volume shape the encoder sees, when the recipe fixes it (resize, or the embedded cohort)."""
    if recipe.data.volume_shape:
        return tuple(recipe.data.volume_shape)
    return (recipe.data.synthetic.shape,) * 3 if recipe.data.root is None else None


def load_pretrained_encoder(source: str | Path, recipe: Recipe) -> Encoder:
    """Load ``encoder.pt`` (or a run folder holding it) and check it is the recipe's architecture.

    Raises:
        CheckpointError: missing or corrupt file, or an architecture different from the
            recipe's ``model`` section (every differing field is named).
    """
    expected = encoder_spec(recipe.model.encoder, in_channels=recipe.model.in_channels, conv1_stride=recipe.model.conv1_stride,
                            widths=recipe.model.widths)
    try:
        return load_encoder(source, expected=expected)
    except CheckpointError as error:
        if "does not match the recipe" not in str(error):
            raise
        raise CheckpointError(f"{error}; set the recipe's model section to the pre-trained architecture "
                              f"(model.encoder, model.in_channels, model.conv1_stride)") from None


# ----------------------------------------------------------------------------- data
class LabelledInputs(Dataset):
    """``(input, target)`` pairs from a :class:`VolumeDataset` (volumes) or a tensor (cached features)."""

    def __init__(self, inputs: VolumeDataset | torch.Tensor, targets: torch.Tensor):
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.inputs[index]
        return (item["volume"] if isinstance(item, dict) else item), self.targets[index]


def volume_dataset(part: Cohort, recipe: Recipe, augment: bool) -> VolumeDataset:
    """Volumes of a cohort part, normalised (and resized) as in pre-training; random views if ``augment``."""
    preprocess = resize_transform(recipe.data.volume_shape) if recipe.data.volume_shape else None
    transform = build_view_transform(recipe.views) if augment else build_eval_transform(recipe.views)
    return VolumeDataset(part.subjects(), transform, preprocess=preprocess)


def make_loader(dataset: Dataset, batch_size: int, recipe: Recipe, shuffle: bool = False, seed: int = 0,
                device: torch.device | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # A last batch of one subject breaks BatchNorm in training: drop it (shuffled, so a different one each epoch).
    drop_last = shuffle and len(dataset) % batch_size == 1 and len(dataset) > 1
    return DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle, drop_last=drop_last,
                      generator=generator, num_workers=recipe.data.num_workers, worker_init_fn=seed_worker,
                      pin_memory=device is not None and device.type == "cuda")


# ----------------------------------------------------------------------------- training
def autocast(precision: str, device: torch.device):
    """The engine's autocast rule: bf16/fp16 autocast on the device, fp32 untouched."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


class TargetLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) for classification; L1 for a (standardised) regression target.

    ``forward(outputs, targets)``: outputs (B, n_outputs); targets (B,) class indices or values.
    """

    def __init__(self, task: str, weights: torch.Tensor | None = None):
        super().__init__()
        self.task = task
        self.register_buffer("weights", weights)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return nn.functional.l1_loss(outputs[:, 0], targets)
        return nn.functional.cross_entropy(outputs, targets, weight=self.weights)


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies n / (k n_c), scikit-learn's "balanced" weights (absent classes count as 1)."""
    counts = torch.bincount(targets, minlength=n_classes).float().clamp(min=1)
    return len(targets) / (n_classes * counts)


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch losses, the kept epoch and the learning rate of each group."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("nan")
    epochs_run: int = 0
    learning_rates: dict[str, float] = field(default_factory=dict)


def fit(forward: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, train_loader: DataLoader,
        val_loader: DataLoader, *, epochs: int, patience: int, device: torch.device, precision: str = "fp32",
        grad_clip: float | None = None, max_steps_per_epoch: int | None = None, train_mode: nn.Module | None = None,
        progress: Progress | None = None, description: str = "fine-tuning") -> FitResult:
    """Train ``forward`` with early stopping on the validation loss; the best epoch's weights are restored.

    Args:
        forward: maps a batch of inputs to outputs (the whole model, or its head on cached features).
        train_mode: module switched between train and eval mode around each epoch (default ``forward``).
    """
    train_mode = train_mode if train_mode is not None else forward
    result = FitResult(learning_rates={group.get("name", str(k)): group["lr"] for k, group in enumerate(optimizer.param_groups)})
    steps = len(train_loader) if max_steps_per_epoch is None else min(len(train_loader), max_steps_per_epoch)
    task = progress.add_task(description, total=epochs * steps, loss="-", val="-") if progress is not None else None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    loss_fn = loss_fn.to(device)
    done = 0
    # as in the engine: fp16 on CUDA needs loss scaling, bf16 and fp32 do not
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    best_state, best_loss, waited = None, math.inf, 0
    for epoch in range(epochs):
        train_mode.train()
        losses = []
        for step, (inputs, targets) in enumerate(train_loader):
            if step >= steps:
                break
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(precision, device):
                outputs = forward(inputs)
            loss = loss_fn(outputs.float(), targets)
            if not torch.isfinite(loss):
                raise TrainingError(f"{description}, epoch {epoch + 1}, step {step + 1}: the loss is {loss.item()}; "
                                    "lower finetune.lr, set train.grad_clip or use train.precision fp32")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            done += 1
            if progress is not None:
                progress.update(task, advance=1, loss=f"{loss.item():.4f}")
        train_mode.eval()
        outputs, targets = predict(forward, val_loader, device, precision, with_targets=True)
        val_loss = float(loss_fn(outputs.to(device), targets.to(device)))
        result.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                               "val_loss": val_loss})
        result.epochs_run = epoch + 1
        if val_loss < best_loss - IMPROVEMENT:
            best_loss, waited = val_loss, 0
            result.best_epoch, result.best_val_loss = epoch + 1, val_loss
            best_state = {key: value.detach().clone() for key, value in forward.state_dict().items()}
        else:
            waited += 1
        if progress is not None:
            progress.update(task, val=f"{val_loss:.4f} (best epoch {result.best_epoch})")
        if waited >= patience:
            if progress is not None:
                progress.update(task, total=done)
            break
    if best_state is not None:
        forward.load_state_dict(best_state)
    train_mode.eval()
    return result


@torch.no_grad()
def predict(forward: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32",
            with_targets: bool = False):
    """Float32 outputs (n, n_outputs) of ``forward`` over ``loader`` (and the targets, on the CPU)."""
    outputs, targets = [], []
    for inputs, target in loader:
        with autocast(precision, device):
            outputs.append(forward(inputs.to(device, non_blocking=True)).float().cpu())
        targets.append(target)
    outputs = torch.cat(outputs) if outputs else torch.zeros(0, 1)
    return (outputs, torch.cat(targets)) if with_targets else outputs


# ----------------------------------------------------------------------------- protocol
@dataclass
class Parts:
    """The rows of every part of one run: fit and validation (from train), the two test splits."""

    fit: Cohort
    validation: Cohort
    internal_test: Cohort
    external_test: Cohort

    def as_dict(self) -> dict[str, Cohort]:
        return {"fit": self.fit, "validation": self.validation, "internal_test": self.internal_test,
                "external_test": self.external_test}


def split_cohort(cohort: Cohort, target: Target, fraction: float, seed: int, max_subjects: int | None = None,
                 train_size: int | None = None) -> Parts:
    """Fit/validation parts of the train split (stratified on site, and class) plus both test splits, checked for leaks.

    ``train_size`` keeps that many labelled training subjects (fit and validation together),
    drawn per seed and stratified like the validation part: the x-axis of a label-efficiency curve.
    """
    labelled = Cohort(cohort.root, cohort.table[known_rows(cohort.table, target.column)].reset_index(drop=True))
    train = labelled.subset("train")
    if max_subjects is not None:
        train = train.head(max_subjects)
    stratify = ("site", target.column) if target.task == "classification" else ("site",)
    if train_size is not None and train_size < len(train):
        _, kept = validation_split(train.table, train_size / len(train), seed=seed + 7919, stratify=stratify)
        train = Cohort(cohort.root, train.table.iloc[kept].reset_index(drop=True))
    fit_idx, val_idx = validation_split(train.table, fraction, seed=seed, stratify=stratify)
    parts = Parts(
        fit=Cohort(cohort.root, train.table.iloc[fit_idx].reset_index(drop=True)),
        validation=Cohort(cohort.root, train.table.iloc[val_idx].reset_index(drop=True)),
        internal_test=labelled.subset("internal_test"),
        external_test=labelled.subset("external_test"),
    )
    check_no_leakage({name: part.table for name, part in parts.as_dict().items()})
    if target.task == "classification":
        for name in TEST_SPLITS:
            unknown = sorted(set(target.values(getattr(parts, name).table)) - set(target.classes))
            if unknown:
                raise CohortError(f"{name}: class {unknown[0]!r} of {target.column!r} never occurs in the train split "
                                  f"(classes: {', '.join(target.classes)})")
    return parts


def baseline_metrics(intensity: np.ndarray, position_of: dict[str, int], parts: Parts, target: Target) -> dict:
    """The trivial baselines on one seed's splits: ``constant`` (the training part's class
    frequencies, or its mean) and ``intensity`` (a linear probe on intensity percentiles,
    :class:`~medssl.eval.features.IntensityStatistics`, fitted on the fit and validation parts).

    Returns ``{baseline: {test split: metrics}}``, metrics as the fine-tuned model's.
    """
    train = pd.concat([parts.fit.table, parts.validation.table], ignore_index=True)
    rows = [position_of[pid] for pid in train["participant_id"]]
    truth = target.values(train)
    classification = target.task == "classification"
    probe = classification_probe() if classification else regression_probe()
    with quiet_fits(intensity):
        probe.fit(intensity[rows], truth if classification else truth.astype(float))
    results: dict = {"constant": {}, "intensity": {}}
    for name in TEST_SPLITS:
        part = getattr(parts, name)
        if not len(part):
            continue
        tested = intensity[[position_of[pid] for pid in part.table["participant_id"]]]
        values = target.values(part.table)
        if classification:
            frequencies = np.array([(truth == label).mean() for label in target.classes])
            order = [list(probe.classes_).index(label) if label in probe.classes_ else None for label in target.classes]
            scores = probe.predict_proba(tested)
            probabilities = np.column_stack([scores[:, k] if k is not None else np.zeros(len(tested)) for k in order])
            results["constant"][name] = classification_metrics(values, np.tile(frequencies, (len(values), 1)), target.classes)
            results["intensity"][name] = classification_metrics(values, probabilities, target.classes)
        else:
            results["constant"][name] = regression_metrics(values, np.full(len(values), truth.astype(float).mean()))
            results["intensity"][name] = regression_metrics(values, probe.predict(tested))
    return results


def check_input_size(encoder: Encoder, dataset: VolumeDataset, recipe: Recipe, device: torch.device) -> None:
    sample = dataset[0]["volume"][None].to(device)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(sample)
    except RuntimeError as exc:
        raise RecipeError(f"model.encoder = {recipe.model.encoder!r} cannot take volumes of shape {tuple(sample.shape[2:])} "
                          f"({str(exc).splitlines()[0]}); use larger volumes (data.volume_shape)") from None
    finally:
        encoder.train(was_training)


class FineTuner:
    """Runs the protocol of the module docstring for one recipe and one encoder. Use :func:`finetune_encoder`."""

    def __init__(self, recipe: Recipe, encoder_source: str | Path | None, console: Console | None = None):
        self.console = console
        self.notes: list[str] = []
        self.encoder_source = None if encoder_source is None or str(encoder_source).lower() == "none" else Path(encoder_source)
        self.recipe = self.resolve_budget(recipe)  # the embedded budget may set the encoder
        # checked next: a wrong encoder should fail before any cohort is generated or read
        self.pretrained = load_pretrained_encoder(self.encoder_source, self.recipe) if self.encoder_source else None
        for note in pretraining_differences(self.encoder_source, self.recipe) if self.encoder_source else []:
            self.say(note)
        config = self.recipe.finetune
        self.mode = "scratch" if self.encoder_source is None else config.mode
        if self.encoder_source is None and config.mode != "full":
            self.say(f"--encoder none: training from scratch (every weight at finetune.lr); finetune.mode = {config.mode!r} is ignored.")
        self.device = resolve_device(self.recipe.train.device)
        self.precision = self.recipe.train.precision

    def say(self, message: str) -> None:
        self.notes.append(message)
        if self.console is not None:
            self.console.print(message)

    def resolve_budget(self, recipe: Recipe) -> Recipe:
        resolved, note = apply_embedded_budget(recipe)
        if note is None:
            return resolved
        budget = resolved.finetune.embedded
        resolved.finetune.epochs = budget.epochs
        resolved.finetune.batch_size = budget.batch_size
        synthetic = resolved.data.synthetic
        self.say(f"data.root not set: using the embedded synthetic cohort ({synthetic.subjects} subjects, {synthetic.sites} sites, "
                 f"{synthetic.external_sites} external, {synthetic.shape}^3 voxels{', with diagnosis' if synthetic.diagnosis else ''}) "
                 f"with a small budget ({budget.epochs} epochs, batch {budget.batch_size}).")
        return resolved

    # -------------------------------------------------------------- one seed
    def new_model(self, seed: int) -> FinetuneModel:
        """The pre-trained encoder (a fresh copy) or a new one seeded by ``seed``, with a head seeded by ``seed``."""
        torch.manual_seed(seed)
        encoder = copy.deepcopy(self.pretrained) if self.pretrained is not None else build_encoder_for(self.recipe)
        model = FinetuneModel(encoder, self.target.n_outputs, freeze_encoder=self.mode == "linear")
        return model.to(self.device)

    def loss_function(self, fit_targets: torch.Tensor) -> TargetLoss:
        weighted = self.target.task == "classification" and self.recipe.finetune.class_weighting
        return TargetLoss(self.target.task, class_weights(fit_targets, self.target.n_outputs) if weighted else None)

    def run_seed(self, seed: int, progress: Progress | None) -> tuple[dict, pd.DataFrame, list[dict]]:
        config = self.recipe.finetune
        seed_everything(seed)
        parts = split_cohort(self.cohort, self.target, config.val_fraction, seed, self.recipe.data.max_subjects,
                             train_size=config.train_size)
        model = self.new_model(seed)
        targets = {name: self.target.encode(part.table) for name, part in parts.as_dict().items()}
        scale = (0.0, 1.0)
        if self.target.task == "regression":
            fit_values = targets["fit"]
            scale = (float(fit_values.mean()), float(fit_values.std()) if len(fit_values) > 1 and float(fit_values.std()) > 0 else 1.0)
            targets = {name: (values - scale[0]) / scale[1] for name, values in targets.items()}

        if self.features is not None:  # frozen encoder, no augmentation: train the head on cached features
            inputs = {name: self.features[[self.position_of[pid] for pid in part.table["participant_id"]]]
                      for name, part in parts.as_dict().items()}
            # standardised with fit-part statistics, as scikit-learn probes are (StandardScaler in the pipeline)
            mean, std = inputs["fit"].mean(dim=0), inputs["fit"].std(dim=0, unbiased=False).clamp(min=1e-6)
            inputs = {name: (values - mean) / std for name, values in inputs.items()}
            forward: nn.Module = model.head
        else:
            inputs = {name: volume_dataset(part, self.recipe, augment=config.augment and name == "fit")
                      for name, part in parts.as_dict().items()}
            forward = model
            if not self.input_checked:
                check_input_size(model.encoder, inputs["validation"], self.recipe, self.device)
                self.input_checked = True
        loaders = {name: make_loader(LabelledInputs(inputs[name], targets[name]), config.batch_size, self.recipe,
                                     shuffle=name == "fit", seed=seed, device=self.device)
                   for name, part in parts.as_dict().items() if len(part)}
        optimizer = build_optimizer(model, self.recipe, self.mode)
        result = fit(forward, optimizer, self.loss_function(targets["fit"]), loaders["fit"], loaders["validation"],
                     epochs=config.epochs, patience=config.patience, device=self.device, precision=self.precision,
                     grad_clip=self.recipe.train.grad_clip, max_steps_per_epoch=config.max_steps_per_epoch,
                     train_mode=model, progress=progress, description=f"seed {seed}")

        run = {"seed": seed, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
               "best_val_loss": result.best_val_loss, "n_fit": len(parts.fit), "n_validation": len(parts.validation),
               "learning_rates": result.learning_rates}
        predictions = []
        for name in TEST_SPLITS:
            part = getattr(parts, name)
            if not len(part):
                run[name] = None
                continue
            outputs = predict(forward, loaders[name], self.device, self.precision).numpy()
            rows = part.table[["participant_id", "site", "split", self.target.column]].copy()
            rows.insert(0, "seed", seed)
            truth = self.target.values(part.table)
            if self.target.task == "classification":
                probabilities = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
                run[name] = classification_metrics(truth, probabilities, self.target.classes)
                rows["prediction"] = np.asarray(self.target.classes, dtype=object)[probabilities.argmax(axis=1)]
                for column, label in enumerate(self.target.classes):
                    rows[f"prob_{label}"] = probabilities[:, column]
            else:
                predicted = outputs[:, 0] * scale[1] + scale[0]
                run[name] = regression_metrics(truth, predicted)
                rows["prediction"] = predicted
            predictions.append(rows)
        run["baselines"] = baseline_metrics(self.intensity, self.position_of, parts, self.target)
        history = [{"seed": seed, **entry} for entry in result.history]
        return run, pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame(), history

    # -------------------------------------------------------------- all seeds
    def run(self, out_dir: Path) -> dict:
        recipe, config = self.recipe, self.recipe.finetune
        self.cohort = open_cohort(recipe, self.console)
        self.target = resolve_target(self.cohort.table, config)
        dropped = int((~known_rows(self.cohort.table, self.target.column)).sum())
        if dropped:
            self.say(f"{dropped} subject(s) without a value in {self.target.column!r} are left out.")
        if not len(self.cohort.subset("external_test")):
            self.say("the cohort has no external_test subjects: only the internal test is reported.")
        self.position_of = {pid: position for position, pid in enumerate(self.cohort.table["participant_id"])}
        self.features, self.input_checked = None, False
        self.intensity = extract_features(IntensityStatistics(), self.cohort, recipe, description="intensity statistics",
                                          console=self.console).astype(np.float64)
        self.check_precision()
        if self.mode == "linear" and not config.augment:
            encoder = self.pretrained.to(self.device)
            check_input_size(encoder, volume_dataset(self.cohort.head(1), recipe, augment=False), recipe, self.device)
            self.input_checked = True
            self.features = torch.from_numpy(extract_features(encoder, self.cohort, recipe, device=self.device,
                                                              batch_size=config.batch_size, description="frozen features",
                                                              console=self.console))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.yaml", dump_recipe(recipe))

        runs, predictions, history = [], [], []
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                            TimeElapsedColumn(), console=self.console, disable=self.console is None)
        started = time.perf_counter()
        with progress:
            for seed in config.seeds:
                run, rows, steps = self.run_seed(seed, progress)
                runs.append(run)
                predictions.append(rows)
                history.extend(steps)
        results = self.summarise(runs, time.perf_counter() - started)
        self.write(out_dir, results, pd.concat(predictions, ignore_index=True), pd.DataFrame(history))
        return results

    def check_precision(self) -> None:
        if self.precision != "bf16" or self.device.type != "cpu" or self.mode == "linear":
            return
        encoder = self.pretrained if self.pretrained is not None else build_encoder_for(self.recipe)
        sample = volume_dataset(self.cohort.head(1), self.recipe, augment=False)[0]["volume"][None]
        hazards = bf16_conv_hazards(encoder.eval(), sample)
        if hazards:
            self.say(f"train.precision = 'bf16' falls back to fp32: on CPU, 3x3x3 convolutions with depth-2 inputs "
                     f"({', '.join(hazards[:3])}) get wrong bf16 gradients in this torch version.")
            self.precision = "fp32"

    def summarise(self, runs: list[dict], seconds: float) -> dict:
        config = self.recipe.finetune
        metrics = CLASSIFICATION_METRICS if self.target.task == "classification" else REGRESSION_METRICS
        summary = {}
        for name in TEST_SPLITS:
            scored = [run[name] for run in runs if run.get(name)]
            if scored:
                summary[name] = {metric: mean_std([entry[metric] for entry in scored]) for metric in metrics}
                summary[name]["n"] = scored[0]["n"]
        baselines = {baseline: {name: {metric: mean_std([run["baselines"][baseline][name][metric] for run in runs])
                                       for metric in metrics}
                                for name in TEST_SPLITS if all(name in run["baselines"][baseline] for run in runs)}
                     for baseline in ("constant", "intensity")}
        for name, entry in summary.items():
            if entry.get("roc_auc", {}).get("n_seeds", 1) < len(runs):
                self.notes.append(f"{name}: ROC AUC undefined for some seeds (a single class among its subjects)")
        encoder_lr = {"linear": None, "lower_lr": config.lr * config.encoder_lr_factor}.get(self.mode, config.lr)
        table = self.cohort.table
        settings = {
            "target": self.target.column, "task": self.target.task, "classes": self.target.classes,
            "positive_class": self.target.classes[-1] if len(self.target.classes) == 2 else None,
            "mode": self.mode, "encoder": str(self.encoder_source) if self.encoder_source else None,
            "architecture": self.recipe.model.encoder, "seeds": list(config.seeds), "epochs": config.epochs,
            "patience": config.patience, "lr": config.lr, "encoder_lr": encoder_lr, "batch_size": config.batch_size,
            "optimizer": self.recipe.train.optimizer, "weight_decay": self.recipe.train.weight_decay,
            "val_fraction": config.val_fraction, "train_size": config.train_size,
            "class_weighting": config.class_weighting, "augment": config.augment,
            "precision": self.precision, "device": str(self.device), "seconds": round(seconds, 1),
            "subjects": {split: int((table["split"] == split).sum()) for split in ("train", *TEST_SPLITS)},
            "sites": {split: sorted(table.loc[table["split"] == split, "site"].astype(str).unique()) for split in ("train", *TEST_SPLITS)},
            "cohort": str(self.cohort.root),
        }
        return json_ready({"settings": settings, "summary": summary, "baselines": baselines, "runs": runs, "notes": self.notes})

    def write(self, out_dir: Path, results: dict, predictions: pd.DataFrame, history: pd.DataFrame) -> None:
        from medssl.eval.plots import plot_age_predictions, plot_roc_curves

        atomic_write_text(out_dir / "finetune.json", json.dumps(results, indent=2))
        atomic_write_text(out_dir / "finetune.csv", summary_table(results).to_csv(index=False))
        atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
        atomic_write_text(out_dir / "history.csv", history.to_csv(index=False))
        for split in TEST_SPLITS:
            rows = predictions[predictions["split"] == split] if len(predictions) else predictions
            if rows.empty:
                continue
            title = f"{split}: {self.target.column}, {self.mode} ({len(self.recipe.finetune.seeds)} seeds)"
            if self.target.task == "classification":
                plot_roc_curves(roc_curves(rows, self.target), out_dir / f"roc_{split}.png", title=title)
            else:
                plot_age_predictions(rows.assign(split=rows["split"] + " seed " + rows["seed"].astype(str)),
                                     out_dir / f"predictions_{split}.png", age_col=self.target.column,
                                     age_pred_col="prediction", split_col="split", title=title)


def roc_curves(predictions: pd.DataFrame, target: Target) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{label: (is_positive, score)}`` per seed: the positive class, or each class vs. the rest."""
    curves = {}
    for seed, rows in predictions.groupby("seed", sort=True):
        truth = as_labels(rows[target.column]).to_numpy()
        positives = target.classes[-1:] if len(target.classes) == 2 else target.classes
        for label in positives:
            name = f"seed {seed}" if len(target.classes) == 2 else f"seed {seed}, {label} vs rest"
            curves[name] = (truth == label, rows[f"prob_{label}"].to_numpy(dtype=float))
    return curves


def summary_table(results: dict) -> pd.DataFrame:
    """One row per seed and test split with its metrics, then a ``mean`` and a ``std`` row per split."""
    rows = []
    for run in results["runs"]:
        for split in TEST_SPLITS:
            if run.get(split):
                rows.append({"seed": str(run["seed"]), "split": split, **run[split]})
    for split, entry in results["summary"].items():
        metrics = {key: value for key, value in entry.items() if isinstance(value, dict)}
        rows.append({"seed": "mean", "split": split, "n": entry.get("n"), **{key: value["mean"] for key, value in metrics.items()}})
        rows.append({"seed": "std", "split": split, "n": entry.get("n"), **{key: value["std"] for key, value in metrics.items()}})
    table = pd.DataFrame(rows)
    table.insert(2, "n", table.pop("n"))
    settings = results["settings"]
    table.insert(0, "mode", settings["mode"])
    table.insert(1, "target", settings["target"])
    return table


def print_finetune_report(results: dict, console: Console | None = None, notes: bool = True) -> None:
    """One table: each test split's metrics as mean +- std over seeds, then every seed's value (and the notes)."""
    console = console or Console()
    settings = results["settings"]
    encoder = settings["encoder"] or "none (from scratch)"
    view = Table(title=f"Fine-tuning {settings['target']} ({settings['task']}), mode {settings['mode']}, encoder {encoder}",
                 title_justify="left")
    baselines = results.get("baselines") or {}
    for header in ("split", "n", "metric", f"mean ± std ({len(settings['seeds'])} seeds)", *(f"{name} baseline" for name in baselines)):
        view.add_column(header, justify="right" if header != "split" and header != "metric" else "left")
    view.add_column("per seed")
    for split, entry in results["summary"].items():
        for metric, value in entry.items():
            if not isinstance(value, dict):
                continue
            references = [_mean_std_text(baseline.get(split, {}).get(metric)) for baseline in baselines.values()]
            seeds = ", ".join("-" if (run.get(split) or {}).get(metric) is None else f"{run[split][metric]:.3f}" for run in results["runs"])
            view.add_row(split, str(entry.get("n", "")), metric, _mean_std_text(value), *references, seeds)
    console.print(view)
    for note in results.get("notes", []) if notes else []:
        console.print(f"[dim]{note}[/dim]", highlight=False)


def _mean_std_text(value: dict | None) -> str:
    return "-" if not value or value.get("mean") is None else f"{value['mean']:.3f} ± {value['std']:.3f}"


def finetune_encoder(recipe: Recipe, encoder: str | Path | None, out_dir: str | Path, console: Console | None = None) -> dict:
    """Fine-tune ``encoder`` (an ``encoder.pt``, a run folder, or None/"none" for from scratch)
    with the recipe's ``finetune`` section; write and return the results (see the module docstring)."""
    tuner = FineTuner(recipe, encoder, console=console)
    results = tuner.run(Path(out_dir))
    if console is not None:
        print_finetune_report(results, console, notes=False)
        console.print(f"Fine-tuning results written to {out_dir}")
    return results
