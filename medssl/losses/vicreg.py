"""VICReg loss: invariance, variance and covariance terms on two views' embeddings."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import LossInputError, outside_autocast, two_views

VICRegForm = Literal["authors", "paper_sum"]
VICREG_FORMS: tuple[str, ...] = ("authors", "paper_sum")


class VICRegLoss(nn.Module):
    """Variance-Invariance-Covariance Regularisation (Bardes, Ponce & LeCun, ICLR 2022).

    With Z1, Z2 the (N, D) embeddings of the two views, the default ``form="authors"`` is
    what the authors' code computes (facebookresearch/vicreg ``main_vicreg.py``,
    ``VICReg.forward``, commit 4e12602; lightly's ``VICRegLoss`` agrees):

        L = lam mean_{n,d} (Z1 - Z2)_nd^2 + mu [v(Z1) + v(Z2)] / 2 + nu [c(Z1) + c(Z2)]

        v(Z) = (1/D) sum_d max(0, 1 - sqrt(Var(Z_d) + 1e-4))
        c(Z) = (1/D) sum_{i != j} Cov(Z)_ij^2

    Var and Cov are the unbiased batch estimates (divided by N - 1). The published runs use
    lam = mu = 25, nu = 1 with this form, hence the defaults.

    ``form="paper_sum"`` is the paper's equation read literally: the invariance
    s(Z, Z') = (1/N) sum_n ||z_n - z'_n||^2 is summed over the D dimensions and the two
    variance terms are added, not averaged:

        L_sum = lam ||Z1 - Z2||_F^2 / N + mu [v(Z1) + v(Z2)] + nu [c(Z1) + c(Z2)]

    so paper_sum with (lam, mu, nu) equals authors with (lam D, 2 mu, nu), and the authors'
    25 / 25 / 1 is paper_sum with (25 / D, 12.5, 1).

    Args:
        sim_weight: lam, weight of the invariance term.
        var_weight: mu, weight of the variance term.
        cov_weight: nu, weight of the covariance term.
        form: "authors" (default, mean squared error and halved variance terms) or
            "paper_sum" (summed invariance, variance terms added).

    Example:
        >>> import torch
        >>> from medssl.losses import VICRegLoss
        >>> loss_fn = VICRegLoss(sim_weight=25.0, var_weight=25.0, cov_weight=1.0)
        >>> z1, z2 = torch.randn(16, 256), torch.randn(16, 256)
        >>> loss = loss_fn(torch.stack([z1, z2], dim=1))
    """

    variance_eps = 1e-4

    def __init__(
        self, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0, form: VICRegForm = "authors"
    ) -> None:
        super().__init__()
        for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if weight < 0:
                raise LossInputError(f"VICRegLoss: {name}={weight!r} must be >= 0")
        if form not in VICREG_FORMS:
            raise LossInputError(f"VICRegLoss: form={form!r}, expected one of {', '.join(VICREG_FORMS)}")
        self.sim_weight = sim_weight
        self.var_weight = var_weight
        self.cov_weight = cov_weight
        self.form = form

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            z: (N, 2, D) embeddings of the two views.
            y: (N,) labels or None; their values are ignored (the loss uses no labels).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        z1, z2 = two_views(z, y, loss_name="VICRegLoss")
        n = z1.shape[0]
        if n < 2:
            raise LossInputError(f"VICRegLoss: estimates variances over the batch and needs N >= 2 subjects, got {n}")
        with outside_autocast(z):
            invariance = F.mse_loss(z1, z2)
            variance = self._variance(z1) + self._variance(z2)
            covariance = _covariance(z1) + _covariance(z2)
        if self.form == "authors":
            variance = variance / 2
        else:
            invariance = invariance * z1.shape[1]
        return self.sim_weight * invariance + self.var_weight * variance + self.cov_weight * covariance

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(dim=0) + self.variance_eps)
        return torch.relu(1.0 - std).mean()

    def extra_repr(self) -> str:
        return (
            f"sim_weight={self.sim_weight}, var_weight={self.var_weight}, cov_weight={self.cov_weight}, "
            f"form={self.form!r}"
        )


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    centered = z - z.mean(dim=0)
    cov = centered.T @ centered / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d
