"""VICRegLoss against a loop transcription of its three terms, and on hand-made inputs."""

import math

import pytest
import torch

from medssl.losses.layout import LossInputError
from medssl.losses.vicreg import VICRegLoss


def slow_vicreg(z, lam=25.0, mu=25.0, nu=1.0):
    """z: (N, 2, D); unbiased variances and covariances, entry by entry."""
    n, _, d = z.shape
    invariance = sum((z[b, 0, k] - z[b, 1, k]) ** 2 for b in range(n) for k in range(d)) / n

    def variance_and_covariance(view):
        means = [sum(z[b, view, k] for b in range(n)) / n for k in range(d)]

        def cov(i, j):
            return sum((z[b, view, i] - means[i]) * (z[b, view, j] - means[j]) for b in range(n)) / (n - 1)

        v = sum(torch.clamp(1.0 - torch.sqrt(cov(k, k) + 1e-4), min=0.0) for k in range(d)) / d
        c = sum(cov(i, j) ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = variance_and_covariance(0)
    v2, c2 = variance_and_covariance(1)
    return lam * invariance + mu * (v1 + v2) + nu * (c1 + c2)


def test_vicreg_matches_transcription_in_value_and_gradient():
    # Small scale so that some dimensions have std < 1 and the variance hinge is active.
    z = 0.8 * torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z.requires_grad_()
    loss = VICRegLoss(sim_weight=2.0, var_weight=3.0, cov_weight=0.5)(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected = slow_vicreg(z, lam=2.0, mu=3.0, nu=0.5)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_vicreg_defaults_are_the_papers_weights():
    loss_fn = VICRegLoss()
    assert (loss_fn.sim_weight, loss_fn.var_weight, loss_fn.cov_weight) == (25.0, 25.0, 1.0)
    z = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert loss_fn(z).item() == pytest.approx(slow_vicreg(z).item(), abs=1e-5)


def test_vicreg_invariance_is_zero_for_identical_views():
    view = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    invariance_only = VICRegLoss(sim_weight=1.0, var_weight=0.0, cov_weight=0.0)
    assert invariance_only(torch.stack([view, view], dim=1)).item() == 0.0
    # Shifting one view by 1 in every dimension costs D per sample.
    assert invariance_only(torch.stack([view, view + 1.0], dim=1)).item() == pytest.approx(5.0)


def test_vicreg_variance_term_of_collapsed_embeddings_is_one_minus_sqrt_eps_per_view():
    collapsed = torch.ones(8, 2, 3, dtype=torch.float64)
    variance_only = VICRegLoss(sim_weight=0.0, var_weight=1.0, cov_weight=0.0)
    assert variance_only(collapsed).item() == pytest.approx(2 * (1.0 - math.sqrt(1e-4)))
    # Unit-variance dimensions are not penalised.
    spread = torch.tensor([-1.0, 1.0] * 4, dtype=torch.float64) * math.sqrt(7 / 8)  # unbiased variance 1
    spread = spread[:, None, None].expand(8, 2, 3)
    assert variance_only(spread).item() == 0.0


def test_vicreg_covariance_term_of_two_duplicated_dimensions():
    a = torch.tensor([-1.0, 1.0] * 4, dtype=torch.float64) * math.sqrt(7 / 8)  # unbiased variance 1
    z = torch.stack([a, a], dim=1)  # two identical dimensions: Cov = [[1, 1], [1, 1]]
    covariance_only = VICRegLoss(sim_weight=0.0, var_weight=0.0, cov_weight=1.0)
    # c(Z) = (1/D) sum_{i != j} Cov_ij^2 = (1 + 1) / 2 = 1 per view.
    assert covariance_only(torch.stack([z, z], dim=1)).item() == pytest.approx(2.0)


def test_vicreg_computes_bfloat16_inputs_in_float32():
    z = torch.randn(16, 2, 32, generator=torch.Generator().manual_seed(3)).bfloat16()
    loss = VICRegLoss()(z)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert math.isclose(loss.item(), VICRegLoss()(z.float()).item(), rel_tol=1e-5)


def test_vicreg_rejects_a_single_subject():
    with pytest.raises(LossInputError, match="N >= 2"):
        VICRegLoss()(torch.randn(1, 2, 8))
