"""DINOLoss against a loop transcription over crops, and its centre update."""

import math

import pytest
import torch

from medssl.losses.dino import DINOLoss
from medssl.losses.layout import LossInputError


def slow_dino(student, teacher, center, tau_s, tau_t):
    """Mean over (teacher view a, student view b != a) and samples of -sum_k P_t[k] log P_s[k]."""
    n, v_s, k = student.shape
    v_t = teacher.shape[1]
    total, pairs = 0.0, 0
    for a in range(v_t):
        for b in range(v_s):
            if a == b:
                continue
            for i in range(n):
                t = torch.exp((teacher[i, a] - center) / tau_t)
                p_teacher = t / t.sum()
                s = torch.exp(student[i, b] / tau_s)
                log_p_student = torch.log(s / s.sum())
                total = total - (p_teacher * log_p_student).sum() / n
            pairs += 1
    return total / pairs


def outputs(n=5, v_s=4, v_t=2, k=7, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, v_s, k, generator=generator, dtype=dtype),
        torch.randn(n, v_t, k, generator=generator, dtype=dtype),
    )


def test_dino_matches_transcription_with_local_crops_in_value_and_gradient():
    student, teacher = outputs()
    student.requires_grad_()
    loss_fn = DINOLoss(out_dim=7, student_temperature=0.2, teacher_temperature=0.05).double()
    loss_fn.center.copy_(torch.linspace(-0.5, 0.5, 7))
    expected = slow_dino(student, teacher, loss_fn.center.clone(), 0.2, 0.05)
    (expected_grad,) = torch.autograd.grad(expected, student)
    loss = loss_fn(student, teacher)
    (grad,) = torch.autograd.grad(loss, student)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_dino_with_two_global_crops_is_the_symmetrised_cross_entropy():
    student, teacher = outputs(v_s=2)
    loss = DINOLoss(out_dim=7).double()(student, teacher)

    def cross_entropy(t, s):
        return -(torch.softmax(t / 0.04, dim=-1) * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()

    expected = cross_entropy(teacher[:, 0], student[:, 1]) / 2 + cross_entropy(teacher[:, 1], student[:, 0]) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-10)


def test_dino_center_moves_by_ema_of_the_teacher_batch_mean_after_the_loss():
    student, teacher = outputs(v_s=6)
    loss_fn = DINOLoss(out_dim=7, center_momentum=0.9).double()
    previous = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)
    loss_fn.center.copy_(previous)
    loss = loss_fn(student, teacher)
    # The loss used the centre before the update.
    assert loss.item() == pytest.approx(slow_dino(student, teacher, previous, 0.1, 0.04).item(), abs=1e-8)
    torch.testing.assert_close(loss_fn.center, 0.9 * previous + 0.1 * teacher.mean(dim=(0, 1)))
    assert "center" in dict(loss_fn.named_buffers())


def test_dino_center_is_frozen_in_eval_mode():
    student, teacher = outputs()
    loss_fn = DINOLoss(out_dim=7).double().eval()
    loss_fn(student, teacher)
    assert torch.count_nonzero(loss_fn.center) == 0


def test_dino_teacher_receives_no_gradient():
    student, teacher = outputs(dtype=torch.float32)
    student.requires_grad_()
    teacher.requires_grad_()
    DINOLoss(out_dim=7)(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


def test_dino_computes_bfloat16_inputs_in_float32():
    student, teacher = outputs(n=8, k=64, dtype=torch.float32)
    loss = DINOLoss(out_dim=64).eval()(student.bfloat16(), teacher.bfloat16())
    reference = DINOLoss(out_dim=64).eval()(student.bfloat16().float(), teacher.bfloat16().float())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert math.isclose(loss.item(), reference.item(), rel_tol=1e-6)


def test_dino_rejects_fewer_student_than_teacher_views():
    student, teacher = outputs(v_s=2, v_t=3)
    with pytest.raises(LossInputError, match="V_p >= V_t"):
        DINOLoss(out_dim=7)(student, teacher)


def authors_dino_loss(student_output, teacher_output, center, student_temp, temp, center_momentum, ncrops):
    """facebookresearch/dino main_dino.py, DINOLoss.forward and update_center at commit 7c446df
    (one process): view-major chunks, teacher views skipped where v == iq, the centre's EMA of the
    batch mean of the teacher outputs."""
    student_out = (student_output / student_temp).chunk(ncrops)
    teacher_out = torch.softmax((teacher_output - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * torch.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
    return total_loss / n_loss_terms, center * center_momentum + batch_center * (1 - center_momentum)


def test_dino_equals_the_authors_loss_and_centre_update_on_fixed_inputs():
    student, teacher = outputs(n=6, v_s=5, v_t=2, k=11, seed=3)
    center = torch.randn(1, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    loss_fn = DINOLoss(out_dim=11, student_temperature=0.1, teacher_temperature=0.07, center_momentum=0.9).double()
    loss_fn.center.copy_(center[0])
    # the authors' tensors are view-major: (views * N, K)
    expected, expected_center = authors_dino_loss(
        student.transpose(0, 1).reshape(-1, 11), teacher.transpose(0, 1).reshape(-1, 11), center, 0.1, 0.07, 0.9, 5
    )
    assert torch.allclose(loss_fn(student, teacher), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(loss_fn.center, expected_center[0], rtol=1e-12, atol=1e-12)
