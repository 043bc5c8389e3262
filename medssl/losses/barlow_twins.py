"""Barlow Twins loss: make the cross-correlation of two views' embeddings the identity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import LossInputError, compute_dtype, view_major


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss (Zbontar et al., ICML 2021).

    Each embedding dimension is standardised over the batch, per view
    (Zn = (Z - mean) / sqrt(var + eps), biased variance, as the BatchNorm without affine
    parameters of the authors' code), and the cross-correlation of the two views is

        C = Z1n^T Z2n / N                                  (D x D)

        L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    Args:
        lambd: weight of the redundancy-reduction (off-diagonal) term.
        eps: added to the per-dimension batch variance before the square root.

    Example:
        >>> loss_fn = BarlowTwinsLoss(lambd=5e-3)
        >>> z1, z2 = torch.randn(16, 256), torch.randn(16, 256)
        >>> loss = loss_fn(torch.cat([z1, z2]))  # or loss_fn(torch.stack([z1, z2], dim=1))
    """

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        if lambd < 0:
            raise LossInputError(f"BarlowTwinsLoss: lambd={lambd!r} must be >= 0")
        self.lambd = lambd
        self.eps = eps

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            z: (2N, D) embeddings, view-major (rows 0..N-1 view 1, N..2N-1 view 2),
                or (N, 2, D).
            y: ignored (the loss uses no labels), except that a 2-D z takes N = len(y) from it.

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        z1, z2 = _two_views(z, y)
        n = z1.shape[0]
        if n < 2:
            raise LossInputError(f"BarlowTwinsLoss: standardises over the batch and needs N >= 2 subjects, got {n}")
        c = _standardize(z1, self.eps).T @ _standardize(z2, self.eps) / n
        on_diagonal = (1.0 - torch.diagonal(c)).pow(2).sum()
        off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diagonal + self.lambd * off_diagonal

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}"


def _standardize(z: Tensor, eps: float) -> Tensor:
    """(z - mean) / sqrt(biased var + eps) per dimension over the batch.

    ``batch_norm`` in training mode without running statistics or affine parameters computes
    exactly this in one fused pass (and backward), about twice as fast as the written-out form.
    """
    return F.batch_norm(z, None, None, training=True, eps=eps)


def _two_views(z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """(2N, D) view-major or (N, 2, D) -> two (N, D) tensors, float32 (float64 kept)."""
    z, _, n_views = view_major(z, y, loss_name="BarlowTwinsLoss")
    if n_views != 2:
        raise LossInputError(f"BarlowTwinsLoss: compares exactly 2 views, got {n_views}")
    return z.to(compute_dtype(z)).chunk(2)
