import pytest
import torch

from medssl.losses import NTXentLoss

from .checks import assert_same_value_and_gradient, embeddings
from .reference import ntxent_loop


@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_ntxent_matches_loop_transcription_in_value_and_gradient(n_subjects):
    z = embeddings(n_subjects)
    loss = NTXentLoss(temperature=0.1)
    assert_same_value_and_gradient(loss, lambda z: ntxent_loop(z, temperature=0.1), z)


def test_ntxent_with_three_views_averages_over_the_other_views():
    z = embeddings(5, n_views=3)
    loss = NTXentLoss(temperature=0.2)
    assert_same_value_and_gradient(loss, lambda z: ntxent_loop(z, temperature=0.2), z)


def test_ntxent_ignores_label_values():
    z = embeddings(6)
    loss = NTXentLoss()
    torch.testing.assert_close(loss(z, torch.arange(6)), loss(z))


def test_ntxent_of_one_subject_is_zero():
    # The other view is the whole denominator, so the softmax puts all its mass on it.
    z = embeddings(1)
    assert NTXentLoss()(z).item() == pytest.approx(0.0, abs=1e-12)


def test_ntxent_is_lower_when_views_agree():
    z = embeddings(8)
    agreeing = torch.stack([z[:, 0], z[:, 0] + 0.01], dim=1)
    assert NTXentLoss()(agreeing) < NTXentLoss()(z)
