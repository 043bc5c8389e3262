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

Training is pre-training's :class:`~medssl.train.trainer.Trainer` with a head objective
(``medssl.train.finetuning``): the same autocast, loss scaling, finiteness and gradient-norm
checks, progress bars, ``metrics.csv`` and atomic checkpoints. This module is the protocol
around it: splits, targets, metrics, baselines and the report.

Files written to the run folder: ``finetune.json`` (settings, summary, baselines, every run, notes),
``finetune.csv`` (one row per seed and test split, then ``mean`` and ``std`` rows),
``predictions.csv`` (every test subject, every seed), ``history.csv`` (losses per epoch),
``roc_internal_test.png`` / ``roc_external_test.png`` (``predictions_<split>.png`` for
regression), the resolved ``recipe.yaml``, and per seed ``seeds/seed<k>/`` (``metrics.csv``,
``tensorboard/``, ``checkpoints/last.pt`` while it trains, ``result.json`` once done). A run
interrupted at any point continues with ``resume=True`` (``medssl finetune ... --resume``)
and ends with the results of an uninterrupted one.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.config import FinetuneConfig, Recipe, apply_overrides, dump_recipe, load_recipe, recipe_from_dict
from medssl.data.cohort import Cohort
from medssl.data.views import VolumeDataset, build_eval_transform, build_view_transform, resize_transform, seed_worker
from medssl.errors import CheckpointError, CohortError, MedsslError, RecipeError
from medssl.eval.features import IntensityStatistics
from medssl.eval.probes import (
    INNER_FOLDS,
    classification_probe,
    is_continuous,
    quiet_fits,
    regression_probe,
    roc_auc,
)
from medssl.eval.score import TEST_SPLITS, as_labels, balanced_accuracy, r2
from medssl.files import atomic_write_text, json_ready
from medssl.methods import architecture_options, build_encoder_for
from medssl.models import Encoder, EncoderSpec, encoder_spec, load_encoder
from medssl.models.encoders import model_overrides
from medssl.models.features import extract_features
from medssl.models.weights import input_note, resolve_normalization
from medssl.train.checkpoint import resumable_checkpoint, resume_differences
from medssl.train.finetuning import (
    EarlyStopping,
    FinetuneModel,
    HeadObjective,
    LabelledInputs,
    TargetLoss,
    class_weights,
    finetune_optimizer,
    predict,
    validation_loss,
)
from medssl.train.loading import EpochLoader
from medssl.train.setup import (
    apply_embedded_budget,
    check_input_size,
    open_cohort,
    resolve_device,
    safe_precision,
    seed_everything,
)
from medssl.train.trainer import Schedule, Trainer

CLASSIFICATION_METRICS = ("roc_auc", "balanced_accuracy")
REGRESSION_METRICS = ("mae", "r2")
MISSING_TEXT = {"", "nan", "none", "n/a", "na"}  # how a missing label looks once the cohort loader made it text
# what the baseline columns of the report hold, by task
BASELINE_MEANINGS = {
    "classification": {"constant": "training class frequencies", "intensity": "linear probe on intensity percentiles"},
    "regression": {"constant": "training mean", "intensity": "ridge on intensity percentiles"},
}
SEEDS_FOLDER = "seeds"  # <out>/seeds/seed<k>/: metrics.csv, tensorboard/, checkpoints/, result.json
SEED_RESULT = "result.json"  # a finished seed's run, predictions and history, read back on --resume
# Settings a resumed fine-tuning may change: how far to go, how many seeds, how to read the data.
FINETUNE_RESUMABLE = (
    "name",
    "description",
    "data.num_workers",
    "eval.",
    "method.",
    "train.epochs",
    "train.embedded.",
    "train.checkpoint_every",
    "finetune.epochs",
    "finetune.embedded.epochs",
    "finetune.seeds",
)


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


