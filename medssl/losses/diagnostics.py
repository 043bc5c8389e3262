"""Alignment and uniformity of embeddings (Wang & Isola, "Understanding Contrastive
Representation Learning through Alignment and Uniformity on the Hypersphere", ICML 2020).

Both L2-normalise their input first. Lower is better for both: alignment is 0 when the two
views of every subject coincide, uniformity tends to its minimum when the embeddings spread
evenly over the sphere and is 0 when they all collapse to one point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses.layout import LossInputError, compute_dtype, outside_autocast


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Mean distance between positive pairs, E ||f(x) - f(y)||_2^alpha.

    Args:
        z1: (N, D) embeddings of view 1.
        z2: (N, D) embeddings of view 2 of the same subjects.
        alpha: exponent of the distance.

    Returns:
        0-dim tensor in [0, 2^alpha].
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise LossInputError(
            f"alignment: z1 and z2 must both have shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    dtype = compute_dtype(z1)
    squared = (F.normalize(z1.to(dtype), dim=1) - F.normalize(z2.to(dtype), dim=1)).pow(2).sum(dim=1)
    return squared.pow(alpha / 2).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Log of the mean Gaussian potential over distinct pairs, log E exp(-t ||f(x) - f(y)||_2^2).

    Args:
        z: (n, D) embeddings, n >= 2.
        t: scale of the potential.

    Returns:
        0-dim tensor in [-4t, 0].
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise LossInputError(f"uniformity: z must have shape (n, D) with n >= 2, got {tuple(z.shape)}")
    z = F.normalize(z.to(compute_dtype(z)), dim=1)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    # ||a - b||^2 = 2 - 2 <a, b> on the sphere, whose gradient stays finite for equal points.
    with outside_autocast(z):
        squared = (2.0 - 2.0 * (z @ z.T)[i, j]).clamp(min=0.0)
    return torch.logsumexp(-t * squared, dim=0) - math.log(len(i))
