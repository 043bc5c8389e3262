"""``medssl benchmark``: every recipe x seed pre-trained and evaluated on one cohort, then the leaderboard.

Each (recipe, seed) is its own ``medssl pretrain`` process, so a crash or an out-of-memory kill
costs one run, and runs can be spread over cores and GPUs. Layout of a benchmark folder::

    BENCH/benchmark.json            recipes, seeds, overrides and command of the benchmark
    BENCH/run_times.json            seconds spent in each run, summed over attempts
    BENCH/runs/<recipe>/seed<k>/    one pre-training run folder (medssl pretrain --out), log.txt inside
    BENCH/leaderboard.{md,json,csv,png}
    BENCH/finetune/..., BENCH/finetune_leaderboard.{md,csv,png}   with --finetune (medssl.benchmark.finetuning)

A run is finished when its ``eval/metrics.json`` exists; a rerun of the same command skips the
finished runs and continues the others with ``--resume``, so a killed benchmark resumes where it
stopped. A folder keeps one set of overrides: a rerun with other overrides is refused, one with
more recipes or seeds extends the benchmark. With ``finetune``, the label-efficiency curves of the
pre-trained encoders on fine-tuning recipes follow the pre-training runs, resumable in the same way
(:mod:`medssl.benchmark.finetuning`).

Example:
    >>> result = run_benchmark(["simclr", "yaware_age"], seeds=[0, 1, 2], out_dir="benchmark")
    >>> result.failed, result.leaderboard["md"]
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from medssl.errors import BenchmarkError
from medssl.eval.leaderboard import METRICS as LEADERBOARD_METRICS
from medssl.eval.leaderboard import RUN_TIMES_FILE, write_leaderboard
from medssl.progress import progress_bar
from medssl.recipe import list_recipe_names, load_recipe, parse_override

if TYPE_CHECKING:
    from medssl.benchmark.finetuning import FinetuneRequest, FinetuneResult

BENCHMARK_FILE = "benchmark.json"
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TRAIN_SIZES = "20,50,100,all"  # of the fine-tuning curves (--finetune)
# The benchmark sets each run's seed itself; an override would give every run the same one.
RESERVED_OVERRIDES = ("train.seed",)

RunOne = Callable[[list[str], Path, dict], int]
Item = TypeVar("Item")


@dataclass(frozen=True)
class BenchmarkRun:
    """One (recipe, seed) pre-training run of a benchmark."""

    recipe: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{recipe_folder(self.recipe)}/seed{self.seed}"

    @property
    def log(self) -> Path:
        return self.run_dir / "log.txt"

    @property
    def finished(self) -> bool:
        return (self.run_dir / "eval" / "metrics.json").is_file()


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` did: the planned runs, those that failed, the leaderboard files."""

    runs: list[BenchmarkRun]
    failed: list[BenchmarkRun] = field(default_factory=list)
    leaderboard: dict[str, Path] | None = None
    wall_time_s: float = 0.0
    finetune: FinetuneResult | None = None

    @property
    def any_failed(self) -> bool:
        """A pre-training run or a fine-tuning point failed."""
        return bool(self.failed or (self.finetune is not None and self.finetune.failed))


def default_recipes() -> list[str]:
    """Every shipped pre-training recipe (``supervised_age`` among them once shipped); fine-tuning ones are not."""
    return [name for name in list_recipe_names() if not name.startswith("finetune")]


def recipe_folder(recipe: str) -> str:
    """Folder name of a recipe given by name or by YAML path."""
    return Path(recipe).stem


def planned_runs(recipes: Sequence[str], seeds: Sequence[int], out_dir: str | Path) -> list[BenchmarkRun]:
    """Every (recipe, seed), seed by seed, so a stopped benchmark has whole seeds to compare."""
    runs_dir = Path(out_dir) / "runs"
    return [
        BenchmarkRun(recipe, seed, runs_dir / recipe_folder(recipe) / f"seed{seed}")
        for seed in seeds
        for recipe in recipes
    ]


