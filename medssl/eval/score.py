"""The OpenBHB challenge scores, computed from a table of predictions.

The OpenBHB challenge (Dufumier et al., NeuroImage 2022) probes a frozen representation
with two linear models fitted on the training set, an age regressor and a site classifier,
and scores them on a test set split into an **internal** part (sites seen in training) and an
**external** part (unseen sites):

- ``mae_internal`` / ``mae_external``: mean absolute error of the predicted age;
- ``bacc_site``: balanced accuracy of the predicted site on the internal test set (lower is
  better: a representation free of site effects sits at chance, ``1 / n_sites``);
- ``challenge_score`` L_c = BAcc^0.3 * MAE_ext: what the official kit's ``challenge_metric``
  computes now (ramp-kits/brain_age_with_site_removal ``problem.py``, ``DeepDebiasingMetric``,
  since commit b5defb4 of 2022-09-19) and the score of the published leaderboard tables
  (Barbano et al., ISBI 2023);
- ``ramp_combined`` = MAE_ext * BAcc + MAE_int / n_sites: the kit's original
  ``challenge_metric`` (until commit 1c6c591 of 2022-06-17; between the two, the kit used
  MAE_ext * BAcc^0.3 + (1 / n_sites)^0.3 * MAE_int, which medssl does not report).

A predictions table has one row per subject (``participant_id``, when given, is unique) with
the columns ``split`` (``train``,
``internal_test`` or ``external_test``), ``site``, ``age``, ``age_pred`` and either
``site_pred`` or one probability column per site (read on ``internal_test`` rows only: the
site BAcc is scored there). Probability columns are named
``site_prob_<site>`` or ``prob_<site>`` (or ``<prefix><site>`` with ``site_pred_col=<prefix>``);
the site of the largest probability is the prediction. ``train`` rows are not scored; they only give the number of training sites.

Example:
    >>> from medssl.eval import read_predictions, score_predictions
    >>> scores = score_predictions(read_predictions("predictions.csv"))
    >>> scores["challenge_score"], scores["ramp_combined"]
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score

from medssl.errors import MedsslError

SPLITS = ("train", "internal_test", "external_test")
TEST_SPLITS = ("internal_test", "external_test")
PROBABILITY_PREFIXES = ("site_prob_", "prob_")
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
DEFAULT_ID_COL = "participant_id"
# Site BAcc and the scores built on it are shown as "n/a" below this many internal-test subjects
# in some site. A site probe at chance (a representation free of site information) predicts every
# one of the N internal-test subjects of k sites wrongly, scoring BAcc 0 and challenge_score 0
# (a perfect-looking result), with probability (1 - 1/k)^N <= (1 - 1/k)^(k n) <= e^-n, n the
# fewest subjects of a site: 37 % with one per site, 14 % with two, under 1 % from five on,
# where each site's recall also moves in steps of 0.2 at most.
MIN_SUBJECTS_PER_SITE = 5
SITE_SCORES = ("bacc_site", "challenge_score", "ramp_combined")


class EvaluationError(MedsslError):
    """A predictions table, participants table or feature matrix cannot be evaluated as asked."""


def challenge_score(mae_ext: float, bacc: float) -> float:
    """The OpenBHB challenge score L_c = BAcc^0.3 * MAE_ext (lower is better).

    What the official kit's current ``challenge_metric`` computes (ramp-kits/
    brain_age_with_site_removal ``problem.py``, ``DeepDebiasingMetric``, since commit b5defb4,
    2022-09-19) and the score of the published leaderboard tables: Barbano et al.,
    "Contrastive learning for regression in multi-site brain age prediction", ISBI 2023;
    Dufumier et al., NeuroImage 2022.

    Args:
        mae_ext: mean absolute error of the predicted age on the external test set (years).
        bacc: balanced accuracy of the site prediction on the internal test set, in [0, 1].

    Example:
        >>> round(challenge_score(mae_ext=3.76, bacc=0.051), 2)
        1.54
    """
    _check_range("mae_ext", mae_ext, low=0.0)
    _check_range("bacc", bacc, low=0.0, high=1.0)
    return float(bacc**0.3 * mae_ext)


def ramp_combined(mae_ext: float, bacc: float, mae_int: float, n_sites: int) -> float:
    """The official kit's original ``challenge_metric`` (2022, until commit 1c6c591 of
    2022-06-17 in ramp-kits/brain_age_with_site_removal): MAE_ext * BAcc + MAE_int / n_sites
    (lower is better). The kit now computes :func:`challenge_score` instead.

    Args:
        mae_ext: mean absolute age error on the external test set.
        bacc: site balanced accuracy on the internal test set, in [0, 1].
        mae_int: mean absolute age error on the internal test set.
        n_sites: number of training sites (64 for OpenBHB).

    Example:
        >>> ramp_combined(mae_ext=4.0, bacc=0.5, mae_int=3.2, n_sites=64)
        2.05
    """
    _check_range("mae_ext", mae_ext, low=0.0)
    _check_range("bacc", bacc, low=0.0, high=1.0)
    _check_range("mae_int", mae_int, low=0.0)
    if isinstance(n_sites, bool) or int(n_sites) != n_sites or n_sites < 1:
        raise EvaluationError(f"n_sites: got {n_sites!r}, expected a positive integer (number of training sites)")
    return float(mae_ext * bacc + mae_int / n_sites)


def score_predictions(
    table: pd.DataFrame,
    *,
    id_col: str | None = None,
    split_col: str = "split",
    site_col: str = "site",
    age_col: str = "age",
    age_pred_col: str = "age_pred",
    site_pred_col: str = "site_pred",
    n_sites: int | None = None,
    source: str | None = None,
) -> dict:
    """Score a predictions table with the OpenBHB challenge metrics.

    Rows of the ``train`` split are not scored; unless ``n_sites`` is given, the number of
    distinct sites among them is the number of training sites. The site prediction is the
    ``site_pred_col`` column or, when the table has none, the argmax over the probability
    columns ``site_prob_<site>`` (or ``prob_<site>``), read on ``internal_test`` rows only. A
    ``train`` row's ages may be missing, but not text (the columns would not be what they seem).

    Args:
        table: one row per subject (see the module docstring for the columns).
        id_col: participant column: no id may repeat, and messages name rows by it. None reads
            ``participant_id`` when the table has that column; a given name must be a column.
        n_sites: number of training sites; None counts them among the ``train`` rows.
        source: the table's name in messages (default: the file :func:`read_predictions` read).

    Returns:
        ``mae_internal``, ``mae_external``, ``bacc_site``, ``challenge_score``, ``ramp_combined``, ``n_sites``, ``n_internal``,
        ``n_external``, ``r2_internal``, ``r2_external`` (NaN when undefined), ``chance_bacc``, ``min_internal_per_site``.

    Example:
        >>> scores = score_predictions(predictions)  # then scores["mae_external"], scores["bacc_site"]
    """
    source = source or table.attrs.get("source", "predictions table")
    table = table.reset_index(drop=True)  # row labels become row numbers, for the messages
    _require_columns(
        table, dict(split_col=split_col, site_col=site_col, age_col=age_col, age_pred_col=age_pred_col), source
    )
    site_pred_source = _site_prediction_columns(table, site_pred_col, source)
    id_col = _id_column(table, id_col, source)
    _check_unique_ids(table, id_col, source)
    splits = _checked_splits(table, split_col, id_col, source)
    _check_train_ages(table, splits, age_col, age_pred_col, id_col, source)
    tested = splits.isin(TEST_SPLITS).to_numpy()
    scored = table[tested]
    internal = (splits[tested] == "internal_test").to_numpy()
    site_scored = scored[internal]  # an external site has no right answer among the training sites
    _check_scored_rows_complete(
        ((scored, [age_col, age_pred_col, site_col]), (site_scored, site_pred_source)), table, id_col, source
    )
    true_age = _true_ages(scored, age_col, table, id_col, source)
    pred_age = _numeric(scored[age_pred_col], age_pred_col, table, id_col, source)
    true_site = as_labels(site_scored[site_col]).to_numpy()
    pred_site = _predicted_sites(site_scored, site_pred_col, site_pred_source, table, id_col, source)
    _check_sites_named_alike(pred_site, as_labels(table[site_col]), site_col, source)
    _warn_unseen_internal_sites(table, splits, site_col, source)
    if n_sites is None:
        n_sites = _count_training_sites(table, splits, site_col, id_col, source)
    return _challenge_scores(true_age, pred_age, true_site, pred_site, internal, n_sites)


def _challenge_scores(
    true_age: np.ndarray,
    pred_age: np.ndarray,
    true_site: np.ndarray,
    pred_site: np.ndarray,
    internal: np.ndarray,
    n_sites: int,
) -> dict:
    """The scores of :func:`score_predictions` from the test rows' ages (``internal`` marks the
    internal ones) and the internal rows' sites."""
    external = ~internal
    mae_internal = float(mean_absolute_error(true_age[internal], pred_age[internal]))
    mae_external = float(mean_absolute_error(true_age[external], pred_age[external]))
    bacc_site = balanced_accuracy(true_site, pred_site)
    return {
        "mae_internal": mae_internal,
        "mae_external": mae_external,
        "bacc_site": bacc_site,
        "challenge_score": challenge_score(mae_external, bacc_site),
        "ramp_combined": ramp_combined(mae_external, bacc_site, mae_internal, n_sites),
        "n_sites": int(n_sites),
        "n_internal": int(internal.sum()),
        "n_external": int(external.sum()),
        "r2_internal": r2(true_age[internal], pred_age[internal]),
        "r2_external": r2(true_age[external], pred_age[external]),
        "chance_bacc": 1.0 / n_sites,
        "min_internal_per_site": int(pd.Series(true_site).value_counts().min()) if len(true_site) else 0,
    }


