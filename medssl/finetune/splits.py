"""The parts of one run: fit and validation parts carved out of the ``train`` split (stratified,
whole subjects, ``finetune.train_size`` of them), the two test splits, and the checks that no
subject and no external site leaks between them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medssl.data.cohort import Cohort
from medssl.errors import CohortError, RecipeError
from medssl.eval.score import TEST_SPLITS
from medssl.finetune.target import Target, known_rows, resolve_target
from medssl.recipe import Recipe
from medssl.train.setup import open_cohort


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
