"""finetune.metrics on hand-worked cases, and the class weights of the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssl.finetune.metrics import classification_metrics, mean_std, regression_metrics
from medssl.train.finetuning import class_weights


def test_binary_auc_and_balanced_accuracy_on_a_hand_worked_case():
    # patient scores 0.35 and 0.8 against control scores 0.1 and 0.4: 3 of 4 pairs ordered -> AUC 0.75
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    metrics = classification_metrics(
        ["control", "control", "patient", "patient"], probabilities, ["control", "patient"]
    )
    assert metrics["roc_auc"] == pytest.approx(0.75)
    # predictions control, control, control, patient: recalls 1 and 1/2
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    # column 1 scores the positive class: naming it "control" makes the same scores rank controls first
    swapped = classification_metrics(
        ["control", "control", "patient", "patient"], probabilities, ["patient", "control"]
    )
    assert swapped["roc_auc"] == pytest.approx(0.25)


def test_balanced_accuracy_weights_classes_not_subjects():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    metrics = classification_metrics(["a", "a", "a", "b"], probabilities, ["a", "b"])
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_multiclass_auc_is_the_mean_one_vs_rest_auc():
    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    metrics = classification_metrics(["x", "y", "z", "x"], probabilities, ["x", "y", "z"])
    # x vs rest: 0.8 and 0.3 against 0.1 and 0.1 -> 1; y vs rest: 0.8 against 0.1, 0.1, 0.4 -> 1;
    # z vs rest: 0.8 against 0.1, 0.1, 0.3 -> 1
    assert metrics["roc_auc"] == pytest.approx(1.0)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_auc_of_a_single_class_split_is_undefined():
    metrics = classification_metrics(["a", "a"], np.array([[0.6, 0.4], [0.3, 0.7]]), ["a", "b"])
    assert math.isnan(metrics["roc_auc"])


def test_regression_mae_and_r2_on_a_hand_worked_case():
    metrics = regression_metrics([1, 2, 3], [2, 2, 5])
    assert metrics["mae"] == pytest.approx(1.0)
    assert metrics["r2"] == pytest.approx(1 - 5 / 2)
    assert metrics["n"] == 3


def test_mean_std_over_seeds_uses_the_sample_std_and_skips_undefined_runs():
    assert mean_std([0.7, 0.8, 0.9]) == pytest.approx({"mean": 0.8, "std": 0.1, "n_seeds": 3})
    assert mean_std([0.6, float("nan"), 0.8]) == pytest.approx({"mean": 0.7, "std": math.sqrt(0.02), "n_seeds": 2})
    assert mean_std([0.6]) == {"mean": 0.6, "std": 0.0, "n_seeds": 1}
    assert mean_std([float("nan")])["n_seeds"] == 0


def test_class_weights_are_inverse_frequencies():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    # a class absent from the fit part has no term in the loss; its weight changes nothing
    assert class_weights(torch.tensor([0, 0, 2]), 3).tolist() == pytest.approx([0.75, 1.0, 1.5])
