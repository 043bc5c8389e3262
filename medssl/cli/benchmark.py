"""``medssl benchmark`` (recipes x seeds on one cohort) and ``medssl leaderboard`` (its tables again)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medssl import cli
from medssl.cli import FLAG, OVERRIDES_HELP, app


def _comma_list(text: str, option: str) -> list[str]:
    from medssl.errors import BenchmarkError

    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise BenchmarkError(f"{option} {text!r}: expected a comma-separated list without empty items, e.g. a,b,c")
    return items


def _seed_list(text: str) -> list[int]:
    from medssl.errors import BenchmarkError

    try:
        return [int(seed) for seed in _comma_list(text, "--seeds")]
    except ValueError:
        raise BenchmarkError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@app.command()
def benchmark(
    overrides: list[str] | None = typer.Argument(
        None, help=OVERRIDES_HELP.format(example="train.epochs=2") + " Applied to every run."
    ),
    recipes: str | None = typer.Option(
        None,
        "--recipes",
        help="Comma-separated recipes (default: every shipped recipe but the finetune_* ones, supervised_age and the control included).",
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds: one run per recipe and seed."),
    out: Path = typer.Option(
        Path("benchmark"), "--out", help="Benchmark folder; rerun the same command to continue a stopped benchmark."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Runs at once, each with CPUs // jobs threads."),
    devices: str | None = typer.Option(
        None, "--devices", help="Comma-separated GPU ids handed to the runs in turn, e.g. 0,1."
    ),
    smoke: bool = typer.Option(False, "--smoke", metavar=FLAG, help="Smoke runs (seconds each), to check the set-up."),
    finetune: str | None = typer.Option(
        None,
        "--finetune",
        help="Fine-tuning recipes, e.g. finetune_ad,finetune_focal: then label-efficiency curves of the encoders "
        "(linear, lower_lr) and from scratch -> finetune_leaderboard.md.",
    ),
    train_sizes: str = typer.Option(
        "20,50,100,all", "--train-sizes", help="With --finetune: labelled training subjects of the curves' points."
    ),
    finetune_all_seeds: bool = typer.Option(
        False,
        "--finetune-all-seeds",
        metavar=FLAG,
        help="With --finetune: fine-tune every seed's encoder (default: the first seed's of each recipe).",
    ),
) -> None:
    """Pre-train and evaluate recipes x seeds on one cohort; leaderboard with baselines, mean ± sd and paired CIs."""
    from medssl.benchmark import run_benchmark
    from medssl.errors import BenchmarkError

    if finetune is None and (finetune_all_seeds or train_sizes != "20,50,100,all"):
        raise BenchmarkError("--train-sizes and --finetune-all-seeds set the fine-tuning curves: give --finetune too")
    try:
        result = run_benchmark(
            _comma_list(recipes, "--recipes") if recipes else None,
            _seed_list(seeds),
            out,
            overrides or [],
            jobs=jobs,
            devices=_comma_list(devices, "--devices") if devices else None,
            smoke=smoke,
            console=cli.console,
            finetune=_comma_list(finetune, "--finetune") if finetune else (),
            train_sizes=train_sizes,
            finetune_all_seeds=finetune_all_seeds,
        )
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: rerun the same command to continue where it stopped")
        raise typer.Exit(130) from None
    if result.any_failed:
        raise typer.Exit(1)


@app.command()
def leaderboard(
    bench_dir: Path = typer.Argument(..., help="Benchmark folder (the --out of medssl benchmark)."),
    reference: list[str] | None = typer.Option(
        None, "--reference", help="Also compare every method with this row (repeatable), e.g. control_yaware_shuffled."
    ),
) -> None:
    """Rebuild a benchmark's leaderboard.{md,json,csv,png} from its finished runs (and its
    finetune_leaderboard.{md,csv,png} from its finished fine-tuning points, after --finetune)."""
    from rich.markdown import Markdown

    from medssl.benchmark.finetuning import rebuild_finetune_leaderboard
    from medssl.eval.leaderboard import REFERENCES, write_leaderboard

    paths = write_leaderboard(bench_dir, references=(*REFERENCES, *(reference or [])))
    cli.console.print(Markdown(paths["md"].read_text()))
    cli.console.print(f"Written {', '.join(str(path) for path in paths.values())}")
    finetune_paths = rebuild_finetune_leaderboard(bench_dir)
    if finetune_paths is not None:
        cli.console.print(f"Written {', '.join(str(path) for path in finetune_paths.values())}")
