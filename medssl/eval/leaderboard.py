"""The leaderboard of a benchmark folder: every method and baseline, mean ± sd over seeds, paired CIs.

A benchmark folder (written by ``medssl benchmark``) holds one pre-training run per recipe and
seed, ``BENCH/runs/<recipe>/seed<k>/``; a run is finished when ``eval/metrics.json`` exists.
Each finished run's ``eval/`` holds, per representation (``pretrained``, ``baseline`` = the
randomly initialised encoder, ``intensity`` = a probe on intensity percentiles, ``mean`` = the
training-mean predictor), the challenge and CV metrics in ``metrics.json`` and the per-subject
challenge predictions in ``predictions.csv`` / ``predictions_<representation>.csv``.

The leaderboard has one row per recipe and per baseline ("random init", "intensity statistics",
"training mean") with the mean and sd over seeds of the columns of the evaluation protocols
(:func:`medssl.eval.protocols.leaderboard_columns`): the challenge metrics (MAE internal, MAE
external, site BAcc, L_c), the kNN probe's (MAE internal and external, site BAcc) and the age
MAE of both CV protocols. Differences between methods
come with paired bootstrap CIs: the test subjects are resampled, the same resamples serve every
method and seed, so subject-to-subject variation cancels in the difference.

Files written by :func:`write_leaderboard` into the benchmark folder: ``leaderboard.md``,
``leaderboard.json``, ``leaderboard.csv`` (the table of :func:`leaderboard`) and
``leaderboard.png``.

Example:
    >>> runs = collect_runs("benchmark")
    >>> table = leaderboard(runs)
    >>> differences = paired_differences(runs, n_resamples=2000)
    >>> write_leaderboard("benchmark", command="medssl benchmark --out benchmark")
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error

from medssl.eval.plots import label_points
from medssl.eval.protocols import leaderboard_columns, leaderboard_metrics
from medssl.eval.score import EvaluationError
from medssl.files import json_ready

METRICS = leaderboard_metrics()  # the registered protocols' columns when this module was imported
# Row name of each baseline -> its representation in eval/metrics.json.
BASELINES = {"random init": "baseline", "intensity statistics": "intensity", "training mean": "mean"}
PREDICTION_FILES = {
    "pretrained": "predictions.csv",
    "baseline": "predictions_baseline.csv",
    "intensity": "predictions_intensity.csv",
    "mean": "predictions_mean.csv",
}
# Metric -> test split its subjects are resampled from.
DIFFERENCE_METRICS = {"mae_internal": "internal_test", "mae_external": "external_test", "bacc_site": "internal_test"}
REFERENCES = ("random init", "simclr")
PREDICTION_COLUMNS = ("participant_id", "split", "site", "age", "age_pred", "site_pred")
RUN_TIMES_FILE = "run_times.json"
SEED_FOLDER = re.compile(r"seed(\d+)")


@dataclass
class BenchmarkRuns:
    """The finished runs of a benchmark folder.

    Attributes:
        metrics: one row per (method, seed): ``method`` (recipe or baseline row name), ``kind``
            (``method`` or ``baseline``), ``seed``, ``run`` (the run folder) and one column per
            key of :func:`~medssl.eval.protocols.leaderboard_metrics` (NaN where a run has no value).
        predictions: per-subject challenge predictions by (method, seed).
        n_sites: training sites of the cohort (chance site BAcc = 1 / n_sites), None if unknown.
        notes: what was left out and why, for the report.
    """

    metrics: pd.DataFrame
    predictions: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict)
    n_sites: int | None = None
    notes: list[str] = field(default_factory=list)


def collect_runs(bench_dir: str | Path) -> BenchmarkRuns:
    """Read the finished runs of ``bench_dir`` into per-(method, seed) metrics and predictions.

    The baseline rows (random init, intensity statistics, training mean) depend only on the seed
    and the encoder architecture, not on the recipe: they are taken once per seed, from the first
    recipe's finished run of that seed (recipes in ``benchmark.json`` order, else by name). A
    baseline representation missing from an evaluation (one that predates it) leaves its row out,
    with a note.
    """
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise EvaluationError(f"{bench_dir}: no such folder (expected the --out of medssl benchmark)")
    finished = _finished_runs(bench_dir)
    if not finished:
        raise EvaluationError(
            f"{bench_dir / 'runs'}: no finished run (expected runs/<recipe>/seed<k>/eval/metrics.json)"
        )
    rows: list[dict] = []
    predictions: dict[tuple[str, int], pd.DataFrame] = {}
    missing: dict[str, list[int]] = {}
    baseline_source: dict[int, Path] = {}
    for recipe, seed, run_dir in finished:
        results = _read_json(run_dir / "eval" / "metrics.json")
        wanted = {recipe: "pretrained"}
        if seed not in baseline_source:
            baseline_source[seed] = run_dir
            wanted.update(BASELINES)
        for method, representation in wanted.items():
            if representation not in results:
                missing.setdefault(method, []).append(seed)
                continue
            rows.append(
                {
                    "method": method,
                    "kind": "method" if representation == "pretrained" else "baseline",
                    "seed": seed,
                    "run": str(run_dir),
                    **_metrics_row(results[representation]),
                }
            )
            path = run_dir / "eval" / PREDICTION_FILES[representation]
            if path.is_file():
                predictions[(method, seed)] = read_benchmark_predictions(path)
    notes = [
        f"row '{method}' left out for seed(s) {', '.join(map(str, seeds))}: no '{BASELINES.get(method, 'pretrained')}' "
        "representation in eval/metrics.json (an evaluation without this baseline)"
        for method, seeds in missing.items()
    ]
    notes.extend(_architecture_notes(finished, baseline_source))
    metrics = _ordered(pd.DataFrame(rows, columns=["method", "kind", "seed", "run", *leaderboard_metrics()]))
    return BenchmarkRuns(metrics=metrics, predictions=predictions, n_sites=_training_sites(predictions), notes=notes)


def leaderboard(runs: BenchmarkRuns) -> pd.DataFrame:
    """One row per method and baseline: ``method``, ``kind``, ``n_seeds``, ``<metric>_mean``, ``<metric>_sd``.

    The sd is the sample standard deviation over seeds (NaN with a single seed); seeds where a
    metric is null are left out of that metric's mean and sd.
    """
    grouped = runs.metrics.groupby("method", sort=False)
    table = grouped.agg(kind=("kind", "first"), n_seeds=("seed", "nunique")).reset_index()
    for metric in leaderboard_metrics():
        table[f"{metric}_mean"] = grouped[metric].mean().to_numpy()
        table[f"{metric}_sd"] = grouped[metric].std(ddof=1).to_numpy()
    return table


def paired_differences(
    runs: BenchmarkRuns,
    references: tuple[str, ...] = REFERENCES,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each method's difference from each reference, with paired percentile bootstrap CIs.

    For each metric of :data:`DIFFERENCE_METRICS` the subjects of its test split are resampled
    ``n_resamples`` times with replacement; on each resample the metric of the method minus that
    of the reference is computed per seed (the seeds both have) and averaged over seeds. The
    same resamples serve every method, reference and seed. ``difference`` is that average on the
    full test split, ``ci_low``/``ci_high`` the percentiles of the resampled ones.

    Args:
        runs: from :func:`collect_runs`.
        references: rows to compare against; a reference without predictions is skipped.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
        confidence: coverage of the interval.

    Returns:
        one row per (method, reference, metric): ``method``, ``reference``, ``metric``,
        ``n_seeds``, ``difference``, ``ci_low``, ``ci_high``, ``excludes_zero``.
    """
    methods = list(dict.fromkeys(runs.metrics.loc[runs.metrics["kind"] == "method", "method"]))
    resamples = _shared_resamples(runs, n_resamples, seed)
    distributions: dict = {}
    rows = []
    for reference in references:
        for method in methods:
            if method == reference:
                continue
            for metric in DIFFERENCE_METRICS:
                row = _paired_difference(runs, method, reference, metric, resamples, distributions, confidence)
                if row is not None:
                    rows.append(row)
    columns = ["method", "reference", "metric", "n_seeds", "difference", "ci_low", "ci_high", "excludes_zero"]
    return pd.DataFrame(rows, columns=columns)


