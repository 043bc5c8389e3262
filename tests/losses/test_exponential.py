import pytest
import torch
import torch.nn.functional as F

from medssl.losses import ExponentialLoss

from .checks import ages, assert_same_value_and_gradient, embeddings
from .reference import exponential_loop


@pytest.mark.parametrize("reference_code", [False, True])
@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_exponential_matches_loop_transcription_in_value_and_gradient(n_subjects, reference_code):
    z, y = embeddings(n_subjects), ages(n_subjects)
    loss = ExponentialLoss(temperature=0.1, sigma=2.0, kernel="gaussian", reference_code=reference_code)
    reference = lambda z: exponential_loop(z, y, 0.1, 2.0, "gaussian", reference_code=reference_code)  # noqa: E731
    assert_same_value_and_gradient(lambda z: loss(z, y), reference, z)


def test_exponential_matches_loop_transcription_with_rbf_weights_near_one():
    # rbf weights reach 1, where the repulsion of close labels vanishes.
    z, y = embeddings(8, seed=2), ages(8, seed=2)
    loss = ExponentialLoss(temperature=0.1, sigma=10.0, kernel="rbf")
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: exponential_loop(z, y, 0.1, 10.0, "rbf"), z)


@pytest.mark.parametrize("reference_code, expected", [(False, 3.639005), (True, 4.209764)])
def test_exponential_reproduces_the_worked_check_of_the_spec(reference_code, expected):
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 2, 16, dtype=torch.float64), dim=-1)
    y = torch.tensor([30, 30, 45, 50, 62, 80], dtype=torch.float64)
    loss = ExponentialLoss(temperature=0.1, sigma=2.0, kernel="gaussian", reference_code=reference_code)
    assert loss(z, y).item() == pytest.approx(expected, abs=1e-6)
