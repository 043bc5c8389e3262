"""LARS against updates worked out by hand, and its place in the engine's optimiser choice."""

from __future__ import annotations

import pytest
import torch

from medssl.recipe import Recipe
from medssl.train.lars import LARS
from medssl.train.setup import make_optimizer


def weight_and_bias():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    return weight, bias


def set_gradients(weight, bias):
    weight.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    bias.grad = torch.tensor([0.5], dtype=torch.float64)


def test_lars_scales_weight_updates_by_the_trust_ratio_and_leaves_biases_plain():
    weight, bias = weight_and_bias()
    optimizer = LARS([weight, bias], lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.001)
    set_gradients(weight, bias)
    optimizer.step()
    # weight: d = g + 0.1 w = [0.9, 1.2], ||d|| = 1.5, q = 0.001 * 5 / 1.5 = 1/300,
    # mu = q d = [0.003, 0.004], w <- w - 0.5 mu = [2.9985, 3.998].
    torch.testing.assert_close(
        weight.detach(), torch.tensor([[2.9985, 3.998]], dtype=torch.float64), rtol=0, atol=1e-15
    )
    # bias: no weight decay, no trust ratio: mu = 0.5, b <- 1 - 0.5 * 0.5 = 0.75.
    assert bias.item() == pytest.approx(0.75, abs=1e-15)
    set_gradients(weight, bias)
    optimizer.step()
    # momentum: mu = 0.9 * 0.5 + 0.5 = 0.95, b <- 0.75 - 0.5 * 0.95 = 0.275.
    assert bias.item() == pytest.approx(0.275, abs=1e-15)


def test_lars_trust_ratio_is_one_for_a_zero_weight():
    weight = torch.nn.Parameter(torch.zeros(1, 2, dtype=torch.float64))
    optimizer = LARS([weight], lr=1.0, weight_decay=0.0, momentum=0.0)
    weight.grad = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([[-1.0, 2.0]], dtype=torch.float64))


def test_recipe_optimizer_lars_builds_lars_with_biases_and_norms_excluded():
    recipe = Recipe.model_validate({"train": {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "momentum": 0.8}})
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = make_optimizer(model.parameters(), recipe)
    assert isinstance(optimizer, LARS)
    adapted, excluded = optimizer.param_groups
    assert [p.shape for p in adapted["params"]] == [torch.Size([4, 3])]
    assert len(excluded["params"]) == 3  # linear bias, norm weight and bias
    assert (adapted["weight_decay"], adapted["adapt"], adapted["lr"], adapted["momentum"]) == (1e-6, True, 0.3, 0.8)
    assert (excluded["weight_decay"], excluded["adapt"]) == (0.0, False)
    # The state dict holds plain data, so checkpoints load with weights_only=True.
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    assert "mu" in optimizer.state_dict()["state"][0]
