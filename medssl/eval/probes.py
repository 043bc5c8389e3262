"""Probes on frozen features: cross-validated linear probes, the OpenBHB challenge protocol, the kNN probe.

Every linear probe is a scikit-learn ``Pipeline(StandardScaler, linear model)``, so the
standardisation is fitted on training rows only, inside each fold, and hyper-parameters
are chosen by an inner cross-validation on the same training rows. A continuous target
(``age``) gets a ridge regression scored by MAE and R^2; a categorical one (``sex``,
``diagnosis``, ``site``) gets a logistic regression scored by balanced accuracy and ROC AUC.

:class:`KNNProbe` is the weighted k-nearest-neighbour probe of self-supervised learning
(cosine similarity, k = 20, temperature 0.07, as solo-learn), a scikit-learn estimator;
:func:`knn_protocol` runs it on the challenge's splits.

Example:
    >>> folds = site_stratified_folds(table, n_folds=5)
    >>> metrics = cross_validate_probes(features, table, targets=("age", "sex"), folds=folds)
    >>> results = challenge_protocol(features, table)
    >>> results["challenge_score"], results["predictions"].head()
    >>> KNNProbe().fit(train_features, train_sites).predict(test_features)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler, normalize
from threadpoolctl import threadpool_limits

from medssl.eval.folds import Folds, site_stratified_folds
from medssl.eval.score import SPLITS, TEST_SPLITS, EvaluationError, as_labels, balanced_accuracy, r2, score_predictions

MAX_FEATURES = 10_000  # the challenge kit refuses larger feature spaces
SINGLE_THREAD_MAX_VALUES = 2_000_000  # below this many feature values, BLAS threads cost more than they save
CONTINUOUS_MIN_VALUES = 10  # a numeric column with more distinct values is a regression target

# hyper-parameter grids of the cross-validated probes
RIDGE_ALPHAS = 10.0 ** np.arange(-2, 5)
LOGISTIC_CS = 10.0 ** np.arange(-3, 3)
INNER_FOLDS = 3

# the official kit (ramp-kits/brain_age_with_site_removal, problem.py)
CHALLENGE_ALPHAS = 10.0 ** np.arange(-2, 3)
CHALLENGE_CS = 10.0 ** np.arange(-2, 3)
CHALLENGE_FOLDS = 5
CHALLENGE_SAGA_ITERATIONS = 150

# the kNN probe's defaults: solo-learn's (solo/utils/knn.py), after Wu et al. (CVPR 2018)
KNN_K = 20
KNN_TEMPERATURE = 0.07


def check_features(features: np.ndarray, table: pd.DataFrame | None = None, name: str = "features") -> np.ndarray:
    """``features`` as a finite float64 matrix (n_subjects, n_features), one row per table row.

    Raises:
        EvaluationError: wrong shape, row count different from the table's, non-finite
            values, or more than ``MAX_FEATURES`` dimensions.
    """
    try:
        matrix = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError):
        raise EvaluationError(f"{name}: expected a numeric matrix (n_subjects, n_features)") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise EvaluationError(f"{name}: got shape {matrix.shape}, expected (n_subjects, n_features)")
    if table is not None and matrix.shape[0] != len(table):
        raise EvaluationError(f"{name}: {matrix.shape[0]} rows but the participants table has {len(table)}")
    if matrix.shape[1] > MAX_FEATURES:
        raise EvaluationError(
            f"{name}: {matrix.shape[1]} dimensions, expected at most {MAX_FEATURES} (the OpenBHB limit); "
            "pool or project the features first"
        )
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise EvaluationError(f"{name}: row {int(np.argmin(finite))} has NaN or infinite values")
    return matrix


def is_continuous(values: pd.Series) -> bool:
    """A numeric, non-boolean column named ``age`` (regressed in every OpenBHB protocol, even
    when a small cohort has few distinct ages), with fractional values, or with more than
    ``CONTINUOUS_MIN_VALUES`` distinct values."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    known = values.dropna()
    return values.name == "age" or bool((known % 1 != 0).any()) or known.nunique() > CONTINUOUS_MIN_VALUES