def resampled_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each bootstrap resample, given as per-subject draw counts.

    Equal to ``balanced_accuracy_score(y_true, y_pred, sample_weight=counts[b])`` for each row
    ``b`` (the tests pin it to scikit-learn's): the mean over the classes present in the resample
    of the count-weighted fraction of correct predictions. Written out because scikit-learn
    validates its input on each call (about 2 ms), which makes 2,000 resamples of every run of a
    benchmark take minutes; here all resamples are two matrix products.

    Args:
        y_true, y_pred: (n_subjects,) labels.
        counts: (n_resamples, n_subjects) how often each subject is drawn in each resample.
    """
    classes, true_codes = np.unique(np.asarray(y_true), return_inverse=True)
    one_hot = np.eye(len(classes))[true_codes]
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    drawn_per_class = counts @ one_hot
    correct_per_class = counts @ (one_hot * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(drawn_per_class > 0, correct_per_class / drawn_per_class, np.nan)
    return np.nanmean(recall, axis=1)


def read_benchmark_predictions(path: str | Path) -> pd.DataFrame:
    """A run's predictions CSV (``participant_id, split, site, age, age_pred, site_pred``), labels as text."""
    path = Path(path)
    table = pd.read_csv(path, dtype={"participant_id": str, "site": str, "site_pred": str, "split": str})
    missing = [column for column in PREDICTION_COLUMNS if column not in table.columns]
    if missing:
        raise EvaluationError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(PREDICTION_COLUMNS)}"
        )
    table.attrs["source"] = str(path)
    return table


