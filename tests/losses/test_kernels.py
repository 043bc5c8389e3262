import math

import pytest
import torch

from medssl.losses import LossInputError, label_kernel
from medssl.losses.kernels import exp_or_zero, pair_weights


def test_kernels_take_their_textbook_values_one_sigma_apart():
    a, b = torch.tensor([30.0]), torch.tensor([30.0, 32.0])
    gaussian = label_kernel(a, b, "gaussian", 2.0)
    rbf = label_kernel(a, b, "rbf", 2.0)
    cauchy = label_kernel(a, b, "cauchy", 2.0)
    peak = 1 / (math.sqrt(2 * math.pi) * 2.0)
    torch.testing.assert_close(gaussian, torch.tensor([[peak, peak * math.exp(-0.5)]]))
    torch.testing.assert_close(rbf, torch.tensor([[1.0, math.exp(-0.5)]]))
    torch.testing.assert_close(cauchy, torch.tensor([[1.0, 0.5]]))


def test_label_kernel_is_pairwise_and_symmetric():
    y = torch.tensor([20.0, 35.0, 50.0, 51.0])
    w = label_kernel(y, y, "rbf", 5.0)
    assert w.shape == (4, 4)
    torch.testing.assert_close(w, w.T)
    assert torch.all(w.diagonal() == 1.0)


def test_label_kernel_keeps_float64_labels_in_float64():
    y = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert label_kernel(y, y, "cauchy", 1.0).dtype == torch.float64


def test_unknown_kernel_is_a_loss_input_error():
    with pytest.raises(LossInputError, match="laplace"):
        label_kernel(torch.zeros(2), torch.zeros(2), "laplace", 1.0)


def test_non_positive_sigma_is_a_value_error():
    with pytest.raises(ValueError, match="sigma=0"):
        label_kernel(torch.zeros(2), torch.zeros(2), "rbf", 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_or_zero_is_exp_down_to_the_smallest_normal_number_and_zero_below(dtype):
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([0.0, -1.0, -80.0, math.log(tiny) + 1e-3, math.log(tiny) - 1e-3, -120.0, -1000.0], dtype=dtype)
    result = exp_or_zero(x)
    normal = x >= math.log(tiny)
    torch.testing.assert_close(result[normal], x[normal].exp(), rtol=0, atol=0)
    assert torch.all(result[~normal] == 0) and torch.all(x.exp()[~normal] < tiny)


@pytest.mark.parametrize("kernel", ["gaussian", "rbf", "cauchy"])
def test_pair_weights_tile_the_subject_kernel_over_views_with_a_zero_diagonal(kernel):
    y = torch.tensor([20.0, 35.0, 50.0, 51.0, 90.0])
    repeated = y.repeat(3)
    expected = label_kernel(repeated, repeated, kernel, 2.0).fill_diagonal_(0.0)
    assert torch.equal(pair_weights(y, 3, kernel, 2.0, torch.float32), expected)


def test_label_kernel_without_flushing_keeps_the_subnormal_weights_of_a_plain_exp():
    # sigma = 2: a 27-year gap is subnormal in float32, a 40-year one underflows to 0.
    y = torch.tensor([20.0, 47.0, 60.0])
    w = label_kernel(y, y, "gaussian", 2.0, flush_underflow=False)
    assert 0 < w[0, 1] < torch.finfo(torch.float32).tiny and w[0, 2] == 0
    assert label_kernel(y, y, "gaussian", 2.0)[0, 1] == 0
