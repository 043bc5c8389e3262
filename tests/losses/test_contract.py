"""Behaviour every contrastive loss shares: layouts, dtypes, extreme inputs, any N and V."""

import pytest
import torch

from medssl.losses import (
    DecoupledNTXentLoss,
    EpsSupConLoss,
    EpsSupInfoNCELoss,
    ExponentialLoss,
    NTXentLoss,
    SupConLoss,
    ThresholdLoss,
    YAwareLoss,
)

from .checks import ages, classes, embeddings

LOSSES = {
    "ntxent": (NTXentLoss, None),
    "decoupled": (DecoupledNTXentLoss, None),
    "yaware": (YAwareLoss, "age"),
    "threshold": (ThresholdLoss, "age"),
    "threshold_reference": (lambda **kw: ThresholdLoss(reference_code=True, **kw), "age"),
    "exponential": (ExponentialLoss, "age"),
    "exponential_reference": (lambda **kw: ExponentialLoss(reference_code=True, **kw), "age"),
    "supcon": (SupConLoss, "class"),
    "eps_supinfonce": (lambda **kw: EpsSupInfoNCELoss(eps=0.5, **kw), "class"),
    "eps_supcon": (lambda **kw: EpsSupConLoss(eps=0.5, **kw), "class"),
}


def labels(kind, n_subjects):
    if kind == "age":
        return ages(n_subjects)
    if kind == "class":
        return classes(n_subjects, n_classes=2)
    return None


@pytest.mark.parametrize("name", LOSSES)
def test_view_major_and_subject_view_layouts_give_the_same_value(name):
    build, kind = LOSSES[name]
    z, y = embeddings(8, n_views=3), labels(kind, 8)
    loss = build()
    flat = torch.cat([z[:, 0], z[:, 1], z[:, 2]])
    y_for_flat = y if y is not None else torch.arange(8)  # tells the 2-D layout that N = 8
    torch.testing.assert_close(loss(flat, y_for_flat), loss(z, y))


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_a_finite_float32_scalar_for_bfloat16_input_close_to_float32(name):
    build, kind = LOSSES[name]
    z, y = embeddings(16, dim=32, dtype=torch.float32), labels(kind, 16)
    loss = build()
    low = loss(z.detach().bfloat16(), y)
    assert low.dtype == torch.float32 and low.shape == ()
    assert torch.isfinite(low)
    assert low.item() == pytest.approx(loss(z.detach(), y).item(), rel=2e-2, abs=2e-2)


@pytest.mark.parametrize("name", LOSSES)
def test_bfloat16_input_is_computed_as_its_float32_copy_in_value_and_gradient(name):
    build, kind = LOSSES[name]
    z, y = embeddings(16, dim=32, dtype=torch.bfloat16, seed=6), labels(kind, 16)
    upcast = z.detach().float().requires_grad_()
    loss = build()
    low, high = loss(z, y), loss(upcast, y)
    (low_gradient,) = torch.autograd.grad(low, z)
    (high_gradient,) = torch.autograd.grad(high, upcast)
    torch.testing.assert_close(low, high, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(low_gradient, high_gradient.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["identical", "opposite"])
def test_extreme_similarities_give_finite_value_and_gradient(name, case):
    build, kind = LOSSES[name]
    direction = torch.randn(1, 1, 16, dtype=torch.float32)
    z = direction.expand(8, 2, 16).clone()
    if case == "opposite":
        z[::2] = -z[::2]
    z.requires_grad_()
    value = build(temperature=0.01)(z, labels(kind, 8))
    (gradient,) = torch.autograd.grad(value, z)
    assert torch.isfinite(value) and torch.isfinite(gradient).all()


@pytest.mark.parametrize("name", LOSSES)
def test_loss_on_random_embeddings_at_low_temperature_has_finite_gradient(name):
    build, kind = LOSSES[name]
    z = embeddings(16, dtype=torch.float32)
    value = build(temperature=0.01)(z, labels(kind, 16))
    (gradient,) = torch.autograd.grad(value, z)
    assert torch.isfinite(value) and torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n_subjects, n_views", [(1, 2), (3, 4)])
def test_loss_handles_any_number_of_subjects_and_views(name, n_subjects, n_views):
    build, kind = LOSSES[name]
    z = embeddings(n_subjects, n_views=n_views)
    value = build()(z, labels(kind, n_subjects))
    (gradient,) = torch.autograd.grad(value, z)
    assert value.shape == () and torch.isfinite(value) and torch.isfinite(gradient).all()


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_invariant_to_the_scale_of_the_embeddings(name):
    build, kind = LOSSES[name]
    z, y = embeddings(6).detach(), labels(kind, 6)
    loss = build()
    torch.testing.assert_close(loss(10 * z, y), loss(z, y))
