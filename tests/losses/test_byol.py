"""BYOLLoss against a per-sample transcription of L = 2 - 2 cos(p, sg(z')), symmetrised."""

import math

import pytest
import torch

from medssl.losses.byol import BYOLLoss
from medssl.losses.layout import LossInputError


def slow_byol(p1, p2, z1, z2):
    """Sum over the two view orders of the batch mean of 2 - 2 cos, one sample at a time."""
    n = p1.shape[0]

    def term(p, target):
        total = 0.0
        for i in range(n):
            cosine = torch.dot(p[i], target[i]) / (p[i].norm() * target[i].norm())
            total = total + (2.0 - 2.0 * cosine)
        return total / n

    return term(p1, z2) + term(p2, z1)


def random_pairs(n=6, d=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator, dtype=dtype) for _ in range(4)]


def stacked(a, b):
    return torch.stack([a, b], dim=1)


def test_byol_matches_transcription_in_value_and_gradient():
    p1, p2, z1, z2 = [t.requires_grad_() for t in random_pairs()]
    loss = BYOLLoss()(stacked(p1, p2), stacked(z1, z2))
    grads = torch.autograd.grad(loss, (p1, p2))
    expected = slow_byol(p1, p2, z1.detach(), z2.detach())
    expected_grads = torch.autograd.grad(expected, (p1, p2))
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_byol_pairs_each_prediction_with_the_other_views_target():
    p1, p2, _, _ = random_pairs()
    # The predictions equal the targets of the *other* view, up to scale: the loss is 0.
    predictions = stacked(p1, p2)
    assert BYOLLoss()(predictions, stacked(3.0 * p2, 0.5 * p1)).item() == pytest.approx(0.0, abs=1e-6)
    assert BYOLLoss()(predictions, stacked(-p2, -p1)).item() == pytest.approx(8.0, abs=1e-6)
    assert BYOLLoss()(predictions, predictions).item() > 0.1


def test_byol_target_inputs_receive_no_gradient():
    p1, p2, z1, z2 = [t.requires_grad_() for t in random_pairs()]
    BYOLLoss()(stacked(p1, p2), stacked(z1, z2)).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_byol_computes_bfloat16_inputs_in_float32():
    pairs = random_pairs(n=16, d=32, dtype=torch.float32)
    predictions, targets = stacked(*pairs[:2]), stacked(*pairs[2:])
    loss_bf16 = BYOLLoss()(predictions.bfloat16(), targets.bfloat16())
    loss_fp32 = BYOLLoss()(predictions.bfloat16().float(), targets.bfloat16().float())
    assert loss_bf16.dtype == torch.float32 and loss_bf16.dim() == 0
    assert math.isclose(loss_bf16.item(), loss_fp32.item(), rel_tol=1e-6)


def test_byol_rejects_mismatched_shapes_and_other_view_counts():
    p1, p2, z1, z2 = random_pairs()
    with pytest.raises(
        LossInputError, match=r"^BYOLLoss: predictions and targets must have the same N \(subjects\), got N = 6 and 3"
    ):
        BYOLLoss()(stacked(p1, p2), stacked(z1[:3], z2[:3]))
    with pytest.raises(
        LossInputError, match=r"^BYOLLoss: predictions and targets must have the same D \(dimensions\), got D = 5 and 4"
    ):
        BYOLLoss()(stacked(p1, p2), stacked(z1[:, :4], z2[:, :4]))
    with pytest.raises(LossInputError, match="V_p = V_t = 2"):
        BYOLLoss()(torch.stack([p1, p2, p1], dim=1), torch.stack([z1, z2, z1], dim=1))
