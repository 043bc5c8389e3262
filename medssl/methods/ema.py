"""Exponential moving average (EMA) target networks, as used by BYOL and DINO.

The target (teacher) network is a copy of the online (student) network that is never
trained by gradient descent: after each optimiser step its parameters move towards the
online ones, xi <- m xi + (1 - m) theta, with a momentum m that rises from m_0 to 1 along
a cosine schedule (Grill et al., NeurIPS 2020).

Example:
    >>> online = torch.nn.Linear(4, 2)
    >>> target = make_target(online)
    >>> for step in range(100):
    ...     ...  # optimiser step on online
    ...     ema_update(target, online, cosine_momentum(step, 100, base_momentum=0.996))
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base_momentum: float) -> float:
    """EMA momentum at ``step`` of ``total_steps``: m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2.

    Equals ``base_momentum`` at k = 0 and 1 at k = K (steps past K stay at 1). From BYOL
    (Grill et al., NeurIPS 2020), also used for the DINO teacher (Caron et al., ICCV 2021).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0.0 <= base_momentum <= 1.0:
        raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0


def make_target(online: nn.Module) -> nn.Module:
    """Deep copy of ``online`` whose parameters do not require (nor hold) gradients."""
    target = copy.deepcopy(online)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Move ``target`` towards ``online`` in place: xi <- m xi + (1 - m) theta.

    Parameters are averaged; buffers (e.g. BatchNorm running statistics) are copied
    from ``online``. Both modules must have the same architecture.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    target_buffers = dict(target.named_buffers())
    online_buffers = dict(online.named_buffers())
    if target_params.keys() != online_params.keys() or target_buffers.keys() != online_buffers.keys():
        raise ValueError("target and online networks differ in parameter or buffer names")
    for name, target_param in target_params.items():
        target_param.lerp_(online_params[name].detach(), 1.0 - momentum)
    for name, target_buffer in target_buffers.items():
        target_buffer.copy_(online_buffers[name])
