"""The fine-tuning report printed at the end of ``medssl finetune``: one table per test split."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

# what the baseline columns of the report hold, by task
BASELINE_MEANINGS = {
    "classification": {"constant": "training class frequencies", "intensity": "linear probe on intensity percentiles"},
    "regression": {"constant": "training mean", "intensity": "ridge on intensity percentiles"},
}


def print_finetune_report(results: dict, console: Console | None = None, notes: bool = True) -> None:
    """One table per test split: each metric as mean +- std over seeds, the baselines' and every seed's
    values (then the notes). Names and numbers are never cut or split: at 80 columns only the per-seed
    list wraps, between values."""
    console = console or Console()
    settings = results["settings"]
    encoder = settings["encoder"] or "none (from scratch)"
    console.print(
        f"[bold]Fine-tuning {settings['target']} ({settings['task']}), mode {settings['mode']}, encoder {encoder}[/bold]",
        highlight=False,
    )
    baselines = results.get("baselines") or {}
    if baselines:
        meanings = BASELINE_MEANINGS.get(settings["task"], {})
        explained = "; ".join(f"{name} = {meanings.get(name, name)}" for name in baselines)
        console.print(f"[dim]baselines: {explained}[/dim]", highlight=False)
    for split, entry in results["summary"].items():
        view, per_seed = split_report(split, entry, results, console.width)
        console.print(view)
        for line in per_seed:  # per-seed values that found no room in the table
            console.print(line, highlight=False)
    for note in results.get("notes", []) if notes else []:
        console.print(f"[dim]{note}[/dim]", highlight=False)


def split_report(split: str, entry: dict, results: dict, width: int) -> tuple[Table, list[str]]:
    """The report table of one test split, and the per-seed lines printed under it when the per-seed
    column would not fit in ``width`` (the other columns never wrap: values are never cut)."""
    baselines = results.get("baselines") or {}
    metrics = [metric for metric, value in entry.items() if isinstance(value, dict)]
    per_seed = {
        metric: ", ".join(
            "-" if (run.get(split) or {}).get(metric) is None else f"{run[split][metric]:.3f}"
            for run in results["runs"]
        )
        for metric in metrics
    }
    n_seeds = len(results["settings"]["seeds"])
    headers = ["metric", f"mean ± std\n({n_seeds} seed{'s' if n_seeds > 1 else ''})", *baselines]
    rows = [
        [
            metric,
            mean_std_text(entry[metric]),
            *(mean_std_text(baseline.get(split, {}).get(metric)) for baseline in baselines.values()),
        ]
        for metric in metrics
    ]
    fixed = [max(len(text) for text in [*header.split("\n"), *column]) for header, *column in zip(headers, *rows)]
    gap = 3  # padding, invisible divider, padding
    widest_seed = max((len(text) for text in ", ".join(per_seed.values()).split(" ")), default=1)
    seeds_fit = sum(fixed) + gap * len(fixed) + max(widest_seed, len("per seed")) <= width
    view = Table(
        title=f"{split} (n = {entry.get('n', '?')})",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for header in headers:
        view.add_column(header, justify="left" if header == "metric" else "right", no_wrap=True)
    if seeds_fit:
        view.add_column("per seed", min_width=widest_seed)  # wraps between values only
    for row, metric in zip(rows, metrics):
        view.add_row(*row, *([per_seed[metric]] if seeds_fit else []))
    return view, [] if seeds_fit else [f"{metric} per seed: {per_seed[metric]}" for metric in metrics]


def mean_std_text(value: dict | None) -> str:
    return "-" if not value or value.get("mean") is None else f"{value['mean']:.3f} ± {value['std']:.3f}"
