"""LARS: SGD with a layer-wise trust ratio (You, Gitman & Ginsburg, 2017), as SimCLR uses it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling, as in facebookresearch/vicreg ``main_vicreg.py``
    (commit 4e12602; the same in facebookresearch/barlowtwins and SimCLR's ``lars_optimizer.py``).

    For each parameter w with gradient g, in a group with ``adapt=True``:

        d = g + wd w,   q = eta ||w|| / ||d|| (1 if either norm is 0),   mu <- m mu + q d,   w <- w - lr mu

    Biases and normalisation layers (the 1-D parameters) go to a second group with no weight
    decay and no trust ratio (q = 1), as the authors exclude them: their norms are too small for
    the ratio to mean anything (Chen et al., ICML 2020, appendix B.1). Groups, not filter
    functions, mark them, so the optimiser state is saved by ``torch.save`` as plain data.

    Example:
        >>> optimizer = LARS(model.parameters(), lr=0.3, weight_decay=1e-6, momentum=0.9)
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        parameters = list(parameters)
        groups: list[dict[str, Any]] = [
            {"params": [p for p in parameters if p.ndim > 1]},
            {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0, "adapt": False},
        ]
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, adapt=True)
        super().__init__([group for group in groups if group["params"]], defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    weight_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (weight_norm > 0) & (update_norm > 0),
                        group["eta"] * weight_norm / update_norm,
                        torch.ones_like(weight_norm),
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss
