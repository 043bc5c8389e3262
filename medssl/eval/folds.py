"""Cross-validation folds over a participants table, aware of acquisition sites.

Two questions need two splitters. *Site-stratified* folds keep every site's share of
subjects about equal across folds, so a probe is tested on the sites it was trained on
(how well does the representation encode age within known scanners?). *Leave-site-out*
folds hold out whole sites, so a probe is tested on scanners it never saw (does the
representation generalise across sites?). Both return a list of ``(train_idx, test_idx)``
pairs of row positions, the format scikit-learn's ``cv=`` arguments accept.

The OpenBHB challenge kit fixes its own folds (``cv_splits_indices.json``, see
``medssl.data.openbhb_kit``): each has a training part, an internal test of the same sites and
an external test of held-out sites. :func:`challenge_folds` maps them onto the table and
:func:`score_challenge_folds` runs the challenge protocol once per fold.

Example:
    >>> folds = site_stratified_folds(table, n_folds=5, seed=0)
    >>> train_idx, test_idx = folds[0]
    >>> held_out_sites = leave_site_out_folds(table)          # one fold per site
    >>> kit = challenge_folds(table, "/data/brain_age_with_site_removal", "auto")
    >>> summary = score_challenge_folds(features, table, kit, partial(challenge_protocol, seed=0))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut, StratifiedKFold

from medssl.data.openbhb_kit import FOLD_PARTS, KIT_FOLDS_FILE, is_kit_folder, read_kit_folds
from medssl.eval.score import EvaluationError, UnseenSiteWarning, as_labels

Folds = list[tuple[np.ndarray, np.ndarray]]
# What each challenge fold reports, and the target each metric is about.
CHALLENGE_FOLD_METRICS = {
    "mae_internal": "age",
    "mae_external": "age",
    "bacc_site": "site",
    "challenge_score": "age+site",
}


def site_stratified_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 0, stratify: str | None = "site") -> Folds:
    """Shuffled K-fold splits stratified on the ``stratify`` column (the site by default).

    Sites with fewer subjects than folds cannot appear in every fold; their subjects are
    pooled into one shared stratum, which spreads them over the folds as evenly as the
    counts allow. Every other site is present in every training and every test fold.
    ``stratify=None`` gives plain shuffled K-fold.

    Args:
        table: participants table, one row per subject.
        n_folds: number of folds, between 2 and the number of subjects.
        seed: seed of the shuffle.
        stratify: categorical column to stratify on, or None.

    Returns:
        ``n_folds`` pairs ``(train_idx, test_idx)`` of row positions; the test parts
        partition the rows.
    """
    _check_n_folds(n_folds, len(table), "subjects")
    positions = np.zeros(len(table))
    if stratify is None:
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(positions))
    strata = pd.Series(pd.factorize(_labels(table, stratify))[0])
    counts = strata.map(strata.value_counts())
    strata[counts < n_folds] = -1  # the pooled stratum of small sites
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # the pooled stratum may itself be smaller than n_folds: scikit-learn warns, then copes
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(positions, strata))


def leave_site_out_folds(table: pd.DataFrame, n_folds: int | None = None, site_col: str = "site") -> Folds:
    """Folds that hold out whole sites: no site is in both the training and the test part.

    Args:
        table: participants table, one row per subject.
        n_folds: None for one fold per site (leave-one-site-out); otherwise the sites are
            grouped into ``n_folds`` folds of about equal numbers of subjects (GroupKFold).
        site_col: column holding the site of each subject.

    Returns:
        pairs ``(train_idx, test_idx)`` of row positions; the test parts partition the rows.
    """
    sites = _labels(table, site_col)
    n_sites = sites.nunique()
    if n_sites < 2:
        raise EvaluationError(f"column {site_col!r}: {n_sites} site(s); leave-site-out folds need at least 2")
    positions = np.zeros(len(table))
    if n_folds is None:
        return list(LeaveOneGroupOut().split(positions, groups=sites))
    _check_n_folds(n_folds, n_sites, "sites")
    return list(GroupKFold(n_splits=n_folds).split(positions, groups=sites))


def _labels(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        raise EvaluationError(
            f"participants table: missing column {column!r} (columns: {', '.join(map(str, table.columns))})"
        )
    values = table[column].reset_index(drop=True)
    if values.isna().any():
        row = int(np.argmax(values.isna().to_numpy()))
        raise EvaluationError(f"participants table: column {column!r} has a missing value at data row {row + 1}")
    return as_labels(values)


def _check_n_folds(n_folds: int, available: int, what: str) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= available:
        raise EvaluationError(
            f"n_folds: got {n_folds!r}, expected an integer between 2 and the number of {what} ({available})"
        )


@dataclass(frozen=True)
class ChallengeFold:
    """One fold of the challenge kit's cross-validation: table row positions of its three parts."""

    name: str
    train: np.ndarray
    internal_test: np.ndarray
    external_test: np.ndarray


