"""Cross-validation folds over a participants table, aware of acquisition sites.

Two questions need two splitters. *Site-stratified* folds keep every site's share of
subjects about equal across folds, so a probe is tested on the sites it was trained on
(how well does the representation encode age within known scanners?). *Leave-site-out*
folds hold out whole sites, so a probe is tested on scanners it never saw (does the
representation generalise across sites?). Both return a list of ``(train_idx, test_idx)``
pairs of row positions, the format scikit-learn's ``cv=`` arguments accept.

Example:
    >>> folds = site_stratified_folds(table, n_folds=5, seed=0)
    >>> train_idx, test_idx = folds[0]
    >>> held_out_sites = leave_site_out_folds(table)          # one fold per site
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut, StratifiedKFold

from medssl.eval.score import EvaluationError, as_labels

Folds = list[tuple[np.ndarray, np.ndarray]]


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
        raise EvaluationError(f"participants table: missing column {column!r} (columns: {', '.join(map(str, table.columns))})")
    values = table[column].reset_index(drop=True)
    if values.isna().any():
        row = int(np.argmax(values.isna().to_numpy()))
        raise EvaluationError(f"participants table: column {column!r} has a missing value at data row {row + 1}")
    return as_labels(values)


def _check_n_folds(n_folds: int, available: int, what: str) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= available:
        raise EvaluationError(f"n_folds: got {n_folds!r}, expected an integer between 2 and the number of {what} ({available})")
