"""EMA target networks: frozen copies, exact (1 - m) steps, and the cosine momentum schedule."""

import math

import pytest
import torch
from torch import nn

from medssl.methods.ema import cosine_momentum, ema_update, make_target


def small_network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_make_target_copies_weights_and_freezes_them():
    online = small_network()
    online(torch.randn(4, 4)).sum().backward()  # the online network already holds gradients
    target = make_target(online)
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for p_target, p_online in zip(target.parameters(), online.parameters()):
        assert torch.equal(p_target, p_online) and p_target.data_ptr() != p_online.data_ptr()


def test_target_gets_no_gradient_from_a_loss_through_both_networks():
    online = small_network()
    target = make_target(online)
    x = torch.randn(8, 4)
    (online(x).pow(2).sum() + target(x).pow(2).sum()).backward()
    assert all(p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in online.parameters())


def test_ema_update_moves_target_towards_online_by_one_minus_momentum():
    online = small_network().double()
    target = make_target(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.add_(3.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=0.9)
    for p_before, p_after, p_online in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(p_after - p_before, 0.1 * (p_online - p_before), atol=1e-12, rtol=1e-10)
    # Buffers are copied, not averaged.
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert all(not p.requires_grad for p in target.parameters())


def test_ema_update_with_momentum_one_leaves_parameters_unchanged():
    online = small_network()
    target = make_target(online)
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(2.0).add_(1.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_ema_update_rejects_different_architectures():
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), momentum=0.99)


def test_cosine_momentum_goes_from_base_to_one():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996, abs=1e-15)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0, abs=1e-15)
    # Half-way, cos(pi/2) = 0: m = 1 - (1 - m0) / 2.
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998, abs=1e-12)
    assert cosine_momentum(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12)
    assert cosine_momentum(150, 100, 0.996) == 1.0
    values = [cosine_momentum(k, 40, 0.99) for k in range(41)]
    assert all(a < b for a, b in zip(values, values[1:]))