def challenge_folds(table: pd.DataFrame, root: str | Path | None, folds_file: str | Path | None) -> list[ChallengeFold]:
    """The challenge kit's folds over ``table`` (``eval.folds_file``); empty when there are none.

    Args:
        table: participants table; the folds' row numbers count its ``train`` rows in order
            (the kit's ``data/train.tsv`` rows, as ``medssl.data.openbhb_kit`` lists them).
        root: the cohort folder, where ``"auto"`` looks for the kit's ``cv_splits_indices.json``.
        folds_file: a folds file, ``"auto"`` (the kit's own, when ``root`` is a kit that ships
            one) or None (no folds).
    """
    if folds_file == "auto":
        if root is None or not is_kit_folder(root) or not (Path(root) / KIT_FOLDS_FILE).is_file():
            return []
        folds_file = Path(root) / KIT_FOLDS_FILE
    if folds_file is None:
        return []
    splits = table["split"].astype(str).to_numpy() if "split" in table.columns else np.full(len(table), "train")
    train_positions = np.flatnonzero(splits == "train")
    folds = read_kit_folds(folds_file, len(train_positions))
    return [ChallengeFold(name, *(train_positions[rows[part]] for part in FOLD_PARTS)) for name, rows in folds.items()]


def score_challenge_folds(
    features: np.ndarray,
    table: pd.DataFrame,
    folds: list[ChallengeFold],
    protocol: Callable[[np.ndarray, pd.DataFrame], dict],
) -> pd.DataFrame:
    """Run the challenge ``protocol`` once per fold and summarise its scores over the folds.

    Each fold's rows are handed to ``protocol`` with the ``split`` of their part (``train``,
    ``internal_test``, ``external_test``), as the kit's ``get_cv`` hands its folds to the
    challenge's estimators. ``protocol(features, table)`` is
    ``medssl.eval.probes.challenge_protocol`` with its settings bound.

    Returns:
        the long table of :func:`medssl.eval.probes.cross_validate_probes` (``protocol`` is
        ``kit_folds``; ``mean``, ``std`` with ddof 0 and ``n_folds`` over the folds) for the
        metrics of ``CHALLENGE_FOLD_METRICS``, with ``min_internal_per_site``, the fewest
        internal-test subjects of a site in any fold; ``attrs["per_fold"]`` holds one row per fold,
        ``attrs["notes"]`` the folds' warnings and skipped folds.
    """
    scores, notes = [], []
    for fold in folds:
        row, fold_notes = _score_fold(features, table, fold, protocol)
        notes += fold_notes
        if row is not None:
            scores.append(row)
    per_fold = pd.DataFrame(scores, columns=["fold", *CHALLENGE_FOLD_METRICS, "min_internal_per_site"])
    summary = _summarise_folds(per_fold)
    summary.attrs.update(per_fold=per_fold, notes=notes)
    return summary


def _score_fold(
    features: np.ndarray, table: pd.DataFrame, fold: ChallengeFold, protocol: Callable[[np.ndarray, pd.DataFrame], dict]
) -> tuple[dict | None, list[str]]:
    """One fold's row of scores (None when the protocol refuses the fold) and its notes."""
    parts = (fold.train, fold.internal_test, fold.external_test)
    positions = np.concatenate(parts)
    fold_table = table.iloc[positions].reset_index(drop=True)
    fold_table["split"] = np.repeat(FOLD_PARTS, [len(part) for part in parts])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnseenSiteWarning)
            result = protocol(features[positions], fold_table)
    except EvaluationError as error:
        return None, [f"kit_folds: {fold.name}: {error}, fold skipped"]
    notes = [
        f"kit_folds: {fold.name}: {warning.message}"
        for warning in caught
        if issubclass(warning.category, UnseenSiteWarning)
    ]
    row = {
        "fold": fold.name,
        **{metric: result[metric] for metric in CHALLENGE_FOLD_METRICS},
        "min_internal_per_site": result["min_internal_per_site"],
    }
    return row, notes


def _summarise_folds(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 0) and number of the folds' finite scores, per metric."""
    fewest = int(per_fold["min_internal_per_site"].min()) if len(per_fold) else None
    rows = []
    for metric, target in CHALLENGE_FOLD_METRICS.items():
        values = per_fold[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        rows.append(
            {
                "protocol": "kit_folds",
                "target": target,
                "metric": metric,
                "mean": values.mean() if values.size else np.nan,
                "std": values.std() if values.size else np.nan,
                "n_folds": int(values.size),
                "min_internal_per_site": fewest,
            }
        )
    return pd.DataFrame(
        rows, columns=["protocol", "target", "metric", "mean", "std", "n_folds", "min_internal_per_site"]
    )
