"""BYOL loss: normalised squared error between online predictions and target projections."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import LossInputError, compute_dtype


class BYOLLoss(nn.Module):
    """Bootstrap Your Own Latent loss (Grill et al., NeurIPS 2020).

    The online network (encoder, projector, predictor q_theta) predicts the target
    network's projection of the other view; the target network is an exponential moving
    average of the online one (see ``medssl.methods.ema``) and receives no gradient:

        L(p, z') = || p/||p|| - z'/||z'|| ||^2 = 2 - 2 cos(p, sg(z'))

    symmetrised as in the paper by swapping the views and summing the two terms:

        L_BYOL = L(p1, z2) + L(p2, z1)        (each term averaged over the batch)

    so the loss lies in [0, 8]. The targets are detached here as well, so passing the
    target network's outputs without ``torch.no_grad`` is safe.

    Example:
        >>> loss_fn = BYOLLoss()
        >>> p1, p2 = torch.randn(8, 128), torch.randn(8, 128)  # online predictor, views 1 and 2
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)  # target projector, views 1 and 2
        >>> loss = loss_fn(p1, p2, z1, z2)
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Compute the symmetrised BYOL loss.

        Args:
            p1: (N, D) online predictor output for view 1.
            p2: (N, D) online predictor output for view 2.
            z1: (N, D) target projection of view 1 (no gradient flows into it).
            z2: (N, D) target projection of view 2 (no gradient flows into it).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        _check_pairs(p1, p2, z1, z2, loss_name="BYOLLoss")
        return _normalized_squared_error(p1, z2) + _normalized_squared_error(p2, z1)


def _normalized_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    dtype = compute_dtype(prediction)
    prediction = F.normalize(prediction.to(dtype), dim=-1)
    target = F.normalize(target.detach().to(dtype), dim=-1)
    return (2.0 - 2.0 * (prediction * target).sum(dim=-1)).mean()


def _check_pairs(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, loss_name: str) -> None:
    shapes = [tuple(t.shape) for t in (p1, p2, z1, z2)]
    if len(set(shapes)) != 1 or p1.dim() != 2 or not all(t.is_floating_point() for t in (p1, p2, z1, z2)):
        raise LossInputError(f"{loss_name}: expected floating-point p1, p2, z1, z2 of one shape (N, D), got shapes {shapes}")
