"""The fine-tuning leaderboard of ``medssl benchmark --finetune``: label-efficiency curves side by side.

Each point of a curve is one ordinary ``medssl finetune`` result folder (``finetune.json``): one
fine-tuning recipe, one encoder (a pre-trained one in mode ``linear`` or ``lower_lr``, or none:
from scratch), one training-set size, every seed of the recipe's ``finetune.seeds``. A seed draws
its training subset from the seed and the size alone (:func:`~medssl.finetune.splits.split_cohort`),
so at one size every method is trained on the same subjects seed by seed: differences are paired
by fine-tuning seed. The from-scratch runs also score the trivial baselines on the same splits
(the constant predictor and the intensity probe, :mod:`medssl.finetune.baselines`): they are rows
of their own.

**The interval.** Each method's difference from the from-scratch network, at each size, test
split and metric, is the mean over fine-tuning seeds of the per-seed difference (with several
pre-trained encoders of a recipe, ``--finetune-all-seeds``, first averaged over them), with a
Student t-interval over those seeds: ``mean ± t(n-1) · sd / sqrt(n)``. Not the pre-training
leaderboard's bootstrap over test subjects: that one holds the trained models fixed, while here
what varies most from seed to seed is which few subjects were drawn for training (and the
initialisation), and the t-interval over seeds carries that variation. The test subjects are
the cohort's fixed test splits; the interval does not cover their resampling. With 3 seeds
``t(2) = 4.30``: wide, as 3 draws warrant; with one seed there is no interval.

Files written by :func:`write_finetune_leaderboard` into the benchmark folder:
``finetune_leaderboard.md`` (per recipe and test split: the headline metric, mean ± sd over
seeds, by number of labelled subjects, then the differences from scratch with their CIs),
``finetune_leaderboard.csv`` (every metric, one row per recipe, method, size, split and metric,
with the difference columns) and ``finetune_leaderboard.png`` (the curves).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from medssl.eval.plots import save_figure
from medssl.eval.score import TEST_SPLITS
from medssl.files import atomic_write_text

SCRATCH = "from scratch"
BASELINE_ROWS = {"constant": "constant predictor", "intensity": "intensity probe"}
KIND_ORDER = {"pretrained": 0, "scratch": 1, "baseline": 2}
KEYS = ["recipe", "row", "train_size", "split", "metric"]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class CurvePoint:
    """One fine-tuning result folder of a benchmark: ``method`` is the pre-training recipe (or
    ``"scratch"``), ``mode`` ``linear``/``lower_lr`` (``"scratch"`` from scratch), ``size`` the
    labelled training subjects (None: all), ``encoder`` the ``encoder.pt`` fine-tuned."""

    recipe: str
    method: str
    mode: str
    size: int | None
    run_dir: Path
    pretrain_seed: int | None = None
    encoder: Path | None = None

    @property
    def finished(self) -> bool:
        return (self.run_dir / "finetune.json").is_file()

    @property
    def row(self) -> str:
        return SCRATCH if self.encoder is None else f"{self.method} {self.mode}"


def size_label(size: int | None) -> str:
    return "all" if size is None else str(size)


def paired_t_interval(differences, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the Student t-interval of the mean of paired differences; the bounds
    are NaN with fewer than 2 (non-NaN) differences, and equal to the mean when all are equal."""
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


def per_seed_values(points: list[CurvePoint]) -> pd.DataFrame:
    """One row per finished point, fine-tuning seed, test split and metric: ``recipe``, ``row``,
    ``kind``, ``train_size``, ``n_train``, ``pretrain_seed``, ``seed``, ``split``, ``metric``, ``value``
    (NaN where undefined, e.g. ROC AUC of a single-class split); the baselines from the scratch points."""
    rows = []
    for point in points:
        if not point.finished:
            continue
        results = json.loads((point.run_dir / "finetune.json").read_text())
        recipe, size = Path(point.recipe).stem, size_label(point.size)
        for run in results["runs"]:
            n_train = run.get("n_train_subjects", run["n_fit"] + run["n_validation"])
            common = {"recipe": recipe, "train_size": size, "n_train": n_train, "seed": run["seed"]}
            sources = [(point.row, "scratch" if point.encoder is None else "pretrained", run)]
            if point.encoder is None:
                sources += [
                    (BASELINE_ROWS.get(name, name), "baseline", scores) for name, scores in run["baselines"].items()
                ]
            for row, kind, scores in sources:
                for split in TEST_SPLITS:
                    for metric, value in (scores.get(split) or {}).items():
                        if metric != "n":
                            rows.append(
                                {
                                    **common,
                                    "row": row,
                                    "kind": kind,
                                    "pretrain_seed": point.pretrain_seed,
                                    "split": split,
                                    "metric": metric,
                                    "value": np.nan if value is None else float(value),
                                }
                            )
    return pd.DataFrame(rows, columns=[*KEYS[:3], "kind", "n_train", "pretrain_seed", "seed", *KEYS[3:], "value"])