def too_few_per_site(scores: dict) -> int | None:
    """The fewest internal-test subjects of a site when below :data:`MIN_SUBJECTS_PER_SITE`
    (the site scores :data:`SITE_SCORES` then mean nothing), else None; None for scores without the count."""
    fewest = scores.get("min_internal_per_site")
    return int(fewest) if fewest is not None and fewest < MIN_SUBJECTS_PER_SITE else None


def _checked_splits(table: pd.DataFrame, split_col: str, id_col: str | None, source: str) -> pd.Series:
    """The split column as text, refused unless every value is a known split and both test splits occur."""
    splits = table[split_col]
    _check_no_missing(splits, split_col, table, id_col, source)
    unknown = sorted(set(splits.astype(str)) - set(SPLITS))
    if unknown:
        raise EvaluationError(
            f"{source}: column {split_col!r} has unknown value {unknown[0]!r}; expected one of {', '.join(SPLITS)}"
        )
    splits = splits.astype(str)
    for name in TEST_SPLITS:
        if not (splits == name).any():
            raise EvaluationError(
                f"{source}: no {name} rows in column {split_col!r}; both internal_test and external_test rows are needed"
            )
    return splits


def _id_column(table: pd.DataFrame, id_col: str | None, source: str) -> str | None:
    """The participant column: ``id_col``, refused when absent, or ``participant_id`` if the table has one."""
    if id_col is None:
        return DEFAULT_ID_COL if DEFAULT_ID_COL in table.columns else None
    _require_columns(table, dict(id_col=id_col), source)
    return id_col