def pretrain_command(run: BenchmarkRun, overrides: Sequence[str] = (), smoke: bool = False) -> list[str]:
    """The ``medssl pretrain`` command of a run; ``--resume`` when its folder exists (a killed attempt)."""
    command = [
        sys.executable,
        "-m",
        "medssl",
        "pretrain",
        run.recipe,
        f"train.seed={run.seed}",
        *overrides,
        "--out",
        str(run.run_dir),
    ]
    if run.run_dir.exists():
        command.append("--resume")
    if smoke:
        command.append("--smoke")
    return command


def run_pretrain_process(command: list[str], log: Path, env: dict) -> int:
    """Run ``command`` with stdout and stderr appended to ``log``; return its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream:
        stream.write(f"$ {shlex.join(command)}\n")
        stream.flush()
        return subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT, env=env)


def benchmark_command(
    recipes: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    smoke: bool = False,
    finetune: FinetuneRequest | None = None,
) -> str:
    """The ``medssl benchmark`` command line that reproduces a request, for the report."""
    from medssl.benchmark.finetuning import finetune_options

    parts = [
        "medssl",
        "benchmark",
        "--recipes",
        ",".join(recipes),
        "--seeds",
        ",".join(map(str, seeds)),
        "--out",
        str(out_dir),
    ]
    parts += ["--jobs", str(jobs)] if jobs > 1 else []
    parts += ["--devices", ",".join(devices)] if devices else []
    parts += ["--smoke"] if smoke else []
    return shlex.join([*parts, *finetune_options(finetune), *overrides])


def check_request(recipes: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]) -> None:
    """Refuse, before any run starts, what would make every run fail or the runs incomparable."""
    if not recipes:
        raise BenchmarkError("--recipes: expected at least one recipe")
    if len({recipe_folder(recipe) for recipe in recipes}) < len(recipes):
        raise BenchmarkError(f"--recipes {','.join(recipes)}: a recipe is listed twice")
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise BenchmarkError(
            f"--seeds {','.join(map(str, seeds))}: expected distinct non-negative integers, e.g. 0,1,2"
        )
    for override in overrides:
        key = ".".join(parse_override(override)[0])
        if key in RESERVED_OVERRIDES:
            raise BenchmarkError(f"override {override}: the benchmark sets {key} from --seeds")
    for recipe in recipes:
        if not load_recipe(recipe, list(overrides)).eval.after_pretrain:  # also raises RecipeError on a bad key
            raise BenchmarkError(
                f"recipe {recipe}: eval.after_pretrain is false; the leaderboard needs each run's evaluation"
            )


def record_benchmark(
    out_dir: str | Path,
    recipes: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    smoke: bool,
    command: str,
    finetune: dict | None = None,
) -> dict:
    """Write ``benchmark.json``; refuse a folder whose benchmark has other overrides (or smoke setting).

    More recipes or seeds than before extend the benchmark: the file lists them all. ``finetune``
    (the ``--finetune`` request) is kept as the last command gave it.
    """
    path = Path(out_dir) / BENCHMARK_FILE
    request = {
        "recipes": list(recipes),
        "seeds": list(seeds),
        "overrides": list(overrides),
        "smoke": smoke,
        "command": command,
        **({"finetune": finetune} if finetune else {}),
    }
    if path.is_file():
        previous = json.loads(path.read_text())
        if (previous.get("overrides"), previous.get("smoke")) != (request["overrides"], smoke):
            asked = shlex.join([*overrides, *(["--smoke"] if smoke else [])]) or "none"
            held = (
                shlex.join([*previous.get("overrides", []), *(["--smoke"] if previous.get("smoke") else [])]) or "none"
            )
            raise BenchmarkError(
                f"{path}: this folder's benchmark has overrides {held}, got {asked}; "
                "rerun with the same overrides or choose another --out"
            )
        request["recipes"] = list(dict.fromkeys([*previous.get("recipes", []), *recipes]))
        request["seeds"] = list(dict.fromkeys([*previous.get("seeds", []), *seeds]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request, indent=2))
    return request


def run_benchmark(
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    out_dir: str | Path = "benchmark",
    overrides: Sequence[str] = (),
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    smoke: bool = False,
    console: Console | None = None,
    run_one: RunOne | None = None,
    n_resamples: int = 2000,
    finetune: Sequence[str] = (),
    train_sizes: str = DEFAULT_TRAIN_SIZES,
    finetune_all_seeds: bool = False,
    finetune_run_one: RunOne | None = None,
) -> BenchmarkResult:
    """Pre-train and evaluate every (recipe, seed) not yet finished, then write the leaderboard; with
    ``finetune``, then the label-efficiency curves and the fine-tuning leaderboard.

    Args:
        recipes: recipe names or YAML paths (default :func:`default_recipes`).
        seeds: one run per recipe and seed (``train.seed``).
        out_dir: the benchmark folder (see the module docstring).
        overrides: ``KEY.PATH=VALUE`` applied to every run (one cohort, one encoder, one budget).
        jobs: runs at once; each gets ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = CPUs // jobs.
        devices: GPU ids given to the runs in turn through ``CUDA_VISIBLE_DEVICES``.
        smoke: ``--smoke`` runs (seconds each), to check the set-up.
        console: progress bar and one line per failed run; None prints nothing.
        run_one: ``(command, log, env) -> exit code`` (default :func:`run_pretrain_process`); tests pass a fake.
        n_resamples: of the leaderboard's paired bootstrap.
        finetune: fine-tuning recipes (:mod:`medssl.benchmark.finetuning`); checked before any run starts.
        train_sizes: the curves' sizes, e.g. ``"20,50,100,all"``.
        finetune_all_seeds: fine-tune every pre-training seed's encoder, not only the first seed's.
        finetune_run_one: as ``run_one``, for the ``medssl finetune`` processes.

    Returns:
        the runs, those that failed (each reported in one line naming its log) and the leaderboard files
        (None when no run has finished), and the fine-tuning part's.
    """
    from medssl.benchmark.finetuning import check_finetune_request, run_finetuning

    started = time.monotonic()
    recipes = list(recipes or default_recipes())
    seeds, overrides, out_dir = list(seeds), list(overrides), Path(out_dir)
    check_request(recipes, seeds, overrides)
    request = check_finetune_request(finetune, train_sizes, finetune_all_seeds, smoke) if finetune else None
    command = benchmark_command(recipes, seeds, out_dir, overrides, jobs, devices, smoke, request)
    record_benchmark(out_dir, recipes, seeds, overrides, smoke, command, request.record() if request else None)
    console = console or Console(quiet=True)
    result = BenchmarkResult(runs=planned_runs(recipes, seeds, out_dir))
    _pretrain(result, out_dir, overrides, smoke, jobs, devices, run_one or run_pretrain_process, console)
    result.wall_time_s = time.monotonic() - started
    result.leaderboard = _leaderboard_if_any(out_dir, command, result.wall_time_s, n_resamples, console)
    if request is not None:
        result.finetune = run_finetuning(
            request, result.runs, seeds, out_dir, jobs, devices, smoke, console, finetune_run_one, command
        )
    return result


def _pretrain(
    result: BenchmarkResult,
    out_dir: Path,
    overrides: list[str],
    smoke: bool,
    jobs: int,
    devices: Sequence[str] | None,
    run_one: RunOne,
    console: Console,
) -> None:
    """The runs of ``result`` not yet finished, ``jobs`` at a time; failures go to ``result.failed``."""
    todo = [run for run in result.runs if not run.finished]
    with progress_bar(console, elapsed=True, remaining=False) as progress:
        task = progress.add_task("benchmark runs", total=len(result.runs), completed=len(result.runs) - len(todo))

        def on_done(run: BenchmarkRun, failure: str | None, seconds: float) -> None:
            _add_run_time(out_dir, run, seconds)
            if failure is not None:
                result.failed.append(run)
                progress.console.print(
                    f"[red]failed:[/] {recipe_folder(run.recipe)} seed {run.seed} ({failure}); log: {run.log}",
                    highlight=False,
                    soft_wrap=True,
                )
            progress.advance(task)

        run_in_slots(todo, lambda run, env: _attempt(run, overrides, smoke, env, run_one), jobs, devices, on_done)


def run_in_slots(
    todo: Sequence[Item],
    attempt: Callable[[Item, dict], tuple[str | None, float]],
    jobs: int,
    devices: Sequence[str] | None,
    on_done: Callable[[Item, str | None, float], None],
) -> None:
    """Run ``attempt(item, env)`` for each item, ``jobs`` at a time (threads waiting on processes), each
    with the environment of its slot (:func:`process_environment`); ``on_done(item, failure, seconds)``
    is called in this thread after each. Pre-training runs and fine-tuning points go through here."""
    free_slots: queue.Queue[int] = queue.Queue()  # FIFO: devices are handed out in turn
    for slot in range(jobs):
        free_slots.put(slot)

    def in_slot(item: Item) -> tuple[str | None, float]:
        slot = free_slots.get()
        try:
            return attempt(item, process_environment(slot, jobs, devices))
        finally:
            free_slots.put(slot)

    if jobs == 1:
        for item in todo:
            on_done(item, *in_slot(item))
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(in_slot, item): item for item in todo}
        try:
            for future in as_completed(futures):
                on_done(futures[future], *future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # runs not started stay for the next attempt
            raise


def _attempt(
    run: BenchmarkRun, overrides: list[str], smoke: bool, env: dict, run_one: RunOne
) -> tuple[str | None, float]:
    """(why the run failed or None, seconds it took)."""
    command = pretrain_command(run, overrides, smoke)
    started = time.monotonic()
    code = run_one(command, run.log, env)
    seconds = time.monotonic() - started
    if code != 0:
        return f"exit code {code}", seconds
    if not run.finished:
        return "ended without eval/metrics.json", seconds
    return None, seconds


def process_environment(slot: int, jobs: int, devices: Sequence[str] | None) -> dict:
    """The environment of a run in ``slot``: this medssl first on the path, CPUs // jobs threads, its GPU."""
    env = dict(os.environ)
    # The runs import the medssl that runs the benchmark, even where another one is installed.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    if jobs > 1:
        # Each process would otherwise start one thread per core: jobs x cores threads fighting for the cores.
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = str(devices[slot % len(devices)])
    return env


