"""``medssl recipes``: the shipped recipes, or every recipe key (``--fields``)."""

from __future__ import annotations

import typer

from medssl import cli
from medssl.cli import FLAG, app
from medssl.cli.tables import print_fields, print_recipes


@app.command()
def recipes(
    fields: bool = typer.Option(
        False, "--fields", metavar=FLAG, help="List every recipe field with its default and meaning."
    ),
) -> None:
    """List the shipped recipes (or, with --fields, every recipe key)."""
    from medssl.recipe import shipped_recipes

    if fields:
        print_fields(cli.console)
        return
    print_recipes(
        [(name, description, _networks_trained(name)) for name, description in shipped_recipes()], cli.console
    )


def _networks_trained(name: str) -> str:
    """The network a recipe trains on real data (profile paper) and on the embedded cohort (profile embedded)."""
    from medssl.recipe import load_recipe

    def network(model) -> str:
        return model.encoder + (f" {'-'.join(map(str, model.widths))}" if model.widths else "")

    paper, embedded = load_recipe(name, ["profile=paper"]), load_recipe(name, ["profile=embedded"])
    trained = f"{network(paper.model)} / {network(embedded.model)}"
    # a fine-tuned encoder brings its own network (encoder.json); the model section is for --encoder none
    return f"the encoder's; from scratch: {trained}" if name.startswith("finetune") else trained