def _check_unique_ids(table: pd.DataFrame, id_col: str | None, source: str) -> None:
    """Every row a participant of its own: a repeated row would count twice in the MAE and the BAcc."""
    if id_col is None:
        return
    ids = table[id_col]
    missing = ids.isna().to_numpy()
    if missing.any():
        raise EvaluationError(
            f"{source}: column {id_col!r} is empty in data row {np.argmax(missing) + 1}; expected an id on every row"
        )
    repeated = ids.astype(str).duplicated(keep=False).to_numpy()
    if repeated.any():
        first = int(np.argmax(repeated))
        rows = np.flatnonzero(ids.astype(str).to_numpy() == str(ids.iat[first])) + 1
        raise EvaluationError(
            f"{source}: duplicate {id_col} '{ids.iat[first]}' (data rows {', '.join(map(str, rows))}); "
            "expected one row per participant"
        )


def _check_train_ages(
    table: pd.DataFrame, splits: pd.Series, age_col: str, age_pred_col: str, id_col: str | None, source: str
) -> None:
    """The ages a ``train`` row gives are checked as a test row's are; missing ones are allowed (not scored)."""
    train = table[(splits == "train").to_numpy()]
    _true_ages(train[train[age_col].notna()], age_col, table, id_col, source)
    _numeric(train[age_pred_col].dropna(), age_pred_col, table, id_col, source)


def _true_ages(scored: pd.DataFrame, age_col: str, table: pd.DataFrame, id_col: str | None, source: str) -> np.ndarray:
    true_age = _numeric(scored[age_col], age_col, table, id_col, source)
    negative = true_age < 0
    if negative.any():  # a sign error upstream; its MAE would look plausible
        label = scored.index[np.argmax(negative)]
        raise EvaluationError(
            f"{source}: column {age_col!r} has {true_age[np.argmax(negative)]:g} for "
            f"{_row_name(table, label, id_col)}; expected a true age >= 0"
        )
    return true_age