def _add_run_time(out_dir: Path, run: BenchmarkRun, seconds: float) -> None:
    path = out_dir / RUN_TIMES_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[run.name] = times.get(run.name, 0.0) + seconds
    path.write_text(json.dumps(times, indent=2))


def _leaderboard_if_any(
    out_dir: Path, command: str, wall_time_s: float, n_resamples: int, console: Console
) -> dict[str, Path] | None:
    if not any((out_dir / "runs").glob("*/seed*/eval/metrics.json")):
        console.print("No finished run: no leaderboard.")
        return None
    paths = write_leaderboard(out_dir, command=command, wall_time_s=wall_time_s, n_resamples=n_resamples)
    report = json.loads(paths["json"].read_text())
    console.print(leaderboard_summary(report["leaderboard"]))
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"Leaderboard written to {paths['md']} (with the paired differences and their CIs)")
    return paths


SUMMARY_METRICS = ("mae_internal", "mae_external", "bacc_site", "challenge_score")


def leaderboard_summary(rows: list[dict]) -> Table:
    """The challenge columns of the leaderboard (``leaderboard.json``'s rows), mean ± sd over seeds,
    two lines a cell so that the table fits 80 columns."""
    view = Table(
        title="Leaderboard: lower is better in every column (mean ± sd over seeds)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    view.add_column("method", no_wrap=True)
    view.add_column("seeds", justify="right")
    for metric in SUMMARY_METRICS:
        view.add_column(LEADERBOARD_METRICS[metric], justify="right", min_width=7)
    for row in rows:
        cells = []
        for metric in SUMMARY_METRICS:
            mean, sd = row.get(f"{metric}_mean"), row.get(f"{metric}_sd")
            missing = [value is None or value != value for value in (mean, sd)]  # null or NaN
            cells.append("-" if missing[0] else f"{mean:.3f}" if missing[1] else f"{mean:.3f}\n± {sd:.3f}")
        view.add_row(str(row["method"]), str(row["n_seeds"]), *cells)
    return view