def standardize_features(features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each part's features standardised with the statistics of the ``"fit"`` part, by scikit-learn's
    ``StandardScaler`` as the probes' pipelines do: a feature constant on the fit subjects is
    centred, not divided by its zero spread (which would blow its test values up to ~1e5)."""
    scaler = StandardScaler().fit(features["fit"].numpy())
    return {
        name: torch.from_numpy(scaler.transform(values.numpy())).to(values.dtype) for name, values in features.items()
    }


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

    ``task: auto`` means regression for a numeric column named ``age``, with fractional values or
    more than 10 distinct values (the rule of ``medssl evaluate``'s probes), classification
    otherwise (text, or a few integer codes). Classes
    are sorted; the positive one (``finetune.positive_class``, else the last) comes last.
    """
    column = config.target
    if column not in table.columns:
        raise RecipeError(
            f"finetune.target = {column!r}: no such column in the participants table "
            f"(columns: {', '.join(map(str, table.columns))})"
        )
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
        raise CohortError(
            f"finetune.target = {column!r}: the train split has a single class ({classes[0]!r}); two are needed"
        )
    if config.positive_class is not None:
        if config.positive_class not in classes:
            raise RecipeError(
                f"finetune.positive_class = {config.positive_class!r}: not a class of {column!r} "
                f"(classes: {', '.join(classes)})"
            )
        classes = [label for label in classes if label != config.positive_class] + [config.positive_class]
    return Target(column, "classification", classes)


# ----------------------------------------------------------------------------- splits
def validation_split(
    table: pd.DataFrame,
    fraction: float = 0.2,
    seed: int = 0,
    stratify: tuple[str, ...] = ("site",),
    group_col: str = "participant_id",
) -> tuple[np.ndarray, np.ndarray]:
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
            raise CohortError(
                f"participants table: missing column {column!r} (columns: {', '.join(map(str, table.columns))})"
            )
    groups = table[group_col].astype(str)
    firsts = table.loc[~groups.duplicated()]
    if len(firsts) < 2:
        raise CohortError(f"the train split has {len(firsts)} subject(s): a validation part needs at least 2")
    strata = (
        firsts[list(stratify)].astype(str).agg("|".join, axis=1) if stratify else pd.Series("all", index=firsts.index)
    )
    n_val = min(max(int(round(fraction * len(firsts))), 1), len(firsts) - 1)

    rng = np.random.default_rng(seed)
    taken = _largest_remainder_quotas(strata, n_val, rng)
    val_groups: set[str] = set()
    for stratum, n_take in taken.items():
        members = groups[firsts.index[(strata == stratum).to_numpy()]].to_numpy()
        val_groups.update(rng.permutation(members)[:n_take].tolist())
    in_val = groups.isin(val_groups).to_numpy()
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def _largest_remainder_quotas(strata: pd.Series, n_val: int, rng: np.random.Generator) -> pd.Series:
    """Subjects to draw per stratum: ``n_val`` shared in proportion to the strata's sizes,
    rounded by largest remainder (ties broken at random)."""
    counts = strata.value_counts().sort_index()
    quotas = counts * (n_val / len(strata))
    taken = np.floor(quotas).astype(int)
    remainders = (quotas - taken).to_numpy()
    order = sorted(range(len(counts)), key=lambda k: (-round(remainders[k], 9), rng.random()))
    for k in order[: n_val - int(taken.sum())]:
        taken.iloc[k] += 1
    return taken


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
                raise CohortError(
                    f"participant {subject} is in both {owner[subject]} and {name}: a subject must be in one part only"
                )
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
            raise CohortError(
                f"site {shared[0]!r} is in external_test and in {name}: external sites must be held out entirely "
                f"(check the 'split' column of the participants table)"
            )


# ----------------------------------------------------------------------------- encoder
def pretraining_recipe(source: str | Path) -> Recipe | None:
    """The recipe of the run that made the encoder ``source`` (its ``recipe.yaml``, when beside it)."""
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        return load_recipe(folder / "recipe.yaml") if (folder / "recipe.yaml").is_file() else None
    except MedsslError:
        return None


def smoke_at_pretraining_shape(recipe: Recipe, source: str | Path) -> Recipe:
    """A ``--smoke`` fine-tuning recipe at the cubic volume shape its encoder was pre-trained on:
    a smoke pre-training (16^3 for a ResNet) and a smoke fine-tuning (32^3 for the DenseNet121 of
    the shipped fine-tuning recipe) then chain without a shape warning."""
    pretraining = pretraining_recipe(source)
    shape = input_shape(pretraining) if pretraining is not None else None
    if shape is None or len(set(shape)) != 1 or shape == input_shape(recipe):
        return recipe
    smoke = recipe.model_copy(deep=True)
    if smoke.data.root is None:
        smoke.data.synthetic = smoke.data.synthetic.model_copy(update={"shape": shape[0]})
    else:
        smoke.data.volume_shape = list(shape)
    return smoke


def pretraining_differences(source: str | Path, recipe: Recipe) -> list[str]:
    """Input settings of the pre-training run (its ``recipe.yaml``, when beside the encoder)
    that differ from the fine-tuning recipe: the encoder still loads, but sees other inputs."""
    pretraining = pretraining_recipe(source)
    if pretraining is None:
        return []
    notes = []
    if pretraining.views.normalize != recipe.views.normalize:
        notes.append(
            f"views.normalize is {recipe.views.normalize!r} but the encoder was pre-trained with {pretraining.views.normalize!r}"
        )
    shapes = [input_shape(pretraining), input_shape(recipe)]
    if None not in shapes and shapes[0] != shapes[1]:
        notes.append(f"volumes are {shapes[1]} but the encoder was pre-trained on {shapes[0]} (data.volume_shape)")
    return [f"warning: {note}." for note in notes]


def input_shape(recipe: Recipe) -> tuple[int, ...] | None:
    """The volume shape the encoder sees, when the recipe fixes it (resize, or the embedded cohort)."""
    if recipe.data.volume_shape:
        return tuple(recipe.data.volume_shape)
    return (recipe.data.synthetic.shape,) * 3 if recipe.data.root is None else None


# The architecture switches at their defaults: a note need not name them.
SWITCH_DEFAULTS = {
    "model.bias_downsample=true",
    "model.shortcut_type=B",
    "model.stage_dilations=[1,1,1,1]",
    "model.final_norm=true",
    "model.final_relu=true",
}


def load_pretrained_encoder(source: str | Path, recipe: Recipe) -> tuple[Encoder, Recipe, list[str]]:
    """Load ``encoder.pt`` (or a run folder holding it) as its ``encoder.json`` describes it.

    An encoder carries its network: the recipe's ``model`` section, which builds the networks
    trained from scratch, is set to the encoder's (returned with a note when it differed), so
    that ``recipe.yaml`` says which network was fine-tuned. ``views.normalize: source`` becomes
    the encoder's normalisation.

    Raises:
        CheckpointError: missing or corrupt file.
    """
    encoder = load_encoder(source)
    wanted = model_overrides(encoder.spec)
    had = model_overrides(encoder_spec_of(recipe))
    notes = []
    differing = [override for override in wanted if override not in had and override not in SWITCH_DEFAULTS]
    if differing:
        notes.append(
            f"the encoder carries its network: {' '.join(differing)} (from its encoder.json; "
            "the recipe's model section is for training from scratch)."
        )
    raw = apply_overrides(recipe.model_dump(mode="json"), wanted)
    resolved = recipe_from_dict(raw, source=str(source), overrides=wanted)
    resolved = resolve_normalization(resolved, encoder.spec, pretraining_recipe(source))
    return encoder, resolved, notes


def encoder_spec_of(recipe: Recipe) -> EncoderSpec:
    model = recipe.model
    return encoder_spec(
        model.encoder, model.in_channels, model.conv1_stride, model.widths, options=architecture_options(model)
    )


# ----------------------------------------------------------------------------- data
def volume_dataset(part: Cohort, recipe: Recipe, augment: bool) -> VolumeDataset:
    """Volumes of a cohort part, normalised (and resized) as in pre-training; random views if ``augment``."""
    preprocess = resize_transform(recipe.data.volume_shape) if recipe.data.volume_shape else None
    transform = build_view_transform(recipe.views) if augment else build_eval_transform(recipe.views)
    return VolumeDataset(part.subjects(), transform, preprocess=preprocess)


def make_loader(dataset: Dataset, batch_size: int, recipe: Recipe, device: torch.device | None = None) -> DataLoader:
    """The batches of a part that is predicted, not trained on: in order, all of them."""
    # torch types Dataset without __len__; the map-style datasets here all have one
    size = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=min(batch_size, size),
        shuffle=False,
        num_workers=recipe.data.num_workers,
        worker_init_fn=seed_worker,
        pin_memory=device is not None and device.type == "cuda",
    )


