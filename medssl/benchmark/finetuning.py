"""The fine-tuning part of ``medssl benchmark --finetune RECIPE[,RECIPE]``: label-efficiency curves.

After the pre-training runs, for each fine-tuning recipe and each size of ``--train-sizes``
(sizes not below the training subjects there are merged into ``all``, as ``medssl finetune
--train-sizes`` does), one point per pre-trained encoder and mode (``linear``, ``lower_lr``) and one
from-scratch point (``--encoder none``, whose runs also score the trivial baselines). The encoders
are the first seed's of each pre-training recipe (seed 0 by default), every seed's with
``--finetune-all-seeds``. A point is one ``medssl finetune`` process with every seed of the
recipe's ``finetune.seeds``, run ``--jobs`` at a time as the pre-training runs are; a point is
finished when its ``finetune.json`` exists, so a rerun of the same command skips the finished
points and continues the interrupted ones with ``--resume`` (from their finished seeds and
checkpoints). The processes get ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it.
Benchmark overrides are pre-training's: the fine-tuning recipes run as shipped (with ``--smoke``
under a smoke benchmark). Layout::

    BENCH/finetune/<recipe>/scratch/n<size>/                      from scratch (and the baselines)
    BENCH/finetune/<recipe>/<pretraining recipe>-seed<k>/<mode>-n<size>/
    BENCH/finetune/.../log.txt                                    each point's process output
    BENCH/finetune_times.json                                     seconds per point, summed over attempts
    BENCH/finetune_leaderboard.{md,csv,png}                       :mod:`medssl.finetune.leaderboard`
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from medssl.benchmark import (
    BENCHMARK_FILE,
    DEFAULT_TRAIN_SIZES,
    BenchmarkRun,
    RunOne,
    default_recipes,
    recipe_folder,
    run_in_slots,
    run_pretrain_process,
)
from medssl.errors import BenchmarkError, RecipeError
from medssl.finetune.label_efficiency import parse_train_sizes, sizes_below
from medssl.finetune.leaderboard import CurvePoint, size_label, write_finetune_leaderboard
from medssl.finetune.splits import training_pool_size
from medssl.progress import progress_bar
from medssl.recipe import list_recipe_names, load_recipe, smoke_recipe
from medssl.run_folder import run_artefacts

FINETUNE_MODES = ("linear", "lower_lr")
FINETUNE_TIMES_FILE = "finetune_times.json"
run_finetune_process = run_pretrain_process  # the same: a command, its log, its environment


@dataclass
class FinetuneRequest:
    """``--finetune`` checked: the recipes, the sizes trained for each, what was merged and why."""

    recipes: list[str]
    train_sizes: str = DEFAULT_TRAIN_SIZES
    all_seeds: bool = False
    sizes: dict[str, list[int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What ``benchmark.json`` keeps of the request."""
        return {"recipes": self.recipes, "train_sizes": self.train_sizes, "all_seeds": self.all_seeds}


@dataclass
class FinetuneResult:
    """What the fine-tuning part did: its points, those that failed, those skipped, the leaderboard."""

    points: list[CurvePoint]
    failed: list[CurvePoint] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    leaderboard: dict[str, Path] | None = None
    wall_time_s: float = 0.0


def check_finetune_request(
    recipes: Sequence[str], train_sizes: str = DEFAULT_TRAIN_SIZES, all_seeds: bool = False, smoke: bool = False
) -> FinetuneRequest:
    """Refuse, before any pre-training run starts, a fine-tuning recipe that is unknown, a pre-training
    recipe, or without its target in its cohort, and bad ``--train-sizes``; resolve each recipe's sizes
    (opening its cohort: the embedded one is generated on first use)."""
    request = FinetuneRequest(list(recipes), train_sizes, all_seeds)
    if len({recipe_folder(recipe) for recipe in recipes}) < len(recipes):
        raise BenchmarkError(f"--finetune {','.join(recipes)}: a recipe is listed twice")
    sizes = parse_train_sizes(train_sizes)
    pretraining = set(default_recipes())
    for name in recipes:
        if name in pretraining:
            fine_tuning = sorted(set(list_recipe_names()) - pretraining)
            raise BenchmarkError(
                f"--finetune {name}: a pre-training recipe; give fine-tuning recipes, e.g. {', '.join(fine_tuning)}"
            )
        try:
            recipe = load_recipe(name)
            kept, merged = sizes_below(sizes, training_pool_size(smoke_recipe(recipe) if smoke else recipe))
        except RecipeError as error:
            raise RecipeError(f"--finetune {name}: {error}") from None
        request.sizes[name] = kept
        if merged:
            request.notes.append(
                f"{name}: --train-sizes {', '.join(map(str, merged))} not below its training subjects: "
                "trained once with all of them ('all')"
            )
    return request


