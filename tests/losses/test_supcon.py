import pytest
import torch

from medssl.losses import EpsSupConLoss, EpsSupInfoNCELoss, NTXentLoss, SupConLoss

from .checks import assert_same_value_and_gradient, classes, embeddings
from .reference import eps_supcon_loop, eps_supinfonce_loop, supcon_loop

CLASS_LOSSES = {
    "supcon": (lambda: SupConLoss(temperature=0.1), lambda z, y: supcon_loop(z, y, 0.1)),
    "eps_supinfonce": (
        lambda: EpsSupInfoNCELoss(temperature=0.1, eps=0.25),
        lambda z, y: eps_supinfonce_loop(z, y, 0.1, eps=0.25),
    ),
    "eps_supcon": (lambda: EpsSupConLoss(temperature=0.1, eps=0.25), lambda z, y: eps_supcon_loop(z, y, 0.1, eps=0.25)),
}


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("n_subjects", [2, 8, 64])
def test_class_loss_matches_loop_transcription_in_value_and_gradient(name, n_subjects):
    build, reference = CLASS_LOSSES[name]
    z, y = embeddings(n_subjects), classes(n_subjects)
    loss = build()
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: reference(z, y), z)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_loss_on_a_single_class_batch_matches_loop_transcription(name):
    # No negatives at all: eps-SupInfoNCE's denominator is the positive alone.
    build, reference = CLASS_LOSSES[name]
    z, y = embeddings(6), torch.zeros(6, dtype=torch.long)
    loss = build()
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: reference(z, y), z)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_loss_with_one_view_skips_anchors_without_positive(name):
    # Classes 0 and 1 have two members, class 2 and 3 one: only 4 anchors count.
    build, reference = CLASS_LOSSES[name]
    z, y = embeddings(6, n_views=1), torch.tensor([0, 1, 0, 2, 1, 3])
    loss = build()
    assert_same_value_and_gradient(lambda z: loss(z, y), lambda z: reference(z, y), z)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_loss_without_any_positive_returns_a_zero_connected_to_z(name):
    build, _ = CLASS_LOSSES[name]
    z = embeddings(4, n_views=1)
    loss = build()(z, torch.arange(4))
    (gradient,) = torch.autograd.grad(loss, z)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert torch.equal(gradient, torch.zeros_like(z))


def test_eps_supcon_with_zero_margin_equals_supcon():
    z, y = embeddings(8), classes(8)
    torch.testing.assert_close(EpsSupConLoss(eps=0.0)(z, y), SupConLoss()(z, y))


def test_eps_supinfonce_minus_its_offset_grows_with_the_margin():
    # l = -eps - log softmax(s_ip - eps): the log-softmax part penalises a smaller margin.
    z, y = embeddings(8), classes(8)
    assert EpsSupInfoNCELoss(eps=0.0)(z, y) < EpsSupInfoNCELoss(eps=1.0)(z, y) + 1.0


def test_eps_supinfonce_with_zero_margin_on_subject_labels_equals_ntxent():
    z = embeddings(8)
    torch.testing.assert_close(EpsSupInfoNCELoss(eps=0.0)(z, torch.arange(8)), NTXentLoss()(z))


def test_supcon_on_subject_labels_equals_ntxent():
    z = embeddings(8)
    torch.testing.assert_close(SupConLoss()(z, torch.arange(8)), NTXentLoss()(z))
