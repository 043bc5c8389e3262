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
    Large bfloat16 batches in the D x D form (N D^2 >= 2^23) take the three products in
    bfloat16 (half their float32 cost on GPUs and CPUs with AVX512-BF16) but keep the invariance
    term 1 - C_ii in float32: the gradient is within about 0.6 % of float64's on the same input,
    against 4-23 % for the loss computed wholly in bfloat16.

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
        if works_by_subjects(z.shape[0], z.shape[2]):
            return _BarlowTwinsBySubjects.apply(z, self.lambd, self.eps)
        if uses_bfloat16_products(z):
            return _BarlowTwinsBfloat16.apply(z, self.lambd, self.eps)
        return _BarlowTwins.apply(z, self.lambd, self.eps)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}"


def works_by_subjects(n_subjects: int, dim: int) -> bool:
    """Whether the N x N form costs less than the D x D one: 4 N^2 D against 3 N D^2 multiply-adds."""
    return 4 * n_subjects < 3 * dim


BFLOAT16_PRODUCTS_FROM = 2**23  # multiply-adds per D x N x D product


def uses_bfloat16_products(z: Tensor) -> bool:
    """Whether bfloat16 embeddings (N, 2, D) take the D x D products in bfloat16: when they are
    large enough that halving their cost outweighs the passes that keep the invariance term in
    float32 (on one Zen 4 core the two forms cross at N D^2 = 2^23: N = 512 at D = 128)."""
    n_subjects, _, dim = z.shape
    return z.dtype == torch.bfloat16 and n_subjects * dim * dim >= BFLOAT16_PRODUCTS_FROM


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


def _bfloat16_loss(z: Tensor, lambd: float, eps: float) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The loss of :class:`_BarlowTwinsBfloat16` and what its backward reads."""
    n_subjects, _, dim = z.shape
    # float32 weights make native_batch_norm return float32 statistics with the bfloat16 views
    views, mean, inverse_std = torch.native_batch_norm(
        z.reshape(n_subjects, 2 * dim),
        torch.ones(2 * dim, dtype=torch.float32, device=z.device),
        None,
        None,
        None,
        True,
        0.0,
        eps,
    )
    shifts = (mean * inverse_std).view(2, dim)
    difference = z[:, 1].float()
    torch.addcmul(shifts[0] - shifts[1], difference, inverse_std[dim:], out=difference)
    difference.addcmul_(z[:, 0].float(), inverse_std[:dim], value=-1.0)  # Δ = B - A
    difference_mean, difference_var = torch.batch_norm_update_stats(difference, None, None, 0.0)
    # 1 - C_ii = (eps / (var_A + eps) + eps / (var_B + eps) + |Δ|^2 / N) / 2
    one_minus_diagonal = inverse_std.square().view(2, dim).sum(dim=0).mul_(eps).add_(difference_var)
    one_minus_diagonal.addcmul_(difference_mean, difference_mean).mul_(0.5)
    c = torch.mm(views[:, :dim].T, views[:, dim:])  # N C
    c.diagonal().zero_()
    squares = c * c
    sums = torch.stack((squares.sum(dim=1, dtype=torch.float32), squares.sum(dim=0, dtype=torch.float32)))
    loss = torch.dot(one_minus_diagonal, one_minus_diagonal) + sums[0].sum() * (lambd / n_subjects**2)
    low_difference = difference.to(torch.bfloat16)
    return loss, (views, low_difference, c, squares, inverse_std, one_minus_diagonal, sums)


class _BarlowTwinsBfloat16(torch.autograd.Function):
    """The D x D form for large bfloat16 batches: the three D x N x D products in bfloat16, the
    invariance term in float32.

    The standardised views A, B rounded to bfloat16 would round 1 - C_ii to steps of 0.004 (at
    C_ii = 0.999 nothing would be left of it). So the difference of the views, Δ = B - A, is
    formed in float32 from the input and float32 statistics, and, since a column of A has
    squared norm N var / (var + eps),

        1 - C_ii = (eps / (var_A,i + eps) + eps / (var_B,i + eps) + |Δ_i|^2 / N) / 2

    with no cancellation. The gradient's terms that cancel when the views agree,
    B diag(G_ii) - A diag(C_ii G_ii), are carried by Δ too. With G = dL/dC, G_off its
    off-diagonal, S = diag(1 / sigma_A) grad / N, alpha = S diag(G) and beta = S rowsum(C o G),

        dL/dZ1 = B (G_off^T S + diag(alpha - beta)) + Δ diag(beta)
        dL/dZ2 = A (G_off S' + diag(alpha' - beta')) - Δ diag(beta')

    (S', alpha', beta' from view 2 and column sums). The products read the bfloat16 views and
    the lambd-weighted off-diagonal term; Δ is kept in bfloat16, rounded from float32. Buffers are
    few and reused (the gradient is written over the views): fresh memory costs more than
    arithmetic on CPUs, each new page being a fault.
    """

    @staticmethod
    def forward(ctx, z: Tensor, lambd: float, eps: float) -> Tensor:
        with outside_autocast(z):  # autocast would round the float32 steps too
            loss, saved = _bfloat16_loss(z, lambd, eps)
        _keep_for_backward(ctx, z, lambd, *saved)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        views, difference, c, buffer, inverse_std, one_minus_diagonal, sums = _saved_once(ctx)
        n_subjects, dim = views.shape[0], c.shape[0]
        off_per_c = 2.0 * ctx.lambd / n_subjects  # G_off = off_per_c (N C)_off
        g_diagonal = one_minus_diagonal * -2.0
        on_diagonal = (1.0 - one_minus_diagonal).mul_(g_diagonal)  # C_ii G_ii
        scale = (inverse_std * (grad_loss / n_subjects)).view(2, dim)  # S, S'
        beta = sums.mul(off_per_c / n_subjects).add_(on_diagonal).mul_(scale)  # S rowsum(C o G), S' colsum
        kernel_diagonal = scale.mul(g_diagonal).sub_(beta)  # alpha - beta
        weights = scale.mul(off_per_c).to(c.dtype)
        low_beta = beta.to(c.dtype)
        kernel_b = torch.mul(c, weights[1], out=buffer)  # G_off S'
        kernel_b.diagonal().copy_(kernel_diagonal[1])
        kernel_a = c.mul_(weights[0].unsqueeze(1))  # (G_off^T S)^T
        kernel_a.diagonal().copy_(kernel_diagonal[0])
        a, b = views[:, :dim], views[:, dim:]
        with outside_autocast(views):
            product_b = torch.mm(a, kernel_b)
            torch.mul(difference, low_beta[0], out=a)
            a.addmm_(b, kernel_a.T)  # a becomes dL/dZ1
        torch.addcmul(product_b, difference, low_beta[1], value=-1.0, out=b)  # b becomes dL/dZ2
        return views.view(n_subjects, 2, dim), None, None
