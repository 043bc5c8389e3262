"""BYOL loss: normalised squared error between online predictions and target projections."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import check_predictions_and_targets, compute_dtype


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
        >>> import torch
        >>> from medssl.losses import BYOLLoss
        >>> loss_fn = BYOLLoss()
        >>> predictions = torch.randn(8, 2, 128)  # online predictor, views 1 and 2
        >>> targets = torch.randn(8, 2, 128)      # target projector, views 1 and 2
        >>> loss = loss_fn(predictions, targets)
    """

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Compute the symmetrised BYOL loss.

        Args:
            predictions: (N, 2, D) online predictor outputs p1, p2 of views 1 and 2.
            targets: (N, 2, D) target projections z1', z2' of views 1 and 2 (no gradient
                flows into them).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        check_predictions_and_targets(predictions, targets, loss_name="BYOLLoss", n_views=2)
        p1, p2 = predictions.unbind(1)
        z1, z2 = targets.unbind(1)
        return _normalized_squared_error(p1, z2) + _normalized_squared_error(p2, z1)


def _normalized_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    dtype = compute_dtype(prediction)
    prediction = F.normalize(prediction.to(dtype), dim=-1)
    target = F.normalize(target.detach().to(dtype), dim=-1)
    return (2.0 - 2.0 * (prediction * target).sum(dim=-1)).mean()