def _count_training_sites(
    table: pd.DataFrame, splits: pd.Series, site_col: str, id_col: str | None, source: str
) -> int:
    train_sites = table.loc[(splits == "train").to_numpy(), site_col]
    if train_sites.empty:
        raise EvaluationError(f"{source}: no train rows to count the training sites; pass n_sites (64 for OpenBHB)")
    _check_no_missing(train_sites, site_col, table, id_col, source)
    return int(as_labels(train_sites).nunique())


class UnseenSiteWarning(UserWarning):
    """Internal-test subjects at a site no training subject comes from: they are external in all but name."""


def _warn_unseen_internal_sites(table: pd.DataFrame, splits: pd.Series, site_col: str, source: str) -> None:
    train = (splits == "train").to_numpy()
    if not train.any():
        return
    seen = set(as_labels(table.loc[train, site_col]))
    internal = table.loc[(splits == "internal_test").to_numpy(), site_col].dropna()
    unseen = sorted(set(as_labels(internal)) - seen)
    if unseen:
        count = int(as_labels(internal).isin(unseen).sum())
        warnings.warn(
            f"{source}: {count} internal_test subject(s) at site(s) never seen in training "
            f"({', '.join(map(str, unseen[:5]))}): internal MAE and site BAcc count them as known sites",
            UnseenSiteWarning,
            stacklevel=3,
        )


def read_predictions(
    path: str | Path,
    *,
    id_col: str | None = None,
    split_col: str = "split",
    site_col: str = "site",
    age_col: str = "age",
    age_pred_col: str = "age_pred",
    site_pred_col: str = "site_pred",
) -> pd.DataFrame:
    """Read a predictions table from a ``.csv`` or ``.tsv`` file and check its columns.

    Identifier, split and site columns are read as strings, so that a site coded ``"03"``
    keeps its leading zero and matches the suffix of a ``site_prob_03`` column. The file
    name is kept in ``table.attrs["source"]`` for the messages of :func:`score_predictions`.

    Example:
        >>> table = read_predictions("predictions.tsv", age_pred_col="brain_age")
        >>> score_predictions(table, age_pred_col="brain_age")["mae_external"]
    """
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder; expected a predictions file (.csv or .tsv)")
    separator = TABLE_SEPARATORS.get(path.suffix.lower())
    if separator is None:
        raise EvaluationError(f"{path}: unknown table format {path.suffix!r}; expected .csv or .tsv")
    if not path.is_file():
        raise EvaluationError(f"{path}: no such predictions file")
    text_columns = {id_col or DEFAULT_ID_COL, split_col, site_col, site_pred_col}
    try:
        table = pd.read_csv(path, sep=separator, dtype={column: str for column in text_columns})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: cannot be read as a table ({str(error).splitlines()[0]})") from None
    _require_columns(
        table, dict(split_col=split_col, site_col=site_col, age_col=age_col, age_pred_col=age_pred_col), str(path)
    )
    _site_prediction_columns(table, site_pred_col, str(path))
    _id_column(table, id_col, str(path))
    table.attrs["source"] = str(path)
    return table