# ----------------------------------------------------------------------------- protocol
@dataclass
class Parts:
    """The rows of every part of one run: fit and validation (from train), the two test splits."""

    fit: Cohort
    validation: Cohort
    internal_test: Cohort
    external_test: Cohort

    def as_dict(self) -> dict[str, Cohort]:
        return {
            "fit": self.fit,
            "validation": self.validation,
            "internal_test": self.internal_test,
            "external_test": self.external_test,
        }


def training_pool(cohort: Cohort, target: Target, max_subjects: int | None = None) -> Cohort:
    """The training rows fine-tuning draws from: the ``train`` split's rows with a value of the target,
    the first ``max_subjects`` of them (``data.max_subjects``) when set."""
    train = cohort.subset("train")
    train = Cohort(cohort.root, train.table[known_rows(train.table, target.column)].reset_index(drop=True))
    return train.head(max_subjects) if max_subjects is not None else train


def training_pool_size(recipe: Recipe) -> int:
    """Subjects fine-tuning with ``recipe`` can train on (fit and validation parts together)."""
    cohort = open_cohort(recipe)
    target = resolve_target(cohort.table, recipe.finetune)
    check_test_subjects(cohort, target)
    return count_subjects(training_pool(cohort, target, recipe.data.max_subjects).table)


def check_test_subjects(cohort: Cohort, target: Target) -> None:
    """Refuse a cohort without test subjects (every subject ``train``, as a table without a
    ``split`` column reads): fine-tuning reports held-out subjects only, so there would be
    nothing to report. Called before anything is trained or written."""
    tested = cohort.table["split"].isin(TEST_SPLITS).to_numpy() & known_rows(cohort.table, target.column)
    if tested.any():
        return
    raise CohortError(
        f"{cohort.root}: no internal_test or external_test subject with a {target.column!r} value to test on "
        "(a table without a split column is all train); add a split column: internal_test for held-out "
        "subjects of the training sites, external_test for the subjects of held-out sites"
    )


def count_subjects(table: pd.DataFrame) -> int:
    return int(table["participant_id"].astype(str).nunique())


def split_cohort(
    cohort: Cohort,
    target: Target,
    fraction: float,
    seed: int,
    max_subjects: int | None = None,
    train_size: int | None = None,
) -> Parts:
    """Fit/validation parts of the train split (stratified on site, and class) plus both test splits, checked for leaks.

    ``train_size`` keeps that many labelled training subjects (fit and validation together),
    drawn per seed and stratified like the validation part: the x-axis of a label-efficiency curve.
    """
    labelled = Cohort(cohort.root, cohort.table[known_rows(cohort.table, target.column)].reset_index(drop=True))
    train = training_pool(cohort, target, max_subjects)
    stratify = ("site", target.column) if target.task == "classification" else ("site",)
    n_subjects = count_subjects(train.table)
    if train_size is not None and train_size < n_subjects:
        _, kept = validation_split(train.table, train_size / n_subjects, seed=seed + 7919, stratify=stratify)
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
                raise CohortError(
                    f"{name}: class {unknown[0]!r} of {target.column!r} never occurs in the train split "
                    f"(classes: {', '.join(target.classes)})"
                )
    return parts


