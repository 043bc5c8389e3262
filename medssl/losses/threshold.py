"""The threshold loss L^thr (Barbano et al., ISBI 2023), in O(n^2) memory."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.kernels import check_kernel, label_kernel
from medssl.losses.layout import (
    ContrastiveBatch,
    check_temperature,
    contrastive_batch,
    masked_logsumexp,
    mean_over_anchors,
)


def strictly_smaller_counts(w: Tensor) -> Tensor:
    """counts[j, k] = #{m : w_jm < w_jk}, the row ranks of w with ties sharing the lowest rank."""
    sorted_w, order = w.sort(dim=1)
    return torch.empty_like(order).scatter_(1, order, torch.searchsorted(sorted_w, sorted_w))


def dense_ranks(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise dense ranks of the (N, N) weights: equal weights share a rank, with no gaps.

    Returns:
        ``(ranks, reversed_ranks, order)``: ``ranks[a, b]`` = #{distinct values w_ab' < w_ab},
        ``reversed_ranks[a, b]`` = #{distinct values w_ab' > w_ab}, and ``order`` sorts each row
        ascending.
    """
    # Non-negative floats order like their bit patterns, and integers sort faster on CPU.
    sorted_keys, order = w.view(torch.int32 if w.dtype == torch.float32 else torch.int64).sort(dim=1)
    sorted_ranks = F.pad(sorted_keys[:, 1:] != sorted_keys[:, :-1], (1, 0)).cumsum(dim=1)
    ranks = torch.empty_like(order).scatter_(1, order, sorted_ranks)
    return ranks, sorted_ranks[:, -1:] - ranks, order


def _sums_below(values: Tensor, ranks: Tensor) -> Tensor:
    """out[..., a, b] = sum of values[..., a, b'] over b' with ranks[a, b'] < ranks[a, b].

    Summing per rank, then cumulatively over ranks, keeps equal weights out of each other's sums.
    """
    # Slot r + 1 holds the sum of rank r, so the cumulative sum at slot r is over ranks below r.
    per_rank = values.new_zeros(*values.shape[:-1], values.shape[-1] + 1)
    per_rank.scatter_add_(-1, (ranks + 1).expand(values.shape), values)
    return per_rank.cumsum(dim=-1).gather(-1, ranks.expand(values.shape))


class _ThresholdLinear(torch.autograd.Function):
    """Per-anchor threshold losses l_i from s, with exp(s - 1/tau) summed in linear scale.

    w_it depends on the subjects of i and t only, so exp(s_it) is summed over the views of each
    subject and then over the subjects of each lower rank of the anchor subject's weights:
    O(n N) beyond the n x n similarities, no n x n sort. The anchor's own subject has the
    largest weight K(0), so its sum (which holds s_ii) is never read. The gradient has a closed
    form, with the same sums taken the other way (strictly larger weights):

        dl_i/ds_ik = (1/W_i) [ e_ik (w_ik/D_ik + sum_{j != i, w_ij > w_ik} w_ij/D_ij) - w_ik ],
        e = exp(s - 1/tau), D_ij = e_ij + sum_{t != i, w_it < w_ij} e_it, W_i = sum_{j != i} w_ij,

    which takes about half the n x n passes and intermediates that autograd would through the
    same steps (the loss is memory-bound at these sizes).
    """

    @staticmethod
    def forward(ctx, s: Tensor, w: Tensor, ranks: Tensor, reversed_ranks: Tensor, temperature: float) -> Tensor:
        n_subjects = w.shape[0]
        n_views = s.shape[0] // n_subjects
        e = (s - 1.0 / temperature).exp_()
        blocks = e.view(n_views, n_subjects, n_views, n_subjects)  # (view of i, subject of i, view of j, subject of j)
        denominator = _sums_below(blocks.sum(dim=2), ranks).unsqueeze(2) + blocks
        log_ratio = denominator.log().view_as(s).sub_(s)  # log(D_ij / e_ij) - 1/tau
        log_ratio.diagonal().zero_()
        total_weight = (w.sum(dim=1) * n_views - w.diagonal()).repeat(n_views)
        ctx.save_for_backward(e, denominator, w, reversed_ranks, total_weight)
        weighted = (log_ratio.view_as(blocks).sum(dim=2) * w).sum(dim=2).view(-1)
        return weighted / total_weight + 1.0 / temperature

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        e, denominator, w, reversed_ranks, total_weight = ctx.saved_tensors
        scale = (grad_loss / total_weight).view(denominator.shape[0], -1, 1, 1) * w[None, :, None, :]
        q = scale / denominator
        q.view_as(e).diagonal().zero_()
        grad = (_sums_below(q.sum(dim=2), reversed_ranks).unsqueeze(2) + q).mul_(e.view_as(q)).sub_(scale)
        grad = grad.view_as(e)
        grad.diagonal().zero_()
        return grad, None, None, None, None


def _threshold_log_scale(s: Tensor, w: Tensor, ranks: Tensor, order: Tensor, temperature: float) -> Tensor:
    """The same per-anchor losses as :class:`_ThresholdLinear` with log-sum-exps throughout.

    For small tau, where exp(s - 1/tau) may underflow; autograd takes the gradient.
    """
    n_subjects = w.shape[0]
    n_views = s.shape[0] // n_subjects
    smaller = _sums_below(torch.ones_like(w), ranks).long()  # #{b' : w_ab' < w_ab}: where a tie group starts
    blocks = s.view(n_views, n_subjects, n_views, n_subjects)
    summed = blocks.logsumexp(dim=2).gather(2, order.expand(n_views, -1, -1)).logcumsumexp(dim=2)
    less = F.pad(summed, (1, 0), value=float("-inf")).gather(2, smaller.expand(n_views, -1, -1))
    log_probability = (blocks - torch.logaddexp(blocks, less.unsqueeze(2))).view_as(s)
    weights = w.repeat(n_views, n_views).fill_diagonal_(0.0)
    return -(weights * log_probability).sum(dim=1) / weights.sum(dim=1)


class ThresholdLoss(nn.Module):
    """Threshold contrastive loss for regression labels (Barbano et al., "Contrastive
    learning for regression in multi-site brain age prediction", ISBI 2023).

    Every other sample j is a positive with strength w_ij = K(y_i, y_j); its denominator holds
    j itself and the samples strictly less similar in label space (smaller kernel value;
    equal weights are not in each other's denominator). With s_ij = <z_i, z_j> / tau on
    L2-normalised embeddings:

        l_i = - (1 / sum_{j != i} w_ij) sum_{j != i} w_ij [ s_ij - log( exp(s_ij) + sum_{t != i, w_it < w_ij} exp(s_it) ) ]

    The weights depend on the subjects only: each row of the N x N subject weights is ranked
    once and the denominators are cumulative sums over those ranks, so the cost is
    O(n^2 + N^2 log N) time and O(n^2) memory rather than an n x n x n tensor.

    ``reference_code=True`` computes what the authors' code computes instead, one denominator
    per anchor:

        D_i = sum_{j != i} exp(s_ij) #{k : w_jk < w_ji}
        l_i = - (1 / sum_{j != i} w_ij) sum_{j != i} w_ij [ s_ij - log D_i ]

    (the counts are row ranks of w, again O(n^2) memory). D_i = 0 only when every weight in
    the batch is equal (e.g. one label for all); such anchors are skipped. Here the kernel keeps
    its subnormal float32 values as that code does (see ``label_kernel(flush_underflow=False)``),
    so the counts are theirs when label gaps reach the kernel's underflow range.

    Args:
        temperature: tau.
        sigma: kernel bandwidth, in label units (years for age).
        kernel: "gaussian" (the paper's), "rbf" or "cauchy".
        reference_code: compute the authors' code's variant.

    Example:
        >>> import torch
        >>> from medssl.losses import ThresholdLoss
        >>> loss_fn = ThresholdLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
        >>> z, ages = torch.randn(8, 2, 128), torch.rand(8) * 80 + 10
        >>> loss = loss_fn(z, ages)
    """

    def __init__(
        self, temperature: float = 0.1, sigma: float = 2.0, kernel: str = "gaussian", reference_code: bool = False
    ):
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
            z: (N, V, D) embeddings, V >= 2.
            y: (N,) labels, repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        batch = contrastive_batch(z, y, self.temperature, loss_name=type(self).__name__, labels_required=True)
        s = batch.similarities
        if self.reference_code:
            return self._reference_code(s, batch)
        labels = batch.subject_labels.to(s.dtype)
        w = label_kernel(labels, labels, self.kernel, self.sigma)
        ranks, reversed_ranks, order = dense_ranks(w)
        # s - 1/tau lies in [-2/tau, 0]; linear-scale sums are safe while its exp stays normal.
        if 2.0 / self.temperature < 0.75 * -math.log(torch.finfo(s.dtype).tiny):
            return mean_over_anchors(_ThresholdLinear.apply(s, w, ranks, reversed_ranks, self.temperature))
        return mean_over_anchors(_threshold_log_scale(s, w, ranks, order, self.temperature))

    def _reference_code(self, s: Tensor, batch: ContrastiveBatch) -> Tensor:
        labels = batch.subject_labels.to(s.dtype)
        # Unflushed: the counts rank a subnormal weight above the zeros, as the authors' code does
        # (float32, gaussian, sigma = 2: label gaps of about 26 to 29 years).
        w = label_kernel(labels, labels, self.kernel, self.sigma, flush_underflow=False)
        weights = w.repeat(batch.n_views, batch.n_views).fill_diagonal_(0.0)
        # counts[i, j] = #{k : w_jk < w_ji}: k runs over V copies of each subject.
        counts = (strictly_smaller_counts(w).T * batch.n_views).repeat(batch.n_views, batch.n_views)
        included = batch.not_self & (counts > 0)
        log_denominator = masked_logsumexp(s + counts.to(s.dtype).log(), included)
        per_anchor = log_denominator - (weights * s).sum(dim=1) / weights.sum(dim=1)
        return mean_over_anchors(per_anchor, valid=included.any(dim=1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}, kernel={self.kernel!r}, reference_code={self.reference_code}"