def write_leaderboard(
    bench_dir: str | Path,
    *,
    command: str | None = None,
    wall_time_s: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    references: tuple[str, ...] = REFERENCES,
) -> dict[str, Path]:
    """Collect the finished runs of ``bench_dir`` and write ``leaderboard.{md,json,csv,png}`` into it.

    Args:
        bench_dir: the benchmark folder.
        command: the command line that produced it, for the report (default: the one in ``benchmark.json``).
        wall_time_s: wall time of the benchmark command, for the report (None: not recorded).
        n_resamples, seed: of the paired bootstrap (:func:`paired_differences`).
        references: rows every method is compared with (e.g. add a control recipe's name); a
            name beyond :data:`REFERENCES` that is no row of the benchmark is refused.

    Returns:
        the written files by extension (``md``, ``json``, ``csv``, ``png``).
    """
    bench_dir = Path(bench_dir)
    runs = collect_runs(bench_dir)
    rows = sorted(set(runs.metrics["method"]))
    unknown = [name for name in references if name not in rows and name not in REFERENCES]
    if unknown:
        raise EvaluationError(
            f"reference {', '.join(map(repr, unknown))}: no such row in {bench_dir}; its rows: {', '.join(rows)}"
        )
    table = leaderboard(runs)
    references = (*references, *(base for base in debiased_bases(rows) if base not in references))
    differences = paired_differences(runs, references=references, n_resamples=n_resamples, seed=seed)
    paths = {extension: bench_dir / f"leaderboard.{extension}" for extension in ("md", "json", "csv", "png")}
    if wall_time_s is None and paths["json"].is_file():  # a rebuild keeps the benchmark's own wall time
        wall_time_s = _read_json(paths["json"]).get("wall_time_s")
    header = _report_header(bench_dir, command, wall_time_s, n_resamples)
    table.to_csv(paths["csv"], index=False)
    report = {
        **header,
        "n_sites": runs.n_sites,
        "notes": runs.notes,
        "leaderboard": table.to_dict(orient="records"),
        "differences": differences.to_dict(orient="records"),
    }
    paths["json"].write_text(json.dumps(json_ready(report), indent=2))
    paths["md"].write_text(_markdown(header, table, differences, runs))
    plot_leaderboard(table, paths["png"], n_sites=runs.n_sites)
    return paths


DEBIAS_SUFFIXES = ("_fairkl", "_adversarial")


