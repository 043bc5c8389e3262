import pytest
import torch

from medssl.errors import MedsslError
from medssl.losses import LossInputError, NTXentLoss, SupConLoss, ThresholdLoss, YAwareLoss
from medssl.losses.layout import view_major


def test_view_major_puts_each_view_of_all_subjects_in_a_block():
    z = torch.randn(3, 2, 4)
    flat, _, n_views = view_major(z)
    assert n_views == 2
    torch.testing.assert_close(flat, torch.cat([z[:, 0], z[:, 1]]))


def test_labels_do_not_change_how_embeddings_are_read():
    z = torch.randn(4, 3, 8)
    without, _, views_without = view_major(z)
    with_labels, y, views_with = view_major(z, torch.arange(4))
    assert views_without == views_with == 3 and y.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(with_labels, without)


def test_loss_input_error_is_a_medssl_value_error():
    assert issubclass(LossInputError, MedsslError) and issubclass(LossInputError, ValueError)


@pytest.mark.parametrize("loss", [YAwareLoss(), ThresholdLoss(), SupConLoss()])
def test_label_loss_without_labels_says_so(loss):
    with pytest.raises(LossInputError, match=f"{type(loss).__name__}: needs labels y"):
        loss(torch.randn(4, 2, 8))


def test_labels_of_the_wrong_length_are_rejected_for_3d_embeddings():
    with pytest.raises(LossInputError, match="y has 3 labels but z of shape \\(4, 2, 8\\)"):
        YAwareLoss()(torch.randn(4, 2, 8), torch.ones(3))


@pytest.mark.parametrize("labels", [None, torch.ones(4), torch.ones(8)])
def test_two_dimensional_embeddings_are_refused_whatever_the_labels(labels):
    # (8, D) could be 8 subjects x 1 view or 4 x 2: the loss does not guess from len(y).
    with pytest.raises(LossInputError, match=r"NTXentLoss: z must have shape \(N, V, D\).*got shape \(8, 16\)"):
        NTXentLoss()(torch.randn(8, 16), labels)


def test_single_view_is_rejected_by_losses_that_need_two():
    with pytest.raises(LossInputError, match="at least 2 views"):
        YAwareLoss()(torch.randn(4, 1, 8), torch.ones(4))


@pytest.mark.parametrize("shape", [(8,), (8, 8), (2, 2, 2, 8)])
def test_embeddings_of_other_ranks_are_rejected(shape):
    with pytest.raises(LossInputError, match="must have shape"):
        NTXentLoss()(torch.randn(*shape))


def test_labels_must_be_one_dimensional():
    with pytest.raises(LossInputError, match="y must have shape \\(N,\\)"):
        YAwareLoss()(torch.randn(4, 2, 8), torch.ones(4, 1))


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"sigma": -1.0}, {"kernel": "box"}])
def test_bad_constructor_arguments_are_rejected_at_construction(kwargs):
    with pytest.raises(LossInputError):
        ThresholdLoss(**kwargs)
