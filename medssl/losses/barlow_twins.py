"""Barlow Twins loss: make the cross-correlation of two views' embeddings the identity."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from medssl.losses.layout import LossInputError, check_embeddings, compute_dtype, outside_autocast


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss (Zbontar et al., ICML 2021).

    Each embedding dimension is standardised over the batch, per view
    (Zn = (Z - mean) / sqrt(var + eps), biased variance, as the BatchNorm without affine
    parameters of the authors' code), and the cross-correlation of the two views is

        C = Z1n^T Z2n / N                                  (D x D)

        L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    Computed in float32 (float64 kept) through D x D products, or, for batches smaller than the
    embedding (N < 3D / 4), through N x N Gram matrices: the same values with fewer products.

    Args:
        lambd: weight of the redundancy-reduction (off-diagonal) term.
        eps: added to the per-dimension batch variance before the square root.

    Example:
        >>> import torch
        >>> from medssl.losses import BarlowTwinsLoss
        >>> loss_fn = BarlowTwinsLoss(lambd=5e-3)
        >>> z1, z2 = torch.randn(16, 256), torch.randn(16, 256)
        >>> loss = loss_fn(torch.stack([z1, z2], dim=1))
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
            z: (N, 2, D) embeddings of the two views.
            y: (N,) labels or None; their values are ignored (the loss uses no labels).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        check_embeddings(z, y, loss_name="BarlowTwinsLoss")
        if z.shape[1] != 2:
            raise LossInputError(f"BarlowTwinsLoss: compares exactly 2 views, got z of shape {tuple(z.shape)}")
        if z.shape[0] < 2:
            raise LossInputError(
                f"BarlowTwinsLoss: standardises over the batch and needs N >= 2 subjects, got {z.shape[0]}"
            )
        function = _BarlowTwinsBySubjects if works_by_subjects(z.shape[0], z.shape[2]) else _BarlowTwins
        return function.apply(z, self.lambd, self.eps)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}"


def works_by_subjects(n_subjects: int, dim: int) -> bool:
    """Whether the N x N form costs less than the D x D one: 4 N^2 D against 3 N D^2 multiply-adds."""
    return 4 * n_subjects < 3 * dim


def _standardize(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(N, 2D) copy of ``z`` in float32 (float64 kept), each column standardised over the batch
    (biased variance), and its 1 / sqrt(var + eps). One copy, standardised in place: fresh memory
    costs more than arithmetic on CPUs (each new page is a fault)."""
    n_subjects, _, dim = z.shape
    standardized = torch.empty((n_subjects, 2 * dim), dtype=compute_dtype(z), device=z.device)
    standardized.view(n_subjects, 2, dim).copy_(z)
    mean, variance = torch.batch_norm_update_stats(standardized, None, None, 0.0)
    inverse_std = variance.add_(eps).rsqrt_()
    standardized.sub_(mean).mul_(inverse_std)
    return standardized, inverse_std


def _keep_for_backward(ctx, z: Tensor, lambd: float, *tensors: Tensor) -> None:
    ctx.save_for_backward(*tensors)
    ctx.lambd = lambd
    ctx.input_dtype = z.dtype
    ctx.used = False


def _saved_once(ctx) -> tuple[Tensor, ...]:
    """The saved tensors, for the one backward a forward allows (it writes the gradient over them)."""
    if ctx.used:
        raise RuntimeError("BarlowTwinsLoss: its backward runs once per forward; compute the loss again")
    ctx.used = True
    return ctx.saved_tensors