def leaderboard_table(values: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (ddof 1) of each (recipe, row, size, split, metric) over its seeds (pre-training x
    fine-tuning seeds with several encoders), ``n_values`` of them, ``n_train`` labelled subjects."""
    grouped = values.groupby(KEYS, sort=False)
    table = grouped.agg(
        kind=("kind", "first"),
        n_train=("n_train", "mean"),
        mean=("value", "mean"),
        sd=("value", lambda column: column.std(ddof=1)),
        n_values=("value", "count"),
    ).reset_index()
    table["n_train"] = table["n_train"].round().astype(int)
    return _ordered(table)


def differences_from_scratch(values: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each row minus the from-scratch network, paired by fine-tuning seed (see the module docstring):
    ``n_pairs``, ``difference``, ``ci_low``, ``ci_high``, ``excludes_zero`` per recipe, row, size, split, metric."""
    per_seed = values.groupby([*KEYS, "seed"])["value"].mean().sort_index()  # over pre-training seeds; sorted for .loc
    with_scratch = set(per_seed.index.droplevel("seed"))
    found = []
    for (recipe, row, size, split, metric), series in per_seed.groupby(level=KEYS):
        if row == SCRATCH or (recipe, SCRATCH, size, split, metric) not in with_scratch:
            continue
        scratch = per_seed.loc[(recipe, SCRATCH, size, split, metric)]
        paired = series.droplevel(KEYS) - scratch  # aligned on the seed
        mean, low, high = paired_t_interval(paired.to_numpy(), confidence)
        found.append(
            {
                "recipe": recipe,
                "row": row,
                "train_size": size,
                "split": split,
                "metric": metric,
                "n_pairs": int(paired.notna().sum()),
                "difference": mean,
                "ci_low": low,
                "ci_high": high,
                "excludes_zero": bool(low > 0 or high < 0),  # False with NaN bounds
            }
        )
    columns = [*KEYS, "n_pairs", "difference", "ci_low", "ci_high", "excludes_zero"]
    return pd.DataFrame(found, columns=columns)


def finetune_leaderboard(points: list[CurvePoint], confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`leaderboard_table` with the columns of :func:`differences_from_scratch` (NaN for the scratch rows)."""
    values = per_seed_values(points)
    if values.empty:
        return pd.DataFrame(columns=[*KEYS, "kind", "n_train", "mean", "sd", "n_values"])
    table = leaderboard_table(values).merge(differences_from_scratch(values, confidence), on=KEYS, how="left")
    table["n_pairs"] = table["n_pairs"].astype("Int64")  # empty on the from-scratch rows
    return table


def headline_metric(table: pd.DataFrame, recipe: str) -> str:
    """ROC AUC for classification, MAE for regression."""
    return "roc_auc" if ((table["recipe"] == recipe) & (table["metric"] == "roc_auc")).any() else "mae"


def write_finetune_leaderboard(
    bench_dir: str | Path,
    points: list[CurvePoint],
    command: str | None = None,
    wall_time_s: float | None = None,
    run_time_s: float | None = None,
) -> dict[str, Path]:
    """Write ``finetune_leaderboard.{md,csv,png}`` of the finished ``points`` into ``bench_dir``."""
    bench_dir = Path(bench_dir)
    table = finetune_leaderboard(points)
    paths = {extension: bench_dir / f"finetune_leaderboard.{extension}" for extension in ("md", "csv", "png")}
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    header = {
        "command": command,
        "wall_time_s": wall_time_s,
        "run_time_s": run_time_s,
        "points": f"{sum(point.finished for point in points)} of {len(points)}",
    }
    atomic_write_text(paths["md"], markdown(table, header))
    save_figure(leaderboard_figure(table), paths["png"])
    return paths


def markdown(table: pd.DataFrame, header: dict) -> str:
    """The report: how it was made, then per recipe and test split the scores and the differences."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    lines = [
        "# Fine-tuning leaderboard",
        "",
        f"- command: `{header.get('command') or 'not recorded'}`",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch_version}",
        f"- date: {datetime.now().isoformat(timespec='seconds')}",
        f"- wall time of the fine-tuning part: {_duration(header.get('wall_time_s'))}; "
        f"time in fine-tuning processes: {_duration(header.get('run_time_s'))}; finished points: {header.get('points')}",
    ]
    for recipe in dict.fromkeys(table["recipe"]):
        metric = headline_metric(table, recipe)
        for split in [split for split in TEST_SPLITS if split in set(table["split"])]:
            rows = table[(table["recipe"] == recipe) & (table["split"] == split) & (table["metric"] == metric)]
            lines += ["", *_split_section(recipe, split, metric, rows)]
    lines += [
        "",
        "Scores are mean ± sd over seeds (fine-tuning seeds; x pre-training seeds with --finetune-all-seeds), by",
        "labelled training subjects (columns: --train-sizes, n = subjects trained on). A difference is the row",
        "minus from scratch, paired by fine-tuning seed (each seed draws the same training subjects for every",
        f"row), with a {CONFIDENCE:.0%} Student t-interval over those seeds; * marks a CI that excludes 0, '-' a",
        "difference with fewer than 2 seeds. The baselines (constant predictor, intensity probe) are fitted on",
        "the from-scratch runs' training subjects. Every metric: finetune_leaderboard.csv.",
    ]
    return "\n".join(lines) + "\n"


