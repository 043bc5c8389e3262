"""What every loss does to its input before the formula: shapes, layout, labels, masks.

Embeddings arrive as ``(N, V, D)``: N subjects, V views, D dimensions. The contrastive
losses lay them out view-major internally (row ``v*N + k`` is view ``v`` of subject ``k``).
To train on embeddings gathered across processes, gather along dim 0 (subjects): the result
is again ``(N, V, D)``.
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
    z: Tensor,
    y: Tensor | Sequence[float] | None = None,
    *,
    loss_name: str = "loss",
    min_views: int = 2,
    labels_used: bool = False,
) -> tuple[Tensor, Tensor | None, int]:
    """Check ``z`` and ``y`` and lay ``z`` out view-major.

    Args:
        z: (N, V, D) embeddings.
        y: (N,) labels or None.
        loss_name: named in error messages.
        min_views: the fewest views the loss can use.
        labels_used: the loss reads the label values (they must then be finite).

    Returns:
        ``(z, y, n_views)`` with z of shape (V*N, D), view-major, and y a (N,) tensor on z's
        device (or None).
    """
    z, y = check_embeddings(z, y, loss_name=loss_name, min_views=min_views, labels_used=labels_used)
    n_subjects, n_views, dim = z.shape
    return z.transpose(0, 1).reshape(n_views * n_subjects, dim), y, n_views


def check_embeddings(
    z: Tensor,
    y: Tensor | Sequence[float] | None = None,
    *,
    loss_name: str = "loss",
    min_views: int = 2,
    labels_used: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Raise :class:`LossInputError` unless ``z`` is (N, V, D) floating point with N >= 1 and
    V >= ``min_views``, and ``y`` is None or N labels (finite ones when ``labels_used``);
    return ``y`` as a tensor on z's device."""
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise LossInputError(
            f"{loss_name}: z must be a floating-point tensor, got {type(z).__name__} {getattr(z, 'dtype', '')}"
        )
    if z.ndim != 3:
        hint = " (for two (N, D) views: torch.stack([z1, z2], dim=1))" if z.ndim == 2 else ""
        raise LossInputError(
            f"{loss_name}: z must have shape (N, V, D) (subjects, views, dim), got shape {tuple(z.shape)}{hint}"
        )
    n_subjects, n_views, _ = z.shape
    if y is not None:
        y = check_labels(y, z, loss_name=loss_name, values_used=labels_used)
    if n_subjects == 0 or n_views < min_views:
        raise LossInputError(
            f"{loss_name}: needs at least {min_views} views of at least 1 subject, got N={n_subjects}, V={n_views}"
        )
    return z, y


def check_labels(y: Tensor | Sequence[float], z: Tensor, *, loss_name: str, values_used: bool) -> Tensor:
    """``y`` as an (N,) tensor on z's device; :class:`LossInputError` unless it holds one label per
    subject of the (N, V, D) ``z`` (a wrong length is a caller's bug even where the loss ignores
    y) and, when the loss reads the values, none is NaN or inf.

    The finiteness test runs where ``y`` arrives: free for labels on the CPU, one device sync on an
    N-vector for labels already on a GPU (the training step syncs on its loss anyway).
    """
    y = torch.as_tensor(y)
    n_subjects = z.shape[0]
    if y.ndim != 1:
        raise LossInputError(f"{loss_name}: y must have shape (N,), got shape {tuple(y.shape)}")
    if len(y) != n_subjects:
        raise LossInputError(
            f"{loss_name}: y has {len(y)} labels but z of shape {tuple(z.shape)} holds N={n_subjects} subjects"
        )
    if values_used and y.is_floating_point() and not bool(torch.isfinite(y).all()):
        bad = (~torch.isfinite(y)).nonzero().flatten().tolist()
        raise LossInputError(
            f"{loss_name}: labels y must be finite numbers, got {y[bad[0]].item()} at index {bad[0]} "
            f"({len(bad)} of {n_subjects} labels are NaN or inf)"
        )
    return y.to(z.device)


def two_views(z: Tensor, y: Tensor | Sequence[float] | None = None, *, loss_name: str) -> tuple[Tensor, Tensor]:
    """(N, 2, D) -> the two (N, D) views, float32 (float64 kept), for losses defined on a pair
    (``y``, which they ignore, is only checked to hold N labels)."""
    check_embeddings(z, y, loss_name=loss_name)
    if z.shape[1] != 2:
        raise LossInputError(f"{loss_name}: compares exactly 2 views, got z of shape {tuple(z.shape)}")
    z = z.to(compute_dtype(z))
    return z[:, 0], z[:, 1]


def check_predictions_and_targets(
    predictions: Tensor, targets: Tensor, *, loss_name: str, n_views: int | None = None
) -> None:
    """Raise :class:`LossInputError` unless both are floating-point (N, V, D) tensors of one N and
    D, with V_p = V_t = ``n_views`` or, when it is None, V_p >= V_t and V_p >= 2."""
    tensors = (predictions, targets)
    if not all(isinstance(t, Tensor) and t.is_floating_point() and t.ndim == 3 for t in tensors):
        got = " and ".join(
            f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__ for t in tensors
        )
        raise LossInputError(
            f"{loss_name}: expected floating-point predictions and targets of shape (N, V, D), got {got}"
        )
    (n_p, v_p, d_p), (n_t, v_t, d_t) = predictions.shape, targets.shape
    shapes = f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
    for letter, meaning, of_predictions, of_targets in (("N", "subjects", n_p, n_t), ("D", "dimensions", d_p, d_t)):
        if of_predictions != of_targets:
            raise LossInputError(
                f"{loss_name}: predictions and targets must have the same {letter} ({meaning}), "
                f"got {letter} = {of_predictions} and {of_targets} in shapes {shapes}"
            )
    views_fit = v_p == v_t == n_views if n_views is not None else v_t <= v_p and v_p >= 2
    if not views_fit:
        views = f"V_p = V_t = {n_views}" if n_views is not None else "V_p >= V_t and V_p >= 2"
        raise LossInputError(
            f"{loss_name}: expected predictions (N, V_p, D) and targets (N, V_t, D) with {views}, got {shapes}"
        )


def outside_autocast(z: Tensor) -> torch.autocast:
    """A context in which autocast is off on z's device.

    Why: a training step runs the loss inside bfloat16/float16 autocast, which would run the
    losses' float32 products (similarities, cross-correlations) in the low precision.
    """
    return torch.autocast(device_type=z.device.type, enabled=False)


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
        z: (N, V, D) embeddings, any float dtype.
        y: (N,) labels, or None.
        temperature: tau of s_ij = <z_i, z_j> / tau.
        loss_name: named in error messages.
        labels_required: the loss reads the labels: raise when ``y`` is None or not finite.
        min_views: the fewest views the loss can use.
    """
    if labels_required and y is None:
        raise LossInputError(f"{loss_name}: needs labels y of shape (N,), got None")
    z, y, n_views = view_major(z, y, loss_name=loss_name, min_views=min_views, labels_used=labels_required)
    n = z.shape[0]
    dtype = compute_dtype(z)
    with outside_autocast(z):
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
