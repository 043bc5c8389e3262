"""``medssl pretrain`` end to end: train the recipe's encoder, plot its loss, evaluate it.

Training is ``medssl.train``'s (:func:`~medssl.train.pretraining.build_pretraining`), the
evaluation ``medssl.eval``'s; this module joins them, so that neither imports the other's
side. Besides the files of a training run (see ``medssl.train.pretraining``) the run folder gets

    loss.png               the loss curve
    eval/                  metrics.json, metrics.csv and plots, when the recipe asks for evaluation

With ``eval.online.every``, an :class:`OnlineProbe` handler probes age on a held-out part of
the training split while the encoder trains.

Example:
    >>> from medssl.recipe import load_recipe
    >>> result = pretrain(load_recipe("yaware_age"), "runs/ya")
    >>> result.evaluation["pretrained"]["challenge_score"]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import train_test_split
from torch import nn

from medssl.data.cohort import Cohort
from medssl.errors import RecipeError
from medssl.eval.folds import challenge_folds
from medssl.eval.plots import plot_loss_curve
from medssl.eval.protocols import online_probe_scores
from medssl.eval.report import report_notes
from medssl.eval.run import evaluate_encoder
from medssl.methods import Method
from medssl.models.features import extract_features
from medssl.recipe import Recipe
from medssl.run_folder import check_run_folder
from medssl.train.handlers import Handler
from medssl.train.pretraining import build_pretraining, run_pretraining
from medssl.train.trainer import RunResult, Trainer


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
    if pretraining.recipe.eval.online.every is not None:
        pretraining.trainer.handlers.append(OnlineProbe(pretraining.data.train_cohort, pretraining.recipe))
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
        pretraining.trainer.notes.extend(report_notes(result.evaluation))  # printed with the report
        pretraining.trainer.write_notes()
    return result


class OnlineProbe(Handler):
    """Probe age every ``eval.online.every`` epochs while the encoder trains: the kNN probe
    (k = 20, T = 0.07) and the ridge probe of the evaluation, fitted on features of part of the
    training split and tested on the rest (``eval.online.holdout``, site-stratified, drawn once
    from ``train.seed``). The epoch's row gets ``online_knn_age_mae`` and ``online_ridge_age_mae``
    (metrics.csv, TensorBoard); no test split is read, so the final evaluation is untouched.

    Args:
        cohort: the training split.
        recipe: the run's recipe (``eval.online``, how volumes are read).
    """

    def __init__(self, cohort: Cohort, recipe: Recipe):
        config = recipe.eval.online
        if "age" not in cohort.table.columns:
            raise RecipeError(f"eval.online.every = {config.every}: the cohort has no age column to probe")
        ages = pd.to_numeric(cohort.table["age"], errors="coerce").to_numpy(dtype=float)
        known = np.flatnonzero(np.isfinite(ages))
        if len(known) < 4:
            raise RecipeError(
                f"eval.online.every = {config.every}: {len(known)} training subjects with an age; needs 4"
            )
        sites = cohort.table["site"].to_numpy()[known]
        stratify = sites if pd.Series(sites).value_counts().min() >= 2 else None
        fit, test = train_test_split(known, test_size=config.holdout, random_state=recipe.train.seed, stratify=stratify)
        rows = np.sort(np.concatenate([fit, test]))
        self.cohort = Cohort(cohort.root, cohort.table.iloc[rows].reset_index(drop=True))
        self.fit = np.searchsorted(rows, np.sort(fit))
        self.test = np.searchsorted(rows, np.sort(test))
        self.ages, self.recipe, self.every = ages[rows], recipe, config.every or 1

    def epoch_values(self, trainer: Trainer, epoch: int, values: dict[str, float]) -> dict[str, float]:
        if (epoch + 1) % self.every or not trainer.dist.is_main:
            return {}
        encoder = cast(nn.Module, trainer.objective.encoder)  # a pre-training method's
        features = extract_features(encoder, self.cohort, self.recipe, trainer.device, description="online probe")
        scores = online_probe_scores(features[self.fit], self.ages[self.fit], features[self.test], self.ages[self.test])
        return {f"online_{name}": value for name, value in scores.items()}