def intensity_probe(truth: np.ndarray, classification: bool) -> tuple[Any, str]:
    """The intensity baseline's probe for the training labels ``truth``, and a note when it differs from
    the probes of ``medssl evaluate`` because the training part is tiny ("" otherwise).

    Regression: ridge with alpha by leave-one-out CV (any size). Classification: logistic regression with
    C chosen by stratified inner CV, on fewer folds when the smallest class has fewer than
    ``INNER_FOLDS`` subjects; with one subject in a class, C is fixed at 1 (no CV is possible); with a
    single class, the class frequencies (the constant predictor)."""
    if not classification:
        return regression_probe(), ""
    counts = pd.Series(truth).value_counts()
    smallest = int(counts.min())
    if len(counts) < 2:
        return DummyClassifier(strategy="prior"), (
            f"intensity baseline: the class frequencies (the training part holds one class, {counts.index[0]!r})"
        )
    if smallest >= INNER_FOLDS:
        return classification_probe(INNER_FOLDS), ""
    if smallest >= 2:
        return classification_probe(smallest), (
            f"intensity baseline: C chosen by {smallest}-fold inner CV (a class has {smallest} training subjects)"
        )
    fixed = Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(C=1.0, max_iter=1000))])
    return fixed, "intensity baseline: C fixed at 1, no inner CV (a class has 1 training subject)"


def baseline_metrics(
    intensity: np.ndarray, position_of: dict[str, int], parts: Parts, target: Target
) -> tuple[dict, str]:
    """The trivial baselines on one seed's splits: ``constant`` (the training part's class
    frequencies, or its mean) and ``intensity`` (a linear probe on intensity percentiles,
    :class:`~medssl.eval.features.IntensityStatistics`, fitted on the fit and validation parts
    by :func:`intensity_probe`).

    Returns ``({baseline: {test split: metrics}}, note)``: metrics as the fine-tuned model's, and
    how the intensity probe was regularised when the training part is too small for the usual CV.
    """
    train = pd.concat([parts.fit.table, parts.validation.table], ignore_index=True)
    rows = [position_of[pid] for pid in train["participant_id"]]
    truth = target.values(train)
    classification = target.task == "classification"
    probe, note = intensity_probe(truth, classification)
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
            fitted = list(probe.classes_)
            order = [fitted.index(label) if label in fitted else None for label in target.classes]
            scores = probe.predict_proba(tested)
            probabilities = np.column_stack([scores[:, k] if k is not None else np.zeros(len(tested)) for k in order])
            results["constant"][name] = classification_metrics(
                values, np.tile(frequencies, (len(values), 1)), target.classes
            )
            results["intensity"][name] = classification_metrics(values, probabilities, target.classes)
        else:
            results["constant"][name] = regression_metrics(values, np.full(len(values), truth.astype(float).mean()))
            results["intensity"][name] = regression_metrics(values, probe.predict(tested))
    return results, note


@dataclass
class SeedRun:
    """What one seed trains and tests on: its parts, targets (standardised for regression, with the
    ``scale`` undoing it), the model and the network the objective calls (the model, or its head on
    cached features), and the inputs of every part."""

    seed: int
    parts: Parts
    model: FinetuneModel
    network: nn.Module
    targets: dict[str, torch.Tensor]
    scale: tuple[float, float]
    inputs: Mapping[str, Dataset | torch.Tensor]
    loaders: dict[str, DataLoader] = field(default_factory=dict)


