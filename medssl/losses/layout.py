"""What every contrastive loss does to its input before the formula: layout, labels, masks.

A batch of N subjects seen in V views arrives either as ``(n, D)`` view-major rows (rows
``v*N .. v*N + N-1`` are view ``v`` of subjects ``0 .. N-1``, as ``torch.cat([z1, z2])``) or as
``(N, V, D)``. A 2-D ``z`` takes N from ``len(y)`` when labels are given and otherwise is read
as two views. To train on embeddings gathered across processes, gather the ``(N, V, D)``
layout (stacking subjects on dim 0 keeps it valid); concatenating per-process view-major
blocks does not give a view-major batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.errors import MedsslError


class LossInputError(MedsslError, ValueError):
    """Embeddings or labels given to a loss have the wrong shape, type or value."""


@dataclass(frozen=True)
class ContrastiveBatch:
    """The pieces every contrastive loss needs, built once per call.

    Attributes:
        similarities: (n, n) scaled cosine similarities s_ij = <z_i, z_j> / tau, float32
            (float64 when z is float64).
        labels: (n,) labels repeated over views, or None.
        subjects: (n,) subject index of each row.
        not_self: (n, n) bool, False on the diagonal.
        n_views: V.
    """

    similarities: Tensor
    labels: Tensor | None
    subjects: Tensor
    not_self: Tensor
    n_views: int

    @property
    def other_views(self) -> Tensor:
        """(n, n) bool: j is another view of the subject of i (NT-Xent positives)."""
        return (self.subjects[:, None] == self.subjects[None, :]) & self.not_self

    @property
    def subject_labels(self) -> Tensor:
        """(N,) labels, one per subject: what label kernels are computed on before tiling."""
        if self.labels is None:
            raise LossInputError("label-weighted losses need labels y, got None")
        return self.labels[: len(self.labels) // self.n_views]

    @property
    def same_label(self) -> Tensor:
        """(n, n) bool: j != i has the label of i (SupCon positives)."""
        if self.labels is None:
            raise LossInputError("class-label positives need labels y, got None")
        return (self.labels[:, None] == self.labels[None, :]) & self.not_self


def check_temperature(temperature: float) -> None:
    """Raise :class:`LossInputError` unless the temperature is a positive number."""
    if not temperature > 0:
        raise LossInputError(f"temperature={temperature!r} must be a positive number")


def compute_dtype(z: Tensor) -> torch.dtype:
    """float64 for float64 input, float32 otherwise (bfloat16/float16 are up-cast)."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def view_major(
    z: Tensor, y: Tensor | Sequence[float] | None = None, *, loss_name: str = "loss", min_views: int = 2
) -> tuple[Tensor, Tensor | None, int]:
    """Bring ``z`` to view-major ``(n, D)`` and check ``y`` against it.

    Args:
        z: (n, D) view-major or (N, V, D) embeddings.
        y: (N,) labels or None.
        loss_name: named in error messages.
        min_views: the fewest views the loss can use.

    Returns:
        ``(z, y, n_views)`` with z of shape (N*V, D) and y a (N,) tensor on z's device (or None).
    """
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise LossInputError(f"{loss_name}: z must be a floating-point tensor, got {type(z).__name__} {getattr(z, 'dtype', '')}")
    if y is not None:
        y = torch.as_tensor(y, device=z.device)
        if y.ndim != 1:
            raise LossInputError(f"{loss_name}: y must have shape (N,), got shape {tuple(y.shape)}")
    if z.ndim == 3:
        n_subjects, n_views, dim = z.shape
        if y is not None and len(y) != n_subjects:
            raise LossInputError(f"{loss_name}: y has {len(y)} labels but z of shape {tuple(z.shape)} holds N={n_subjects} subjects")
        z = z.transpose(0, 1).reshape(n_views * n_subjects, dim)
    elif z.ndim == 2:
        n = z.shape[0]
        n_subjects = len(y) if y is not None else n // 2
        if n_subjects == 0 or n % n_subjects != 0 or (y is None and n % 2 != 0):
            expected = f"a multiple of len(y)={len(y)}" if y is not None else "even (a 2-D z without y is read as 2 views)"
            raise LossInputError(f"{loss_name}: z has {n} rows, expected {expected}")
        n_views = n // n_subjects
    else:
        raise LossInputError(f"{loss_name}: z must have shape (n, D) or (N, V, D), got shape {tuple(z.shape)}")
    if n_subjects == 0 or n_views < min_views:
        raise LossInputError(f"{loss_name}: needs at least {min_views} views of at least 1 subject, got N={n_subjects}, V={n_views}")
    return z, y, n_views


def contrastive_batch(
    z: Tensor,
    y: Tensor | Sequence[float] | None,
    temperature: float,
    *,
    loss_name: str,
    labels_required: bool,
    min_views: int = 2,
) -> ContrastiveBatch:
    """Check the input, L2-normalise, and build similarities and masks once.

    Args:
        z: (n, D) view-major or (N, V, D) embeddings, any float dtype.
        y: (N,) labels, or None.
        temperature: tau of s_ij = <z_i, z_j> / tau.
        loss_name: named in error messages.
        labels_required: raise when ``y`` is None.
        min_views: the fewest views the loss can use.
    """
    if labels_required and y is None:
        raise LossInputError(f"{loss_name}: needs labels y of shape (N,), got None")
    z, y, n_views = view_major(z, y, loss_name=loss_name, min_views=min_views)
    n = z.shape[0]
    dtype = compute_dtype(z)
    z = F.normalize(z.to(dtype), dim=1)
    similarities = (z / temperature) @ z.T  # scaling z is an n x D pass, scaling s an n x n one
    labels = y.repeat(n_views) if y is not None else None
    subjects = torch.arange(n // n_views, device=z.device).repeat(n_views)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return ContrastiveBatch(similarities, labels, subjects, not_self, n_views)


def masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise ``log sum_{j: mask_ij} exp(x_ij)``; -inf for empty rows, with finite gradients.

    Empty rows are evaluated on zeros and replaced afterwards, so that no NaN from an all
    -inf row reaches the gradient.
    """
    has_any = mask.any(dim=1, keepdim=True)
    outside = torch.where(has_any, float("-inf"), 0.0).to(x.dtype)
    lse = torch.where(mask, x, outside).logsumexp(dim=1)
    return torch.where(has_any.squeeze(1), lse, float("-inf"))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise mean of ``x`` over ``mask``; 0 for empty rows."""
    count = mask.sum(dim=1).clamp(min=1)
    return torch.where(mask, x, torch.zeros_like(x)).sum(dim=1) / count


def mean_over_anchors(per_anchor: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean of the per-anchor losses over valid anchors.

    With no valid anchor the result is 0, still connected to the graph so that
    ``backward`` gives zero gradients rather than an error.
    """
    if valid is None:
        return per_anchor.mean()
    kept = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return kept.sum() / valid.sum().clamp(min=1)