def encoders_of(runs: Sequence[BenchmarkRun], seeds: Sequence[int], all_seeds: bool) -> list[BenchmarkRun]:
    """The pre-training runs whose encoders are fine-tuned: the first seed's of each recipe, or all."""
    return [run for run in runs if all_seeds or run.seed == seeds[0]]


def planned_points(request: FinetuneRequest, encoders: Sequence[BenchmarkRun], out_dir: str | Path) -> list[CurvePoint]:
    """Recipe by recipe, size by size (small first): from scratch, then each encoder in each mode."""
    root = Path(out_dir) / "finetune"
    points = []
    for recipe in request.recipes:
        folder = root / recipe_folder(recipe)
        for size in request.sizes[recipe]:
            points.append(CurvePoint(recipe, "scratch", "scratch", size, folder / "scratch" / f"n{size_label(size)}"))
            for run in encoders:
                method = recipe_folder(run.recipe)
                for mode in FINETUNE_MODES:
                    run_dir = folder / f"{method}-seed{run.seed}" / f"{mode}-n{size_label(size)}"
                    points.append(CurvePoint(recipe, method, mode, size, run_dir, run.seed, run.run_dir / "encoder.pt"))
    return points


def point_name(point: CurvePoint) -> str:
    """``finetune_ad yaware_age seed 0 lower_lr n20``, ``finetune_ad scratch n20``: for lines and times."""
    encoder = "scratch" if point.encoder is None else f"{point.method} seed {point.pretrain_seed} {point.mode}"
    return f"{recipe_folder(point.recipe)} {encoder} n{size_label(point.size)}"


def finetune_command(point: CurvePoint, smoke: bool = False) -> list[str]:
    """The ``medssl finetune`` command of a point; ``--resume`` when its folder holds a run already."""
    command = [sys.executable, "-m", "medssl", "finetune", point.recipe]
    command += [] if point.size is None else [f"finetune.train_size={point.size}"]
    command += (
        ["--encoder", "none"] if point.encoder is None else ["--encoder", str(point.encoder), "--mode", point.mode]
    )
    command += ["--out", str(point.run_dir)]
    command += ["--resume"] if run_artefacts(point.run_dir) else []
    command += ["--smoke"] if smoke else []
    return command


def run_finetuning(
    request: FinetuneRequest,
    pretraining: Sequence[BenchmarkRun],
    seeds: Sequence[int],
    out_dir: str | Path,
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    smoke: bool = False,
    console: Console | None = None,
    run_one: RunOne | None = None,
    command: str | None = None,
) -> FinetuneResult:
    """Run every point not yet finished (see the module docstring), then write the fine-tuning leaderboard.

    ``pretraining``: the benchmark's runs; those not finished give no encoder (their points are
    skipped, said in one line each). ``run_one``: ``(command, log, env) -> exit code``, as for pre-training."""
    started, out_dir = time.monotonic(), Path(out_dir)
    console = console or Console(quiet=True)
    for note in request.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    chosen = encoders_of(pretraining, seeds, request.all_seeds)
    result = FinetuneResult(points=planned_points(request, [run for run in chosen if run.finished], out_dir))
    result.skipped = [f"{recipe_folder(run.recipe)} seed {run.seed}" for run in chosen if not run.finished]
    for skipped in result.skipped:
        console.print(
            f"[yellow]skipped:[/] fine-tuning of {skipped} (its pre-training did not finish)", highlight=False
        )
    todo = [point for point in result.points if not point.finished]
    run_one = run_one or run_finetune_process
    with progress_bar(console, elapsed=True, remaining=False) as progress:
        task = progress.add_task(
            "fine-tuning points", total=len(result.points), completed=len(result.points) - len(todo)
        )

        def on_done(point: CurvePoint, failure: str | None, seconds: float) -> None:
            _add_time(out_dir, point, seconds)
            if failure is not None:
                result.failed.append(point)
                progress.console.print(
                    f"[red]failed:[/] fine-tuning {point_name(point)} ({failure}); log: {point.run_dir / 'log.txt'}",
                    highlight=False,
                    soft_wrap=True,
                )
            progress.advance(task)

        run_in_slots(todo, lambda point, env: _attempt(point, smoke, env, run_one), jobs, devices, on_done)
    result.wall_time_s = time.monotonic() - started
    _write_leaderboard(result, out_dir, command, console)
    return result


