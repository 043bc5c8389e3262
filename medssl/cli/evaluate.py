"""``medssl evaluate``: the OpenBHB-style evaluation of a trained encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from medssl import cli
from medssl.cli import OVERRIDES_HELP, app
from medssl.config.sections import refuse_unread_evaluate_overrides


@app.command()
def evaluate(
    source: Path = typer.Argument(..., help="A run folder (with recipe.yaml and encoder.pt) or an encoder.pt file."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="eval.folds=3")),
    cohort: Path | None = typer.Option(
        None, "--cohort", help="Cohort folder to evaluate on (default: the run's cohort)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Where to write metrics and plots (default <run>/eval)."),
) -> None:
    """OpenBHB-style evaluation: site-stratified and leave-site-out CV probes, the challenge score, plots."""
    from medssl.eval.run import evaluate_encoder
    from medssl.models import load_encoder
    from medssl.models.encoders import model_overrides
    from medssl.models.weights import input_note
    from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, with_source_normalization
    from medssl.train.setup import open_cohort, resolve_device

    refuse_unread_evaluate_overrides(overrides or [])
    encoder_path = source / "encoder.pt" if source.is_dir() else source
    run_dir = encoder_path.parent
    encoder = load_encoder(encoder_path)
    recipe_path = run_dir / "recipe.yaml"
    pretraining = load_recipe(recipe_path) if recipe_path.is_file() else None
    raw = load_recipe(recipe_path).model_dump(mode="json") if pretraining is not None else {}
    # the encoder carries its network: the random-init baseline and recipe.yaml follow encoder.json
    architecture = model_overrides(encoder.spec)
    raw = apply_overrides(apply_overrides(raw, overrides or []), architecture)
    recipe = recipe_from_dict(raw, source=str(encoder_path), overrides=[*(overrides or []), *architecture])
    if cohort is not None:
        recipe.data.root = cohort
    recipe = with_source_normalization(recipe, encoder.spec, pretraining)
    note = input_note(encoder.spec, _first_volume_shape(recipe), recipe) if encoder.spec.input else None
    if note:
        cli.console.print(note)
    target = out or run_dir / "eval"
    evaluate_encoder(
        encoder,
        open_cohort(recipe, cli.console),
        recipe,
        target,
        device=resolve_device(recipe.train.device),
        console=cli.console,
    )


def _first_volume_shape(recipe) -> tuple[int, ...]:
    """The (D, H, W) the encoder will see: the recipe's fixed shape, else the first volume's."""
    from medssl.finetune.encoder import input_shape
    from medssl.finetune.inputs import volume_dataset
    from medssl.train.setup import open_cohort

    fixed = input_shape(recipe)
    if fixed is not None:
        return fixed
    cohort = open_cohort(recipe, None)
    return tuple(volume_dataset(cohort.head(1), recipe, augment=False)[0]["volume"].shape[1:])
