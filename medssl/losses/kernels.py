"""Kernels on labels: how close two subjects are in label space (e.g. age in years).

Used as positive weights w_ij = K(y_i, y_j) by the y-aware (Dufumier et al., MICCAI 2021),
threshold and exponential (Barbano et al., ISBI 2023) losses:

- gaussian: K(a, b) = exp(-(a-b)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)
- rbf:      K(a, b) = exp(-(a-b)^2 / (2 sigma^2))
- cauchy:   K(a, b) = 1 / (1 + ((a-b)/sigma)^2)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medssl.losses.layout import LossInputError

KERNELS = ("gaussian", "rbf", "cauchy")


def check_kernel(kernel: str, sigma: float) -> None:
    """Raise :class:`LossInputError` unless ``kernel`` is known and ``sigma`` is positive."""
    if kernel not in KERNELS:
        raise LossInputError(f"kernel={kernel!r} is unknown, expected one of {', '.join(KERNELS)}")
    if not sigma > 0:
        raise LossInputError(f"sigma={sigma!r} must be a positive number (label units, e.g. years)")


def label_kernel(
    y_a: Tensor, y_b: Tensor, kernel: str = "rbf", sigma: float = 5.0, *, flush_underflow: bool = True
) -> Tensor:
    """Pairwise kernel values K(y_a[i], y_b[j]).

    Args:
        y_a: (n,) labels.
        y_b: (m,) labels.
        kernel: "gaussian", "rbf" or "cauchy".
        sigma: bandwidth, in label units.
        flush_underflow: set gaussian and rbf values that would fall below the smallest normal
            number to 0 (see :func:`exp_or_zero`). ``False`` computes a plain
            ``exp(-(a-b)^2 / (2 sigma^2))`` as the authors' code (EIDOSLAB) writes it and keeps
            its subnormal values: a loss that counts strictly smaller weights (the threshold
            loss's reference code) then ranks them above the zeros, as that code does.

    Returns:
        (n, m) tensor, float32 (float64 when either input is float64).

    Example:
        >>> import torch
        >>> from medssl.losses import label_kernel
        >>> ages = torch.tensor([30.0, 32.0, 60.0])
        >>> w = label_kernel(ages, ages, kernel="rbf", sigma=5.0)  # w[0, 1] = exp(-4 / 50)
    """
    check_kernel(kernel, sigma)
    dtype = torch.float64 if torch.float64 in (y_a.dtype, y_b.dtype) else torch.float32
    difference = y_a.to(dtype)[:, None] - y_b.to(dtype)[None, :]
    scaled = difference / sigma
    if kernel == "cauchy":
        return 1.0 / (1.0 + scaled**2)
    # Unflushed, the exponent is rounded as the authors' code writes it, so subnormals tie alike.
    rbf = exp_or_zero(-0.5 * scaled**2) if flush_underflow else (-(difference**2) / (2 * sigma**2)).exp()
    if kernel == "gaussian":
        return rbf / (math.sqrt(2.0 * math.pi) * sigma)
    return rbf


def exp_or_zero(x: Tensor) -> Tensor:
    """exp(x), set to 0 where it falls below the smallest normal number of x's dtype.

    Why: a weight under 1.2e-38 (float32; 2.2e-308 in float64) changes no sum it enters, and
    x86 CPUs compute ``exp`` of such arguments on a slow path (subnormal or underflowing
    results): 20-50x slower than of normal-range arguments on an AMD EPYC. Far-apart labels
    (a gaussian kernel with sigma = 2 years underflows beyond 26 years) make many of them.
    """
    underflows = x < math.log(torch.finfo(x.dtype).tiny)
    return x.masked_fill(underflows, 0.0).exp_().masked_fill_(underflows, 0.0)


def pair_weights(y: Tensor, n_views: int, kernel: str, sigma: float, dtype: torch.dtype) -> Tensor:
    """(n, n) weights w_ij = K(y_i, y_j) of the view-major batch, 0 on the diagonal (j = i).

    The kernel is computed on the N x N distinct label pairs and tiled over the V x V view
    blocks: the same values as on the repeated labels, for 1/V^2 of the work.

    Args:
        y: (N,) labels.
        n_views: V.
        kernel, sigma: as in :func:`label_kernel`.
        dtype: dtype of the weights (that of the similarities).
    """
    labels = y.to(dtype)
    weights = label_kernel(labels, labels, kernel, sigma).repeat(n_views, n_views)
    weights.diagonal().zero_()
    return weights