def regression_probe(inner: list | None = None) -> Pipeline | GridSearchCV:
    """Standardisation then ridge regression, alpha chosen by efficient leave-one-out CV, or by
    the ``inner`` (train, validation) splits when given (e.g. grouped by site)."""
    if inner is None:
        return Pipeline([("scale", StandardScaler()), ("ridge", RidgeCV(alphas=RIDGE_ALPHAS))])
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge())])
    return GridSearchCV(pipeline, {"ridge__alpha": RIDGE_ALPHAS}, cv=inner, scoring="neg_mean_absolute_error")


def classification_probe(n_inner_folds: int = INNER_FOLDS, seed: int = 0, inner: list | None = None) -> GridSearchCV:
    """Standardisation then logistic regression, C chosen by inner stratified CV (balanced
    accuracy), or by the ``inner`` (train, validation) splits when given."""
    pipeline = Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000))])
    splits = inner if inner is not None else StratifiedKFold(n_inner_folds, shuffle=True, random_state=seed)
    return GridSearchCV(pipeline, {"logistic__C": LOGISTIC_CS}, cv=splits, scoring="balanced_accuracy")


def site_grouped_splits(groups: np.ndarray, n_folds: int = INNER_FOLDS) -> list | None:
    """Inner (train, validation) splits of whole sites, so that regularisation is chosen for
    unseen sites as the outer leave-site-out fold tests it; None with fewer than 2 sites."""
    n_sites = len(np.unique(groups))
    if n_sites < 2:
        return None
    return list(GroupKFold(n_splits=min(n_folds, n_sites)).split(np.zeros(len(groups)), groups=groups))


