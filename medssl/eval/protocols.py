"""The evaluation protocols on frozen features, in one registry: what ``medssl evaluate`` runs and reports.

:data:`PROTOCOLS` maps each protocol's name to a :class:`Protocol`: a one-line description,
what it needs, the function that runs it on one feature matrix, and how it reports (its
metrics and the target each is about, which are lower or higher is better, its short name in
the printed table, its leaderboard columns). :func:`medssl.eval.report.evaluate_representation`
runs every entry on every representation, in the registry's order, on folds planned once
(:func:`plan`) so that representations are compared on the same rows; the report
(``metrics.json``, ``metrics.csv``, the printed table) and the leaderboard
(:mod:`medssl.eval.leaderboard`) take their rows and columns from the entries. Adding a
protocol is adding an entry.

A protocol reports in one of two ways:

- ``"scores"``: one number per metric, from probes fitted on the ``train`` rows and scored on
  the test splits (the OpenBHB challenge protocol, the kNN probe); a dict (its ``notes``, if
  any, go to the report's notes), or an :class:`~medssl.eval.score.EvaluationError` when it
  cannot run. The report lists these first.
- ``"folds"``: mean and sd over folds per target and metric, the long table of
  :func:`medssl.eval.probes.cross_validate_probes` (the CV protocols, the challenge kit's folds).

:func:`online_probe_scores` is the probe of a pre-training in progress: the kNN and ridge
probes' age MAE on a held-out part of the training rows.

Example:
    >>> PROTOCOLS["knn"].description
    'weighted kNN probe (cosine, k = 20, T = 0.07; solo-learn) on the challenge splits: age and site'
    >>> setup = plan(table, folds=5, targets=("age", "sex"), seed=0)
    >>> scores, notes = run_protocol(PROTOCOLS["knn"], features, setup)
    >>> online_probe_scores(features[train], ages[train], features[held_out], ages[held_out])
    {'knn_age_mae': 6.1, 'ridge_age_mae': 5.4}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error

from medssl.eval.folds import (
    CHALLENGE_FOLD_METRICS,
    ChallengeFold,
    Folds,
    leave_site_out_folds,
    score_challenge_folds,
    site_stratified_folds,
)
from medssl.eval.probes import (
    KNN_K,
    KNN_TEMPERATURE,
    KNNProbe,
    challenge_protocol,
    challenge_skip_reason,
    check_features,
    cross_validate_probes,
    knn_protocol,
    quiet_fits,
    regression_probe,
)
from medssl.eval.score import EvaluationError, UnseenSiteWarning, as_labels

Transform: TypeAlias = Callable[[np.ndarray], np.ndarray]
Result: TypeAlias = dict | pd.DataFrame  # a "scores" protocol's dict, a "folds" protocol's long table


@dataclass
class Setup:
    """What the protocols of every representation share: the table, its folds, the settings.

    Attributes:
        table: participants table, index reset.
        targets: columns probed by the CV protocols.
        seed: seed of the folds and probes.
        n_sites: sites in the table.
        stratified: site-stratified folds.
        site_out: leave-site-out folds, None with a single site.
        challenge_folds: the challenge kit's folds, when given.
    """

    table: pd.DataFrame
    targets: tuple[str, ...]
    seed: int
    n_sites: int
    stratified: Folds
    site_out: Folds | None
    challenge_folds: list[ChallengeFold] = field(default_factory=list)


@dataclass(frozen=True)
class LeaderboardColumn:
    """A leaderboard column: its key in leaderboard.csv (``<key>_mean``, ``<key>_sd``), its header,
    and where a representation's entry of ``metrics.json`` holds the value (keys, outermost first)."""

    key: str
    label: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: what it needs, how it runs, how it reports.

    Attributes:
        name: key in :data:`PROTOCOLS`, in ``metrics.json`` and in metrics.csv's ``protocol`` column.
        description: one line, for the documentation and listings.
        needs: what it reads besides the features (columns of the participants table, folds).
        run: ``(features, setup, transform) -> result`` on one representation: a dict of scores
            (``reports == "scores"``) or a long table (``"folds"``). ``transform``: a row
            selection's positions -> the feature matrix harmonised by ComBat fitted on them
            (:func:`medssl.eval.combat.fold_combat`), None for the features as they are.
        check: ``setup -> (runs, notes)``: whether it can run on the table, and the notes saying
            what it leaves out (a protocol it cannot run, a target it skips).
        reports: ``"scores"`` or ``"folds"`` (see the module docstring).
        label: its name in the printed table.
        metrics: for ``"scores"``: the metrics reported (metrics.csv rows and printed rows, in
            this order) and the target each is about; for ``"folds"``: target None (a row per
            probed target), or the target when the metric names it (``mae_internal``: age).
        lower_is_better, higher_is_better: the ranked metrics; the others are reported unranked.
        headline: keys of its scores that open each representation's entry of ``metrics.json``.
        leaderboard: its columns in the benchmark leaderboard.
    """

    name: str
    description: str
    needs: tuple[str, ...]
    run: Callable[[np.ndarray, Setup, Transform | None], Result]
    check: Callable[[Setup], tuple[bool, list[str]]]
    reports: Literal["scores", "folds"]
    label: str
    metrics: Mapping[str, str | None]
    lower_is_better: frozenset[str] = frozenset()
    higher_is_better: frozenset[str] = frozenset()
    headline: tuple[str, ...] = ()
    leaderboard: tuple[LeaderboardColumn, ...] = ()

    def direction(self, target: str, metric: str) -> str:
        """↓ (lower is better), ↑ (higher is better), or '' for a metric reported, not ranked.

        Site prediction by a probe of its own target (CV protocols) is a property to report, good
        or bad depending on whether site information is wanted; ranked where the metric names the
        site (``bacc_site``: the challenge wants it low)."""
        if target == "site" and self.metrics.get(metric) is None:
            return ""
        return "↓" if metric in self.lower_is_better else "↑" if metric in self.higher_is_better else ""

    def names_target(self, metric: str) -> bool:
        """Whether the metric's name says its target (``mae_internal``), else it needs it (``age mae``)."""
        return self.metrics.get(metric) is not None


