import pytest
import torch

from medssl.losses import DecoupledNTXentLoss, NTXentLoss

from .checks import assert_same_value_and_gradient, embeddings
from .reference import decoupled_loop


@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_decoupled_matches_loop_transcription_in_value_and_gradient(n_subjects):
    z = embeddings(n_subjects)
    loss = DecoupledNTXentLoss(temperature=0.1)
    assert_same_value_and_gradient(loss, lambda z: decoupled_loop(z, temperature=0.1), z)


def test_decoupled_with_three_views_leaves_every_view_of_the_subject_out_of_the_denominator():
    z = embeddings(5, n_views=3)
    assert_same_value_and_gradient(
        DecoupledNTXentLoss(temperature=0.2), lambda z: decoupled_loop(z, temperature=0.2), z
    )


def test_decoupled_is_below_ntxent_by_the_positive_share_of_the_denominator():
    # log(sum_neg) = log(sum_all) + log(1 - p_pos) < log(sum_all)
    z = embeddings(8)
    assert DecoupledNTXentLoss()(z) < NTXentLoss()(z)


def test_decoupled_of_one_subject_has_no_negative_and_returns_a_connected_zero():
    z = embeddings(1)
    loss = DecoupledNTXentLoss()(z)
    (gradient,) = torch.autograd.grad(loss, z)
    assert loss.item() == 0.0
    assert torch.equal(gradient, torch.zeros_like(z))
