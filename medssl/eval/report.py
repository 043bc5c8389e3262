"""The evaluation report of a representation: every protocol, written to disk and printed.

:func:`evaluate_representation` runs every protocol of the registry
(:data:`medssl.eval.protocols.PROTOCOLS`) on one feature matrix (and optionally on the features
of a randomly initialised encoder, the baseline every pre-training must beat):

1. site-stratified K-fold CV of linear probes (known scanners);
2. leave-site-out CV of the same probes (unseen scanners; the ``site`` target is left out,
   its classes never occur in training);
3. the challenge protocol on each of the challenge kit's folds, when given (``kit_folds``);
4. the OpenBHB challenge protocol, when the table has ``train``, ``internal_test`` and
   ``external_test`` rows;
5. the kNN probe on the same splits (``knn``: cosine, k = 20, T = 0.07, as solo-learn), next
   to the challenge's ridge and logistic probes.

Both CV protocols run on every row of the table and share their folds between the
representations, so the comparison is paired.

When the table spans 2 sites or more, the report also carries ``combat``: the pre-trained
features harmonised by ComBat (:mod:`medssl.eval.combat`), fitted on the training rows of each
fold (and on the challenge's ``train`` rows) with age as a covariate, applied to the rows of the
sites it was fitted on, then probed with the same probes and folds. Rows of sites absent from
the training rows (the external test, the held-out sites of leave-site-out folds) cannot be
harmonised without fitting on them, and are left as they are; a note in the report says so.

Files written to ``out_dir``:

- ``metrics.json``: ``{"pretrained": {...}, "combat": {...}, "baseline": {...}, "settings": {...}}``; each
  representation opens with the challenge keys ``mae_internal``, ``mae_external``,
  ``bacc_site``, ``challenge_score``, ``ramp_combined`` (null when the protocol was
  skipped), then one key per protocol: ``challenge`` and ``knn`` (all their scores, null when
  skipped), ``site_stratified``, ``leave_site_out`` and ``kit_folds``
  (``{target: {metric: {"mean", "std", "n_folds"}}}``), and ``notes``;
- ``metrics.csv``: the same numbers in long format (``representation, protocol, target,
  metric, mean, std``);
- ``predictions.csv`` (and ``predictions_<representation>.csv``): the challenge protocol's
  predictions, ready for ``score_predictions``; without test splits, the out-of-fold age
  predictions of the site-stratified CV, with a ``fold`` column;
- ``age_predictions.png`` and ``embedding.png`` for the pre-trained representation;
- ``kit_folds.csv``: the challenge scores of every kit fold and representation, when folds are given.

Example:
    >>> results = evaluate_representation(features, table, "runs/yaware/eval", baseline_features=random_features)
    >>> print_report(results)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from medssl.eval.combat import NOTE as COMBAT_NOTE
from medssl.eval.combat import fold_combat
from medssl.eval.folds import ChallengeFold
from medssl.eval.plots import plot_age_predictions, plot_embedding
from medssl.eval.probes import check_features, out_of_fold_predictions
from medssl.eval.protocols import (
    PROTOCOLS,
    Protocol,
    Result,
    Setup,
    Transform,
    plan,
    report_order,
    run_protocol,
    runnable,
)
from medssl.eval.score import MIN_SUBJECTS_PER_SITE, SITE_SCORES, EvaluationError, too_few_per_site
from medssl.files import json_ready

# The trained encoder, then the baselines every report carries: a randomly initialised
# encoder of the same architecture ("baseline"), the intensity-statistics probe and the
# training-mean predictor (the probes fitted on a constant feature). ``combat``: the trained
# encoder's features harmonised across sites (with 2 sites or more), next to them.
REPRESENTATIONS = ("pretrained", "combat", "baseline", "intensity", "mean")
METRIC_NAMES = {"balanced_accuracy": "BAcc", "roc_auc": "ROC AUC"}  # short, so that the table fits 80 columns
DISPLAY_NAMES = {
    "pretrained": "trained encoder",
    "combat": "trained + ComBat",
    "baseline": "random init",
    "intensity": "intensity stats",
    "mean": "training mean",
}
# The trivial baselines: a trained encoder that does not beat them on a row learnt nothing it shows.
TRIVIAL_BASELINES = ("baseline", "intensity", "mean")
# A printed row: (protocol, target, metric).
Row = tuple[str, str, str]


def evaluate_representation(
    features: np.ndarray,
    table: pd.DataFrame,
    out_dir: str | Path,
    *,
    folds: int = 5,
    targets: Sequence[str] = ("age", "sex"),
    baseline_features: np.ndarray | None = None,
    reference_features: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    challenge_folds: Sequence[ChallengeFold] = (),
) -> dict:
    """Run every evaluation protocol on ``features`` (and ``baseline_features``) and write the report.

    Args:
        features: (n_subjects, n_features) of the pre-trained encoder, in the table's row order.
        table: participants table (``site`` required; ``split`` for the challenge protocol).
        out_dir: folder for the files listed in the module docstring (created if needed).
        folds: folds of the site-stratified CV; the leave-site-out CV uses as many folds of
            whole sites, or one fold per site when there are no more sites than that.
        targets: columns probed by both CV protocols.
        baseline_features: features of the randomly initialised encoder, same shape.
        reference_features: more baselines by name (``intensity``: :class:`IntensityStatistics`;
            ``mean``: a constant column, whose probes predict the training mean and the
            majority class), each evaluated with the same folds and probes.
        seed: seed of the folds and of the probes.
        challenge_folds: the challenge kit's folds (:func:`medssl.eval.folds.challenge_folds`),
            each scored with the challenge protocol.

    Returns:
        the content of ``metrics.json``.
    """
    matrices = _checked_matrices(features, table, baseline_features, reference_features)
    table = table.reset_index(drop=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = plan(table, folds, targets, seed, challenge_folds)
    protocols, plan_notes = runnable(setup)

    results: dict = {}
    long_tables: list[pd.DataFrame] = []
    per_fold: list[pd.DataFrame] = []
    names = list(matrices)
    names[1:1] = ["combat"] if setup.n_sites >= 2 else []  # ComBat: the trained encoder's features, harmonised
    for name in names:
        matrix = matrices["pretrained" if name == "combat" else name]
        transform = fold_combat(matrix, table) if name == "combat" else None
        notes = [*plan_notes, *([COMBAT_NOTE] if transform is not None else [])]
        outcomes = _run_protocols(protocols, matrix, setup, transform, notes)
        per_fold.extend(
            result.attrs["per_fold"].assign(representation=name)
            for result in outcomes.values()
            if isinstance(result, pd.DataFrame) and "per_fold" in result.attrs
        )
        _write_predictions(name, matrix, setup, outcomes, out_dir, transform)
        results[name] = _representation_entry(outcomes, notes)
        long_tables.append(_long_table(name, outcomes))

    results["settings"] = _settings(setup, folds, matrices["pretrained"])
    return _write_metrics(out_dir, results, long_tables, per_fold)


def _run_protocols(
    protocols: list[Protocol], matrix: np.ndarray, setup: Setup, transform: Transform | None, notes: list[str]
) -> dict[str, Result]:
    """Each runnable protocol's result on one representation, by name; what they say goes into ``notes``."""
    outcomes: dict[str, Result] = {}
    for protocol in protocols:
        result, said = run_protocol(protocol, matrix, setup, transform)
        notes.extend(said)
        if result is not None:
            outcomes[protocol.name] = result
    return outcomes