# ----------------------------------------------------------------------------- the protocols
def _challenge(seed: int, transform: Transform | None) -> Callable[[np.ndarray, pd.DataFrame], dict]:
    """The challenge protocol with its settings bound; ComBat fitted on the ``train`` rows with ``transform``."""
    if transform is None:
        return partial(challenge_protocol, seed=seed)
    from medssl.eval.combat import combat_challenge_protocol  # neuroCombat, loaded only for ComBat's rows

    return partial(combat_challenge_protocol, seed=seed)


def _train_rows(table: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero(table["split"].astype(str).to_numpy() == "train")


def _run_site_stratified(features: np.ndarray, setup: Setup, transform: Transform | None) -> pd.DataFrame:
    return cross_validate_probes(
        features,
        setup.table,
        setup.targets,
        folds=setup.stratified,
        protocol="site_stratified",
        seed=setup.seed,
        transform=transform,
    )


def _site_out_targets(setup: Setup) -> list[str]:
    """The CV targets but ``site``: held-out sites are never seen in training."""
    return [target for target in setup.targets if target != "site"]


def _run_leave_site_out(features: np.ndarray, setup: Setup, transform: Transform | None) -> pd.DataFrame:
    return cross_validate_probes(
        features,
        setup.table,
        _site_out_targets(setup),
        folds=setup.site_out,
        protocol="leave_site_out",
        seed=setup.seed,
        group_inner_by="site",
        transform=transform,
    )


def _check_leave_site_out(setup: Setup) -> tuple[bool, list[str]]:
    if setup.site_out is None:
        return False, ["leave_site_out: a single site, protocol skipped"]
    if len(_site_out_targets(setup)) < len(setup.targets):
        return True, ["leave_site_out: target 'site' skipped (held-out sites are never seen in training)"]
    return True, []


def _run_kit_folds(features: np.ndarray, setup: Setup, transform: Transform | None) -> pd.DataFrame:
    return score_challenge_folds(features, setup.table, setup.challenge_folds, _challenge(setup.seed, transform))


def _run_challenge(features: np.ndarray, setup: Setup, transform: Transform | None) -> dict:
    return _challenge(setup.seed, transform)(features, setup.table)


def _run_knn(features: np.ndarray, setup: Setup, transform: Transform | None) -> dict:
    matrix = features if transform is None else transform(_train_rows(setup.table))
    scores = knn_protocol(matrix, setup.table)
    if scores["n_neighbors"] < scores["k"]:
        scores["notes"] = [
            f"knn: k = {scores['k']} cut to the {scores['n_neighbors']} training rows: every training row is a "
            "neighbour, the age predicted is a weighted mean of all training ages"
        ]
    return scores


def _always(setup: Setup) -> tuple[bool, list[str]]:
    return True, []


def _needs_test_splits(name: str) -> Callable[[Setup], tuple[bool, list[str]]]:
    def check(setup: Setup) -> tuple[bool, list[str]]:
        reason = challenge_skip_reason(setup.table)
        return (False, [f"{name}: {reason}, protocol skipped"]) if reason else (True, [])

    return check


def _has_kit_folds(setup: Setup) -> tuple[bool, list[str]]:
    return bool(setup.challenge_folds), []


CHALLENGE_METRICS = {
    "mae_internal": "age",
    "mae_external": "age",
    "bacc_site": "site",
    "challenge_score": "age+site",
    "ramp_combined": "age+site",
    "r2_internal": "age",
    "r2_external": "age",
    "chance_bacc": "site",
}
CV_METRICS: dict[str, str | None] = {"mae": None, "r2": None, "balanced_accuracy": None, "roc_auc": None}
CV_LOWER, CV_HIGHER = frozenset({"mae"}), frozenset({"r2", "balanced_accuracy", "roc_auc"})
SITE_AND_AGE = ("age", "site", "split (train, internal_test, external_test)")


def _cv_age_mae(protocol: str, label: str) -> LeaderboardColumn:
    return LeaderboardColumn(f"cv_age_mae_{protocol}", f"CV age MAE ({label})", (protocol, "age", "mae", "mean"))


# In the order they run. The report lists the "scores" protocols first (see report_order).
PROTOCOLS: dict[str, Protocol] = {
    "site_stratified": Protocol(
        name="site_stratified",
        description="K-fold CV of linear probes, folds stratified by site: how well known scanners' subjects are read",
        needs=("site", "the CV targets (eval.targets)"),
        run=_run_site_stratified,
        check=_always,
        reports="folds",
        label="site-strat.",
        metrics=CV_METRICS,
        lower_is_better=CV_LOWER,
        higher_is_better=CV_HIGHER,
        leaderboard=(_cv_age_mae("site_stratified", "site-stratified"),),
    ),
    "leave_site_out": Protocol(
        name="leave_site_out",
        description="CV of linear probes holding out whole sites (regularisation chosen on unseen sites too)",
        needs=("site (2 or more)", "the CV targets (eval.targets) but site"),
        run=_run_leave_site_out,
        check=_check_leave_site_out,
        reports="folds",
        label="site-out",
        metrics=CV_METRICS,
        lower_is_better=CV_LOWER,
        higher_is_better=CV_HIGHER,
        leaderboard=(_cv_age_mae("leave_site_out", "leave-site-out"),),
    ),
    "kit_folds": Protocol(
        name="kit_folds",
        description="the challenge protocol on each fold of the OpenBHB kit's cross-validation",
        needs=(*SITE_AND_AGE, "the kit's folds (eval.folds_file)"),
        run=_run_kit_folds,
        check=_has_kit_folds,
        reports="folds",
        label="kit folds",
        metrics=CHALLENGE_FOLD_METRICS,
        lower_is_better=frozenset(CHALLENGE_FOLD_METRICS),
    ),
    "challenge": Protocol(
        name="challenge",
        description="the OpenBHB challenge: ridge age and logistic site probes fitted on train, scored on the tests",
        needs=SITE_AND_AGE,
        run=_run_challenge,
        check=_needs_test_splits("challenge"),
        reports="scores",
        label="challenge",
        metrics=CHALLENGE_METRICS,
        lower_is_better=frozenset({"mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"}),
        higher_is_better=frozenset({"r2_internal", "r2_external"}),
        headline=("mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"),
        leaderboard=(
            LeaderboardColumn("mae_internal", "MAE internal", ("mae_internal",)),
            LeaderboardColumn("mae_external", "MAE external", ("mae_external",)),
            LeaderboardColumn("bacc_site", "site BAcc", ("bacc_site",)),
            LeaderboardColumn("challenge_score", "L_c", ("challenge_score",)),
        ),
    ),
    "knn": Protocol(
        name="knn",
        description=(
            f"weighted kNN probe (cosine, k = {KNN_K}, T = {KNN_TEMPERATURE}; solo-learn) on the challenge splits: "
            "age and site"
        ),
        needs=SITE_AND_AGE,
        run=_run_knn,
        check=_needs_test_splits("knn"),
        reports="scores",
        label="kNN",
        metrics={"mae_internal": "age", "mae_external": "age", "bacc_site": "site"},
        lower_is_better=frozenset({"mae_internal", "mae_external", "bacc_site"}),
        leaderboard=(
            LeaderboardColumn("knn_mae_internal", "kNN MAE internal", ("knn", "mae_internal")),
            LeaderboardColumn("knn_mae_external", "kNN MAE external", ("knn", "mae_external")),
            LeaderboardColumn("knn_bacc_site", "kNN site BAcc", ("knn", "bacc_site")),
        ),
    ),
}


# ----------------------------------------------------------------------------- using the registry
def report_order() -> list[Protocol]:
    """The registered protocols as the report lists them: the ``"scores"`` ones, then the ``"folds"`` ones,
    each group in the registry's order."""
    protocols = list(PROTOCOLS.values())
    return [p for p in protocols if p.reports == "scores"] + [p for p in protocols if p.reports == "folds"]


def leaderboard_columns() -> list[LeaderboardColumn]:
    """Every registered protocol's leaderboard columns, in :func:`report_order`."""
    return [column for protocol in report_order() for column in protocol.leaderboard]


def leaderboard_metrics() -> dict[str, str]:
    """The leaderboard's metric columns (``key: header``), in :func:`report_order`."""
    return {column.key: column.label for column in leaderboard_columns()}


def plan(
    table: pd.DataFrame, folds: int, targets: Sequence[str], seed: int, challenge_folds: Sequence[ChallengeFold] = ()
) -> Setup:
    """The folds every representation shares: ``folds`` site-stratified folds, and leave-site-out
    folds (as many folds of whole sites, or one per site when there are no more sites than that)."""
    table = table.reset_index(drop=True)
    n_sites = int(as_labels(table["site"]).nunique())
    site_out = leave_site_out_folds(table, n_folds=folds if n_sites > folds else None) if n_sites >= 2 else None
    return Setup(
        table=table,
        targets=tuple([targets] if isinstance(targets, str) else targets),
        seed=seed,
        n_sites=n_sites,
        stratified=site_stratified_folds(table, n_folds=folds, seed=seed),
        site_out=site_out,
        challenge_folds=list(challenge_folds),
    )


def runnable(setup: Setup) -> tuple[list[Protocol], list[str]]:
    """The registered protocols that can run on ``setup`` (registry order), and the notes of every check."""
    protocols, notes = [], []
    for protocol in PROTOCOLS.values():
        runs, said = protocol.check(setup)
        notes.extend(said)
        if runs:
            protocols.append(protocol)
    return protocols, notes


def run_protocol(
    protocol: Protocol, features: np.ndarray, setup: Setup, transform: Transform | None = None
) -> tuple[Result | None, list[str]]:
    """Run ``protocol`` on one representation: its result (None when a ``"scores"`` protocol
    cannot run on these rows) and its notes (a ``"folds"`` table's, unseen internal-test sites,
    the reason a protocol was skipped)."""
    if protocol.reports == "folds":
        table = protocol.run(features, setup, transform)
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"protocol {protocol.name!r} reports 'folds': its run must return a long table")
        return table, list(table.attrs.get("notes", []))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnseenSiteWarning)
            scores = protocol.run(features, setup, transform)
    except EvaluationError as error:
        return None, [f"{protocol.name}: {error}, protocol skipped"]
    notes = [f"{protocol.name}: {warning.message}" for warning in caught if warning.category is UnseenSiteWarning]
    if isinstance(scores, dict):
        notes.extend(scores.pop("notes", []))
    return scores, notes


