"""``medssl score``: the challenge metrics of a table of predictions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from medssl import cli
from medssl.cli import app
from medssl.cli.common import output_file
from medssl.cli.tables import print_challenge_metrics


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="CSV/TSV with participant_id, split, site, age, age_pred, site_pred."),
    json_out: str | None = typer.Option(
        None, "--json", metavar="FILE", help="Also write the metrics to this JSON file (not a folder)."
    ),
    n_sites: int | None = typer.Option(
        None, "--n-sites", help="Training sites for ramp_combined (default: distinct sites of the train rows)."
    ),
    id_col: str | None = typer.Option(
        None, help="Column of subject ids, one row each (default: participant_id, when the table has it)."
    ),
    split_col: str = typer.Option("split", help="Column of splits (train, internal_test, external_test)."),
    site_col: str = typer.Option("site", help="Column of true sites."),
    age_col: str = typer.Option("age", help="Column of true ages."),
    age_pred_col: str = typer.Option("age_pred", help="Column of predicted ages."),
    site_pred_col: str = typer.Option(
        "site_pred", help="Column of predicted sites (or prefix of per-site probability columns)."
    ),
) -> None:
    """Challenge metrics (MAE internal/external, site BAcc, L_c, RAMP combined) from a CSV of predictions."""
    from medssl.eval.score import UnseenSiteWarning, read_predictions, score_predictions

    json_path = output_file(json_out)  # refused before the table is scored and printed
    columns = dict(
        split_col=split_col,
        site_col=site_col,
        age_col=age_col,
        age_pred_col=age_pred_col,
        site_pred_col=site_pred_col,
    )
    table = read_predictions(predictions, id_col=id_col, **columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnseenSiteWarning)
        metrics = score_predictions(table, id_col=id_col, n_sites=n_sites, **columns)
    for warning in caught:
        cli.console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    print_challenge_metrics(metrics, predictions.name, cli.console)
    if json_path is not None:
        from medssl.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(metrics, indent=2, default=float))
        cli.console.print(f"Written {json_path}")
