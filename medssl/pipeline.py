"""``medssl pretrain`` end to end: train the recipe's encoder, plot its loss, evaluate it.

Training is ``medssl.train``'s (:func:`~medssl.train.pretraining.build_pretraining`), the
evaluation ``medssl.eval``'s; this module joins them, so that neither imports the other's
side. Besides the files of a training run (see ``medssl.train.pretraining``) the run folder gets

    loss.png               the loss curve
    eval/                  metrics.json, metrics.csv and plots, when the recipe asks for evaluation

Example:
    >>> from medssl.config import load_recipe
    >>> result = pretrain(load_recipe("yaware_age"), "runs/ya")
    >>> result.evaluation["pretrained"]["challenge_score"]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from medssl.config import Recipe
from medssl.errors import RecipeError
from medssl.eval.folds import challenge_folds
from medssl.eval.plots import plot_loss_curve
from medssl.eval.run import evaluate_encoder
from medssl.methods import Method
from medssl.run_folder import check_run_folder
from medssl.train.pretraining import build_pretraining, run_pretraining
from medssl.train.trainer import RunResult


def pretrain(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    method: Method | None = None,
) -> RunResult:
    """Pre-train the recipe's encoder with its method (or ``method``), then plot the loss and,
    with ``eval.after_pretrain``, evaluate the encoder on the whole cohort (main process only).

    A ``run_dir`` that holds a run is refused unless ``resume`` (a second run would mix its
    checkpoints, metrics and evaluation with the first one's)."""
    if recipe.views.normalize == "source":
        raise RecipeError(
            "views.normalize = 'source': pre-training has no source encoder to take it from; "
            "use zscore, zscore_volume, minmax or none"
        )
    if not resume and os.environ.get("RANK", "0") == "0":  # other processes see the folder rank 0 is filling
        check_run_folder(Path(run_dir))
    pretraining = build_pretraining(recipe, run_dir, resume=resume, console=console, method=method)
    if pretraining.recipe.eval.after_pretrain:  # a bad folds file is refused now, not after the training
        challenge_folds(pretraining.data.cohort.table, pretraining.data.cohort.root, pretraining.recipe.eval.folds_file)
    result = run_pretraining(pretraining, on_epoch_end)
    if not result.main_process:
        return result
    run_dir = Path(run_dir)
    assert pretraining.trainer.log is not None, "the trainer's run opened its metrics log"
    table = pretraining.trainer.log.table()
    if len(table):
        plot_loss_curve(table[table["kind"] == "step"], run_dir / "loss.png")
    if pretraining.recipe.eval.after_pretrain:
        result.evaluation = evaluate_encoder(
            pretraining.method.encoder,
            pretraining.data.cohort,
            pretraining.recipe,
            run_dir / "eval",
            device=pretraining.trainer.device,
            console=console,
        )
    return result