def debiased_bases(rows: list[str]) -> list[str]:
    """The undebiased base of each debiased row present (``yaware_age_fairkl`` -> ``yaware_age``):
    every method is compared with it, so a debiased recipe is read against its own base."""
    bases = [row.removesuffix(suffix) for row in rows for suffix in DEBIAS_SUFFIXES if row.endswith(suffix)]
    return sorted({base for base in bases if base in rows})


def plot_leaderboard(table: pd.DataFrame, path: str | Path, n_sites: int | None = None) -> Path:
    """Left: MAE internal vs. external per row with sd bars; right: site BAcc per row with sd bars and chance."""
    figure = Figure(figsize=(12, max(4.0, 0.35 * len(table) + 1.5)))
    left, right = figure.subplots(1, 2)
    colors = np.where(table["kind"] == "baseline", "grey", "tab:blue")  # baselines set apart from the methods
    for kind, color in (("method", "tab:blue"), ("baseline", "grey")):
        rows = table[table["kind"] == kind]
        left.errorbar(
            rows["mae_internal_mean"],
            rows["mae_external_mean"],
            xerr=rows["mae_internal_sd"].fillna(0),
            yerr=rows["mae_external_sd"].fillna(0),
            fmt="o",
            capsize=3,
            color=color,
            label=kind,
        )
    left.legend(loc="upper left", fontsize="small")
    finite = pd.concat([table["mae_internal_mean"], table["mae_external_mean"]]).dropna()
    if not finite.empty:
        # The diagonal marks "no loss on unseen scanners".
        low, high = float(finite.min()), float(finite.max())
        left.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("age MAE, internal test (years)")
    left.set_ylabel("age MAE, external test (years)")
    left.set_title("Age: seen vs. unseen sites (lower is better)")
    positions = np.arange(len(table))
    right.barh(
        positions, table["bacc_site_mean"].fillna(0), xerr=table["bacc_site_sd"].fillna(0), capsize=3, color=colors
    )
    right.set_yticks(positions, labels=list(table["method"]))
    right.invert_yaxis()
    if n_sites:
        right.axvline(1 / n_sites, color="red", linestyle="--", label=f"chance (1/{n_sites})")
        right.legend(loc="lower right", fontsize="small")
    right.set_xlim(0, 1.02)
    right.set_xlabel("site balanced accuracy, internal test (lower is better)")
    right.set_title("Site information left in the representation")
    path = Path(path)
    figure.tight_layout()
    left.set_xlim(left.get_xlim()), left.set_ylim(left.get_ylim())  # labels placed now must stay beside their points
    label_points(left, table["mae_internal_mean"], table["mae_external_mean"], table["method"])
    figure.savefig(path, dpi=120, format="png")
    return path


# ----------------------------------------------------------------------------- reading runs
def _finished_runs(bench_dir: Path) -> list[tuple[str, int, Path]]:
    """(recipe, seed, run folder) of every finished run, recipes in benchmark order, then by seed."""
    runs_dir = bench_dir / "runs"
    if not runs_dir.is_dir():
        return []
    recipes = sorted(path.name for path in runs_dir.iterdir() if path.is_dir())
    config = bench_dir / "benchmark.json"
    if config.is_file():
        planned = [Path(name).stem for name in _read_json(config).get("recipes", [])]
        recipes = [name for name in planned if name in recipes] + [name for name in recipes if name not in planned]
    finished = []
    for recipe in recipes:
        for run_dir in (runs_dir / recipe).iterdir():
            match = SEED_FOLDER.fullmatch(run_dir.name)
            if match and (run_dir / "eval" / "metrics.json").is_file():
                finished.append((recipe, int(match.group(1)), run_dir))
    order = {recipe: index for index, recipe in enumerate(recipes)}
    return sorted(finished, key=lambda run: (order[run[0]], run[1]))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: not valid JSON ({error})") from None


def _metrics_row(entry: dict) -> dict:
    """The leaderboard metrics of one representation of ``metrics.json`` (NaN where null or absent)."""
    values = {}
    for column in leaderboard_columns():
        value: Any = entry
        for key in column.path:
            value = value.get(key) if isinstance(value, dict) else None
        values[column.key] = float("nan") if value is None else float(value)
    return values


