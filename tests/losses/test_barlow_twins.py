"""BarlowTwinsLoss against a loop transcription of C = Z1n^T Z2n / N and L = sum (1 - C_ii)^2 + lambd sum C_ij^2."""

import math

import pytest
import torch

from medssl.losses.barlow_twins import BarlowTwinsLoss, uses_bfloat16_products, works_by_subjects
from medssl.losses.layout import LossInputError


def slow_barlow_twins(z, lambd, eps=1e-5):
    """z: (N, 2, D). Standardise each dimension over the batch, then build C entry by entry."""
    n, _, d = z.shape

    def standardized(view):
        columns = []
        for k in range(d):
            values = [z[b, view, k] for b in range(n)]
            mean = sum(values) / n
            variance = sum((v - mean) ** 2 for v in values) / n
            columns.append([(v - mean) / torch.sqrt(variance + eps) for v in values])
        return columns  # columns[k][b]

    a, b_ = standardized(0), standardized(1)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][b] * b_[j][b] for b in range(n)) / n
            loss = loss + ((1.0 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


# (N, D): the D x D form (N >= 3D / 4) and the N x N one (N < 3D / 4).
BOTH_FORMS = [pytest.param(7, 4, id="by-dimensions"), pytest.param(3, 8, id="by-subjects")]


def test_the_form_with_fewer_products_is_chosen():
    assert not works_by_subjects(7, 4) and works_by_subjects(3, 8)
    assert works_by_subjects(32, 1024) and works_by_subjects(2048, 8192)  # the recipes', the paper's
    assert not works_by_subjects(1024, 128) and not works_by_subjects(768, 1024)


@pytest.mark.parametrize(("n", "d"), BOTH_FORMS)
def test_barlow_twins_matches_transcription_in_value_and_gradient(n, d):
    z = torch.randn(n, 2, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    loss = BarlowTwinsLoss(lambd=0.3)(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected = slow_barlow_twins(z, lambd=0.3)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_barlow_twins_refuses_view_major_rows_and_ignores_labels():
    z = torch.randn(8, 2, 6, generator=torch.Generator().manual_seed(1))
    loss_fn = BarlowTwinsLoss()
    with pytest.raises(LossInputError, match=r"shape \(N, V, D\)"):
        loss_fn(torch.cat([z[:, 0], z[:, 1]]))
    assert loss_fn(z, y=torch.zeros(8)).item() == loss_fn(z).item()


def test_barlow_twins_is_zero_for_identical_views_with_decorrelated_dimensions():
    # Columns of a scaled Hadamard matrix: zero mean, unit variance, mutually orthogonal -> C = I.
    h = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])
    columns = h[:, 1:].double()
    z = torch.stack([columns, 5.0 * columns + 2.0], dim=1)  # affine change per view: standardised away
    assert BarlowTwinsLoss()(z).item() == pytest.approx(0.0, abs=1e-4)


def test_barlow_twins_off_diagonal_weight_is_lambd():
    z = torch.randn(10, 2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    on_diagonal = BarlowTwinsLoss(lambd=0.0)(z)
    off_diagonal = BarlowTwinsLoss(lambd=1.0)(z) - on_diagonal
    assert off_diagonal.item() > 0
    assert BarlowTwinsLoss(lambd=5e-3)(z).item() == pytest.approx((on_diagonal + 5e-3 * off_diagonal).item(), rel=1e-9)
    assert BarlowTwinsLoss().lambd == 5e-3


# Small bfloat16 batches (N D^2 < 2^23) are computed in float32.
@pytest.mark.parametrize(("n", "d"), [(16, 32), (64, 32)], ids=["by-subjects", "by-dimensions"])
def test_barlow_twins_computes_small_bfloat16_inputs_in_float32(n, d):
    z = torch.randn(n, 2, d, generator=torch.Generator().manual_seed(3)).bfloat16()
    loss = BarlowTwinsLoss()(z)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert math.isclose(loss.item(), BarlowTwinsLoss()(z.float()).item(), rel_tol=1e-5)


@pytest.mark.parametrize(("n", "d"), [(16, 32), (64, 32)], ids=["by-subjects", "by-dimensions"])
def test_barlow_twins_gradient_of_small_bfloat16_input_is_that_of_its_float32_copy(n, d):
    z = torch.randn(n, 2, d, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_()
    upcast = z.detach().float().requires_grad_()
    (low,) = torch.autograd.grad(BarlowTwinsLoss()(z), z)
    (high,) = torch.autograd.grad(BarlowTwinsLoss()(upcast), upcast)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, high.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize(("n", "d"), [(40, 24), (12, 40)], ids=["by-dimensions", "by-subjects"])
def test_barlow_twins_gradient_matches_autograd_through_the_written_out_formula(n, d):
    # Large N, D and a mean far from 0: the closed-form backward against autograd, in float64.
    z = 3.0 + torch.randn(n, 2, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z.requires_grad_()
    (grad,) = torch.autograd.grad(BarlowTwinsLoss(lambd=0.05)(z), z)
    standardized = (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, correction=0) + 1e-5)
    c = standardized[:, 0].T @ standardized[:, 1] / n
    expected = (1 - c.diagonal()).pow(2).sum() + 0.05 * (c.pow(2).sum() - c.diagonal().pow(2).sum())
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_barlow_twins_rejects_more_than_two_views():
    with pytest.raises(LossInputError, match="2 views"):
        BarlowTwinsLoss()(torch.randn(4, 3, 8))


@pytest.mark.parametrize(
    ("n", "d", "dtype"),
    [(8, 4, torch.float32), (3, 8, torch.float32), (512, 128, torch.bfloat16)],
    ids=["by-dimensions", "by-subjects", "bfloat16-products"],
)
def test_barlow_twins_second_backward_through_one_loss_is_refused(n, d, dtype):
    # The first backward writes the gradient over the saved standardised views.
    z = torch.randn(n, 2, d, generator=torch.Generator().manual_seed(6)).to(dtype).requires_grad_()
    loss = BarlowTwinsLoss()(z)
    before = z.detach().clone()
    (first,) = torch.autograd.grad(loss, z, retain_graph=True)
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    assert torch.equal(z.detach(), before)  # the input itself is never written
    with pytest.raises(RuntimeError, match="once per forward"):
        torch.autograd.grad(loss, z)


def test_large_bfloat16_batches_take_bfloat16_products():
    assert uses_bfloat16_products(torch.zeros(512, 2, 128, dtype=torch.bfloat16))  # N D^2 = 2^23
    assert uses_bfloat16_products(torch.zeros(1024, 2, 1024, dtype=torch.bfloat16))
    assert not uses_bfloat16_products(torch.zeros(256, 2, 128, dtype=torch.bfloat16))
    assert not uses_bfloat16_products(torch.zeros(512, 2, 128))  # float32 stays float32
    assert not uses_bfloat16_products(torch.zeros(512, 2, 128, dtype=torch.float16))


def views_of_subjects(noise: float, seed: int, n: int = 512, d: int = 128) -> torch.Tensor:
    """bfloat16 embeddings (N, 2, D) whose two views differ by ``noise`` around subjects of
    standard deviation 2 and mean 1: noise 0.03 gives C_ii of about 0.9998."""
    generator = torch.Generator().manual_seed(seed)
    subjects = 1.0 + 2.0 * torch.randn(n, 1, d, generator=generator)
    return (subjects + noise * torch.randn(n, 2, d, generator=generator)).bfloat16()


@pytest.mark.parametrize("noise", [3.0, 0.2, 0.03], ids=["unrelated", "agreeing", "nearly-identical"])
def test_bfloat16_products_keep_value_and_gradient_near_float64(noise):
    z = views_of_subjects(noise, seed=7)
    low, high = z.clone().requires_grad_(), z.double().requires_grad_()  # the same rounded input
    loss_low, loss_high = BarlowTwinsLoss()(low), BarlowTwinsLoss()(high)
    (grad_low,) = torch.autograd.grad(loss_low, low)
    (grad_high,) = torch.autograd.grad(loss_high, high)
    assert loss_low.dtype == torch.float32 and grad_low.dtype == torch.bfloat16
    assert loss_low.item() == pytest.approx(loss_high.item(), rel=1e-3)
    assert float((grad_low.double() - grad_high).norm() / grad_high.norm()) < 1e-2


def test_bfloat16_products_keep_the_invariance_term_of_nearly_identical_views():
    # lambd = 0 leaves sum (1 - C_ii)^2 with 1 - C_ii of about 2e-4: bfloat16 views (steps of
    # 0.004 near 1) would lose it entirely.
    z = views_of_subjects(0.03, seed=8)
    loss_low, loss_high = BarlowTwinsLoss(lambd=0.0)(z), BarlowTwinsLoss(lambd=0.0)(z.double())
    assert 0.0 < loss_high.item() < 1e-3
    assert loss_low.item() == pytest.approx(loss_high.item(), rel=1e-3)


def test_bfloat16_products_read_embeddings_of_any_layout():
    z = views_of_subjects(0.2, seed=9)
    strided = z.transpose(1, 2).contiguous().transpose(1, 2)  # (N, 2, D) with the views innermost
    assert not strided.is_contiguous()
    assert BarlowTwinsLoss()(strided).item() == BarlowTwinsLoss()(z).item()


def test_bfloat16_products_inside_autocast_compute_what_they_compute_outside():
    # The float32 steps (statistics, Δ, 1 - C_ii) must not be taken to bfloat16 by a training step's autocast.
    z = views_of_subjects(0.2, seed=10)
    outside, inside = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss_outside = BarlowTwinsLoss()(outside)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_inside = BarlowTwinsLoss()(inside)
    loss_outside.backward()
    loss_inside.backward()
    assert loss_inside.item() == loss_outside.item()
    assert torch.equal(inside.grad, outside.grad)