def _write_leaderboard(result: FinetuneResult, out_dir: Path, command: str | None, console: Console) -> None:
    if not any(point.finished for point in result.points):
        console.print("No finished fine-tuning point: no fine-tuning leaderboard.")
        return
    seconds = _run_seconds(out_dir)
    result.leaderboard = write_finetune_leaderboard(out_dir, result.points, command, result.wall_time_s, seconds)
    console.print(
        f"Fine-tuning leaderboard written to {result.leaderboard['md']} "
        "(by labelled subjects, with the differences from scratch and their CIs)"
    )


def _run_seconds(out_dir: Path) -> float | None:
    """Seconds the benchmark's fine-tuning points ran, summed (``finetune_times.json``)."""
    path = out_dir / FINETUNE_TIMES_FILE
    return sum(json.loads(path.read_text()).values()) if path.is_file() else None


def rebuild_finetune_leaderboard(bench_dir: str | Path) -> dict[str, Path] | None:
    """Write the fine-tuning leaderboard of a benchmark folder again from every finished point in
    it (None when it holds none), without opening any cohort."""
    bench_dir = Path(bench_dir)
    record_path = bench_dir / BENCHMARK_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    asked = record.get("finetune") or {}
    names = {recipe_folder(recipe): recipe for recipe in asked.get("recipes", [])}
    points = finished_points(bench_dir, names)
    if not points:
        return None
    command = record.get("command") if asked else None  # a later benchmark without --finetune ran none of them
    return write_finetune_leaderboard(bench_dir, points, command, None, _run_seconds(bench_dir))


def finished_points(bench_dir: Path, names: dict[str, str]) -> list[CurvePoint]:
    """The finished points under ``BENCH/finetune``, read from their folders (see :func:`planned_points`):
    ``<recipe>/scratch/n<size>`` and ``<recipe>/<method>-seed<k>/<mode>-n<size>``; ``names`` maps a
    recipe's folder to the name it was given as (a YAML path)."""
    points = []
    for result in sorted((bench_dir / "finetune").glob("*/*/*/finetune.json")):
        run_dir = result.parent
        recipe = names.get(run_dir.parent.parent.name, run_dir.parent.parent.name)
        encoder = run_dir.parent.name
        mode, _, size = run_dir.name.rpartition("n") if encoder == "scratch" else run_dir.name.rpartition("-n")
        if not (size.isdigit() or size == "all"):
            continue
        size_value = None if size == "all" else int(size)
        method, _, seed = encoder.rpartition("-seed")
        if encoder == "scratch" and not mode:
            points.append(CurvePoint(recipe, "scratch", "scratch", size_value, run_dir))
        elif method and seed.isdigit() and mode in FINETUNE_MODES:
            weights = bench_dir / "runs" / method / f"seed{seed}" / "encoder.pt"
            points.append(CurvePoint(recipe, method, mode, size_value, run_dir, int(seed), weights))
    return points


def _attempt(point: CurvePoint, smoke: bool, env: dict, run_one: RunOne) -> tuple[str | None, float]:
    """(why the point failed or None, seconds it took)."""
    command = finetune_command(point, smoke)
    # OpenMP threads that spin while waiting for a core another process holds made a point 5 times
    # slower on a shared 2-core machine (238 s instead of 46 s); sleeping waits cost nothing. Yours wins.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **env}
    started = time.monotonic()
    code = run_one(command, point.run_dir / "log.txt", env)
    seconds = time.monotonic() - started
    if code != 0:
        return f"exit code {code}", seconds
    if not point.finished:
        return "ended without finetune.json", seconds
    return None, seconds


def _add_time(out_dir: Path, point: CurvePoint, seconds: float) -> None:
    path = out_dir / FINETUNE_TIMES_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    name = point.run_dir.relative_to(out_dir / "finetune").as_posix()
    times[name] = times.get(name, 0.0) + seconds
    path.write_text(json.dumps(times, indent=2))


def finetune_options(request: FinetuneRequest | None) -> list[str]:
    """The ``medssl benchmark`` options of a request, for the recorded command line."""
    if request is None:
        return []
    options = ["--finetune", ",".join(request.recipes)]
    options += ["--train-sizes", request.train_sizes] if request.train_sizes != DEFAULT_TRAIN_SIZES else []
    return options + (["--finetune-all-seeds"] if request.all_seeds else [])
