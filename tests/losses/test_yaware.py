import pytest
import torch
import torch.nn.functional as F

from medssl.losses import NTXentLoss, SupConLoss, YAwareLoss

from .checks import ages, assert_same_value_and_gradient, embeddings
from .reference import yaware_loop


@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_yaware_matches_loop_transcription_in_value_and_gradient(n_subjects):
    z, y = embeddings(n_subjects), ages(n_subjects)
    loss = YAwareLoss(temperature=0.1, sigma=5.0, kernel="rbf")
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: yaware_loop(z, y, 0.1, 5.0, "rbf"), z)


@pytest.mark.parametrize("kernel", ["gaussian", "cauchy"])
def test_yaware_matches_loop_transcription_for_other_kernels(kernel):
    z, y = embeddings(8, seed=1), ages(8, seed=1)
    loss = YAwareLoss(temperature=0.2, sigma=3.0, kernel=kernel)
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: yaware_loop(z, y, 0.2, 3.0, kernel), z)


def test_yaware_reproduces_the_worked_check_of_the_spec():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 2, 16, dtype=torch.float64), dim=-1)
    y = torch.tensor([30, 30, 45, 50, 62, 80], dtype=torch.float64)
    loss = YAwareLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
    assert loss(z, y).item() == pytest.approx(3.787224, abs=1e-6)


def test_yaware_with_tiny_sigma_and_distinct_labels_equals_ntxent():
    z = embeddings(8)
    y = torch.arange(8, dtype=torch.float64) * 10
    torch.testing.assert_close(YAwareLoss(sigma=1e-3)(z, y), NTXentLoss()(z))


def test_yaware_with_huge_sigma_equals_supcon_on_a_single_class():
    # Every other sample gets the same weight, i.e. every other sample is a positive.
    z, y = embeddings(4), ages(4)
    torch.testing.assert_close(YAwareLoss(sigma=1e6)(z, y), SupConLoss()(z, torch.zeros(4)))
