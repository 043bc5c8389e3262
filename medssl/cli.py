"""The ``medssl`` command line.

    medssl pretrain recipes/yaware_age.yaml [KEY.PATH=VALUE ...] [--out DIR] [--resume] [--smoke]
    medssl evaluate RUN_DIR_OR_ENCODER_PT [--cohort DIR]
    medssl score predictions.csv [--json out.json]
    medssl recipes [--fields]
    medssl data synth OUT --subjects N --sites S --shape 64
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from medssl.errors import MedsslError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-supervised pre-training of 3D encoders on medical images, with OpenBHB-style evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="Cohort utilities: synthetic cohorts.")
app.add_typer(data_app, name="data")
console = Console()

OVERRIDES_HELP = "Recipe overrides as KEY.PATH=VALUE, e.g. train.epochs=2 data.root=/data/openbhb."


def _run_dir(name: str, out: Optional[Path], resume: bool) -> Path:
    if out is not None:
        return out
    runs = Path("runs")
    if resume:
        previous = sorted(runs.glob(f"{name}-*/checkpoints/last.pt"))
        if previous:
            return previous[-1].parent.parent
    return runs / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def _launch_torchrun(devices: int) -> None:
    """Re-run this command under torchrun with ``devices`` processes (DDP)."""
    arguments = [arg for arg in sys.argv[1:] if not arg.startswith("--devices")]
    if "--devices" in sys.argv:
        index = sys.argv.index("--devices")
        arguments = sys.argv[1:index] + sys.argv[index + 2:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}", "-m", "medssl", *arguments]
    console.print(f"Launching {devices} processes: {' '.join(command[2:])}")
    raise typer.Exit(subprocess.call(command))


@app.command()
def pretrain(
    recipe: str = typer.Argument(..., help="Recipe YAML path or shipped recipe name (see `medssl recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<recipe>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint (latest run of the recipe without --out)."),
    smoke: bool = typer.Option(False, "--smoke", help="Check the set-up in seconds: a handful of subjects, tiny volumes, 2 steps."),
    devices: int = typer.Option(1, "--devices", min=1, help="Processes to launch with torchrun (DistributedDataParallel)."),
) -> None:
    """Pre-train an encoder with a recipe; writes checkpoints, encoder.pt, metrics, plots and an evaluation."""
    from medssl.config import load_recipe, smoke_recipe

    if devices > 1 and "LOCAL_RANK" not in os.environ:
        _launch_torchrun(devices)
    resolved = load_recipe(recipe, overrides or [])
    if smoke:
        resolved = smoke_recipe(resolved)
        console.print("Smoke run: a handful of subjects, tiny volumes, 2 steps.")
    run_dir = _run_dir(resolved.name + ("-smoke" if smoke else ""), out, resume)
    from medssl.train.engine import pretrain as run_pretrain

    quiet = os.environ.get("RANK", "0") != "0"
    result = run_pretrain(resolved, run_dir, resume=resume, console=None if quiet else console)
    if not quiet:
        console.print(f"Done: loss {result.first_loss:.4f} -> {result.last_loss:.4f} (first -> last epoch). Run folder: {result.run_dir}")


@app.command()
def evaluate(
    source: Path = typer.Argument(..., help="A run folder (with recipe.yaml and encoder.pt) or an encoder.pt file."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Cohort folder to evaluate on (default: the run's cohort)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write metrics and plots (default <run>/eval)."),
) -> None:
    """OpenBHB-style evaluation: site-stratified and leave-site-out CV probes, the challenge score, plots."""
    from medssl.config import apply_overrides, load_recipe, recipe_from_dict
    from medssl.eval.run import evaluate_encoder
    from medssl.models import load_encoder
    from medssl.train.engine import apply_embedded_budget, open_cohort, resolve_device

    encoder_path = source / "encoder.pt" if source.is_dir() else source
    run_dir = encoder_path.parent
    encoder = load_encoder(encoder_path)
    recipe_path = run_dir / "recipe.yaml"
    if recipe_path.is_file():
        recipe = load_recipe(recipe_path, overrides or [])
    else:
        raw = apply_overrides({"model": {"encoder": encoder.spec.name}}, overrides or [])
        recipe = recipe_from_dict(raw, source=str(encoder_path))
    if cohort is not None:
        recipe.data.root = cohort
    recipe, _ = apply_embedded_budget(recipe)
    target = out or run_dir / "eval"
    evaluate_encoder(encoder, open_cohort(recipe, console), recipe, target, device=resolve_device(recipe.train.device), console=console)


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="CSV/TSV with participant_id, split, site, age, age_pred, site_pred."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
    n_sites: Optional[int] = typer.Option(None, "--n-sites", help="Training sites for ramp_combined (default: distinct sites of the train rows)."),
    id_col: str = typer.Option("participant_id", help="Column of subject ids."),
    split_col: str = typer.Option("split", help="Column of splits (train, internal_test, external_test)."),
    site_col: str = typer.Option("site", help="Column of true sites."),
    age_col: str = typer.Option("age", help="Column of true ages."),
    age_pred_col: str = typer.Option("age_pred", help="Column of predicted ages."),
    site_pred_col: str = typer.Option("site_pred", help="Column of predicted sites (or prefix of per-site probability columns)."),
) -> None:
    """Challenge metrics (MAE internal/external, site BAcc, L_c, RAMP combined) from a CSV of predictions."""
    from medssl.eval.score import read_predictions, score_predictions

    columns = dict(id_col=id_col, split_col=split_col, site_col=site_col, age_col=age_col, age_pred_col=age_pred_col, site_pred_col=site_pred_col)
    table = read_predictions(predictions, **columns)
    metrics = score_predictions(table, n_sites=n_sites, **columns)
    view = Table(title=f"Challenge metrics: {predictions.name}")
    view.add_column("metric")
    view.add_column("value", justify="right")
    for key, value in metrics.items():
        view.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(view)
    if json_out is not None:
        from medssl.files import atomic_write_text

        atomic_write_text(json_out, json.dumps(metrics, indent=2, default=float))
        console.print(f"Written {json_out}")


@app.command()
def recipes(fields: bool = typer.Option(False, "--fields", help="List every recipe field with its default and meaning.")) -> None:
    """List the shipped recipes (or, with --fields, every recipe key)."""
    from medssl.config import field_docs, shipped_recipes

    if fields:
        view = Table(title="Recipe fields")
        for column in ("key", "default", "description"):
            view.add_column(column)
        for key, default, description in field_docs():
            view.add_row(key, default, description)
        console.print(view)
        return
    view = Table(title="Shipped recipes (medssl pretrain recipes/<name>.yaml)")
    view.add_column("name", style="bold")
    view.add_column("description")
    for name, description in shipped_recipes():
        view.add_row(name, description)
    console.print(view)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the cohort into."),
    subjects: int = typer.Option(256, min=4, help="Number of subjects."),
    sites: int = typer.Option(8, min=2, help="Number of sites."),
    external_sites: int = typer.Option(2, min=0, help="Sites held out as the external test set."),
    shape: int = typer.Option(32, min=8, max=256, help="Edge of the cubic volumes in voxels."),
    diagnosis: bool = typer.Option(False, "--diagnosis", help="Add a patient/control diagnosis with a small localised effect."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a synthetic multi-site brain cohort (NIfTI volumes + participants.tsv)."""
    from medssl.data.synthetic import synthesize_cohort

    path = synthesize_cohort(out, subjects=subjects, sites=sites, external_sites=external_sites, shape=shape,
                             diagnosis=diagnosis, seed=seed, progress=True)
    console.print(f"Wrote {subjects} subjects from {sites} sites to {path}")


def main() -> None:
    try:
        app()
    except MedsslError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: rerun with --resume to continue from the last checkpoint")
        sys.exit(130)


if __name__ == "__main__":
    main()
