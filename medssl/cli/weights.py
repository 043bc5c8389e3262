"""``medssl weights``: import a published encoder's checkpoint (``import``), the layouts it reads (``layouts``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medssl import cli
from medssl.cli import FLAG, weights_app
from medssl.cli.tables import print_layouts
from medssl.errors import RecipeError


@weights_app.command("import")
def weights_import(
    file: Path = typer.Argument(..., help="The published checkpoint (.pth, .pt, .ckpt, .pth.tar)."),
    layout: str = typer.Option(..., "--layout", help="How the file was saved: see medssl weights layouts."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for encoder.pt + encoder.json."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="--layout state-dict: the network medssl builds (resnet18, densenet121, ...)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="--layout state-dict: model overrides, e.g. model.widths=[16,32,64,128] model.bias_downsample=false."
    ),
    ignore: list[str] | None = typer.Option(
        None, "--ignore", help="--layout state-dict: drop the file's keys starting with this (a head), e.g. head."
    ),
) -> None:
    """Import a published encoder's checkpoint as encoder.pt + encoder.json, as medssl pretrain writes them."""
    from medssl.models.weights import STATE_DICT, import_weights

    spec = None
    if layout == STATE_DICT:
        spec = _state_dict_spec(encoder, overrides or [])
    elif encoder is not None or overrides or ignore:
        raise RecipeError(
            f"--layout {layout} fixes its network: --encoder, model overrides and --ignore are for --layout {STATE_DICT}"
        )
    imported = import_weights(file, layout, out, spec=spec, ignore=tuple(ignore or ()))
    expects = imported.spec.input
    cli.console.print(
        f"Imported {file.name} ({layout}): {imported.spec.name}, {imported.feature_dim}-d features, "
        f"into {out}/encoder.pt + encoder.json"
    )
    if expects:
        shape = "x".join(map(str, expects["shape"]))
        cli.console.print(
            f"It expects {expects['modality']}, {shape}, normalize {expects['normalize']} ({expects['note']})."
        )
    cli.console.print(f"Fine-tune it: medssl finetune finetune_diagnosis --encoder {out}")


def _state_dict_spec(encoder: str | None, overrides: list[str]):
    """The network of ``--layout state-dict``: ``--encoder`` and ``model.*`` overrides, as a recipe builds it."""
    from medssl.methods import architecture_options
    from medssl.models import encoder_spec
    from medssl.recipe import apply_overrides, recipe_from_dict

    if encoder is None:
        raise RecipeError("--layout state-dict needs --encoder NAME (resnet18, densenet121, ...)")
    unread = [item for item in overrides if not item.startswith("model.")]
    if unread:
        raise RecipeError(f"{unread[0]}: weights import reads only model.* overrides")
    raw = apply_overrides({"model": {"encoder": encoder}}, overrides)
    model = recipe_from_dict(raw, source="--encoder", overrides=[f"model.encoder={encoder}", *overrides]).model
    return encoder_spec(
        model.encoder, model.in_channels, model.conv1_stride, model.widths, options=architecture_options(model)
    )


@weights_app.command("layouts")
def weights_layouts(
    as_json: bool = typer.Option(False, "--json", metavar=FLAG, help="Print the layouts as JSON."),
) -> None:
    """The checkpoint layouts medssl weights import reads: source, network, representation, input, licence."""
    from medssl.models.weights import layout_rows

    rows = layout_rows()
    if as_json:
        cli.console.print_json(json.dumps(rows))
        return
    print_layouts(rows, cli.console)
