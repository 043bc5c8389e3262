"""SimSiamLoss against a per-sample transcription of -1/2 cos(p1, sg(z2)) - 1/2 cos(p2, sg(z1))."""

import math

import pytest
import torch

from medssl.losses.layout import LossInputError
from medssl.losses.simsiam import SimSiamLoss


def slow_simsiam(p1, p2, z1, z2):
    n = p1.shape[0]
    total = 0.0
    for i in range(n):
        cos_12 = torch.dot(p1[i], z2[i]) / (p1[i].norm() * z2[i].norm())
        cos_21 = torch.dot(p2[i], z1[i]) / (p2[i].norm() * z1[i].norm())
        total = total - 0.5 * cos_12 - 0.5 * cos_21
    return total / n


def random_pairs(n=6, d=5, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator, dtype=dtype) for _ in range(4)]


def stacked(a, b):
    return torch.stack([a, b], dim=1)


def test_simsiam_matches_transcription_in_value_and_gradient():
    p1, p2, z1, z2 = [t.requires_grad_() for t in random_pairs()]
    loss = SimSiamLoss()(stacked(p1, p2), stacked(z1, z2))
    grads = torch.autograd.grad(loss, (p1, p2))
    expected = slow_simsiam(p1, p2, z1.detach(), z2.detach())
    expected_grads = torch.autograd.grad(expected, (p1, p2))
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_simsiam_is_minus_one_when_predictions_match_the_other_view():
    p1, p2, _, _ = random_pairs()
    assert SimSiamLoss()(stacked(p1, p2), stacked(2.0 * p2, 0.1 * p1)).item() == pytest.approx(-1.0, abs=1e-6)


def test_simsiam_stops_the_gradient_of_the_projections():
    z = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    predictor = torch.nn.Linear(5, 5).double()
    SimSiamLoss()(predictor(z), z).backward()
    # The gradient reaching z only flows through the predictor, as the transcription with explicit detach.
    z_ref = z.detach().clone().requires_grad_()
    r1, r2 = z_ref[:, 0], z_ref[:, 1]
    slow_simsiam(predictor(r1), predictor(r2), r1.detach(), r2.detach()).backward()
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-10, rtol=1e-8)

    p1, p2, z1, z2 = [t.requires_grad_() for t in random_pairs()]
    SimSiamLoss()(stacked(p1, p2), stacked(z1, z2)).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_simsiam_computes_bfloat16_inputs_in_float32():
    pairs = random_pairs(n=16, d=32, dtype=torch.float32)
    predictions, targets = stacked(*pairs[:2]), stacked(*pairs[2:])
    loss_bf16 = SimSiamLoss()(predictions.bfloat16(), targets.bfloat16())
    loss_fp32 = SimSiamLoss()(predictions.bfloat16().float(), targets.bfloat16().float())
    assert loss_bf16.dtype == torch.float32 and loss_bf16.dim() == 0
    assert math.isclose(loss_bf16.item(), loss_fp32.item(), rel_tol=1e-5, abs_tol=1e-6)


def test_simsiam_rejects_two_dimensional_inputs():
    p = torch.randn(4, 8)
    with pytest.raises(
        LossInputError, match=r"SimSiamLoss: expected floating-point predictions and targets of shape \(N, V, D\)"
    ):
        SimSiamLoss()(p, p)