def balanced_accuracy(y_true: pd.Series | np.ndarray, y_pred: pd.Series | np.ndarray) -> float:
    """``sklearn.metrics.balanced_accuracy_score``: the mean over the classes of ``y_true`` of
    the fraction predicted correctly; predicted classes absent from ``y_true`` only count as errors.

    A thin wrapper because the site classifier routinely predicts sites absent from a test
    split, on which scikit-learn warns, and because scikit-learn raises on no samples where the
    score is NaN here (undefined).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``sklearn.metrics.r2_score``, NaN where undefined: fewer than 2 samples, a constant
    ``y_true`` (scikit-learn returns 0 or 1 there) or a non-finite prediction (it raises)."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(y_true) < 2 or np.all(y_true == y_true[0]) or not np.all(np.isfinite(y_pred)):
        return float("nan")
    return float(r2_score(y_true, y_pred))


def as_labels(values: pd.Series) -> pd.Series:
    """Class labels as strings, with whole-valued floats written as integers (3.0 -> "3")."""
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values.dropna(), 1) == 0):
        values = values.astype("Int64")
    return values.astype(str)


def _check_range(name: str, value: float, low: float, high: float = np.inf) -> None:
    try:
        in_range = bool(np.isfinite(value)) and low <= value <= high
    except TypeError:
        in_range = False
    if not in_range:
        expected = f"a finite number >= {low}" if high == np.inf else f"a number in [{low}, {high}]"
        raise EvaluationError(f"{name}: got {value!r}, expected {expected}")


def _require_columns(table: pd.DataFrame, columns: dict[str, str], source: str) -> None:
    """``columns``: argument name -> column name; the message says which argument renames it."""
    for argument, column in columns.items():
        if column not in table.columns:
            option = "--" + argument.replace("_", "-")
            raise EvaluationError(
                f"{source}: missing column {column!r} (columns: {', '.join(map(str, table.columns))}); "
                f"for a column of another name, give {argument} (command line: {option})"
            )


def _site_prediction_columns(table: pd.DataFrame, site_pred_col: str, source: str) -> list[str]:
    """``[site_pred_col]``, or the probability columns that replace it.

    Probability columns are those named ``<prefix><site>``, the prefix being
    ``site_pred_col`` itself (so ``site_pred_col="proba_"`` reads ``proba_<site>``), then
    ``site_prob_``, then ``prob_``: the first prefix that matches two columns or more wins (one
    column is no distribution over sites, e.g. ``site_pred_confidence``).
    """
    if site_pred_col in table.columns:
        return [site_pred_col]
    for prefix in _probability_prefixes(site_pred_col):
        columns = [column for column in table.columns if str(column).startswith(prefix)]
        if len(columns) >= 2:
            return columns
    raise EvaluationError(
        f"{source}: missing column {site_pred_col!r} and no site probability columns "
        f"({' or '.join(prefix + '<site>' for prefix in PROBABILITY_PREFIXES)})"
    )


def _check_sites_named_alike(predicted: np.ndarray, true_sites: pd.Series, site_col: str, source: str) -> None:
    """Refuse predictions none of which is a site of the table: the two columns then spell sites
    differently ('1' and '01'), and every prediction would count as wrong."""
    known = set(true_sites.dropna())
    if len(predicted) and not known.intersection(predicted):
        shown = ", ".join(repr(site) for site in sorted(set(predicted), key=str)[:3])
        expected = ", ".join(repr(site) for site in sorted(known, key=str)[:3])
        raise EvaluationError(
            f"{source}: no predicted site ({shown}) is a site of column {site_col!r} ({expected}); "
            "predictions must name sites as that column does"
        )


def _probability_prefixes(site_pred_col: str) -> list[str]:
    return list(dict.fromkeys([site_pred_col, *PROBABILITY_PREFIXES]))


def _row_name(table: pd.DataFrame, row: int, id_col: str | None) -> str:
    """Name a row of a table whose index is ``0..n-1``; data rows are counted from 1."""
    if id_col is not None and id_col in table.columns:
        return f"participant {table.at[row, id_col]!s} (data row {row + 1})"
    return f"data row {row + 1}"


def _check_scored_rows_complete(
    checks: tuple[tuple[pd.DataFrame, list[str]], ...], table: pd.DataFrame, id_col: str | None, source: str
) -> None:
    """No missing value in the columns each scored part of the table is read from."""
    for rows, columns in checks:
        for column in columns:
            _check_no_missing(rows[column], column, table, id_col, source)


def _check_no_missing(values: pd.Series, column: str, table: pd.DataFrame, id_col: str | None, source: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        label = values.index[np.argmax(missing)]
        raise EvaluationError(f"{source}: column {column!r} has a missing value for {_row_name(table, label, id_col)}")


def _plain(value):
    """A numpy scalar as its Python value: messages say ``inf``, not ``np.float64(inf)``."""
    return value.item() if isinstance(value, np.generic) else value


def _numeric(values: pd.Series, column: str, table: pd.DataFrame, id_col: str | None, source: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        label = values.index[np.argmax(bad)]
        raise EvaluationError(
            f"{source}: column {column!r} has {_plain(values[label])!r} for {_row_name(table, label, id_col)}; "
            "expected a finite number"
        )
    return numbers.to_numpy(dtype=float)


def _predicted_sites(
    scored: pd.DataFrame,
    site_pred_col: str,
    columns: list[str],
    table: pd.DataFrame,
    id_col: str | None,
    source: str,
) -> np.ndarray:
    if columns == [site_pred_col]:
        return as_labels(scored[site_pred_col]).to_numpy()
    probabilities = np.column_stack([_numeric(scored[column], column, table, id_col, source) for column in columns])
    prefix = next(prefix for prefix in _probability_prefixes(site_pred_col) if str(columns[0]).startswith(prefix))
    sites = np.array([str(column)[len(prefix) :] for column in columns], dtype=object)
    return sites[np.argmax(probabilities, axis=1)]