def cross_validate_probes(
    features: np.ndarray,
    table: pd.DataFrame,
    targets: Sequence[str] = ("age", "sex"),
    folds: Folds | None = None,
    protocol: str = "site_stratified",
    seed: int = 0,
    group_inner_by: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Fit one linear probe per target and fold; average the test-fold metrics over folds.

    Continuous targets (see :func:`is_continuous`) report ``mae`` and ``r2``; categorical
    ones ``balanced_accuracy`` and ``roc_auc`` (binary, or the macro one-vs-rest mean over
    the classes present in both the training and the test part of a fold). Rows whose
    target is missing are left out of that target's probe. Targets absent from the table, or
    with fewer than two classes, are skipped; the reasons are listed in
    ``result.attrs["notes"]``.

    Args:
        features: (n_subjects, n_features) in the table's row order.
        table: participants table.
        targets: columns to probe.
        folds: ``(train_idx, test_idx)`` pairs; None for 5 site-stratified folds.
        protocol: name written in the ``protocol`` column of the result.
        seed: seed of the default folds and of the inner CV shuffles.
        group_inner_by: column whose groups the inner CV keeps whole (``site`` for the
            leave-site-out protocol: regularisation is then chosen on unseen sites too).
        transform: a fold's training row positions -> the feature matrix (every row) that
            fold's probes are fitted and tested on, itself fitted on those rows only (ComBat
            harmonisation: ``medssl.eval.combat.fold_combat``); None for ``features`` in every fold.

    Returns:
        long table with the columns ``protocol``, ``target``, ``metric``, ``mean``, ``std``
        (over folds, ddof 0) and ``n_folds`` (folds where the metric was defined).
    """
    features = check_features(features, table)
    table = table.reset_index(drop=True)
    targets = [targets] if isinstance(targets, str) else targets  # "age" is one column, not three letters
    folds = site_stratified_folds(table, n_folds=5, seed=seed) if folds is None else folds
    groups = as_labels(table[group_inner_by]).to_numpy() if group_inner_by else None
    rows: list[dict] = []
    notes: list[str] = []
    for target in targets:
        if target not in table.columns:
            notes.append(f"{protocol}: {target}: no {target} column in the participants table, target skipped")
            continue
        with quiet_fits(features):
            per_fold, note = _probe_target(features, table[target], folds, seed, groups, transform)
        if note:
            notes.append(f"{protocol}: {target}: {note}")
        rows.extend(_fold_summary(protocol, target, metric, values) for metric, values in per_fold.items())
    result = pd.DataFrame(rows, columns=["protocol", "target", "metric", "mean", "std", "n_folds"])
    result.attrs["notes"] = notes
    return result


def _fold_summary(protocol: str, target: str, metric: str, values: Sequence[float]) -> dict:
    """Mean and std (ddof 0) of a metric over the folds where it is defined."""
    defined = np.asarray(values, dtype=float)
    defined = defined[np.isfinite(defined)]
    return {
        "protocol": protocol,
        "target": target,
        "metric": metric,
        "mean": float(defined.mean()) if defined.size else float("nan"),
        "std": float(defined.std()) if defined.size else float("nan"),
        "n_folds": int(defined.size),
    }


def out_of_fold_predictions(
    features: np.ndarray,
    table: pd.DataFrame,
    folds: Folds,
    target: str = "age",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Ridge-probe predictions of a continuous ``target`` for each row, from the fold that tests it.

    ``folds`` must partition the rows (as both fold functions do); rows with a missing
    target, or in no test part, get NaN. ``transform``: as in :func:`cross_validate_probes`.
    """
    features = check_features(features, table)
    values = pd.to_numeric(table[target], errors="coerce").to_numpy(dtype=float)
    predictions = np.full(len(table), np.nan)
    for matrix, train_idx, test_idx in _fold_matrices(features, folds, transform):
        train_idx = train_idx[np.isfinite(values[train_idx])]
        if len(train_idx) < 2 or len(test_idx) == 0:
            continue
        with quiet_fits(features):
            probe = regression_probe().fit(matrix[train_idx], values[train_idx])
        predictions[test_idx] = probe.predict(matrix[test_idx])
    predictions[~np.isfinite(values)] = np.nan
    return predictions


def challenge_skip_reason(table: pd.DataFrame) -> str:
    """Why :func:`challenge_protocol` cannot run on ``table`` (it needs train, internal_test and
    external_test rows), or "" when it can."""
    if "split" not in table.columns:
        return "no 'split' column"
    present = set(table["split"].astype(str))
    missing = [split for split in ("train", "internal_test", "external_test") if split not in present]
    return f"no {' / '.join(missing)} rows" if missing else ""


def challenge_protocol(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    id_col: str = "participant_id",
    split_col: str = "split",
    site_col: str = "site",
    age_col: str = "age",
    seed: int = 0,
    standardize: bool = False,
) -> dict:
    """The OpenBHB challenge protocol (Dufumier et al., NeuroImage 2022), as in the official kit.

    On the ``train`` rows, fit a ridge age probe (alpha in {1e-2, ..., 1e2}, 5-fold
    GridSearchCV on R^2) and a logistic site probe (saga, 150 iterations, C in
    {1e-2, ..., 1e2}, 5-fold GridSearchCV on balanced accuracy), on the features as they
    are: the kit's ``AgeEstimator`` and ``SiteEstimator`` (ramp-kits/brain_age_with_site_removal,
    ``problem.py``) have no scaler. ``standardize=True`` puts a ``StandardScaler`` in front of
    both (a named variant, not the kit). Predict age and site for the ``internal_test`` and
    ``external_test`` rows and score them with :func:`score_predictions`. A training set too
    small for 5 folds (fewer than 5 rows, or no site with 5 subjects) uses as many folds as
    it can hold.

    Returns:
        the keys of :func:`score_predictions`, plus ``age_alpha`` and ``site_C`` (the chosen
        hyper-parameters), ``n_train`` and ``predictions``: a DataFrame with one row per
        table row (``participant_id`` when present, ``split``, ``site``, ``age``,
        ``age_pred``, ``site_pred``; predictions are NaN on ``train`` rows).
    """
    features = check_features(features, table)
    table = table.reset_index(drop=True)
    splits, sites, ages = _challenge_columns(table, split_col, site_col, age_col)
    train = (splits == "train").to_numpy()
    n_train_sites, largest_site = _check_training_sites(sites[train])
    age_probe, site_probe = _challenge_probes(int(train.sum()), largest_site, seed, standardize)
    with quiet_fits(features):
        age_probe.fit(features[train], ages[train])
        site_probe.fit(features[train], sites[train])
    columns = {"id_col": id_col, "split_col": split_col, "site_col": site_col, "age_col": age_col}
    scores, predictions = _scored_test_predictions(
        features, table, (age_probe, site_probe), n_train_sites, "challenge protocol", **columns
    )
    return {
        **scores,
        "age_alpha": float(age_probe.best_params_["ridge__alpha"]),
        "site_C": float(site_probe.best_params_["logistic__C"]),
        "n_train": int(train.sum()),
        "predictions": predictions,
    }


