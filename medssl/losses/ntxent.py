"""NT-Xent, the SimCLR loss (Chen et al., ICML 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import check_temperature, contrastive_batch, mean_over_anchors


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (Chen et al., "A Simple Framework for
    Contrastive Learning of Visual Representations", ICML 2020).

    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings and p(i) the other view of the
    subject of anchor i:

        l_i = -s_{i,p(i)} + log sum_{j != i} exp(s_ij)

    With V > 2 views every other view of the subject is a positive and the first term is
    their mean. The loss is the mean of l_i over the n = N*V anchors.

    Args:
        temperature: tau.

    Example:
        >>> import torch
        >>> from medssl.losses import NTXentLoss
        >>> loss_fn = NTXentLoss(temperature=0.1)
        >>> z = torch.randn(8, 2, 128)  # 8 subjects, 2 views
        >>> loss = loss_fn(z)
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
        # The anchor is in no denominator. s is this call's own tensor and no backward reads it,
        # so its diagonal is blanked in place and out of autograd's sight: the softmax puts zero
        # mass, hence zero gradient, on -inf entries, and recording the fill would copy n x n.
        with torch.no_grad():
            s.diagonal().fill_(float("-inf"))
        other_views = other_view_rows(len(s), batch.n_views, s.device)
        if batch.n_views == 2:
            # cross_entropy fuses the log-softmax and the pick of the one positive.
            return F.cross_entropy(s, other_views[:, 0])
        return mean_over_anchors(s.logsumexp(dim=1) - s.gather(1, other_views).mean(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def other_view_rows(n: int, n_views: int, device: torch.device) -> Tensor:
    """(n, V-1) rows of the other views of each row's subject, in a view-major batch of n rows."""
    offsets = torch.arange(1, n_views, device=device) * (n // n_views)
    return (torch.arange(n, device=device)[:, None] + offsets) % n
