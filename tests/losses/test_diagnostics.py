import math

import pytest
import torch

from medssl.losses import LossInputError, alignment, uniformity


def test_alignment_is_zero_for_identical_views_and_ignores_scale():
    z = torch.randn(5, 8)
    assert alignment(z, 3 * z).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_of_opposite_views_is_the_squared_diameter():
    z = torch.randn(5, 8)
    assert alignment(z, -z).item() == pytest.approx(4.0)
    assert alignment(z, -z, alpha=1).item() == pytest.approx(2.0)


def test_uniformity_of_a_collapsed_batch_is_zero():
    z = torch.ones(6, 4)
    assert uniformity(z).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_of_two_antipodal_points_is_minus_four_t():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(z, t=2).item() == pytest.approx(-8.0)


def test_uniformity_averages_over_distinct_pairs():
    z = torch.nn.functional.normalize(torch.randn(7, 3, dtype=torch.float64), dim=1)
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
    expected = math.log(sum(math.exp(-2 * float((z[i] - z[j]).pow(2).sum())) for i, j in pairs) / len(pairs))
    assert uniformity(z).item() == pytest.approx(expected)


def test_uniformity_has_a_finite_gradient_for_coinciding_points():
    z = torch.ones(4, 3, requires_grad=True)
    uniformity(z).backward()
    assert torch.isfinite(z.grad).all()


def test_uniformity_needs_two_embeddings():
    with pytest.raises(LossInputError, match="n >= 2"):
        uniformity(torch.randn(1, 4))
