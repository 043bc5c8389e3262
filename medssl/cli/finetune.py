"""``medssl finetune``: one fine-tuning over seeds, or a label-efficiency curve (``--train-sizes``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medssl import cli
from medssl.cli import FLAG, OVERRIDES_HELP, Interrupted, app
from medssl.cli.common import apply_smoke, choose_run_dir, quiet_sklearn, refuse_nothing_to_resume
from medssl.config.sections import refuse_unread_finetune_overrides
from medssl.errors import RecipeError
from medssl.run_folder import check_run_folder, run_artefacts

if TYPE_CHECKING:
    from medssl.recipe import Recipe


class FinetuneMode(str, Enum):
    """``--mode``: typer checks the choice and lists it in --help."""

    linear = "linear"
    full = "full"
    lower_lr = "lower_lr"


def _smoke_finetune(recipe, overrides: list[str], encoder: str):
    """``--smoke`` for fine-tuning: at the cubic shape the encoder was pre-trained on, unless the
    command line gives a shape, so that a smoke pre-training and fine-tuning chain."""
    from medssl.finetune.encoder import smoke_at_pretraining_shape

    smoke = apply_smoke(recipe, overrides)
    shape_given = any(item.startswith(("data.synthetic.shape", "data.volume_shape")) for item in overrides)
    return smoke if encoder.lower() == "none" or shape_given else smoke_at_pretraining_shape(smoke, encoder)


@app.command()
def finetune(
    recipe: str = typer.Argument(..., help="Fine-tuning recipe YAML path or shipped name (e.g. finetune_diagnosis)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="finetune.epochs=20")),
    encoder: str = typer.Option(
        ...,
        "--encoder",
        help="Pre-trained encoder.pt, or a run folder holding it; 'none' trains from scratch (the baseline).",
    ),
    mode: FinetuneMode | None = typer.Option(
        None, "--mode", help="Override finetune.mode: linear (frozen encoder), full, lower_lr."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<recipe>-<time>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        metavar=FLAG,
        help="Continue the fine-tuning in --out: finished seeds are kept, an interrupted one continues from its checkpoint.",
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        metavar=FLAG,
        help="Check the set-up in seconds: a handful of subjects, tiny volumes, one short epoch.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", metavar=FLAG, help="Replace the fine-tuning results already in --out."
    ),
    train_sizes: str | None = typer.Option(
        None,
        "--train-sizes",
        help="Label efficiency: fine-tune the encoder and a from-scratch network on this many labelled subjects each, e.g. 20,50,100,all; rerun to resume.",
    ),
) -> None:
    """Fine-tune an encoder on a labelled cohort (e.g. patients vs. controls); internal and external test, mean ± std over seeds."""
    from medssl.finetune.protocol import finetune_encoder

    overrides = [*(overrides or []), *([f"finetune.mode={mode.value}"] if mode else [])]
    resolved = _load_finetune_recipe(recipe, overrides)
    if smoke:
        resolved = _smoke_finetune(resolved, overrides, encoder)
        cli.console.print("Smoke run: a handful of subjects, tiny volumes, one short epoch.")
    if resume and out is None:
        raise RecipeError("--resume needs --out: the folder of the fine-tuning to continue")
    run_dir = choose_run_dir(resolved.name + ("-smoke" if smoke else ""), out, resume=False)
    if train_sizes is not None:
        _label_efficiency(resolved, encoder, train_sizes, run_dir, resume, overwrite, smoke)
        return
    check_run_folder(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        refuse_nothing_to_resume(run_dir, out, "fine-tuning run", bool(run_artefacts(run_dir)))
    try:
        with quiet_sklearn(smoke):
            finetune_encoder(
                resolved, None if encoder.lower() == "none" else encoder, run_dir, console=cli.console, resume=resume
            )
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=bool(run_artefacts(run_dir))) from None


def _load_finetune_recipe(recipe: str, overrides: list[str]) -> Recipe:
    """The fine-tuning recipe with its overrides (only keys fine-tuning reads), its notes printed."""
    from medssl.recipe import load_recipe

    refuse_unread_finetune_overrides(overrides)
    resolved = load_recipe(recipe, overrides)
    for note in resolved.notes:  # keys read under their new names
        cli.console.print(note)
    return resolved


def _label_efficiency(
    recipe, encoder: str, train_sizes: str, run_dir: Path, resume: bool, overwrite: bool, smoke: bool
) -> None:
    """``finetune --train-sizes``: a rerun continues the curve, ``--overwrite`` starts it again."""
    from medssl.finetune.label_efficiency import label_efficiency, label_efficiency_table, parse_train_sizes

    if encoder.lower() == "none":
        raise RecipeError(
            "--train-sizes compares a pre-trained encoder with training from scratch: give --encoder PATH"
        )
    sizes = parse_train_sizes(train_sizes)
    check_run_folder(run_dir, resume=resume or not overwrite, overwrite=overwrite)
    if resume:
        refuse_nothing_to_resume(run_dir, run_dir, "label-efficiency run", bool(run_artefacts(run_dir)))
    try:
        with quiet_sklearn(smoke):
            curve = label_efficiency(recipe, encoder, sizes, run_dir, console=cli.console)
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=bool(run_artefacts(run_dir))) from None
    cli.console.print(label_efficiency_table(curve))
    cli.console.print(
        f"Label-efficiency curve written to {run_dir / 'label_efficiency.png'} (every metric: label_efficiency.csv)"
    )