class FineTuner:
    """Runs the protocol of the module docstring for one recipe and one encoder. Use :func:`finetune_encoder`."""

    # set by prepare(): the frozen encoder's features of the cohort (linear probe without augmentation),
    # and whether the encoder has been shown a volume of the cohort's size
    features: torch.Tensor | None
    input_checked: bool

    def __init__(self, recipe: Recipe, encoder_source: str | Path | None, console: Console | None = None):
        self.console = console
        self.notes: list[str] = []
        self.encoder_source = (
            None if encoder_source is None or str(encoder_source).lower() == "none" else Path(encoder_source)
        )
        if self.encoder_source is not None and self.encoder_source.is_dir():  # one name for one encoder
            self.encoder_source = self.encoder_source / "encoder.pt"
        self.recipe = self.resolve_budget(recipe)  # the embedded budget may set the encoder
        # checked next: a wrong encoder should fail before any cohort is generated or read
        self.pretrained: Encoder | None = None
        if self.encoder_source is not None:
            self.pretrained, self.recipe, notes = load_pretrained_encoder(self.encoder_source, self.recipe)
            for note in notes:
                self.say(note)
        for note in pretraining_differences(self.encoder_source, self.recipe) if self.encoder_source else []:
            self.say(note)
        config = self.recipe.finetune
        self.mode = "scratch" if self.encoder_source is None else config.mode
        if self.encoder_source is None and config.mode != "full":
            self.say(
                f"--encoder none: training from scratch (every weight at finetune.lr); finetune.mode = {config.mode!r} is ignored."
            )
        self.device = resolve_device(self.recipe.train.device)
        self.precision: str = self.recipe.train.precision  # safe_precision may fall back to fp32
        # What a seed's checkpoint must agree with to be resumed: the recipe and the encoder trained.
        self.settings_yaml = dump_recipe(self.recipe) + yaml.safe_dump({"encoder": str(self.encoder_source or "none")})

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
        self.say(
            f"data.root not set: using the embedded synthetic cohort ({synthetic.subjects} subjects, {synthetic.sites} sites, "
            f"{synthetic.external_sites} external, {synthetic.shape}^3 voxels{', with diagnosis' if synthetic.diagnosis else ''}) "
            f"with a small budget ({budget.epochs} epoch{'s' if budget.epochs != 1 else ''}, batch {budget.batch_size})."
        )
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

    def prepare_seed(self, seed: int) -> SeedRun:
        """Split, model, targets and inputs of one seed (every draw seeded by ``seed``)."""
        config = self.recipe.finetune
        seed_everything(seed)
        parts = split_cohort(
            self.cohort,
            self.target,
            config.val_fraction,
            seed,
            self.recipe.data.max_subjects,
            train_size=config.train_size,
        )
        model = self.new_model(seed)
        targets = {name: self.target.encode(part.table) for name, part in parts.as_dict().items()}
        scale = (0.0, 1.0)
        if self.target.task == "regression":
            fit_values = targets["fit"]
            scale = (
                float(fit_values.mean()),
                float(fit_values.std()) if len(fit_values) > 1 and float(fit_values.std()) > 0 else 1.0,
            )
            targets = {name: (values - scale[0]) / scale[1] for name, values in targets.items()}
        if self.features is not None:  # frozen encoder, no augmentation: train the head on cached features
            features = {
                name: self.features[[self.position_of[pid] for pid in part.table["participant_id"]]]
                for name, part in parts.as_dict().items()
            }
            return SeedRun(seed, parts, model, model.head, targets, scale, standardize_features(features))
        inputs = {
            name: volume_dataset(part, self.recipe, augment=config.augment and name == "fit")
            for name, part in parts.as_dict().items()
        }
        if not self.input_checked:
            check_input_size(
                model.encoder, inputs["validation"][0]["volume"][None].to(self.device), self.recipe.model.encoder
            )
            self.input_checked = True
        return SeedRun(seed, parts, model, model, targets, scale, inputs)

    def seed_trainer(self, run: SeedRun, seed_dir: Path) -> Trainer:
        """The trainer of one seed: the head objective on the fit part, early stopping on the validation part."""
        config = self.recipe.finetune
        datasets = {
            name: LabelledInputs(run.inputs[name], run.targets[name])
            for name, part in run.parts.as_dict().items()
            if len(part)
        }
        fit_part, batch_size = datasets.pop("fit"), min(config.batch_size, len(run.parts.fit))
        # A last batch of one subject breaks BatchNorm in training: drop it (shuffled, so a different one each epoch).
        loader = EpochLoader(
            fit_part,
            batch_size,
            seed=run.seed,
            num_workers=self.recipe.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=len(fit_part) % batch_size == 1 and len(fit_part) > 1,
        )
        run.loaders = {
            name: make_loader(dataset, config.batch_size, self.recipe, self.device)
            for name, dataset in datasets.items()
        }
        loss = self.loss_function(run.targets["fit"]).to(self.device)
        stopping = EarlyStopping(
            partial(validation_loss, run.network, loss, run.loaders["validation"], self.device, self.precision),
            run.network,
            config.patience,
        )
        steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
        schedule = Schedule(
            epochs=config.epochs,
            steps_per_epoch=steps,
            grad_clip=self.recipe.train.grad_clip,
            seed=run.seed,
            lr_key="finetune.lr",
            label=f"seed {run.seed}, ",
        )
        return Trainer(
            HeadObjective(run.network, loss),
            finetune_optimizer(run.model, self.recipe, self.mode),
            loader,
            seed_dir,
            schedule,
            device=self.device,
            precision=self.precision,
            console=self.console,
            recipe_yaml=self.settings_yaml,
            early_stopping=stopping,
            name=f"{self.recipe.model.encoder} fine-tuning",
        )

    def run_seed(
        self,
        seed: int,
        seed_dir: Path,
        resume_from: dict | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
    ) -> tuple[dict, pd.DataFrame, list[dict]]:
        """Train and test one seed in ``seed_dir`` (from a checkpoint state if given); keep its results there."""
        run = self.prepare_seed(seed)
        trainer = self.seed_trainer(run, seed_dir)
        result = trainer.run(resume_from, on_epoch_end)
        stopping = trainer.early_stopping
        summary = {
            "seed": seed,
            "best_epoch": stopping.best_epoch,
            "epochs_run": result.epochs_done,
            "best_val_loss": stopping.best_loss if stopping.best_epoch else float("nan"),
            "n_fit": len(run.parts.fit),
            "n_validation": len(run.parts.validation),
            "n_train_subjects": count_subjects(pd.concat([run.parts.fit.table, run.parts.validation.table])),
            "learning_rates": {
                group.get("name", str(k)): group["lr"] for k, group in enumerate(trainer.optimizer.param_groups)
            },
        }
        summary, predictions = self.test_seed(run, summary)
        history = [{"seed": seed, **entry} for entry in stopping.history]
        atomic_write_text(
            seed_dir / SEED_RESULT,
            json.dumps(
                json_ready(
                    {
                        "settings": self.settings_yaml,
                        "run": summary,
                        "predictions": predictions.to_dict("records"),
                        "dtypes": predictions.dtypes.astype(str).to_dict(),
                        "history": history,
                    }
                )
            ),
        )
        # The results are kept: the checkpoint (weights, optimiser, best weights) is no longer needed.
        trainer.checkpoint_path.unlink(missing_ok=True)
        return summary, predictions, history

    def test_seed(self, run: SeedRun, summary: dict) -> tuple[dict, pd.DataFrame]:
        """Metrics of the kept model on both test splits, its predictions, and the baselines on the same splits."""
        predictions = []
        for name in TEST_SPLITS:
            part = getattr(run.parts, name)
            if not len(part):
                summary[name] = None
                continue
            outputs = predict(run.network, run.loaders[name], self.device, self.precision).numpy()
            rows = part.table[["participant_id", "site", "split", self.target.column]].copy()
            rows.insert(0, "seed", run.seed)
            truth = self.target.values(part.table)
            if self.target.task == "classification":
                probabilities = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
                summary[name] = classification_metrics(truth, probabilities, self.target.classes)
                rows["prediction"] = np.asarray(self.target.classes, dtype=object)[probabilities.argmax(axis=1)]
                for column, label in enumerate(self.target.classes):
                    rows[f"prob_{label}"] = probabilities[:, column]
            else:
                predicted = outputs[:, 0] * run.scale[1] + run.scale[0]
                summary[name] = regression_metrics(truth, predicted)
                rows["prediction"] = predicted
            predictions.append(rows)
        summary["baselines"], note = baseline_metrics(self.intensity, self.position_of, run.parts, self.target)
        if note:
            summary["baseline_note"] = note
        return summary, pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()

    # -------------------------------------------------------------- all seeds
    def resumable_seeds(self, out_dir: Path) -> dict[int, dict]:
        """Per seed, what an earlier run left: ``{"result": ...}`` of a finished seed or ``{"checkpoint": state}``;
        refused (before anything is written) when it was trained with other settings."""
        found = {}
        for seed in self.recipe.finetune.seeds:
            seed_dir = out_dir / SEEDS_FOLDER / f"seed{seed}"
            if (seed_dir / SEED_RESULT).is_file():
                saved = json.loads((seed_dir / SEED_RESULT).read_text())
                refused, _ = resume_differences(saved["settings"], self.settings_yaml, FINETUNE_RESUMABLE)
                if refused:
                    raise CheckpointError(
                        f"{seed_dir / SEED_RESULT}: was fine-tuned with other settings ({'; '.join(refused)}); "
                        "resume with that run's recipe and --encoder, start a new --out, or add --overwrite"
                    )
                found[seed] = {"result": saved}
            elif (seed_dir / "checkpoints" / "last.pt").is_file():
                state, _ = resumable_checkpoint(
                    seed_dir / "checkpoints" / "last.pt",
                    self.settings_yaml,
                    self.recipe.finetune.epochs,
                    "finetune.epochs",
                    FINETUNE_RESUMABLE,
                )
                found[seed] = {"checkpoint": state}
        return found

    def prepare(self) -> None:
        """Open the cohort, resolve the target, score intensities once; cache frozen features in mode linear."""
        recipe, config = self.recipe, self.recipe.finetune
        self.cohort = open_cohort(recipe, self.console)
        self.target = resolve_target(self.cohort.table, config)
        check_test_subjects(self.cohort, self.target)
        dropped = int((~known_rows(self.cohort.table, self.target.column)).sum())
        if dropped:
            self.say(f"{dropped} subject(s) without a value in {self.target.column!r} are left out.")
        if not len(self.cohort.subset("external_test")):
            self.say("the cohort has no external_test subjects: only the internal test is reported.")
        if config.train_size is not None:
            self.check_train_size(config.train_size)
        self.position_of = {pid: position for position, pid in enumerate(self.cohort.table["participant_id"])}
        self.features, self.input_checked = None, False
        if self.pretrained is not None and self.pretrained.spec.input:
            sample = volume_dataset(self.cohort.head(1), recipe, augment=False)[0]["volume"]
            note = input_note(self.pretrained.spec, tuple(sample.shape[1:]), recipe)
            if note:
                self.say(note)
        self.intensity = extract_features(
            IntensityStatistics(), self.cohort, recipe, description="intensity statistics", console=self.console
        ).astype(np.float64)
        self.check_precision()
        if self.mode == "linear" and not config.augment:
            assert self.pretrained is not None, "mode linear is set only with a pre-trained encoder"
            encoder = self.pretrained.to(self.device)
            check_input_size(
                encoder,
                volume_dataset(self.cohort.head(1), recipe, augment=False)[0]["volume"][None].to(self.device),
                recipe.model.encoder,
            )
            self.input_checked = True
            self.features = torch.from_numpy(
                extract_features(
                    encoder,
                    self.cohort,
                    recipe,
                    device=self.device,
                    batch_size=config.batch_size,
                    description="frozen features",
                    console=self.console,
                )
            )

    def check_train_size(self, train_size: int) -> None:
        """Say so when ``finetune.train_size`` exceeds the training subjects there are to draw from, counted
        as the runs count them (fit and validation parts together), and why fewer than the train split holds."""
        train = self.cohort.subset("train").table
        available = count_subjects(training_pool(self.cohort, self.target, self.recipe.data.max_subjects).table)
        if train_size <= available:
            return
        reasons = []
        unlabelled = count_subjects(train[~known_rows(train, self.target.column)])
        if unlabelled:
            reasons.append(f"{unlabelled} without a {self.target.column!r} value")
        labelled_rows = int(known_rows(train, self.target.column).sum())
        if self.recipe.data.max_subjects is not None and self.recipe.data.max_subjects < labelled_rows:
            reasons.append(f"data.max_subjects = {self.recipe.data.max_subjects}")
        total = count_subjects(train)
        detail = f" ({total} in the train split; {', '.join(reasons)})" if available < total else ""
        self.say(
            f"finetune.train_size = {train_size} is more than the {available} training subjects{detail}: "
            f"all {available} are used (fit and validation parts together)."
        )

    def run(self, out_dir: Path, resume: bool = False, on_epoch_end: Callable[[int], None] | None = None) -> dict:
        """Every seed (finished ones of a resumed run are read back), then the summary and the files."""
        out_dir = Path(out_dir)
        earlier = self.resumable_seeds(out_dir) if resume else {}
        self.prepare()
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.yaml", dump_recipe(self.recipe))
        runs, predictions, history = [], [], []
        started = time.perf_counter()
        for seed in self.recipe.finetune.seeds:
            saved = earlier.get(seed, {}).get("result")
            if saved is not None:  # in its own column types: float32 probabilities print as they did
                rows = pd.DataFrame(saved["predictions"], columns=list(saved["dtypes"])).astype(saved["dtypes"])
                run, steps = saved["run"], saved["history"]
            else:
                run, rows, steps = self.run_seed(
                    seed, out_dir / SEEDS_FOLDER / f"seed{seed}", earlier.get(seed, {}).get("checkpoint"), on_epoch_end
                )
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
        self.precision, note = safe_precision(self.precision, self.device, encoder, sample)
        if note:
            self.say(note)

    def summarise(self, runs: list[dict], seconds: float) -> dict:
        config = self.recipe.finetune
        metrics = CLASSIFICATION_METRICS if self.target.task == "classification" else REGRESSION_METRICS
        summary = {}
        for name in TEST_SPLITS:
            scored = [run[name] for run in runs if run.get(name)]
            if scored:
                summary[name] = {metric: mean_std([entry[metric] for entry in scored]) for metric in metrics}
                summary[name]["n"] = scored[0]["n"]
        baselines = {
            baseline: {
                name: {
                    metric: mean_std([run["baselines"][baseline][name][metric] for run in runs]) for metric in metrics
                }
                for name in TEST_SPLITS
                if all(name in run["baselines"][baseline] for run in runs)
            }
            for baseline in ("constant", "intensity")
        }
        self.say_baseline_notes(runs)
        for name, entry in summary.items():
            if entry.get("roc_auc", {}).get("n_seeds", 1) < len(runs):
                self.notes.append(f"{name}: ROC AUC undefined for some seeds (a single class among its subjects)")
        encoder_lr = {"linear": None, "lower_lr": config.lr * config.encoder_lr_factor}.get(self.mode, config.lr)
        used = self.subjects_used()
        settings = {
            "target": self.target.column,
            "task": self.target.task,
            "classes": self.target.classes,
            "positive_class": self.target.classes[-1] if len(self.target.classes) == 2 else None,
            "mode": self.mode,
            "encoder": str(self.encoder_source) if self.encoder_source else None,
            "architecture": self.recipe.model.encoder,
            "seeds": list(config.seeds),
            "epochs": config.epochs,
            "patience": config.patience,
            "lr": config.lr,
            "encoder_lr": encoder_lr,
            "batch_size": config.batch_size,
            "optimizer": self.recipe.train.optimizer,
            "weight_decay": self.recipe.train.weight_decay,
            "val_fraction": config.val_fraction,
            "train_size": config.train_size,
            "class_weighting": config.class_weighting,
            "augment": config.augment,
            "precision": self.precision,
            "device": str(self.device),
            "seconds": round(seconds, 1),
            "subjects": {split: count_subjects(part) for split, part in used.items()},
            "sites": {split: sorted(part["site"].astype(str).unique()) for split, part in used.items()},
            "cohort": str(self.cohort.root),
        }
        return json_ready(
            {"settings": settings, "summary": summary, "baselines": baselines, "runs": runs, "notes": self.notes}
        )

    def subjects_used(self) -> dict[str, pd.DataFrame]:
        """The rows the runs draw from, per split: the training pool (labelled, ``data.max_subjects``) and
        the labelled test subjects; subjects without a target value are left out everywhere."""
        table = self.cohort.table
        labelled = table[known_rows(table, self.target.column)]
        used = {"train": training_pool(self.cohort, self.target, self.recipe.data.max_subjects).table}
        return used | {split: labelled[labelled["split"] == split] for split in TEST_SPLITS}

    def say_baseline_notes(self, runs: list[dict]) -> None:
        """Each way the intensity baseline was regularised on a tiny training part, once, with its seeds."""
        seeds_of: dict[str, list[str]] = {}
        for run in runs:
            if run.get("baseline_note"):
                seeds_of.setdefault(run["baseline_note"], []).append(str(run["seed"]))
        for note, seeds in seeds_of.items():
            self.say(f"{note}, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}.")

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
            n_seeds = len(self.recipe.finetune.seeds)
            title = f"{split}: {self.target.column}, {self.mode} ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
            if self.target.task == "classification":
                plot_roc_curves(roc_curves(rows, self.target), out_dir / f"roc_{split}.png", title=title)
            else:
                plot_age_predictions(
                    rows.assign(split=rows["split"] + " seed " + rows["seed"].astype(str)),
                    out_dir / f"predictions_{split}.png",
                    age_col=self.target.column,
                    age_pred_col="prediction",
                    split_col="split",
                    title=title,
                )


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
        rows.append(
            {
                "seed": "mean",
                "split": split,
                "n": entry.get("n"),
                **{key: value["mean"] for key, value in metrics.items()},
            }
        )
        rows.append(
            {
                "seed": "std",
                "split": split,
                "n": entry.get("n"),
                **{key: value["std"] for key, value in metrics.items()},
            }
        )
    table = pd.DataFrame(rows)
    table.insert(2, "n", table.pop("n"))
    settings = results["settings"]
    table.insert(0, "mode", settings["mode"])
    table.insert(1, "target", settings["target"])
    return table


