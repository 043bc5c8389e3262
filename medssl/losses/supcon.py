"""Class-label contrastive losses: SupCon (Khosla et al., NeurIPS 2020), eps-SupInfoNCE and
eps-SupCon (Barbano et al., ICLR 2023).

Positives of anchor i are P(i) = {j != i : y_j = y_i}, negatives N(i) = {t : y_t != y_i}.
Anchors with no positive (possible with one view) are skipped and do not count in the mean;
with none left the loss is a zero connected to ``z``.
"""

from __future__ import annotations

from torch import Tensor, nn

from medssl.losses.layout import (
    ContrastiveBatch,
    check_temperature,
    contrastive_batch,
    masked_logsumexp,
    masked_mean,
    mean_over_anchors,
)


def _class_batch(loss: SupConLoss | EpsSupInfoNCELoss | EpsSupConLoss, z: Tensor, y: Tensor | None) -> ContrastiveBatch:
    # One view is enough when the classes provide positives.
    return contrastive_batch(z, y, loss.temperature, loss_name=type(loss).__name__, labels_required=True, min_views=1)


class SupConLoss(nn.Module):
    """Supervised contrastive loss, "out" form (Khosla et al., "Supervised Contrastive
    Learning", NeurIPS 2020).

    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings:

        l_i = -(1 / |P(i)|) sum_{p in P(i)} [ s_ip - log sum_{t != i} exp(s_it) ]

    Args:
        temperature: tau.

    Example:
        >>> import torch
        >>> from medssl.losses import SupConLoss
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> z, diagnosis = torch.randn(8, 2, 128), torch.randint(0, 2, (8,))
        >>> loss = loss_fn(z, diagnosis)
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """
        Args:
            z: (N, V, D) embeddings, V >= 1.
            y: (N,) class labels, repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = _class_batch(self, z, y)
        s, positives = batch.similarities, batch.same_label
        per_anchor = masked_logsumexp(s, batch.not_self) - masked_mean(s, positives)
        return mean_over_anchors(per_anchor, valid=positives.any(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class EpsSupInfoNCELoss(nn.Module):
    """epsilon-SupInfoNCE (Barbano et al., "Unbiased Supervised Contrastive Learning",
    ICLR 2023): each positive must beat every negative by a margin eps.

    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings:

        l_i = -(1 / |P(i)|) sum_{p in P(i)} [ s_ip - log( exp(s_ip - eps) + sum_{t in N(i)} exp(s_it) ) ]

    Args:
        temperature: tau.
        eps: margin epsilon, in units of s (already divided by tau).

    Example:
        >>> import torch
        >>> from medssl.losses import EpsSupInfoNCELoss
        >>> loss_fn = EpsSupInfoNCELoss(temperature=0.1, eps=0.1)
        >>> loss = loss_fn(torch.randn(8, 2, 128), torch.randint(0, 2, (8,)))
    """

    def __init__(self, temperature: float = 0.1, eps: float = 0.0):
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature
        self.eps = eps

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """
        Args:
            z: (N, V, D) embeddings, V >= 1.
            y: (N,) class labels, repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = _class_batch(self, z, y)
        s, positives = batch.similarities, batch.same_label
        negatives = batch.not_self & ~positives
        log_negatives = masked_logsumexp(s, negatives)[:, None]
        log_probability = s - (s - self.eps).logaddexp(log_negatives)
        per_anchor = -masked_mean(log_probability, positives)
        return mean_over_anchors(per_anchor, valid=positives.any(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, eps={self.eps}"


class EpsSupConLoss(nn.Module):
    """epsilon-SupCon (Barbano et al., "Unbiased Supervised Contrastive Learning", ICLR 2023):
    SupCon with the positives' logits lowered by eps in the denominator.

    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings:

        l_i = eps - (1 / |P(i)|) sum_{p in P(i)} [ s_ip - log( sum_{q in P(i)} exp(s_iq - eps) + sum_{t in N(i)} exp(s_it) ) ]

    With eps = 0 it is :class:`SupConLoss`.

    Args:
        temperature: tau.
        eps: margin epsilon, in units of s (already divided by tau).

    Example:
        >>> import torch
        >>> from medssl.losses import EpsSupConLoss
        >>> loss_fn = EpsSupConLoss(temperature=0.1, eps=0.1)
        >>> loss = loss_fn(torch.randn(8, 2, 128), torch.randint(0, 2, (8,)))
    """

    def __init__(self, temperature: float = 0.1, eps: float = 0.0):
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature
        self.eps = eps

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """
        Args:
            z: (N, V, D) embeddings, V >= 1.
            y: (N,) class labels, repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = _class_batch(self, z, y)
        s, positives = batch.similarities, batch.same_label
        log_denominator = masked_logsumexp(s - self.eps * positives.to(s.dtype), batch.not_self)
        per_anchor = self.eps + log_denominator - masked_mean(s, positives)
        return mean_over_anchors(per_anchor, valid=positives.any(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, eps={self.eps}"