def _ordered(metrics: pd.DataFrame) -> pd.DataFrame:
    """Recipes in run order first, then the baselines in :data:`BASELINES` order."""
    rank = {name: index for index, name in enumerate(BASELINES)}
    methods = list(dict.fromkeys(metrics.loc[metrics["kind"] == "method", "method"]))
    rank.update({name: index - len(methods) for index, name in enumerate(methods)})
    order = metrics["method"].map(rank)
    return (
        metrics.assign(_order=order)
        .sort_values(["_order", "seed"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _training_sites(predictions: dict[tuple[str, int], pd.DataFrame]) -> int | None:
    for table in predictions.values():
        sites = table.loc[table["split"] == "train", "site"].nunique()
        if sites:
            return int(sites)
    return None


def _architecture_notes(finished: list[tuple[str, int, Path]], baseline_source: dict[int, Path]) -> list[str]:
    """A note when recipes use encoders other than the one the baseline rows were computed with."""
    encoders: dict[Path, str] = {}
    for _, _, run_dir in finished:
        recipe_file = run_dir / "recipe.yaml"
        encoder = (
            ((yaml.safe_load(recipe_file.read_text()) or {}).get("model") or {}).get("encoder")
            if recipe_file.is_file()
            else None
        )
        if encoder:
            encoders[run_dir] = str(encoder)
    baseline_encoders = {encoders[path] for path in baseline_source.values() if path in encoders}
    others = sorted(
        {
            f"{recipe} ({encoders[run_dir]})"
            for recipe, _, run_dir in finished
            if run_dir in encoders and encoders[run_dir] not in baseline_encoders
        }
    )
    if not others:
        return []
    return [
        (
            f"baseline rows use the encoder of the first recipe's run of each seed ({', '.join(sorted(baseline_encoders))}); "
            f"other encoders: {', '.join(others)}"
        )
    ]


# ----------------------------------------------------------------------------- bootstrap
def _shared_resamples(runs: BenchmarkRuns, n_resamples: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per test split: (participant ids, draw counts of shape (n_resamples, n_subjects)), shared by all comparisons."""
    if not runs.predictions:
        return {}
    first = next(iter(runs.predictions.values()))
    rng = np.random.default_rng(seed)
    resamples = {}
    for split in dict.fromkeys(DIFFERENCE_METRICS.values()):
        ids = first.loc[first["split"] == split, "participant_id"].to_numpy()
        draws = rng.integers(0, len(ids), size=(n_resamples, len(ids))) if len(ids) else np.zeros((n_resamples, 0), int)
        # Draw counts per subject let one matrix product score every resample at once.
        offsets = np.arange(n_resamples)[:, None] * len(ids)
        counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * len(ids)).reshape(n_resamples, len(ids))
        resamples[split] = (ids, counts.astype(float))
    return resamples


def _metric_distribution(
    table: pd.DataFrame, metric: str, ids: np.ndarray, counts: np.ndarray
) -> tuple[float, np.ndarray]:
    """(metric on all test subjects, metric on each resample) of one predictions table."""
    rows = table.set_index("participant_id").reindex(ids)
    source = table.attrs.get("source", "predictions")
    if rows["split"].isna().any():
        raise EvaluationError(f"{source}: test subjects differ from the other runs' (same cohort expected)")
    if metric.startswith("mae"):
        age, predicted = rows["age"].to_numpy(float), rows["age_pred"].to_numpy(float)
        if np.isnan(predicted).any():
            raise EvaluationError(f"{source}: empty age_pred on test rows")
        resampled = counts @ np.abs(predicted - age) / len(ids)
        return float(mean_absolute_error(age, predicted)), resampled
    site, predicted_site = rows["site"].to_numpy(str), rows["site_pred"].fillna("").to_numpy(str)
    return float(balanced_accuracy_score(site, predicted_site)), resampled_balanced_accuracy(
        site, predicted_site, counts
    )


def _paired_difference(runs, method, reference, metric, resamples, distributions, confidence) -> dict | None:
    split = DIFFERENCE_METRICS[metric]
    if split not in resamples or len(resamples[split][0]) == 0:
        return None
    seeds = sorted(
        {seed for name, seed in runs.predictions if name == method}
        & {seed for name, seed in runs.predictions if name == reference}
    )
    if not seeds:
        return None
    points, resampled = [], []
    for seed in seeds:
        pair = []
        for name in (method, reference):
            key = (name, seed, metric)
            if key not in distributions:  # each run's resampled metric is reused by every comparison
                distributions[key] = _metric_distribution(runs.predictions[(name, seed)], metric, *resamples[split])
            pair.append(distributions[key])
        points.append(pair[0][0] - pair[1][0])
        resampled.append(pair[0][1] - pair[1][1])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.mean(resampled, axis=0), [tail, 100 - tail])
    return {
        "method": method,
        "reference": reference,
        "metric": metric,
        "n_seeds": len(seeds),
        "difference": float(np.mean(points)),
        "ci_low": float(low),
        "ci_high": float(high),
        "excludes_zero": bool(low > 0 or high < 0),
    }


# ----------------------------------------------------------------------------- report
def _report_header(bench_dir: Path, command: str | None, wall_time_s: float | None, n_resamples: int) -> dict:
    config = bench_dir / "benchmark.json"
    if command is None and config.is_file():
        command = _read_json(config).get("command")
    run_times = bench_dir / RUN_TIMES_FILE
    seconds_in_runs = sum(_read_json(run_times).values()) if run_times.is_file() else None
    try:
        torch_version = metadata.version("torch")  # without importing torch: the leaderboard needs none
    except metadata.PackageNotFoundError:
        torch_version = None
    return {
        "command": command,
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch_version},
        "wall_time_s": wall_time_s,
        "run_time_s": seconds_in_runs,
        "n_resamples": n_resamples,
    }


def _markdown(header: dict, table: pd.DataFrame, differences: pd.DataFrame, runs: BenchmarkRuns) -> str:
    machine = header["machine"]
    lines = [
        "# Leaderboard",
        "",
        f"- command: `{header['command'] or 'not recorded'}`",
        f"- machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}",
        f"- date: {header['date']}",
        (
            f"- wall time: {_duration(header['wall_time_s'])} (this command); "
            f"time in runs: {_duration(header['run_time_s'])}"
        ),
        "",
    ]
    metrics = leaderboard_metrics()
    lines += _markdown_table(
        ["method", "seeds", *metrics.values()],
        [
            [row["method"], str(row["n_seeds"]), *(_mean_sd(row, metric) for metric in metrics)]
            for _, row in table.iterrows()
        ],
    )
    lines += [
        "",
        f"## Differences from the references (paired bootstrap, {header['n_resamples']} resamples, 95 % CI)",
        "",
    ]
    wide = differences.set_index(["method", "reference", "metric"]).sort_index()
    cells = [
        [
            method,
            reference,
            str(int(wide.loc[(method, reference)]["n_seeds"].max())),
            *(_difference_cell(wide, method, reference, metric) for metric in DIFFERENCE_METRICS),
        ]
        for method, reference in dict.fromkeys(zip(differences["method"], differences["reference"]))
    ]
    lines += _markdown_table(
        ["method", "reference", "seeds", *(metrics[metric] for metric in DIFFERENCE_METRICS)], cells
    )
    chance = f"1/{runs.n_sites} = {1 / runs.n_sites:.3f}" if runs.n_sites else "1/n_sites"
    lines += [
        "",
        "Lower is better for every column: MAE (years), site BAcc (site information left in the",
        f"representation; chance = {chance}) and L_c = BAcc^0.3 x MAE external. A difference is method minus",
        "reference (negative = the method is lower); * marks a CI that excludes 0. mean ± sd over seeds.",
    ]
    lines += ["", *(f"- note: {note}" for note in runs.notes)] if runs.notes else []
    return "\n".join(lines) + "\n"


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _mean_sd(row: pd.Series, metric: str) -> str:
    mean, sd = row[f"{metric}_mean"], row[f"{metric}_sd"]
    if pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"


def _difference_cell(wide: pd.DataFrame, method: str, reference: str, metric: str) -> str:
    if (method, reference, metric) not in wide.index:
        return "-"
    row = wide.loc[(method, reference, metric)]
    star = "*" if row["excludes_zero"] else ""
    return f"{row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]{star}"


def _duration(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"
