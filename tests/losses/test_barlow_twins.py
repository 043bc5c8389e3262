"""BarlowTwinsLoss against a loop transcription of C = Z1n^T Z2n / N and L = sum (1 - C_ii)^2 + lambd sum C_ij^2."""

import math

import pytest
import torch

from medssl.losses.barlow_twins import BarlowTwinsLoss
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


def test_barlow_twins_matches_transcription_in_value_and_gradient():
    z = torch.randn(7, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    loss = BarlowTwinsLoss(lambd=0.3)(z)
    (grad,) = torch.autograd.grad(loss, z)
    expected = slow_barlow_twins(z, lambd=0.3)
    (expected_grad,) = torch.autograd.grad(expected, z)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_barlow_twins_reads_view_major_rows_like_subject_view_layout():
    z = torch.randn(8, 2, 6, generator=torch.Generator().manual_seed(1))
    view_major = torch.cat([z[:, 0], z[:, 1]])
    loss_fn = BarlowTwinsLoss()
    assert loss_fn(view_major).item() == pytest.approx(loss_fn(z).item(), rel=1e-6)
    assert loss_fn(view_major, y=torch.zeros(8)).item() == pytest.approx(loss_fn(z).item(), rel=1e-6)


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


def test_barlow_twins_computes_bfloat16_inputs_in_float32():
    z = torch.randn(16, 2, 32, generator=torch.Generator().manual_seed(3)).bfloat16()
    loss = BarlowTwinsLoss()(z)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert math.isclose(loss.item(), BarlowTwinsLoss()(z.float()).item(), rel_tol=1e-5)


def test_barlow_twins_rejects_more_than_two_views():
    with pytest.raises(LossInputError, match="2 views"):
        BarlowTwinsLoss()(torch.randn(4, 3, 8))