def print_finetune_report(results: dict, console: Console | None = None, notes: bool = True) -> None:
    """One table per test split: each metric as mean +- std over seeds, the baselines' and every seed's
    values (then the notes). Names and numbers are never cut or split: at 80 columns only the per-seed
    list wraps, between values."""
    console = console or Console()
    settings = results["settings"]
    encoder = settings["encoder"] or "none (from scratch)"
    console.print(
        f"[bold]Fine-tuning {settings['target']} ({settings['task']}), mode {settings['mode']}, encoder {encoder}[/bold]",
        highlight=False,
    )
    baselines = results.get("baselines") or {}
    if baselines:
        meanings = BASELINE_MEANINGS.get(settings["task"], {})
        explained = "; ".join(f"{name} = {meanings.get(name, name)}" for name in baselines)
        console.print(f"[dim]baselines: {explained}[/dim]", highlight=False)
    for split, entry in results["summary"].items():
        view, per_seed = split_report(split, entry, results, console.width)
        console.print(view)
        for line in per_seed:  # per-seed values that found no room in the table
            console.print(line, highlight=False)
    for note in results.get("notes", []) if notes else []:
        console.print(f"[dim]{note}[/dim]", highlight=False)


def split_report(split: str, entry: dict, results: dict, width: int) -> tuple[Table, list[str]]:
    """The report table of one test split, and the per-seed lines printed under it when the per-seed
    column would not fit in ``width`` (the other columns never wrap: values are never cut)."""
    baselines = results.get("baselines") or {}
    metrics = [metric for metric, value in entry.items() if isinstance(value, dict)]
    per_seed = {
        metric: ", ".join(
            "-" if (run.get(split) or {}).get(metric) is None else f"{run[split][metric]:.3f}"
            for run in results["runs"]
        )
        for metric in metrics
    }
    n_seeds = len(results["settings"]["seeds"])
    headers = ["metric", f"mean ± std\n({n_seeds} seed{'s' if n_seeds > 1 else ''})", *baselines]
    rows = [
        [
            metric,
            mean_std_text(entry[metric]),
            *(mean_std_text(baseline.get(split, {}).get(metric)) for baseline in baselines.values()),
        ]
        for metric in metrics
    ]
    fixed = [max(len(text) for text in [*header.split("\n"), *column]) for header, *column in zip(headers, *rows)]
    gap = 3  # padding, invisible divider, padding
    widest_seed = max((len(text) for text in ", ".join(per_seed.values()).split(" ")), default=1)
    seeds_fit = sum(fixed) + gap * len(fixed) + max(widest_seed, len("per seed")) <= width
    view = Table(
        title=f"{split} (n = {entry.get('n', '?')})",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for header in headers:
        view.add_column(header, justify="left" if header == "metric" else "right", no_wrap=True)
    if seeds_fit:
        view.add_column("per seed", min_width=widest_seed)  # wraps between values only
    for row, metric in zip(rows, metrics):
        view.add_row(*row, *([per_seed[metric]] if seeds_fit else []))
    return view, [] if seeds_fit else [f"{metric} per seed: {per_seed[metric]}" for metric in metrics]


def mean_std_text(value: dict | None) -> str:
    return "-" if not value or value.get("mean") is None else f"{value['mean']:.3f} ± {value['std']:.3f}"


def finetune_encoder(
    recipe: Recipe,
    encoder: str | Path | None,
    out_dir: str | Path,
    console: Console | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune ``encoder`` (an ``encoder.pt``, a run folder, or None/"none" for from scratch)
    with the recipe's ``finetune`` section; write and return the results (see the module docstring).

    With ``resume``, seeds finished in ``out_dir`` are read back and an interrupted one continues
    from its last checkpoint: the results equal those of an uninterrupted run. ``on_epoch_end(epoch)``
    runs after every epoch of every seed."""
    tuner = FineTuner(recipe, encoder, console=console)
    results = tuner.run(Path(out_dir), resume=resume, on_epoch_end=on_epoch_end)
    if console is not None:
        print_finetune_report(results, console, notes=False)
        console.print(f"Fine-tuning results written to {out_dir}")
    return results
