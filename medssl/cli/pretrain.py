"""``medssl pretrain``, on one process or on several launched with torchrun."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from medssl import cli
from medssl.cli import FLAG, OVERRIDES_HELP, Interrupted, app
from medssl.cli.common import apply_smoke, choose_run_dir, quiet_sklearn, refuse_nothing_to_resume
from medssl.errors import RecipeError
from medssl.run_folder import check_run_folder

if TYPE_CHECKING:
    from medssl.recipe import Recipe

PRETRAIN_CHECKPOINT = Path("checkpoints") / "last.pt"


def _launch_torchrun(devices: int) -> None:
    """Re-run this command under torchrun with ``devices`` processes (DDP).

    This process is torchrun's agent (``torch.distributed.run.run``), so that it waits for the
    processes it started and ends with their exit code: a Ctrl-C or a refused input ends as
    rank 0's one line and medssl's exit code (130, 2), not as torchrun's traceback and failure
    report. ``--devices`` stays in the processes' command line (``LOCAL_RANK`` keeps them from
    launching again), so the resume line rank 0 prints keeps the number of processes."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    arguments = ["--standalone", f"--nproc_per_node={devices}", "-m", "medssl", *sys.argv[1:]]
    threads = ""
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default, said here instead of in its banner
        os.environ["OMP_NUM_THREADS"] = "1"
        threads = " (1 thread each; set OMP_NUM_THREADS for more)"
    cli.console.print(f"Launching {devices} processes{threads}: torchrun {' '.join(arguments)}")
    # this process only hosts the agent, whose notices (each signal forwarded, each failed
    # rank) repeat what the ranks print; its own failures still raise
    logging.disable(logging.ERROR)
    try:
        run(parse_args(arguments))
    except SignalException:
        sys.exit(130)  # the processes saw the same Ctrl-C; rank 0 printed how to resume
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode not in (2, 130):  # medssl's refusal or Ctrl-C: rank 0 printed its line
            Console(stderr=True).print(
                f"[bold red]error:[/] process {rank} of {devices} exited with code {failure.exitcode} "
                "(its messages are above)",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(failure.exitcode if failure.exitcode in (2, 130) else 1)
    sys.exit(0)


@app.command()
def pretrain(
    recipe: str = typer.Argument(..., help="Recipe YAML path or shipped recipe name (see `medssl recipes`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="train.epochs=2")),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<recipe>-<time>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        metavar=FLAG,
        help="Continue from the run folder's last checkpoint (latest run of the recipe without --out).",
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        metavar=FLAG,
        help="Check the set-up in seconds: a handful of subjects, tiny volumes, one short epoch.",
    ),
    devices: int = typer.Option(
        1, "--devices", min=1, help="Processes to launch with torchrun (DistributedDataParallel)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar=FLAG,
        help="Replace the run already in --out (its checkpoints, metrics, encoder, eval).",
    ),
) -> None:
    """Pre-train an encoder with a recipe; writes checkpoints, encoder.pt, metrics, plots and an evaluation."""
    from medssl.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])  # a bad recipe is refused before any launch
    _refuse_unlabelled(resolved)
    if devices > 1 and "LOCAL_RANK" not in os.environ:
        _refuse_one_process_method(resolved)
        _launch_torchrun(devices)
    if smoke:
        resolved = apply_smoke(resolved, overrides or [])
    run_dir = choose_run_dir(resolved.name + ("-smoke" if smoke else ""), out, resume)
    quiet = os.environ.get("RANK", "0") != "0"
    if not quiet:  # other ranks would see the folder rank 0 is creating
        check_run_folder(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        checkpoint = run_dir / PRETRAIN_CHECKPOINT
        refuse_nothing_to_resume(run_dir, out, f"checkpoint ({PRETRAIN_CHECKPOINT})", checkpoint.is_file())
    if smoke and not quiet:
        cli.console.print("Smoke run: a handful of subjects, tiny volumes, one short epoch.")
    from medssl.pipeline import pretrain as run_pretrain

    try:
        with quiet_sklearn(smoke):
            result = run_pretrain(resolved, run_dir, resume=resume, console=None if quiet else cli.console)
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=(run_dir / PRETRAIN_CHECKPOINT).is_file()) from None
    if not quiet:
        cli.console.print(
            f"Done: mean loss {result.first_loss:.4f} -> {result.last_loss:.4f} (first -> last epoch), "
            f"{_network_trained(result.run_dir)}. Run folder: {result.run_dir}"
        )


def _refuse_unlabelled(recipe: Recipe) -> None:
    from medssl.methods import method_needs
    from medssl.train.pretraining import check_label

    check_label(recipe, method_needs(recipe))


def _refuse_one_process_method(recipe: Recipe) -> None:
    """A method whose per-epoch step runs on one process (DeepCluster's clustering) is refused under --devices."""
    from medssl.methods import method_needs

    if not method_needs(recipe).distributed:
        raise RecipeError(f"method.name = {recipe.method.name!r} runs on one process: run it without --devices")


def _network_trained(run_dir: Path) -> str:
    """Which network the run trained, from its encoder.json (an imported encoder brings its own)."""
    spec = json.loads((run_dir / "encoder.json").read_text())
    widths = spec["kwargs"].get("block_inplanes")
    return f"encoder {spec['name']}" + (f" {'-'.join(map(str, widths))}" if widths else "")
