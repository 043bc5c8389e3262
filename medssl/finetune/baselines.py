"""The trivial baselines every fine-tuning run is scored against on the same splits: the constant
predictor and a linear probe on intensity percentiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medssl.eval.probes import INNER_FOLDS, classification_probe, quiet_fits, regression_probe
from medssl.eval.score import TEST_SPLITS
from medssl.finetune.metrics import classification_metrics, regression_metrics
from medssl.finetune.splits import Parts
from medssl.finetune.target import Target


def intensity_probe(truth: np.ndarray, classification: bool) -> tuple[Any, str]:
    """The intensity baseline's probe for the training labels ``truth``, and a note when it differs from
    the probes of ``medssl evaluate`` because the training part is tiny ("" otherwise).

    Regression: ridge with alpha by leave-one-out CV (any size). Classification: logistic regression with
    C chosen by stratified inner CV, on fewer folds when the smallest class has fewer than
    ``INNER_FOLDS`` subjects; with one subject in a class, C is fixed at 1 (no CV is possible); with a
    single class, the class frequencies (the constant predictor)."""
    if not classification:
        return regression_probe(), ""
    counts = pd.Series(truth).value_counts()
    smallest = int(counts.min())
    if len(counts) < 2:
        return DummyClassifier(strategy="prior"), (
            f"intensity baseline: the class frequencies (the training part holds one class, {counts.index[0]!r})"
        )
    if smallest >= INNER_FOLDS:
        return classification_probe(INNER_FOLDS), ""
    if smallest >= 2:
        return classification_probe(smallest), (
            f"intensity baseline: C chosen by {smallest}-fold inner CV (a class has {smallest} training subjects)"
        )
    fixed = Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(C=1.0, max_iter=1000))])
    return fixed, "intensity baseline: C fixed at 1, no inner CV (a class has 1 training subject)"


def baseline_metrics(
    intensity: np.ndarray, position_of: dict[str, int], parts: Parts, target: Target
) -> tuple[dict, str]:
    """The trivial baselines on one seed's splits: ``constant`` (the training part's class
    frequencies, or its mean) and ``intensity`` (a linear probe on intensity percentiles,
    :class:`~medssl.eval.features.IntensityStatistics`, fitted on the fit and validation parts
    by :func:`intensity_probe`).

    Returns ``({baseline: {test split: metrics}}, note)``: metrics as the fine-tuned model's, and
    how the intensity probe was regularised when the training part is too small for the usual CV.
    """
    train = pd.concat([parts.fit.table, parts.validation.table], ignore_index=True)
    rows = [position_of[pid] for pid in train["participant_id"]]
    truth = target.values(train)
    classification = target.task == "classification"
    probe, note = intensity_probe(truth, classification)
    with quiet_fits(intensity):
        probe.fit(intensity[rows], truth if classification else truth.astype(float))
    results: dict = {"constant": {}, "intensity": {}}
    for name in TEST_SPLITS:
        part = getattr(parts, name)
        if not len(part):
            continue
        tested = intensity[[position_of[pid] for pid in part.table["participant_id"]]]
        values = target.values(part.table)
        if classification:
            frequencies = np.array([(truth == label).mean() for label in target.classes])
            fitted = list(probe.classes_)
            order = [fitted.index(label) if label in fitted else None for label in target.classes]
            scores = probe.predict_proba(tested)
            probabilities = np.column_stack([scores[:, k] if k is not None else np.zeros(len(tested)) for k in order])
            results["constant"][name] = classification_metrics(
                values, np.tile(frequencies, (len(values), 1)), target.classes
            )
            results["intensity"][name] = classification_metrics(values, probabilities, target.classes)
        else:
            results["constant"][name] = regression_metrics(values, np.full(len(values), truth.astype(float).mean()))
            results["intensity"][name] = regression_metrics(values, probe.predict(tested))
    return results, note