def _scored_test_predictions(
    features: np.ndarray,
    table: pd.DataFrame,
    probes: tuple[BaseEstimator, BaseEstimator],
    n_train_sites: int,
    source: str,
    *,
    id_col: str,
    split_col: str,
    site_col: str,
    age_col: str,
) -> tuple[dict, pd.DataFrame]:
    """The fitted (age, site) ``probes``' predictions for the test rows, scored by :func:`score_predictions`.

    Returns:
        the scores, and one row per table row (``participant_id`` when present, ``split``,
        ``site``, ``age``, ``age_pred``, ``site_pred``; predictions are NaN on other rows).
    """
    splits, sites, ages = _challenge_columns(table, split_col, site_col, age_col)
    test = splits.isin(TEST_SPLITS).to_numpy()
    predictions = pd.DataFrame({split_col: splits, site_col: sites, age_col: ages})
    if id_col in table.columns:
        predictions.insert(0, id_col, table[id_col].astype(str))
    predictions["age_pred"] = np.nan
    predictions["site_pred"] = pd.Series(pd.NA, index=predictions.index, dtype=object)
    predictions.loc[test, "age_pred"] = probes[0].predict(features[test])
    predictions.loc[test, "site_pred"] = probes[1].predict(features[test])
    ids = id_col if id_col in predictions.columns else None  # the participants table may have no ids
    named = {"split_col": split_col, "site_col": site_col, "age_col": age_col}
    scores = score_predictions(predictions, id_col=ids, **named, n_sites=n_train_sites, source=source)
    return scores, predictions


