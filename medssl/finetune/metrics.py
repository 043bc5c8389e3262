"""What a fine-tuned model is scored by: ROC AUC and balanced accuracy, or MAE and R^2, and their
mean +- std over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from medssl.eval.probes import roc_auc
from medssl.eval.score import balanced_accuracy, r2

CLASSIFICATION_METRICS = ("roc_auc", "balanced_accuracy")
REGRESSION_METRICS = ("mae", "r2")


def classification_metrics(y_true: Iterable, probabilities: np.ndarray, classes: list[str]) -> dict[str, float]:
    """ROC AUC and balanced accuracy of class probabilities.

    Args:
        y_true: true class labels (strings, one of ``classes``), shape (n,).
        probabilities: (n, n_classes) scores, columns in the order of ``classes``.
        classes: class labels; for two classes ``classes[1]`` is the positive one.

    Returns:
        ``roc_auc`` (binary, or the macro one-vs-rest mean over the classes present; NaN
        with a single class), ``balanced_accuracy`` of the argmax prediction and ``n``.

    Example:
        >>> classification_metrics(["a", "a", "b", "b"], np.array([[.9, .1], [.6, .4], [.65, .35], [.2, .8]]), ["a", "b"])
        {'roc_auc': 0.75, 'balanced_accuracy': 0.75, 'n': 4}
    """
    y_true = np.asarray(list(y_true), dtype=object)
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(classes, dtype=object)
    predicted = labels[np.argmax(probabilities, axis=1)] if len(y_true) else labels[:0]
    return {
        "roc_auc": roc_auc(y_true, probabilities, labels) if len(y_true) else float("nan"),
        "balanced_accuracy": balanced_accuracy(y_true, predicted) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
    }


def regression_metrics(y_true: Iterable, y_pred: Iterable) -> dict[str, float]:
    """MAE and R^2 (NaN for a constant target).

    Example:
        >>> regression_metrics([1, 2, 3], [2, 2, 5])["mae"]
        1.0
    """
    y_true = np.asarray(list(y_true), dtype=float)
    y_pred = np.asarray(list(y_pred), dtype=float)
    if not len(y_true):
        return {"mae": float("nan"), "r2": float("nan"), "n": 0}
    return {"mae": float(np.mean(np.abs(y_true - y_pred))), "r2": r2(y_true, y_pred), "n": int(len(y_true))}


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1) over runs; NaN values are left out.

    One finite value has std 0; none gives NaN for both.

    Example:
        >>> mean_std([0.7, 0.8, 0.9])
        {'mean': 0.8, 'std': 0.1, 'n_seeds': 3}
    """
    finite = np.array([value for value in values if value is not None and math.isfinite(value)], dtype=float)
    if not len(finite):
        return {"mean": float("nan"), "std": float("nan"), "n_seeds": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n_seeds": int(len(finite))}
