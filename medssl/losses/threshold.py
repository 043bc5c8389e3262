"""The threshold loss L^thr (Barbano et al., ISBI 2023), in O(n^2) memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medssl.losses.kernels import check_kernel, label_kernel
from medssl.losses.layout import check_temperature, contrastive_batch, masked_logsumexp, mean_over_anchors


def strictly_smaller_counts(w: Tensor) -> Tensor:
    """counts[j, k] = #{m : w_jm < w_jk}, the row ranks of w with ties sharing the lowest rank."""
    sorted_w, order = w.sort(dim=1)
    return torch.empty_like(order).scatter_(1, order, torch.searchsorted(sorted_w, sorted_w))


class ThresholdLoss(nn.Module):
    """Threshold contrastive loss for regression labels (Barbano et al., "Contrastive
    learning for regression in multi-site brain age prediction", ISBI 2023).

    Every other sample j is a positive with strength w_ij = K(y_i, y_j); its denominator holds
    j itself and the samples strictly less similar in label space (smaller kernel value;
    equal weights are not in each other's denominator). With s_ij = <z_i, z_j> / tau on
    L2-normalised embeddings:

        l_i = - (1 / sum_{j != i} w_ij) sum_{j != i} w_ij [ s_ij - log( exp(s_ij) + sum_{t != i, w_it < w_ij} exp(s_it) ) ]

    Each row is sorted by w and the denominators are cumulative log-sum-exps, so the cost is
    O(n^2 log n) time and O(n^2) memory rather than an n x n x n tensor.

    ``reference_code=True`` computes what the authors' code computes instead, one denominator
    per anchor:

        D_i = sum_{j != i} exp(s_ij) #{k : w_jk < w_ji}
        l_i = - (1 / sum_{j != i} w_ij) sum_{j != i} w_ij [ s_ij - log D_i ]

    (the counts are row ranks of w, again O(n^2) memory). D_i = 0 only when every weight in
    the batch is equal (e.g. one label for all); such anchors are skipped.

    Args:
        temperature: tau.
        sigma: kernel bandwidth, in label units (years for age).
        kernel: "gaussian" (the paper's), "rbf" or "cauchy".
        reference_code: compute the authors' code's variant.

    Example:
        >>> loss_fn = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
        >>> z, ages = torch.randn(8, 2, 128), torch.rand(8) * 80 + 10
        >>> loss = loss_fn(z, ages)
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 2.0, kernel: str = "gaussian", reference_code: bool = False):
        super().__init__()
        check_temperature(temperature)
        check_kernel(kernel, sigma)
        self.temperature = temperature
        self.sigma = sigma
        self.kernel = kernel
        self.reference_code = reference_code

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """
        Args:
            z: (n, D) view-major with n a multiple of N, or (N, V, D), V >= 2.
            y: (N,) labels, repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = contrastive_batch(z, y, self.temperature, loss_name=type(self).__name__, labels_required=True)
        s = batch.similarities
        labels = batch.labels.to(s.dtype)
        w = label_kernel(labels, labels, self.kernel, self.sigma)
        if self.reference_code:
            weights = w.masked_fill(~batch.not_self, 0.0)
            counts = strictly_smaller_counts(w).T  # counts[i, j] = #{k : w_jk < w_ji}
            included = batch.not_self & (counts > 0)
            log_denominator = masked_logsumexp(s + counts.to(s.dtype).log(), included)
            per_anchor = log_denominator - (weights * s).sum(dim=1) / weights.sum(dim=1)
            return mean_over_anchors(per_anchor, valid=included.any(dim=1))

        # Sort each row by w with the anchor itself last, and drop it: it is in no denominator.
        sorted_w, order = w.masked_fill(~batch.not_self, float("inf")).sort(dim=1)
        sorted_w, order = sorted_w[:, :-1].contiguous(), order[:, :-1]
        sorted_s = s.gather(1, order)
        log_cumulative = sorted_s.logcumsumexp(dim=1)
        # The tie group of j starts after the weights strictly below w_ij; its sum ends there.
        group_start = torch.searchsorted(sorted_w, sorted_w)
        log_before = log_cumulative.gather(1, (group_start - 1).clamp(min=0))
        log_strictly_less = torch.where(group_start > 0, log_before, float("-inf"))
        log_probability = sorted_s - torch.logaddexp(sorted_s, log_strictly_less)
        per_anchor = -(sorted_w * log_probability).sum(dim=1) / sorted_w.sum(dim=1)
        return mean_over_anchors(per_anchor)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}, kernel={self.kernel!r}, reference_code={self.reference_code}"