def online_probe_scores(
    train_features: np.ndarray,
    train_age: np.ndarray,
    test_features: np.ndarray,
    test_age: np.ndarray,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> dict[str, float]:
    """Age MAE of the kNN probe and of the ridge probe, fitted on the training rows, tested on the others.

    For an online probe during pre-training (a held-out part of the training split, every few
    epochs): both probes take well under a second on a few thousand rows. The kNN probe is
    :class:`~medssl.eval.probes.KNNProbe` (``k``, ``temperature``; the similarity-weighted mean
    age); the ridge probe that of the CV protocols, :func:`~medssl.eval.probes.regression_probe`
    (standardisation, alpha by efficient leave-one-out CV).

    Returns:
        ``{"knn_age_mae": ..., "ridge_age_mae": ...}``, in the ages' unit (years).

    Raises:
        EvaluationError: features that are not finite matrices of one width, ages that are not one
            finite number per row, fewer than 2 training rows or no test row.
    """
    train = check_features(train_features, name="online probe: training features")
    test = check_features(test_features, name="online probe: test features")
    if train.shape[1] != test.shape[1]:
        raise EvaluationError(
            f"online probe: {train.shape[1]} training feature dimensions but {test.shape[1]} test ones"
        )
    ages = []
    for name, matrix, values in (("training", train, train_age), ("test", test, test_age)):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(values) != len(matrix) or not np.isfinite(values).all():
            raise EvaluationError(f"online probe: {name} ages: expected {len(matrix)} finite values, one per row")
        ages.append(values)
    if len(train) < 2 or len(test) == 0:
        raise EvaluationError(f"online probe: {len(train)} training and {len(test)} test rows; needs 2 and 1 at least")
    with quiet_fits(train):
        knn = KNNProbe(k, temperature, regression=True).fit(train, ages[0])
        ridge = regression_probe().fit(train, ages[0])
        return {
            "knn_age_mae": float(mean_absolute_error(ages[1], knn.predict(test))),
            "ridge_age_mae": float(mean_absolute_error(ages[1], ridge.predict(test))),
        }
