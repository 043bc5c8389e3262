import pytest
import torch
import torch.nn.functional as F

from medssl.losses import ThresholdLoss

from .checks import ages, assert_same_value_and_gradient, embeddings
from .reference import threshold_authors_code, threshold_loop, threshold_reference_code_loop


@pytest.mark.parametrize("n_subjects", [2, 8])
def test_threshold_matches_literal_triple_loop_in_value_and_gradient(n_subjects):
    z, y = embeddings(n_subjects), ages(n_subjects)
    loss = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: threshold_loop(z, y, 0.1, 2.0, "gaussian"), z)


def test_threshold_matches_loop_transcription_at_64_subjects():
    z, y = embeddings(64), ages(64)
    loss = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
    reference = lambda z: threshold_loop(z, y, 0.1, 2.0, "gaussian", literal_inner=False)  # noqa: E731
    assert_same_value_and_gradient(lambda z: loss(z, y), reference, z)


def test_threshold_keeps_equal_weights_out_of_each_others_denominator():
    # Four label values over 12 subjects and symmetric offsets (40 +- 5): many tied weights.
    z = embeddings(12, seed=3)
    y = torch.tensor([35, 40, 45, 50] * 3, dtype=torch.float64)
    loss = ThresholdLoss(temperature=0.1, sigma=5.0, kernel="rbf")
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: threshold_loop(z, y, 0.1, 5.0, "rbf"), z)


@pytest.mark.parametrize("temperature", [0.1, 0.002])
def test_threshold_matches_loop_in_linear_and_log_scale_with_three_views(temperature):
    # tau = 0.002 is below the range where exp(s - 1/tau) stays normal even in float64, so the
    # log-scale path runs; tied weights from repeated labels on both.
    z = embeddings(6, n_views=3, seed=4)
    y = torch.tensor([30, 40, 30, 50, 40, 35], dtype=torch.float64)
    loss = ThresholdLoss(temperature=temperature, sigma=5.0, kernel="rbf")
    reference = lambda z: threshold_loop(z, y, temperature, 5.0, "rbf")  # noqa: E731
    assert_same_value_and_gradient(lambda z: loss(z, y), reference, z)


@pytest.mark.parametrize("temperature", [0.1, 0.02])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threshold_in_low_precision_matches_float64_within_float32_rounding(dtype, temperature):
    # At tau = 0.02 float32 takes the log-scale path and float64 the linear one.
    z, y = embeddings(64, seed=5), ages(64, seed=5)
    loss = ThresholdLoss(temperature=temperature)
    expected = loss(z.detach().to(dtype).double(), y)
    value = loss(z.detach().to(dtype), y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)


def test_threshold_of_a_batch_with_one_label_is_zero():
    # Every weight ties, so each positive is alone in its denominator.
    z = embeddings(5)
    assert ThresholdLoss()(z, torch.full((5,), 40.0)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_threshold_reference_code_matches_loop_transcription(n_subjects):
    z, y = embeddings(n_subjects), ages(n_subjects)
    loss = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian", reference_code=True)
    reference = lambda z: threshold_reference_code_loop(z, y, 0.1, 2.0, "gaussian")  # noqa: E731
    assert_same_value_and_gradient(lambda z: loss(z, y), reference, z)


@pytest.mark.parametrize("n_views", [2, 3])
def test_threshold_reference_code_equals_the_authors_code_in_float32_where_the_kernel_underflows(n_views):
    # Ages 20..90: gaps of 26 to 29 years give subnormal gaussian weights at sigma = 2 (float32),
    # from about 29 years on they are 0; the authors' counts rank the subnormals above the zeros.
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(32, n_views, 16, generator=generator)
    y = 20 + 70 * torch.rand(32, generator=generator)
    loss = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian", reference_code=True)
    torch.testing.assert_close(loss(z, y), threshold_authors_code(z, y, 0.1, 2.0), rtol=1e-6, atol=1e-6)


def test_threshold_reference_code_reproduces_the_worked_check_of_the_spec():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 2, 16, dtype=torch.float64), dim=-1)
    y = torch.tensor([30, 30, 45, 50, 62, 80], dtype=torch.float64)
    loss = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian", reference_code=True)
    assert loss(z, y).item() == pytest.approx(5.315072, abs=1e-6)


def test_threshold_reference_code_skips_anchors_without_denominator():
    # All labels equal: no w_jk is strictly below w_ji, so every D_i is empty.
    z = embeddings(3)
    loss = ThresholdLoss(reference_code=True)(z, torch.full((3,), 50.0))
    (gradient,) = torch.autograd.grad(loss, z)
    assert loss.item() == 0.0 and torch.equal(gradient, torch.zeros_like(z))


def test_threshold_runs_forward_and_backward_on_4096_embeddings_in_quadratic_memory():
    # An n x n x n float32 tensor at n = 4096 would need 275 GB.
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2048, 2, 32, generator=generator).requires_grad_()
    y = torch.rand(2048, generator=generator) * 80 + 10
    loss = ThresholdLoss()(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_threshold_reference_code_runs_on_4096_embeddings_in_quadratic_memory():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2048, 2, 32, generator=generator)
    y = torch.rand(2048, generator=generator) * 80 + 10
    assert torch.isfinite(ThresholdLoss(reference_code=True)(z, y))