def _write_predictions(
    name: str,
    matrix: np.ndarray,
    setup: Setup,
    outcomes: dict[str, Result],
    out_dir: Path,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """predictions[_NAME].csv, plotted for the trained encoder: the predictions of the first protocol
    (registry order) that returns some, the challenge protocol's; else out-of-fold ones.

    Takes the predictions out of every protocol's scores, which then hold scores only."""
    returned = [result.pop("predictions", None) for result in outcomes.values() if isinstance(result, dict)]
    returned = [predictions for predictions in returned if predictions is not None]
    if returned:
        predictions = returned[0]
    else:
        predictions = _out_of_fold_table(matrix, setup.table, setup.stratified, transform)
    suffix = "" if name == "pretrained" else f"_{name}"
    predictions.to_csv(out_dir / f"predictions{suffix}.csv", index=False)
    if name == "pretrained":
        folds = None if returned else len(setup.stratified)
        _plot_pretrained(matrix, setup.table, predictions, out_dir, folds, setup.seed)


def _settings(setup: Setup, folds: int, features: np.ndarray) -> dict:
    """The ``settings`` entry of metrics.json: what the figures were computed with."""
    return {
        "folds": folds,
        "leave_site_out_folds": None if setup.site_out is None else len(setup.site_out),
        "targets": list(setup.targets),
        "seed": setup.seed,
        "n_subjects": len(setup.table),
        "n_features": int(features.shape[1]),
        "n_sites": setup.n_sites,
    }


def _write_metrics(out_dir: Path, results: dict, long_tables: list[pd.DataFrame], per_fold: list[pd.DataFrame]) -> dict:
    """Write metrics.json, metrics.csv (and kit_folds.csv); return the JSON-ready results."""
    results = json_ready(results)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    pd.concat(long_tables, ignore_index=True).to_csv(out_dir / "metrics.csv", index=False)
    if per_fold:
        pd.concat(per_fold, ignore_index=True).to_csv(out_dir / "kit_folds.csv", index=False)
    return results


def _plot_pretrained(
    matrix: np.ndarray,
    table: pd.DataFrame,
    predictions: pd.DataFrame,
    out_dir: Path,
    out_of_fold_folds: int | None,
    seed: int,
) -> None:
    """Age predictions (of the challenge protocol, or out-of-fold of a K-fold CV) and the 2-D embedding."""
    title = (
        None if out_of_fold_folds is None else f"Out-of-fold predictions, site-stratified {out_of_fold_folds}-fold CV"
    )
    if predictions["age_pred"].notna().any():
        plot_age_predictions(predictions, out_dir / "age_predictions.png", title=title)
    plot_embedding(matrix, table, out_dir / "embedding.png", seed=seed)


def _checked_matrices(
    features: np.ndarray,
    table: pd.DataFrame,
    baseline_features: np.ndarray | None,
    reference_features: dict[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    matrices = {"pretrained": check_features(features, table, "features")}
    if baseline_features is not None:
        matrices["baseline"] = check_features(baseline_features, table, "baseline_features")
    for name, reference in (reference_features or {}).items():
        matrices[name] = check_features(reference, table, f"reference_features[{name!r}]")
    return matrices


def print_report(results: dict, console: Console | None = None) -> None:
    """Print a results dict (or a loaded ``metrics.json``) as a table, pretrained vs. the baselines.

    Each ranked row carries its direction (↓ lower is better, ↑ higher is better) and shows its
    best representation in bold. Representations that do not fit the console's width in one
    table are printed in as many tables as it takes, each after the first opening with the
    trained encoder's column again: no column is ever dropped. Under the tables, one line each:
    the rows where a trivial baseline (random init, intensity statistics, training mean) beats
    the trained encoder, and the site scores shown as n/a because some site has fewer than
    :data:`~medssl.eval.score.MIN_SUBJECTS_PER_SITE` internal-test subjects.
    """
    console = console or Console()
    names = [name for name in REPRESENTATIONS if isinstance(results.get(name), dict)]
    if not names:
        raise EvaluationError("results: no 'pretrained' or 'baseline' entry to print")
    keys = _ordered_rows(results, names)
    cells = {key: [_cell(results[name], key) for name in names] for key in keys}
    rows = []
    for key in keys:
        better = _better(key, [value for value, _ in cells[key]])
        texts = [f"[bold]{text}[/bold]" if index == better else text for index, (_, text) in enumerate(cells[key])]
        rows.append([PROTOCOLS[key[0]].label, _row_name(key), *texts])
    groups = _column_groups(console, names, rows)
    for number, group in enumerate(groups, start=1):
        part = f" ({number}/{len(groups)})" if len(groups) > 1 else ""
        console.print(_report_table(names, rows, group, part=part))
    fewest = [count for key in keys for name in names if (count := _too_few(results[name], key)) is not None]
    if fewest:
        console.print(
            f"n/a (too few subjects: {min(fewest)} per site): {', '.join(SITE_SCORES)} need at least "
            f"{MIN_SUBJECTS_PER_SITE} internal-test subjects per site; with fewer, a site probe at chance "
            "often scores a perfect-looking 0 (metrics.json keeps the numbers)",
            highlight=False,
        )
    wins = _trivial_wins(names, keys, cells)
    if wins:
        console.print(f"[yellow]warning:[/] {wins}", highlight=False)
    for note in report_notes(results):
        console.print(f"[dim]{note}[/dim]", highlight=False)


def report_notes(results: dict) -> list[str]:
    """The evaluation's notes (``metrics.json``), one line each, naming the columns of the report they are about."""
    names = [name for name in REPRESENTATIONS if isinstance(results.get(name), dict)]
    owners: dict[str, list[str]] = {}
    for name in names:
        for note in results[name].get("notes", []):
            owners.setdefault(note, []).append(name)
    return [
        f"{'every column' if len(said) == len(names) > 1 else ', '.join(DISPLAY_NAMES[name] for name in said)}: {note}"
        for note, said in owners.items()
    ]


def _column_groups(console: Console, names: list[str], rows: list[list[str]]) -> list[list[int]]:
    """The representations of each printed table: all of them when they fit the console's width,
    else as many per table as fit, each table after the first opening with the trained encoder's
    column again (one per table on a console too narrow for two)."""
    columns = list(range(len(names)))

    def fits(group: list[int]) -> bool:  # with every header word on a line of its own, as rich may wrap them
        return _full_width(console, _report_table(names, rows, group, header_words=True)) <= console.width

    if fits(columns):
        return [columns]
    if not fits(columns[:2]):
        return [[index] for index in columns]
    groups, current = [], columns[:2]
    for index in columns[2:]:
        if fits([*current, index]):
            current.append(index)
        else:
            groups.append(current)
            current = [columns[0], index]
    return [*groups, current]


def _full_width(console: Console, table: Table) -> int:
    """The width ``table`` prints in without wrapping a header or cell (not clamped to the console's width)."""
    return console.measure(table, options=console.options.update_width(1_000_000)).maximum


def _report_table(
    names: list[str], rows: list[list[str]], columns: list[int], header_words: bool = False, part: str = ""
) -> Table:
    """The printed table of the representations ``names[i]`` for i in ``columns`` (``header_words``:
    their headers a word per line, to measure the narrowest width the table prints in whole); ``part``
    says which of the tables it is when they are several."""
    table = Table(
        title=f"medssl evaluation{part} (↓ lower is better, ↑ higher is better)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for header in ("protocol", "metric"):
        table.add_column(header, no_wrap=True)  # names stay whole at 80 columns
    for index in columns:
        header = DISPLAY_NAMES.get(names[index], names[index])
        table.add_column(header.replace(" ", "\n") if header_words else header, justify="right", min_width=9)
    for row in rows:
        table.add_row(*row[:2], *(row[2 + index] for index in columns))
    return table


def _metric_name(key: Row) -> str:
    """A challenge metric names its target (mae_internal: age); a CV metric needs it (age mae)."""
    protocol, target, metric = key
    return metric if PROTOCOLS[protocol].names_target(metric) else f"{target} {METRIC_NAMES.get(metric, metric)}"


def _row_name(key: Row) -> str:
    """The metric column: the metric's name, then the row's direction."""
    arrow = _direction(key)
    return f"{_metric_name(key)} {arrow}" if arrow else _metric_name(key)


def _trivial_wins(
    names: list[str],
    keys: list[Row],
    cells: dict[Row, list[tuple[float | None, str]]],
) -> str:
    """``training mean on challenge mae_internal, ramp_combined; intensity stats on ...`` (of 9
    ranked rows): the rows where a trivial baseline beats the trained encoder as printed (to 3
    decimals), each under the best of them; '' when none does."""
    if "pretrained" not in names:
        return ""
    trained = names.index("pretrained")
    wins: dict[str, list[str]] = {}
    ranked = 0
    for key in keys:
        sign = {"↓": -1, "↑": 1}.get(_direction(key))
        mine = cells[key][trained][0]
        if sign is None or mine is None:
            continue
        ranked += 1
        scored = [
            (sign * round(value, 3), name)
            for name, (value, _) in zip(names, cells[key])
            if name in TRIVIAL_BASELINES and value is not None
        ]
        best = max(scored, default=None)
        if best is not None and best[0] > sign * round(mine, 3):
            row = f"{PROTOCOLS[key[0]].label} {_metric_name(key)}"
            wins.setdefault(DISPLAY_NAMES[best[1]], []).append(row)
    if not wins:
        return ""
    count = sum(map(len, wins.values()))
    listed = "; ".join(f"{name} on {', '.join(rows)}" for name, rows in wins.items())
    return f"a trivial baseline beats the trained encoder on {count} of {ranked} ranked rows: {listed}"


def _out_of_fold_table(
    features: np.ndarray, table: pd.DataFrame, folds, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> pd.DataFrame:
    columns = [column for column in ("participant_id", "split", "site", "age") if column in table.columns]
    predictions = table[columns].copy()
    if "age" in table.columns:
        predictions["age_pred"] = out_of_fold_predictions(features, table, folds, target="age", transform=transform)
    else:
        predictions["age_pred"] = np.nan
    fold_of_row = np.empty(len(table), dtype=int)
    for fold, (_, test_idx) in enumerate(folds):
        fold_of_row[test_idx] = fold
    predictions["fold"] = fold_of_row
    return predictions


def _representation_entry(outcomes: dict[str, Result], notes: list[str]) -> dict:
    """A representation's entry of metrics.json: the protocols' headline keys, then each protocol's
    scores (None when it did not run) or ``{target: {metric: summary}}``, then the notes."""
    order = report_order()
    entry: dict = {}
    for protocol in order:
        scores = outcomes.get(protocol.name)
        entry.update({key: scores.get(key) if isinstance(scores, dict) else None for key in protocol.headline})
    for protocol in order:
        result = outcomes.get(protocol.name)
        if protocol.reports == "scores":
            entry[protocol.name] = result
            continue
        entry[protocol.name] = {}
        if not isinstance(result, pd.DataFrame):
            continue
        for row in result.itertuples(index=False):
            metrics = entry[row.protocol].setdefault(row.target, {})
            metrics[row.metric] = {"mean": row.mean, "std": row.std, "n_folds": row.n_folds}
            fewest = getattr(row, "min_internal_per_site", None)  # the kit folds' site scores carry it
            if fewest is not None and not pd.isna(fewest):
                metrics[row.metric]["min_internal_per_site"] = int(fewest)
    entry["notes"] = notes
    return entry


def _long_table(name: str, outcomes: dict[str, Result]) -> pd.DataFrame:
    """metrics.csv's rows of one representation: each protocol's, in report order."""
    frames = []
    for protocol in report_order():
        result = outcomes.get(protocol.name)
        if isinstance(result, dict):
            rows = [
                {"protocol": protocol.name, "target": target, "metric": key, "mean": result[key], "std": float("nan")}
                for key, target in protocol.metrics.items()
            ]
            frames.append(pd.DataFrame(rows))
        elif isinstance(result, pd.DataFrame):
            frames.append(result[["protocol", "target", "metric", "mean", "std"]])
    long = pd.concat([frame for frame in frames if not frame.empty], ignore_index=True)
    long.insert(0, "representation", name)
    return long


def _ordered_rows(results: dict, names: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        for protocol in report_order():
            found = results[name].get(protocol.name) or {}
            if protocol.reports == "scores":
                rows += [(protocol.name, str(target), key) for key, target in protocol.metrics.items() if key in found]
            else:
                for target, metrics in found.items():
                    rows += [(protocol.name, target, metric) for metric in metrics]
    return list(dict.fromkeys(rows))


def _cell(entry: dict, key: Row) -> tuple[float | None, str]:
    protocol, target, metric = key
    if _too_few(entry, key) is not None:
        return None, "n/a"
    if PROTOCOLS[protocol].reports == "scores":
        value = (entry.get(protocol) or {}).get(metric)
        return value, "-" if value is None or _is_nan(value) else f"{value:.3f}"
    summary = (entry.get(protocol) or {}).get(target, {}).get(metric)
    if not summary or summary.get("mean") is None or _is_nan(summary["mean"]):
        return None, "-"
    std = summary.get("std")
    spread = "" if std is None or _is_nan(std) else f"\n± {std:.3f}"  # its own line: numbers stay whole at 80 columns
    return summary["mean"], f"{summary['mean']:.3f}{spread}"


def _too_few(entry: dict, key: Row) -> int | None:
    """The fewest internal-test subjects of a site, when too few for the site score ``key`` (else None)."""
    protocol, target, metric = key
    if metric not in SITE_SCORES or not PROTOCOLS[protocol].names_target(metric):
        return None
    if PROTOCOLS[protocol].reports == "scores":
        return too_few_per_site(entry.get(protocol) or {})
    return too_few_per_site((entry.get(protocol) or {}).get(target, {}).get(metric) or {})


def _direction(key: Row) -> str:
    """↓ (lower is better), ↑ (higher is better), or '' for a row reported, not ranked.

    The chance level is not ranked, nor is site prediction in the CV protocols: a property to
    report, good or bad depending on whether site information is wanted (the challenge wants it low).
    """
    protocol, target, metric = key
    return PROTOCOLS[protocol].direction(target, metric)


def _better(key: Row, values: list[float | None]) -> int | None:
    """Index of the best value, when every value is known, not all equal, and the direction is known."""
    direction = _direction(key)
    if len(values) < 2 or any(value is None for value in values) or len(set(values)) == 1 or not direction:
        return None
    scores = np.array(values, dtype=float)
    return int(np.argmin(scores) if direction == "↓" else np.argmax(scores))


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
