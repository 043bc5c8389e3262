"""SimSiam loss: negative cosine similarity with a stop-gradient on the projections."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import check_predictions_and_targets, compute_dtype


class SimSiamLoss(nn.Module):
    """Simple Siamese loss (Chen & He, CVPR 2021).

    One network with a predictor h on top of its projector; each view's prediction
    is pulled towards the other view's projection, whose gradient is stopped:

        L = -1/2 cos(p1, sg(z2)) - 1/2 cos(p2, sg(z1)),    p = h(z)

    averaged over the batch, so the loss lies in [-1, 1]. The stop-gradient is applied
    here (z1 and z2 are detached), so the caller passes the projections as they are.

    Example:
        >>> import torch
        >>> from medssl.losses import SimSiamLoss
        >>> loss_fn = SimSiamLoss()
        >>> z = torch.randn(8, 2, 128)  # projector, views 1 and 2
        >>> predictor = torch.nn.Linear(128, 128)
        >>> loss = loss_fn(predictor(z), z)
    """

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Compute the symmetrised SimSiam loss.

        Args:
            predictions: (N, 2, D) predictor outputs p1, p2 of views 1 and 2.
            targets: (N, 2, D) projections z1, z2 of views 1 and 2 (detached here).

        Returns:
            0-dim tensor, float32 (float64 for float64 inputs).
        """
        check_predictions_and_targets(predictions, targets, loss_name="SimSiamLoss", n_views=2)
        p1, p2 = predictions.unbind(1)
        z1, z2 = targets.unbind(1)
        return -0.5 * _cosine(p1, z2) - 0.5 * _cosine(p2, z1)


def _cosine(prediction: Tensor, target: Tensor) -> Tensor:
    dtype = compute_dtype(prediction)
    prediction = F.normalize(prediction.to(dtype), dim=-1)
    target = F.normalize(target.detach().to(dtype), dim=-1)
    return (prediction * target).sum(dim=-1).mean()
