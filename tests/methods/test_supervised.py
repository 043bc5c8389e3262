"""The supervised baseline (L1 regression / cross-entropy) and the shuffled-labels control."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medssl.errors import RecipeError
from medssl.losses import YAwareLoss
from medssl.methods import EmbeddingLossMethod, SupervisedMethod
from medssl.models import ProjectionHead, build_encoder


def tiny_encoder():
    encoder = build_encoder("alexnet")
    encoder.network = nn.Sequential(
        nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten()
    )
    encoder.feature_dim = 4
    return encoder


def batch(n: int = 6, views: int = 2, labels=None) -> dict:
    torch.manual_seed(0)
    ages = torch.tensor([10.0, 20.0, 30.0, 50.0, 70.0, 80.0][:n]) if labels is None else labels
    return {"views": torch.randn(n, views, 1, 8, 8, 8), "label": ages}


def test_regression_loss_is_the_l1_in_years_divided_by_the_first_batch_mean_absolute_deviation():
    torch.manual_seed(0)
    method = SupervisedMethod(tiny_encoder(), task="regression")
    data = batch()
    loss, logs = method.training_loss(data)
    ages = data["label"]
    assert method.label_center.item() == pytest.approx(ages.median().item())
    scale = (ages - ages.median()).abs().mean()
    assert method.label_scale.item() == pytest.approx(scale.item())
    with torch.no_grad():
        outputs = method.output(method.encoder(data["views"].transpose(0, 1).reshape(-1, 1, 8, 8, 8)))[:, 0]
    predicted = method.label_center + scale * outputs
    expected = (predicted - ages.repeat(2)).abs().mean()
    assert loss.item() == pytest.approx((expected / scale).item(), rel=1e-5)
    assert logs["train_mae"] == pytest.approx(expected.item(), rel=1e-5)


def test_standardisation_is_kept_from_the_first_batch_and_travels_in_the_state_dict():
    method = SupervisedMethod(tiny_encoder())
    method.training_loss(batch())
    center = method.label_center.clone()
    method.training_loss(batch(labels=torch.full((6,), 99.0)))
    assert torch.equal(method.label_center, center)
    restored = SupervisedMethod(tiny_encoder())
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.label_center, center)


def test_a_few_steps_fit_a_batch():
    torch.manual_seed(0)
    method = SupervisedMethod(tiny_encoder())
    optimizer = torch.optim.Adam(method.parameters(), lr=0.05)
    data = batch()
    first = method.training_loss(data)[0].item()
    for _ in range(30):
        loss = method.training_loss(data)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first


def test_classification_uses_cross_entropy_and_refuses_a_class_beyond_method_classes():
    method = SupervisedMethod(tiny_encoder(), task="classification", classes=3)
    data = batch(labels=torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    loss, logs = method.training_loss(data)
    with torch.no_grad():
        outputs = method.output(method.encoder(data["views"].transpose(0, 1).reshape(-1, 1, 8, 8, 8)))
    assert loss.item() == pytest.approx(
        nn.functional.cross_entropy(outputs, data["label"].long().repeat(2)).item(), rel=1e-5
    )
    assert 0.0 <= logs["train_accuracy"] <= 1.0
    with pytest.raises(RecipeError, match="method.classes = 3"):
        method.training_loss(batch(labels=torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0, 2.0])))


def test_shuffled_labels_change_the_label_aware_loss_and_follow_the_torch_seed():
    head = ProjectionHead(4, 8, 8)
    encoder = tiny_encoder()
    honest = EmbeddingLossMethod(encoder, head, YAwareLoss(sigma=5.0), uses_label=True)
    control = EmbeddingLossMethod(encoder, head, YAwareLoss(sigma=5.0), uses_label=True, shuffle_labels=True)
    data = batch()
    torch.manual_seed(1)
    first = control.training_loss(data)[0]
    torch.manual_seed(1)
    again = control.training_loss(data)[0]
    assert first.item() == again.item()
    assert first.item() != pytest.approx(honest.training_loss(data)[0].item())