def _split_section(recipe: str, split: str, metric: str, rows: pd.DataFrame) -> list[str]:
    sizes = list(dict.fromkeys(rows["train_size"]))
    labelled = {size: int(rows.loc[rows["train_size"] == size, "n_train"].max()) for size in sizes}
    columns = [f"{size} (n = {labelled[size]})" for size in sizes]
    direction = "higher" if metric in ("roc_auc", "balanced_accuracy", "r2") else "lower"
    order = list(dict.fromkeys(rows["row"]))
    cell = {(row.row, row.train_size): row for row in rows.itertuples()}
    scores = [[name, *(_mean_sd(cell.get((name, size))) for size in sizes)] for name in order]
    differences = [
        [name, *(_difference(cell.get((name, size))) for size in sizes)] for name in order if name != SCRATCH
    ]
    return [
        f"## {Path(recipe).stem}, {split}: {metric.replace('_', ' ')} ({direction} is better)",
        "",
        *_markdown_table(["method", *columns], scores),
        "",
        f"Difference from the network trained from scratch (paired by seed, {CONFIDENCE:.0%} t-interval):",
        "",
        *_markdown_table(["method", *columns], differences),
    ]


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _mean_sd(row) -> str:
    if row is None or pd.isna(row.mean):
        return "-"
    return f"{row.mean:.3f}" if pd.isna(row.sd) else f"{row.mean:.3f} ± {row.sd:.3f}"


def _difference(row) -> str:
    if row is None or pd.isna(row.difference):
        return "-"
    if pd.isna(row.ci_low):
        return f"{row.difference:+.3f} (n = {row.n_pairs})"
    star = "*" if row.excludes_zero else ""
    return f"{row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]{star}"


def _duration(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Recipes as given; pre-trained rows, from scratch, baselines; sizes small to all; splits as TEST_SPLITS."""
    recipes = {name: index for index, name in enumerate(dict.fromkeys(table["recipe"]))}
    keys = pd.DataFrame(
        {
            "recipe": table["recipe"].map(recipes),
            "kind": table["kind"].map(KIND_ORDER),
            "row": table["row"],
            "size": table["train_size"].map(lambda size: float("inf") if size == "all" else float(size)),
            "split": table["split"].map({split: index for index, split in enumerate(TEST_SPLITS)}),
            "metric": table["metric"],
        }
    )
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return table.loc[order].reset_index(drop=True)


def leaderboard_figure(table: pd.DataFrame) -> Figure:
    """The headline metric against labelled subjects: one row of panels per recipe, one panel per
    test split, mean ± sd over seeds; baselines dashed, the legend beside the last panel."""
    recipes = list(dict.fromkeys(table["recipe"])) or ["no finished point"]
    splits = [split for split in TEST_SPLITS if split in set(table["split"])] or ["internal_test"]
    figure = Figure(figsize=(5 * len(splits) + 2.5, 3.8 * len(recipes)))
    axes = figure.subplots(len(recipes), len(splits), squeeze=False)
    for recipe, row_axes in zip(recipes, axes):
        metric = headline_metric(table, recipe) if len(table) else "roc_auc"
        for axis, split in zip(row_axes, splits):
            rows = table[(table["recipe"] == recipe) & (table["split"] == split) & (table["metric"] == metric)]
            for name, curve in rows.groupby("row", sort=False):
                curve = curve.sort_values("n_train")
                style = "--" if curve["kind"].iloc[0] == "baseline" else "-"
                bars = curve["sd"].fillna(0)
                axis.errorbar(
                    curve["n_train"], curve["mean"], yerr=bars, marker="o", capsize=3, linestyle=style, label=name
                )
            if metric == "roc_auc":
                axis.axhline(0.5, color="grey", linestyle=":", label="chance")
            if len(rows):
                axis.set_xscale("log")
                ticks = sorted(rows["n_train"].unique())
                axis.set_xticks(ticks, [str(tick) for tick in ticks])
                axis.minorticks_off()
            axis.set(xlabel="labelled training subjects", ylabel=metric.replace("_", " "), title=f"{recipe}, {split}")
        row_axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return figure