class _BarlowTwins(torch.autograd.Function):
    """The loss through D x D products, with a closed-form backward, in float32 (float64 kept).

    With A, B the standardised views (N, D), C = A^T B / N and G = dL/dC
    (G_ii = -2 (1 - C_ii), G_ij = 2 lambd C_ij), the gradient wrt view 1 is

        dL/dZ1 = (B G^T - A diag(rowsum(C o G))) diag(1 / sigma_1)

    (and wrt view 2, A G - B diag(colsum(C o G)), scaled by 1 / sigma_2): the standardisation's
    backward reduced to D x D work, because the columns of A and B have mean 0 and
    A^T B G^T / N = C G^T. Why by hand: the three float32 D x N x D products are the floor of the
    loss, and autograd through ``batch_norm``, the casts and the view split adds about as much
    again in N x D passes; this does one standardised copy and three products, and writes
    the gradient over the saved standardised views (fresh memory costs more than arithmetic on
    CPUs: each new page is a fault). There is no CPU product of bfloat16 inputs into a float32
    result in torch 2.13 (``torch.mm(..., out_dtype=)`` is CUDA-only), and a bfloat16 result
    would round 1 - C_ii, the invariance term, to steps of 0.004; so the products stay in float32.
    """

    @staticmethod
    def forward(ctx, z: Tensor, lambd: float, eps: float) -> Tensor:
        n_subjects, _, dim = z.shape
        standardized, inverse_std = _standardize(z, eps)
        a, b = standardized[:, :dim], standardized[:, dim:]
        with outside_autocast(z):
            c = torch.mm(a.T, b).div_(n_subjects)
        diagonal = c.diagonal()
        loss = (1.0 - diagonal).pow(2).sum() + lambd * (c.pow(2).sum() - diagonal.pow(2).sum())
        _keep_for_backward(ctx, z, lambd, standardized, inverse_std, c)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        standardized, inverse_std, c = _saved_once(ctx)
        n_subjects, dim = standardized.shape[0], c.shape[0]
        g = c * (2.0 * ctx.lambd)
        g.diagonal().copy_(c.diagonal()).sub_(1.0).mul_(2.0)  # dL/dC
        c_times_g = c * g
        scale = inverse_std * (grad_loss / n_subjects)  # 1/sigma, and the 1/N of C = A^T B / N
        scale_a, scale_b = scale[:dim], scale[dim:]
        a, b = standardized[:, :dim], standardized[:, dim:]
        with outside_autocast(standardized):
            product_b = torch.mm(a, g * scale_b)
            # a becomes dL/dZ1 = B G^T / sigma_1 - A diag(rowsum / sigma_1) (beta = -1 negates a's term)
            a.mul_(c_times_g.sum(dim=1).mul_(scale_a)).addmm_(b, g.T * scale_a, beta=-1.0)
        torch.addcmul(product_b, b, c_times_g.sum(dim=0).mul_(scale_b), value=-1.0, out=b)  # b becomes dL/dZ2
        return standardized.view(n_subjects, 2, dim).to(ctx.input_dtype), None, None


class _BarlowTwinsBySubjects(torch.autograd.Function):
    """The same loss through N x N Gram matrices, for batches smaller than the embedding
    (N < 3D / 4: the recipes' 32 subjects x 1024 dimensions, the paper's 2048 x 8192).

    With K_A = A A^T and K_B = B B^T, ||C||_F^2 = <K_A, K_B> / N^2 and C_ii = sum_n A_ni B_ni / N, so

        L = sum_i (1 - C_ii)^2 + lambd (<K_A, K_B> / N^2 - sum_i C_ii^2)
        dL/dA = B diag(h) / N + 2 lambd K_B A / N^2,    h_i = -2 (1 - C_ii) - 2 lambd C_ii

    and dL/dZ1 = (P - A diag(colsum(P o A) / N)) diag(1 / sigma_1) with P = dL/dA, whose columns
    have mean 0 (those of A and B have). Four N x N x D products instead of three D x N x D ones,
    in float32, as the D x D form; the gradient is written over the saved standardised views.
    """

    @staticmethod
    def forward(ctx, z: Tensor, lambd: float, eps: float) -> Tensor:
        n_subjects, _, dim = z.shape
        standardized, inverse_std = _standardize(z, eps)
        a, b = standardized[:, :dim], standardized[:, dim:]
        with outside_autocast(z):
            gram_a, gram_b = torch.mm(a, a.T), torch.mm(b, b.T)
            diagonal = torch.linalg.vecdot(a, b, dim=0).div_(n_subjects)  # C_ii
            squared_norm = torch.linalg.vecdot(gram_a.flatten(), gram_b.flatten()) / n_subjects**2  # ||C||_F^2
        loss = (1.0 - diagonal).pow(2).sum() + lambd * (squared_norm - diagonal.pow(2).sum())
        _keep_for_backward(ctx, z, lambd, standardized, inverse_std, gram_a, gram_b, diagonal)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        standardized, inverse_std, gram_a, gram_b, diagonal = _saved_once(ctx)
        n_subjects, dim = standardized.shape[0], diagonal.shape[0]
        lambd = ctx.lambd
        h = ((diagonal - 1.0) * 2.0 - 2.0 * lambd * diagonal) / n_subjects
        a, b = standardized[:, :dim], standardized[:, dim:]
        scale = inverse_std * grad_loss
        with outside_autocast(standardized):
            p_a = torch.mm(gram_b, a).mul_(2.0 * lambd / n_subjects**2).addcmul_(b, h)  # dL/dA
            p_b = torch.mm(gram_a, b).mul_(2.0 * lambd / n_subjects**2).addcmul_(a, h)  # dL/dB
            for view, product, view_scale in ((a, p_a, scale[:dim]), (b, p_b, scale[dim:])):
                projection = torch.linalg.vecdot(product, view, dim=0).div_(n_subjects)
                view.mul_(projection.neg_()).add_(product).mul_(view_scale)  # the view becomes dL/dZ
        return standardized.view(n_subjects, 2, dim).to(ctx.input_dtype), None, None
