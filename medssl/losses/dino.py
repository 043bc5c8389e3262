"""DINO loss: cross-entropy between a centred, sharpened teacher and the student, over crops."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import LossInputError, check_predictions_and_targets, compute_dtype, outside_autocast


class DINOLoss(nn.Module):
    """Self-distillation with no labels (Caron et al., ICCV 2021).

    The teacher (an EMA of the student, see ``medssl.methods.ema``) sees the V_t global
    crops; the student sees those same global crops first, then any local crops. With
    P_s = softmax(s / tau_s) and P_t = softmax((t - c) / tau_t), the loss averages the
    cross-entropy H(P_t, P_s) = -sum_k P_t[k] log P_s[k] over the batch and over every
    pair (teacher view a, student view b) of different crops (b != a):

        L = mean_{a, b != a} mean_n H(P_t(t_{n,a}), P_s(s_{n,b}))

    With two global crops and no local crop this is H(P_t(x1), P_s(x2))/2 +
    H(P_t(x2), P_s(x1))/2. The teacher gets no gradient. The centre c (a buffer) is then
    updated without gradient, after the loss is computed and only in training mode:

        c <- m c + (1 - m) mean_{n, a} t_{n,a}

    averaged over all processes when ``torch.distributed`` is initialised.

    Args:
        out_dim: K, the number of prototypes (last dimension of the head outputs).
        student_temperature: tau_s.
        teacher_temperature: tau_t (< tau_s sharpens the teacher). It is an attribute,
            so a warm-up schedule can change it between steps.
        center_momentum: m, EMA momentum of the centre.

    Example:
        >>> import torch
        >>> from medssl.losses import DINOLoss
        >>> loss_fn = DINOLoss(out_dim=4096)
        >>> student_out = torch.randn(8, 6, 4096)  # predictions: 2 global + 4 local crops
        >>> teacher_out = torch.randn(8, 2, 4096)  # targets: the 2 global crops
        >>> loss = loss_fn(student_out, teacher_out)
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise LossInputError(
                f"DINOLoss: temperatures must be > 0, got student_temperature={student_temperature!r}, "
                f"teacher_temperature={teacher_temperature!r}"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise LossInputError(f"DINOLoss: center_momentum={center_momentum!r} must be in [0, 1]")
        self.out_dim = out_dim
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss, then update the centre (in training mode).

        Args:
            predictions: (N, V_s, K) student head outputs; views 0..V_t-1 are the global
                crops the teacher saw, in the same order, the rest are local crops.
            targets: (N, V_t, K) teacher head outputs for the global crops (detached here).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        check_predictions_and_targets(predictions, targets, loss_name="DINOLoss")
        if predictions.shape[-1] != self.out_dim:
            raise LossInputError(
                f"DINOLoss: expected K = out_dim = {self.out_dim} outputs per view, got shapes "
                f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        dtype = compute_dtype(predictions)
        teacher_out = targets.detach().to(dtype)
        with outside_autocast(predictions):
            log_p_student = F.log_softmax(predictions.to(dtype) / self.student_temperature, dim=-1)
            p_teacher = F.softmax((teacher_out - self.center.to(dtype)) / self.teacher_temperature, dim=-1)
            # cross_entropy[a, b] = mean over the batch of H(teacher view a, student view b)
            cross_entropy = -torch.einsum("nak,nbk->ab", p_teacher, log_p_student) / predictions.shape[0]
        num_teacher_views, num_student_views = cross_entropy.shape
        other_crop = ~torch.eye(num_teacher_views, num_student_views, dtype=torch.bool, device=cross_entropy.device)
        loss = cross_entropy[other_crop].mean()

        if self.training:
            self._update_center(teacher_out)
        return loss

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, center_momentum={self.center_momentum}"
        )

    @torch.no_grad()
    def _update_center(self, teacher_out: Tensor) -> None:
        batch_center = teacher_out.sum(dim=(0, 1))
        count = torch.tensor(float(teacher_out.shape[0] * teacher_out.shape[1]), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = (batch_center / count).to(self.center.dtype)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
