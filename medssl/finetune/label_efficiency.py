"""Label efficiency: fine-tuning scores against the number of labelled training subjects.

The curve the self-supervised papers use to show what pre-training buys (e.g. Dufumier
et al., MICCAI 2021, Fig. 3): for each training-set size, the pre-trained encoder and the
same network trained from scratch are fine-tuned with every seed of the recipe (each seed
draws its own site- and class-stratified subset), and scored on the internal and external
test splits. Each (size, encoder) pair is one ordinary ``medssl finetune`` result folder, so
a killed run resumes by skipping the folders already finished and resuming the interrupted one;
a folder finished with other settings (encoder, mode, any recipe key) is refused, not reused.

Files in ``out_dir``: ``<encoder>-n<size>/`` (``finetune.json`` ...), ``label_efficiency.csv``
(one row per size, encoder, split and metric: mean, std, n_seeds), ``label_efficiency.json``
and ``label_efficiency.png``; :func:`label_efficiency_table` prints the curve's headline metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from rich import box
from rich.console import Console
from rich.table import Table

from medssl.errors import RecipeError
from medssl.eval.plots import save_figure
from medssl.eval.score import TEST_SPLITS
from medssl.files import atomic_write_text
from medssl.finetune.protocol import FineTuner, finetune_encoder
from medssl.finetune.splits import training_pool_size
from medssl.recipe import Recipe

ALL = "all"


def parse_train_sizes(text: str) -> list[int | None]:
    """``"20,50,all"`` -> ``[20, 50, None]`` (None: the whole training split)."""
    sizes: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        if item == ALL:
            sizes.append(None)
        elif item.isdigit() and int(item) >= 4:
            sizes.append(int(item))
        else:
            raise RecipeError(f"--train-sizes {text!r}: {item!r} is not a number of subjects >= 4 or 'all'")
    if len(set(sizes)) < len(sizes):
        raise RecipeError(f"--train-sizes {text!r}: a size appears twice")
    return sizes


def sizes_below(sizes: list[int | None], available: int) -> tuple[list[int | None], list[int]]:
    """The sizes to train, with those not below the ``available`` training subjects merged into
    one run with all of them (they would train the same subjects again), and the merged sizes."""
    merged = [size for size in sizes if size is not None and size >= available]
    kept = [size for size in sizes if size is None or size < available]
    if merged and None not in kept:
        kept.append(None)
    return kept, merged


def size_name(size: int | None) -> str:
    return ALL if size is None else str(size)


def label_efficiency(
    recipe: Recipe, encoder: str | Path, sizes: list[int | None], out_dir: str | Path, console: Console | None = None
) -> pd.DataFrame:
    """Fine-tune ``encoder`` and a from-scratch network at each size; write and return the curve table."""
    out_dir = Path(out_dir)
    available = training_pool_size(recipe)
    sizes, merged = sizes_below(sizes, available)
    if merged and console is not None:
        console.print(
            f"--train-sizes {', '.join(map(str, merged))}: not below the {available} training subjects, "
            f"trained once with all of them ('{ALL}')"
        )
    rows = []
    for size in sizes:
        for name, source in (("pretrained", encoder), ("scratch", None)):
            folder = out_dir / f"{name}-n{size_name(size)}"
            sized = recipe.model_copy(deep=True)
            sized.finetune.train_size = size
            if (folder / "finetune.json").is_file():
                FineTuner(sized, source).resumable_seeds(folder)  # refused when trained with other settings
                results = json.loads((folder / "finetune.json").read_text())
            else:
                if console is not None:
                    console.print(f"[bold]{name}, {size_name(size)} training subjects[/]")
                results = finetune_encoder(sized, source, folder, console=console, resume=folder.is_dir())
            rows.extend(curve_rows(results, name, size))
            if name == "scratch":  # the trivial baselines, on the scratch runs' splits
                for baseline, summary in (results.get("baselines") or {}).items():
                    rows.extend(curve_rows({**results, "summary": summary}, f"{baseline} baseline", size))
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / "label_efficiency.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "label_efficiency.json", table.to_json(orient="records", indent=2))
    title = f"{recipe.name}: {recipe.finetune.mode} fine-tuning of {encoder}, and training from scratch"
    plot_label_efficiency(table, out_dir / "label_efficiency.png", title=title)
    return table


def curve_rows(results: dict, encoder: str, size: int | None) -> list[dict]:
    """One row per test split and metric of a fine-tuning result, tagged with encoder and size."""
    # subjects trained on (fit and validation parts together), as the train-size note counts them
    n_fit = [run.get("n_train_subjects", run["n_fit"] + run["n_validation"]) for run in results["runs"]]
    rows = []
    for split, entry in results["summary"].items():
        for metric, value in entry.items():
            if isinstance(value, dict):
                rows.append(
                    {
                        "encoder": encoder,
                        "train_size": size_name(size),
                        "n_train": round(sum(n_fit) / len(n_fit)),
                        "split": split,
                        "metric": metric,
                        "mean": value["mean"],
                        "std": value["std"],
                        "n_seeds": value.get("n_seeds"),
                    }
                )
    return rows


def label_efficiency_table(table: pd.DataFrame) -> Table:
    """The curve as ``finetune --train-sizes`` ends with it: the headline metric (ROC AUC, or MAE
    for regression) of each encoder and baseline, per test split and number of labelled training
    subjects, mean ± sd over seeds (two lines a cell: the table fits 80 columns)."""
    metric = headline_metric(table)
    rows = table[table["metric"] == metric]
    encoders = list(dict.fromkeys(rows["encoder"]))
    view = Table(
        title=f"Label efficiency: {metric.replace('_', ' ')} {'↑' if metric == 'roc_auc' else '↓'} "
        "(mean ± sd over seeds)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    view.add_column("test split", no_wrap=True)
    view.add_column("labelled", justify="right", no_wrap=True)
    for encoder in encoders:
        view.add_column(encoder, justify="right", min_width=7)
    for split in [split for split in TEST_SPLITS if split in set(rows["split"])]:
        view.add_section()
        for n_train, group in rows[rows["split"] == split].groupby("n_train", sort=True):
            cells = {row.encoder: _mean_sd(row.mean, row.std) for row in group.itertuples()}
            view.add_row(split, str(n_train), *(cells.get(encoder, "-") for encoder in encoders))
    return view


def headline_metric(table: pd.DataFrame) -> str:
    """ROC AUC for classification, MAE for regression: what the curve plots."""
    return "roc_auc" if (table["metric"] == "roc_auc").any() else "mae"


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if pd.isna(sd) else f"{mean:.3f}\n± {sd:.3f}"


def plot_label_efficiency(table: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """Write :func:`label_efficiency_figure` as a PNG."""
    return save_figure(label_efficiency_figure(table, title), path)


def label_efficiency_figure(table: pd.DataFrame, title: str | None = None) -> Figure:
    """ROC AUC (or MAE for regression) against labelled subjects, one panel per test split; the
    legend beside the last panel, where it hides no error bar."""
    metric = headline_metric(table)
    splits = [split for split in TEST_SPLITS if split in set(table["split"])]
    sizes = sorted(table["n_train"].unique())
    figure = Figure(figsize=(5 * len(splits) + 2, 4))
    axes = figure.subplots(1, len(splits), squeeze=False)[0]
    for axis, split in zip(axes, splits):
        for encoder, rows in table[(table["split"] == split) & (table["metric"] == metric)].groupby("encoder"):
            rows = rows.sort_values("n_train")
            axis.errorbar(rows["n_train"], rows["mean"], yerr=rows["std"], marker="o", capsize=3, label=encoder)
        if metric == "roc_auc":
            axis.axhline(0.5, color="grey", linestyle=":", label="chance")
            low, high = axis.get_ylim()
            axis.set_ylim(max(low, 0.0), min(high, 1.02))  # a wide spread over seeds would pass 0 and 1
        axis.set(xscale="log", xlabel="labelled training subjects", ylabel=metric.replace("_", " "), title=split)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    if title:
        figure.suptitle(title)
    return figure