def _challenge_columns(
    table: pd.DataFrame, split_col: str, site_col: str, age_col: str
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Splits (text), sites (labels) and ages of every row, refused when the train or test rows lack any."""
    for column in (split_col, site_col, age_col):
        if column not in table.columns:
            raise EvaluationError(f"participants table: missing column {column!r}, needed by the challenge protocol")
    splits = table[split_col].astype(str)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise EvaluationError(
            f"participants table: column {split_col!r} has unknown value {unknown[0]!r}; expected one of {', '.join(SPLITS)}"
        )
    used = splits.isin(SPLITS).to_numpy()
    ages = pd.to_numeric(table[age_col], errors="coerce").to_numpy(dtype=float)
    if np.isnan(ages[used]).any() or table[site_col][used].isna().any():
        raise EvaluationError(f"participants table: missing {age_col!r} or {site_col!r} values in train or test rows")
    return splits, as_labels(table[site_col]).to_numpy(), ages


def _check_training_sites(train_sites: np.ndarray) -> tuple[int, int]:
    """(number of training sites, subjects of the largest), refused when the site probe cannot be fitted."""
    site_counts = pd.Series(train_sites).value_counts()
    if len(site_counts) < 2 or site_counts.max() < 2:
        raise EvaluationError(
            "participants table: the challenge protocol needs train rows from at least 2 sites, one of them "
            f"with 2 subjects or more (got {len(train_sites)} row{'s' if len(train_sites) != 1 else ''} "
            f"from {len(site_counts)} site{'s' if len(site_counts) != 1 else ''})"
        )
    return len(site_counts), int(site_counts.max())


def _challenge_probes(
    n_train: int, largest_site: int, seed: int, standardize: bool
) -> tuple[GridSearchCV, GridSearchCV]:
    """The kit's age and site probes, with as many inner folds (up to 5) as the training rows allow."""
    scaler = [("scale", StandardScaler())] if standardize else []
    age_probe = GridSearchCV(
        Pipeline([*scaler, ("ridge", Ridge())]),
        {"ridge__alpha": CHALLENGE_ALPHAS},
        cv=min(CHALLENGE_FOLDS, n_train),
        scoring="r2",
    )
    site_probe = GridSearchCV(
        Pipeline(
            [
                *scaler,
                ("logistic", LogisticRegression(solver="saga", max_iter=CHALLENGE_SAGA_ITERATIONS, random_state=seed)),
            ]
        ),
        {"logistic__C": CHALLENGE_CS},
        cv=max(2, min(CHALLENGE_FOLDS, largest_site)),
        scoring="balanced_accuracy",
    )
    return age_probe, site_probe


def single_thread_if_small(features: np.ndarray | None) -> threadpool_limits:
    """Limit BLAS and OpenMP to one thread while working on a small feature matrix.

    Below ``SINGLE_THREAD_MAX_VALUES`` values, thread start-up and spin-waiting cost more
    than the work they share, many times more on a machine that is busy with other jobs.
    """
    small = features is not None and features.size <= SINGLE_THREAD_MAX_VALUES
    return threadpool_limits(limits=1 if small else None)


@contextmanager
def quiet_fits(features: np.ndarray | None = None) -> Iterator[None]:
    """Context for fitting probes: quiet expected warnings, and one BLAS thread for small inputs.

    The warnings silenced are those small folds make scikit-learn emit by design:
    convergence (saga stops at the kit's 150 iterations), folds with a missing class, and
    classes predicted but absent from a validation fold. Small inputs run single-threaded
    (see :func:`single_thread_if_small`).
    """
    with warnings.catch_warnings(), single_thread_if_small(features):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        warnings.filterwarnings("ignore", message="One or more of the test scores are non-finite", category=UserWarning)
        yield


def _fold_matrices(
    features: np.ndarray, folds: Folds, transform: Callable[[np.ndarray], np.ndarray] | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(matrix, train_idx, test_idx)`` per fold: ``features``, or ``transform(train_idx)`` when given."""
    for train_idx, test_idx in folds:
        yield (features if transform is None else transform(train_idx)), train_idx, test_idx


def _probe_target(
    features: np.ndarray,
    values: pd.Series,
    folds: Folds,
    seed: int,
    groups: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[dict, str]:
    known = values.notna().to_numpy()
    if is_continuous(values):
        target = values.to_numpy(dtype=float)
        per_fold: dict[str, list[float]] = {"mae": [], "r2": []}
        for matrix, train_idx, test_idx in _fold_matrices(features, folds, transform):
            train_idx, test_idx = train_idx[known[train_idx]], test_idx[known[test_idx]]
            if len(train_idx) < 2 or len(test_idx) == 0:
                continue
            inner = site_grouped_splits(groups[train_idx]) if groups is not None else None
            probe = regression_probe(inner).fit(matrix[train_idx], target[train_idx])
            predicted = probe.predict(matrix[test_idx])
            per_fold["mae"].append(float(mean_absolute_error(target[test_idx], predicted)))
            per_fold["r2"].append(r2(target[test_idx], predicted))
        return per_fold, "" if per_fold["mae"] else "no fold with training and test rows, target skipped"

    labels = np.where(known, as_labels(values).to_numpy(), None)
    if len(set(labels[known])) < 2:
        return {}, "fewer than two classes, target skipped"
    per_fold = {"balanced_accuracy": [], "roc_auc": []}
    skipped = 0
    for matrix, train_idx, test_idx in _fold_matrices(features, folds, transform):
        train_idx, test_idx = train_idx[known[train_idx]], test_idx[known[test_idx]]
        train_counts = pd.Series(labels[train_idx]).value_counts()
        if len(train_counts) < 2 or train_counts.max() < 2 or len(test_idx) == 0:
            skipped += 1
            continue
        inner = site_grouped_splits(groups[train_idx]) if groups is not None else None
        probe = classification_probe(min(INNER_FOLDS, int(train_counts.max())), seed, inner=inner)
        probe.fit(matrix[train_idx], labels[train_idx])
        per_fold["balanced_accuracy"].append(balanced_accuracy(labels[test_idx], probe.predict(matrix[test_idx])))
        per_fold["roc_auc"].append(roc_auc(labels[test_idx], probe.predict_proba(matrix[test_idx]), probe.classes_))
    if not per_fold["balanced_accuracy"]:
        return {}, "no fold whose training part holds two classes, target skipped"
    return per_fold, f"{skipped} fold(s) with a single training class left out" if skipped else ""


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Binary AUC, or the macro one-vs-rest mean over classes present in ``y_true`` and ``classes``.

    The multi-class mean is taken here rather than by ``roc_auc_score(..., multi_class="ovr")``,
    which raises when a class of the probe is absent from the test fold (routine with
    site-grouped folds) and needs probabilities summing to 1 over the classes of ``y_true``.
    """
    if len(classes) == 2:
        positive = y_true == classes[1]
        return float(roc_auc_score(positive, probabilities[:, 1])) if 0 < positive.sum() < len(y_true) else float("nan")
    aucs = []
    for column, label in enumerate(classes):
        positive = y_true == label
        if 0 < positive.sum() < len(y_true):
            aucs.append(roc_auc_score(positive, probabilities[:, column]))
    return float(np.mean(aucs)) if aucs else float("nan")


class KNNProbe(BaseEstimator):
    """Weighted k-nearest-neighbour probe on cosine similarity, as a scikit-learn estimator.

    The non-parametric probe of Wu et al. (CVPR 2018, "Unsupervised feature learning via
    non-parametric instance discrimination"), as solo-learn evaluates representations with it
    (``solo/utils/knn.py``; da Costa et al., JMLR 2022), with solo-learn's defaults k = 20 and
    T = 0.07. Features are L2-normalised, so the similarity s of a test row to a training row is
    their cosine; the k training rows of highest similarity are its neighbours (k is cut to the
    number of training rows, as in solo-learn), each weighted w = exp(s / T):

    - categorical target (site, sex, diagnosis): the class whose neighbours' weights sum highest,
      solo-learn's weighted vote; ``predict_proba`` gives those sums normalised to 1;
    - continuous target (age): the similarity-weighted mean of the neighbours' targets,
      sum(w * y) / sum(w). solo-learn only classifies: this regression is medssl's, with the
      same neighbours and weights.

    The weights are computed as exp((s - s_max) / T), s_max the row's highest similarity: the
    same vote, probabilities and mean (each divides by the row's total weight), without overflow
    at small T. Nothing is fitted but the memory of the training rows (no standardisation, no
    hyper-parameter search); the neighbour search and the vote are scikit-learn's
    (``KNeighborsClassifier`` / ``KNeighborsRegressor``, cosine metric, brute force). As an
    estimator (``fit``, ``predict``, ``get_params``) it composes with the CV splitters,
    ``cross_val_predict`` and ``clone``.

    Args:
        k: neighbours of each test row.
        temperature: T of the weights exp(s / T); a lower T gives the nearest neighbours more say.
        regression: True for a continuous target, False for a categorical one, None to decide
            from ``y`` at ``fit`` (:func:`is_continuous`: fractional values or more than 10 distinct).

    Example:
        >>> KNNProbe().fit(train_features, train_sites).predict(test_features)
        >>> KNNProbe(regression=True).fit(train_features, train_ages).predict(test_features)
    """

    def __init__(self, k: int = KNN_K, temperature: float = KNN_TEMPERATURE, regression: bool | None = None):
        self.k = k
        self.temperature = temperature
        self.regression = regression

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNProbe:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise EvaluationError(f"kNN probe: k = {self.k!r}, expected a positive integer")
        if not self.temperature > 0:
            raise EvaluationError(f"kNN probe: temperature = {self.temperature!r}, expected a positive number")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.regression_ = is_continuous(pd.Series(y)) if self.regression is None else bool(self.regression)
        self.n_neighbors_ = min(int(self.k), len(X))
        neighbours = KNeighborsRegressor if self.regression_ else KNeighborsClassifier
        self.model_ = neighbours(
            n_neighbors=self.n_neighbors_,
            weights=partial(similarity_weights, temperature=self.temperature),
            algorithm="brute",
            metric="cosine",
        ).fit(normalize(X), y)
        if not self.regression_:
            self.classes_ = self.model_.classes_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(normalize(np.asarray(X, dtype=np.float64)))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Each class's share of the neighbours' summed weights (columns in ``classes_`` order)."""
        if self.regression_:
            raise EvaluationError("kNN probe: predict_proba needs a categorical target (fitted on a continuous one)")
        return self.model_.predict_proba(normalize(np.asarray(X, dtype=np.float64)))


def similarity_weights(distances: np.ndarray, temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """exp(s / T) of each neighbour, up to a factor per row: exp((s - s_max) / T), s = 1 - the cosine distance."""
    distances = np.asarray(distances, dtype=np.float64)
    return np.exp((distances.min(axis=-1, keepdims=True) - distances) / temperature)


def knn_protocol(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    id_col: str = "participant_id",
    split_col: str = "split",
    site_col: str = "site",
    age_col: str = "age",
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> dict:
    """The kNN probe on the challenge's splits, scored as :func:`challenge_protocol` is.

    :class:`KNNProbe` (``k``, ``temperature``) for age (weighted mean) and site (weighted vote),
    its memory the ``train`` rows; the ``internal_test`` and ``external_test`` rows are
    predicted and scored by :func:`score_predictions`: the ridge and logistic probes of the
    challenge replaced by neighbours, every other step the same.

    Returns:
        the keys of :func:`score_predictions`, plus ``k``, ``temperature``, ``n_neighbors`` (k,
        or the number of training rows when fewer), ``n_train`` and ``predictions`` (as
        :func:`challenge_protocol`'s).
    """
    features = check_features(features, table)
    table = table.reset_index(drop=True)
    splits, sites, ages = _challenge_columns(table, split_col, site_col, age_col)
    train = (splits == "train").to_numpy()
    n_train_sites, _ = _check_training_sites(sites[train])
    with single_thread_if_small(features):
        age_probe = KNNProbe(k, temperature, regression=True).fit(features[train], ages[train])
        site_probe = KNNProbe(k, temperature, regression=False).fit(features[train], sites[train])
        columns = {"id_col": id_col, "split_col": split_col, "site_col": site_col, "age_col": age_col}
        scores, predictions = _scored_test_predictions(
            features, table, (age_probe, site_probe), n_train_sites, "kNN probe", **columns
        )
    return {
        **scores,
        "k": k,
        "temperature": temperature,
        "n_neighbors": age_probe.n_neighbors_,
        "n_train": int(train.sum()),
        "predictions": predictions,
    }
