"""Behaviour every contrastive loss shares: layouts, dtypes, extreme inputs, any N and V."""

import pytest
import torch

from medssl.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    DecoupledNTXentLoss,
    DINOLoss,
    EpsSupConLoss,
    EpsSupInfoNCELoss,
    ExponentialLoss,
    LossInputError,
    NTXentLoss,
    SimSiamLoss,
    SupConLoss,
    ThresholdLoss,
    VICRegLoss,
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
def test_two_dimensional_embeddings_are_refused_with_the_shape_to_pass(name):
    build, kind = LOSSES[name]
    z, y = embeddings(8).detach(), labels(kind, 8)
    flat = torch.cat([z[:, 0], z[:, 1]])
    with pytest.raises(LossInputError, match=r"z must have shape \(N, V, D\).*torch.stack\(\[z1, z2\], dim=1\)"):
        build()(flat, y)


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


# Every embedding loss, the two-view ones included, and every prediction loss.
EMBEDDING_LOSSES = {**LOSSES, "barlow_twins": (BarlowTwinsLoss, None), "vicreg": (VICRegLoss, None)}
PREDICTION_LOSSES = {"byol": BYOLLoss, "simsiam": SimSiamLoss, "dino": lambda: DINOLoss(out_dim=32)}


@pytest.mark.parametrize("name", EMBEDDING_LOSSES)
def test_embedding_loss_inside_bfloat16_autocast_computes_what_it_computes_outside(name):
    # A training step runs the loss inside autocast, which would otherwise take the products to bfloat16.
    build, kind = EMBEDDING_LOSSES[name]
    z, y = embeddings(16, dim=32, dtype=torch.float32, seed=3).detach().bfloat16(), labels(kind, 16)
    loss = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(z, y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, loss(z, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PREDICTION_LOSSES)
def test_prediction_loss_inside_bfloat16_autocast_computes_what_it_computes_outside(name):
    predictions = embeddings(8, dim=32, dtype=torch.float32, seed=4).detach().bfloat16()
    targets = embeddings(8, dim=32, dtype=torch.float32, seed=5).detach().bfloat16()
    loss = PREDICTION_LOSSES[name]().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(predictions, targets)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, loss(predictions, targets), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PREDICTION_LOSSES)
def test_prediction_loss_refuses_two_dimensional_inputs(name):
    p = torch.randn(8, 32)
    with pytest.raises(LossInputError, match=r"predictions and targets of shape \(N, V, D\)"):
        PREDICTION_LOSSES[name]()(p, p)


LABEL_LOSSES = [name for name, (_, kind) in LOSSES.items() if kind is not None]
LABEL_FREE_LOSSES = [name for name, (_, kind) in EMBEDDING_LOSSES.items() if kind is None]


@pytest.mark.parametrize("name", LABEL_LOSSES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_label_is_refused_in_one_line_naming_the_loss_and_the_subject(name, bad):
    build, kind = LOSSES[name]
    loss = build()
    y = labels(kind, 8).to(torch.float64)
    y[5] = bad
    with pytest.raises(LossInputError) as refusal:
        loss(embeddings(8), y)
    message = str(refusal.value)
    assert message.startswith(f"{type(loss).__name__}: labels y must be finite numbers, got {bad} at index 5")
    assert "\n" not in message


@pytest.mark.parametrize("name", LABEL_FREE_LOSSES)
def test_a_loss_that_ignores_labels_still_refuses_labels_of_the_wrong_length(name):
    build, _ = EMBEDDING_LOSSES[name]
    loss = build()
    with pytest.raises(LossInputError, match=rf"^{type(loss).__name__}: y has 7 labels but z of shape \(8, 2, 16\)"):
        loss(embeddings(8), torch.ones(7))


@pytest.mark.parametrize("name", LABEL_FREE_LOSSES)
def test_a_loss_that_ignores_labels_ignores_their_values_even_when_missing(name):
    # A cohort whose label column has gaps can still train a label-free method.
    build, _ = EMBEDDING_LOSSES[name]
    loss, z = build(), embeddings(8).detach()
    torch.testing.assert_close(loss(z, torch.full((8,), float("nan"))), loss(z, None), rtol=0, atol=0)
