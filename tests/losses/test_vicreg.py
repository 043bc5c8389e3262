"""VICRegLoss against a loop transcription of its three terms, and on hand-made inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses.layout import LossInputError
from medssl.losses.vicreg import VICRegLoss

from .reference import vicreg_loop


def authors_forward(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg main_vicreg.py, VICReg.forward at commit 4e12602, line by line
    (one process, so FullGatherLayer is the identity; x, y: (N, D) projector outputs)."""
    num_features = x.shape[1]

    def off_diagonal(m):
        n, _ = m.shape
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (x.shape[0] - 1)
    cov_y = (y.T @ y) / (x.shape[0] - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(2).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def small_embeddings(seed=0, n=6, d=4):
    # Small scale so that some dimensions have std < 1 and the variance hinge is active.
    return 0.8 * torch.randn(n, 2, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("form", ["authors", "paper_sum"])
def test_vicreg_matches_loop_transcription_in_value_and_gradient(form):
    z = small_embeddings().requires_grad_()
    loss = VICRegLoss(sim_weight=2.0, var_weight=3.0, cov_weight=0.5, form=form)(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected = vicreg_loop(z, lam=2.0, mu=3.0, nu=0.5, form=form)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-10)
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=1e-8)


def test_vicreg_default_is_the_authors_code_in_value_and_gradient():
    z = small_embeddings(seed=4, n=8, d=5).requires_grad_()
    loss = VICRegLoss()(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected = authors_forward(z[:, 0], z[:, 1])
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=1e-10)


def test_vicreg_paper_sum_equals_authors_form_with_the_documented_weights():
    z = small_embeddings(seed=5, n=7, d=6)
    d = z.shape[-1]
    paper_sum = VICRegLoss(sim_weight=2.0, var_weight=3.0, cov_weight=0.5, form="paper_sum")(z)
    authors = VICRegLoss(sim_weight=2.0 * d, var_weight=6.0, cov_weight=0.5)(z)
    assert paper_sum.item() == pytest.approx(authors.item(), rel=1e-12)
    # And the two forms differ at equal weights, so the option matters.
    assert abs(VICRegLoss()(z).item() - VICRegLoss(form="paper_sum")(z).item()) > 1.0


def test_vicreg_defaults_are_the_authors_weights_and_form():
    loss_fn = VICRegLoss()
    assert (loss_fn.sim_weight, loss_fn.var_weight, loss_fn.cov_weight, loss_fn.form) == (25.0, 25.0, 1.0, "authors")
    z = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert loss_fn(z).item() == pytest.approx(vicreg_loop(z).item(), abs=1e-10)


def test_vicreg_rejects_an_unknown_form():
    with pytest.raises(LossInputError, match="form='mean'"):
        VICRegLoss(form="mean")


def test_vicreg_invariance_is_zero_for_identical_views():
    view = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    invariance_only = VICRegLoss(sim_weight=1.0, var_weight=0.0, cov_weight=0.0)
    assert invariance_only(torch.stack([view, view], dim=1)).item() == 0.0
    # Shifting one view by 1 in every dimension: mean squared error 1 (authors), D per sample (paper sum).
    shifted = torch.stack([view, view + 1.0], dim=1)
    assert invariance_only(shifted).item() == pytest.approx(1.0)
    paper_sum = VICRegLoss(sim_weight=1.0, var_weight=0.0, cov_weight=0.0, form="paper_sum")
    assert paper_sum(shifted).item() == pytest.approx(5.0)


def test_vicreg_variance_term_of_collapsed_embeddings_is_one_minus_sqrt_eps():
    collapsed = torch.ones(8, 2, 3, dtype=torch.float64)
    variance_only = VICRegLoss(sim_weight=0.0, var_weight=1.0, cov_weight=0.0)
    # Authors: averaged over the two views; paper sum: added.
    assert variance_only(collapsed).item() == pytest.approx(1.0 - math.sqrt(1e-4))
    paper_sum = VICRegLoss(sim_weight=0.0, var_weight=1.0, cov_weight=0.0, form="paper_sum")
    assert paper_sum(collapsed).item() == pytest.approx(2 * (1.0 - math.sqrt(1e-4)))
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
