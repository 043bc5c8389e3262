"""Figures of a cohort that no method influences: is the benchmark itself sound?

``medssl data inspect`` prints them. A method is judged on a cohort only once the cohort
is judged by these, never by how one method fares on it:

- scanner ranges (synthetic cohorts): for each scanner parameter, the training sites'
  range and whether every external site lies inside it (OpenBHB's external sites are
  other scanners of the same kinds, so a probe meets no parameter it never saw);
- the trivial probes under the challenge protocol: the training-mean predictor and a probe
  on intensity percentiles (:class:`~medssl.eval.features.IntensityStatistics`): age MAE
  inside and outside the training sites, and how well intensities alone give the site away;
- the diagnosis oracle (synthetic cohorts with a diagnosis): a logistic regression on the
  mean intensity under the true effect map (and age, its main confound), out-of-fold ROC
  AUC over site-stratified folds: the ceiling a representation can approach. Each
  component of the disorder models is read through its own map, alone and together: the
  focal loss (:func:`~medssl.data.anatomy.diagnosis_effect_map`), the brain-age gap
  (:func:`~medssl.data.anatomy.ageing_effect_map`), both; ``roc_auc`` is that of the
  cohort's model (a component its model lacks reads near chance).

Example:
    >>> figures = inspect_cohort(load_cohort("/tmp/cohort"), Recipe())
    >>> figures["scanner_ranges"]["all_external_inside"]
    True
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medssl.data.anatomy import ageing_effect_map, diagnosis_effect_map
from medssl.data.cohort import Cohort
from medssl.data.synthetic import MARKER_NAME
from medssl.eval.features import IntensityStatistics, extract_features, volume_dataset
from medssl.eval.folds import site_stratified_folds
from medssl.eval.probes import challenge_protocol, challenge_skip_reason, quiet_fits
from medssl.eval.score import EvaluationError
from medssl.recipe import Recipe

PROBE_KEYS = ("mae_internal", "mae_external", "bacc_site", "chance_bacc", "challenge_score")
SCANNER_PARAMETERS = ("offset", "gamma", "contrast", "csf_intensity", "bias", "noise", "blur")


def scanner_ranges(cohort: Cohort) -> dict | None:
    """Per scanner parameter: training sites' min and max, external sites' values, inside or not.

    None when the cohort has no ``cohort.json`` (it is not a medssl synthetic cohort).
    """
    marker = cohort.root / MARKER_NAME
    if not marker.is_file():
        return None
    sites = pd.DataFrame(json.loads(marker.read_text())["sites"])
    internal, external = sites[~sites["external"]], sites[sites["external"]]
    rows = []
    for name in SCANNER_PARAMETERS:
        low, high = float(internal[name].min()), float(internal[name].max())
        values = [float(value) for value in external[name]]
        rows.append(
            {
                "parameter": name,
                "train_min": low,
                "train_max": high,
                "external": values,
                "inside": all(low <= value <= high for value in values),
            }
        )
    return {
        "parameters": rows,
        "all_external_inside": all(row["inside"] for row in rows),
        "training_sites": len(internal),
        "external_sites": len(external),
    }


def trivial_probes(cohort: Cohort, recipe: Recipe, console=None) -> dict:
    """Challenge-protocol scores of the training-mean predictor and of the intensity probe."""
    table = cohort.table.reset_index(drop=True)
    intensity = extract_features(
        IntensityStatistics(), cohort, recipe, description="intensity statistics", console=console
    )
    results = {}
    for name, features in (("training_mean", np.zeros((len(table), 1))), ("intensity", intensity)):
        scores = challenge_protocol(features, table, seed=recipe.train.seed)
        results[name] = {key: scores[key] for key in (*PROBE_KEYS, "min_internal_per_site")}
    return results


# Disorder-model components and the columns of effect_readout that read each.
COMPONENT_READOUTS = {"focal": [0], "gap": [1], "both": [0, 1]}
MODEL_COMPONENT = {"focal": "focal", "ageing": "gap", "ad-like": "both"}


def effect_readout(cohort: Cohort, recipe: Recipe, shape: int) -> np.ndarray:
    """(n_subjects, 2): mean normalised intensity of each volume under the focal effect map and
    under the ageing effect map of ``shape``^3, each weighted by its absolute values."""
    weights = np.stack([diagnosis_effect_map(shape).ravel(), ageing_effect_map(shape).ravel()], axis=1)
    weights /= np.abs(weights).sum(axis=0)
    dataset = volume_dataset(cohort, recipe)
    readout = []
    for index in range(len(dataset)):
        volume = dataset[index]["volume"].numpy().ravel()
        if volume.size != len(weights):
            raise EvaluationError(
                f"{cohort.root}: participant {cohort.table['participant_id'].iloc[index]} has "
                f"{volume.size} voxels, expected {shape}^3 as cohort.json says"
            )
        readout.append(volume @ weights)
    return np.array(readout, dtype=float)


def diagnosis_oracle(cohort: Cohort, recipe: Recipe, folds: int = 5) -> dict | None:
    """Out-of-fold ROC AUC of a logistic regression on (effect read-outs, age), for each
    disorder component (``components``) and the cohort's model (``roc_auc``); None without a diagnosis."""
    table = cohort.table.reset_index(drop=True)
    marker = cohort.root / MARKER_NAME
    if "diagnosis" not in table.columns or not marker.is_file():
        return None
    description = json.loads(marker.read_text())
    shape = int(description["config"]["shape"])
    model = (description.get("diagnosis_effect") or {}).get("model", "focal")  # cohorts from before the models
    readout, age = effect_readout(cohort, recipe, shape), table["age"].to_numpy(dtype=float)
    positive = (table["diagnosis"].astype(str) == "patient").to_numpy()
    splits = site_stratified_folds(table, n_folds=folds, seed=recipe.train.seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression())
    scores = {}
    for component, columns in COMPONENT_READOUTS.items():
        features = np.column_stack([readout[:, columns], age])
        with quiet_fits(features):
            scores[component] = cross_val_predict(probe, features, positive, cv=splits, method="predict_proba")[:, 1]
    external = (
        (table["split"].astype(str) == "external_test").to_numpy()
        if "split" in table.columns
        else np.zeros(len(table), bool)
    )
    full = scores[MODEL_COMPONENT[model]]
    result = {
        "model": model,
        "roc_auc": float(roc_auc_score(positive, full)),
        "components": {component: float(roc_auc_score(positive, score)) for component, score in scores.items()},
        "n_subjects": int(len(table)),
        "folds": len(splits),
    }
    if external.any() and 0 < positive[external].sum() < external.sum():
        result["roc_auc_external_sites"] = float(roc_auc_score(positive[external], full[external]))
    return result


def split_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Subjects and sites of each split present: train, internal_test, external_test, then any other."""
    present = set(table["split"].astype(str))
    ordered = [split for split in ("train", "internal_test", "external_test") if split in present]
    counts = {}
    for split in ordered + sorted(present - set(ordered)):
        rows = table[table["split"].astype(str) == split]
        counts[split] = {"subjects": len(rows), "sites": int(rows["site"].nunique())}
    return counts


def inspect_cohort(cohort: Cohort, recipe: Recipe, console=None) -> dict:
    """Every figure of the module docstring, as one JSON-ready dict; ``probes_skipped`` says why
    the trivial probes are empty (the challenge protocol needs the three splits)."""
    skipped = challenge_skip_reason(cohort.table)
    return {
        "cohort": str(cohort.root),
        "subjects": len(cohort),
        "sites": len(cohort.sites),
        "splits": split_counts(cohort.table),
        "scanner_ranges": scanner_ranges(cohort),
        "probes": {} if skipped else trivial_probes(cohort, recipe, console=console),
        "probes_skipped": skipped,
        "diagnosis_oracle": diagnosis_oracle(cohort, recipe),
    }
