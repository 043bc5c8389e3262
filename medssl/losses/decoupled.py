"""Decoupled InfoNCE (Yeh et al., ECCV 2022)."""

from __future__ import annotations

from torch import Tensor, nn

from medssl.losses.layout import check_temperature, contrastive_batch, masked_logsumexp, masked_mean, mean_over_anchors


class DecoupledNTXentLoss(nn.Module):
    """NT-Xent without the positive in the denominator (Yeh et al., "Decoupled Contrastive
    Learning", ECCV 2022).

    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings, p(i) the other view of the subject
    of anchor i and N(i) the views of the other subjects:

        l_i = -s_{i,p(i)} + log sum_{t in N(i)} exp(s_it)

    With V > 2 views every other view of the subject is a positive (mean over them) and none of
    them is in the denominator. A batch of one subject has no negatives: its anchors are
    skipped and the loss is a zero connected to ``z``.

    Args:
        temperature: tau.

    Example:
        >>> import torch
        >>> from medssl.losses import DecoupledNTXentLoss
        >>> loss_fn = DecoupledNTXentLoss(temperature=0.1)
        >>> loss = loss_fn(torch.randn(8, 2, 128))
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """
        Args:
            z: (N, V, D) embeddings, V >= 2.
            y: (N,) labels or None; their values are ignored (the loss uses no labels).

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = contrastive_batch(z, y, self.temperature, loss_name=type(self).__name__, labels_required=False)
        s = batch.similarities
        positives = batch.other_views
        negatives = batch.not_self & ~positives
        per_anchor = masked_logsumexp(s, negatives) - masked_mean(s, positives)
        return mean_over_anchors(per_anchor, valid=negatives.any(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
