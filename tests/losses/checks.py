"""Inputs and comparisons shared by the loss tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def embeddings(
    n_subjects: int, n_views: int = 2, dim: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """(N, V, D) random embeddings that require grad."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_subjects, n_views, dim, generator=generator, dtype=dtype).requires_grad_()


def ages(n_subjects: int, seed: int = 0) -> Tensor:
    """Integer ages in [20, 60); from 3 subjects on, the last one has the age of the first (a tie)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(20, 60, (n_subjects,), generator=generator).to(torch.float64)
    if n_subjects >= 3:
        y[-1] = y[0]
    return y


def classes(n_subjects: int, n_classes: int = 3, seed: int = 0) -> Tensor:
    """Class labels in [0, n_classes)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_classes, (n_subjects,), generator=generator)


def assert_same_value_and_gradient(
    loss: Callable[[Tensor], Tensor], reference: Callable[[Tensor], Tensor], z: Tensor
) -> None:
    """``loss(z)`` and ``reference(z)`` agree in value and in gradient wrt z, to 1e-5."""
    value = loss(z)
    expected = reference(z)
    (gradient,) = torch.autograd.grad(value, z)
    (expected_gradient,) = torch.autograd.grad(expected, z)
    assert value.shape == ()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-5)
