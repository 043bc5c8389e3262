"""Evaluate a trained encoder on a cohort, OpenBHB-style, next to the trivial baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from medssl.data.cohort import Cohort
from medssl.eval.features import IntensityStatistics
from medssl.eval.folds import challenge_folds
from medssl.eval.report import evaluate_representation, print_report
from medssl.methods import build_encoder_for
from medssl.models import Encoder
from medssl.models.features import extract_features
from medssl.recipe import Recipe


def random_encoder(recipe: Recipe, like: torch.nn.Module | None = None) -> torch.nn.Module:
    """A randomly initialised encoder, seeded from the recipe: of ``like``'s network when it is an
    :class:`Encoder` (an encoder carries its network), else of the recipe's."""
    torch.manual_seed(recipe.train.seed)
    if isinstance(like, Encoder):
        return Encoder(replace(like.spec, input={}, source={}))
    return build_encoder_for(recipe.model)


def evaluate_encoder(
    encoder: torch.nn.Module,
    cohort: Cohort,
    recipe: Recipe,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    console: Console | None = None,
) -> dict:
    """Features of every subject -> CV probes, challenge protocol, plots (see ``eval.report``).

    With ``recipe.eval.baseline``, the report also carries the random-init encoder, the
    intensity-statistics probe and the training-mean predictor, on the same folds.
    """
    kit_folds = challenge_folds(cohort.table, cohort.root, recipe.eval.folds_file)  # a bad file fails before extraction
    encoder = encoder.to(device)
    features = extract_features(
        encoder, cohort, recipe, device=device, description="features (pre-trained)", console=console
    )
    baseline, references = None, None
    if recipe.eval.baseline:
        baseline = extract_features(
            random_encoder(recipe, like=encoder).to(device),
            cohort,
            recipe,
            device=device,
            description="features (random init)",
            console=console,
        )
        intensity = extract_features(
            IntensityStatistics(), cohort, recipe, description="intensity statistics", console=console
        )
        references = {"intensity": intensity, "mean": np.zeros((len(cohort), 1))}
    results = evaluate_representation(
        features,
        cohort.table,
        Path(out_dir),
        folds=recipe.eval.folds,
        targets=tuple(recipe.eval.targets),
        baseline_features=baseline,
        reference_features=references,
        seed=recipe.train.seed,
        challenge_folds=kit_folds,
    )
    if console is not None:
        print_report(results, console=console)
        console.print(f"Evaluation written to {out_dir}")
    return results
