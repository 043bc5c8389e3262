"""finetune.inputs: frozen features standardised on the fit part."""

from __future__ import annotations

import pytest
import torch


def test_frozen_features_constant_on_the_fit_subjects_are_centred_not_blown_up():
    from medssl.finetune.inputs import standardize_features

    fit = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])  # feature 0: a ReLU unit silent on every fit subject
    test = torch.tensor([[0.02, 3.0]])
    scaled = standardize_features({"fit": fit, "internal_test": test})
    assert scaled["internal_test"][0, 0].item() == pytest.approx(0.02)  # was 0.02 / 1e-6 = 2e4
    torch.testing.assert_close(scaled["fit"][:, 1], (fit[:, 1] - 3.0) / fit[:, 1].std(unbiased=False))
    assert scaled["fit"].dtype == torch.float32
