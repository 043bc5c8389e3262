"""Slow, literal transcriptions of SPEC's loss formulas, to check the vectorised losses against.

Every function takes z of shape (N, V, D) and labels y of shape (N,), lays the rows out
view-major by hand, and loops over anchors i, pairs j and denominator terms t exactly as the
formula reads, with plain exp and log (no tricks: fine in float64 at tau = 0.1). ``anchors``
restricts the outer loop (the benchmark times a subset and scales); the result is the mean
of l_i over the anchors that have a positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class Rows:
    """The batch laid out view-major: row v*N + k is view v of subject k, L2-normalised."""

    def __init__(self, z: Tensor, y: Tensor | None, temperature: float):
        n_subjects, n_views, _ = z.shape
        self.temperature = temperature
        self.vectors: list[Tensor] = []
        self.labels: list[float] = []
        self.subjects: list[int] = []
        for v in range(n_views):
            for k in range(n_subjects):
                self.vectors.append(z[k, v] / z[k, v].norm())
                self.labels.append(float(y[k]) if y is not None else math.nan)
                self.subjects.append(k)
        self.n = len(self.vectors)

    def similarities_of(self, i: int) -> list[Tensor]:
        """[s_i0, ..., s_i,n-1] with s_ij = <z_i, z_j> / tau."""
        return [torch.dot(self.vectors[i], self.vectors[j]) / self.temperature for j in range(self.n)]

    def anchors(self, anchors: Sequence[int] | None) -> Sequence[int]:
        return range(self.n) if anchors is None else anchors


def kernel_value(a: float, b: float, kernel: str, sigma: float) -> float:
    if kernel == "gaussian":
        return math.exp(-((a - b) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    if kernel == "rbf":
        return math.exp(-((a - b) ** 2) / (2 * sigma**2))
    if kernel == "cauchy":
        return 1 / (1 + ((a - b) / sigma) ** 2)
    raise ValueError(kernel)


class KernelRows:
    """w[i][j] = K(y_i, y_j) as Python floats; each row is computed on first use."""

    def __init__(self, rows: Rows, kernel: str, sigma: float):
        self.labels, self.kernel, self.sigma = rows.labels, kernel, sigma
        self.cache: dict[int, list[float]] = {}

    def __getitem__(self, i: int) -> list[float]:
        if i not in self.cache:
            self.cache[i] = [kernel_value(self.labels[i], b, self.kernel, self.sigma) for b in self.labels]
        return self.cache[i]


def _mean(losses: list[Tensor]) -> Tensor:
    return sum(losses) / len(losses)


def ntxent_loop(z: Tensor, temperature: float = 0.1, anchors: Sequence[int] | None = None) -> Tensor:
    rows = Rows(z, None, temperature)
    losses = []
    for i in rows.anchors(anchors):
        s = rows.similarities_of(i)
        log_denominator = torch.log(sum(torch.exp(s[j]) for j in range(rows.n) if j != i))
        positives = [p for p in range(rows.n) if p != i and rows.subjects[p] == rows.subjects[i]]
        losses.append(sum(-s[p] + log_denominator for p in positives) / len(positives))
    return _mean(losses)


def decoupled_loop(z: Tensor, temperature: float = 0.1, anchors: Sequence[int] | None = None) -> Tensor:
    rows = Rows(z, None, temperature)
    losses = []
    for i in rows.anchors(anchors):
        s = rows.similarities_of(i)
        log_denominator = torch.log(sum(torch.exp(s[t]) for t in range(rows.n) if rows.subjects[t] != rows.subjects[i]))
        positives = [p for p in range(rows.n) if p != i and rows.subjects[p] == rows.subjects[i]]
        losses.append(sum(-s[p] + log_denominator for p in positives) / len(positives))
    return _mean(losses)


def yaware_loop(
    z: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    sigma: float = 5.0,
    kernel: str = "rbf",
    anchors: Sequence[int] | None = None,
) -> Tensor:
    rows = Rows(z, y, temperature)
    w = KernelRows(rows, kernel, sigma)
    losses = []
    for i in rows.anchors(anchors):
        s = rows.similarities_of(i)
        log_denominator = torch.log(sum(torch.exp(s[t]) for t in range(rows.n) if t != i))
        total_weight = sum(w[i][t] for t in range(rows.n) if t != i)
        loss = 0.0
        for j in range(rows.n):
            if j != i:
                a_ij = w[i][j] / total_weight
                loss = loss - a_ij * (s[j] - log_denominator)
        losses.append(loss)
    return _mean(losses)


def threshold_loop(
    z: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    sigma: float = 2.0,
    kernel: str = "gaussian",
    anchors: Sequence[int] | None = None,
    literal_inner: bool = True,
) -> Tensor:
    """``literal_inner=False`` sums the denominator over t as a masked vector sum (same set)."""
    rows = Rows(z, y, temperature)
    w = KernelRows(rows, kernel, sigma)
    losses = []
    for i in rows.anchors(anchors):
        s = rows.similarities_of(i)
        exp_s = torch.stack([torch.exp(s_it) for s_it in s])
        w_i = torch.tensor(w[i])
        not_i = torch.arange(rows.n) != i
        total_weight = sum(w[i][j] for j in range(rows.n) if j != i)
        loss = 0.0
        for j in range(rows.n):
            if j == i:
                continue
            if literal_inner:
                denominator = torch.exp(s[j])
                for t in range(rows.n):
                    if t != i and w[i][t] < w[i][j]:
                        denominator = denominator + torch.exp(s[t])
            else:
                denominator = torch.exp(s[j]) + exp_s[not_i & (w_i < w[i][j])].sum()
            loss = loss - w[i][j] * (s[j] - torch.log(denominator))
        losses.append(loss / total_weight)
    return _mean(losses)


def threshold_reference_code_loop(
    z: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    sigma: float = 2.0,
    kernel: str = "gaussian",
    anchors: Sequence[int] | None = None,
    literal_inner: bool = True,
) -> Tensor:
    """D_i = sum_{j != i} exp(s_ij) #{k : w_jk < w_ji}; ``literal_inner=False`` counts k with a vector compare."""
    rows = Rows(z, y, temperature)
    w = KernelRows(rows, kernel, sigma)

    def count(j: int, i: int) -> int:
        if literal_inner:
            return sum(1 for k in range(rows.n) if w[j][k] < w[j][i])
        return int((torch.tensor(w[j]) < w[j][i]).sum())

    losses = []
    for i in rows.anchors(anchors):
        s = rows.similarities_of(i)
        denominator = sum(torch.exp(s[j]) * count(j, i) for j in range(rows.n) if j != i)
        total_weight = sum(w[i][j] for j in range(rows.n) if j != i)
        loss = 0.0
        for j in range(rows.n):
            if j != i:
                loss = loss - w[i][j] * (s[j] - torch.log(denominator))
        losses.append(loss / total_weight)
    return _mean(losses)


def threshold_authors_code(z: Tensor, y: Tensor, temperature: float = 0.1, sigma: float = 2.0) -> Tensor:
    """EIDOSLAB/contrastive-brain-age-prediction ``src/losses.py`` ``KernelizedSupCon(method="threshold",
    delta_reduction="sum")`` with ``gaussian_kernel`` of ``src/main_infonce.py``, transcribed line by
    line in z's dtype; base_temperature = temperature (theirs, 0.07, only scales the loss).
    """
    features = F.normalize(z, dim=-1)  # their model's head normalises
    batch_size, n_views = features.shape[:2]
    x = y.to(z.dtype).view(-1, 1)
    x = x - x.T
    mask = torch.exp(-(x**2) / (2 * (sigma**2))) / (math.sqrt(2 * torch.pi) * sigma)
    features = torch.cat(torch.unbind(features, dim=1), dim=0)
    mask = mask.repeat(n_views, n_views)
    inv_diagonal = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * n_views).view(-1, 1), 0)
    anchor_dot_contrast = torch.div(torch.matmul(features, features.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    uniformity = torch.exp(logits) * inv_diagonal
    repeated = mask.unsqueeze(-1).repeat(1, 1, mask.shape[0])
    # Their `t.T` of a 3-d tensor reverses its dimensions (deprecated for 3-d tensors).
    delta = (mask[:, None].permute(2, 1, 0) - repeated.permute(2, 1, 0)).transpose(1, 2)
    delta = (delta > 0.0).float()
    uniformity = uniformity.unsqueeze(-1).repeat(1, 1, mask.shape[0])
    uniformity = (uniformity * delta).sum(-1)
    uniformity = torch.log(uniformity.sum(1, keepdim=True))
    positive_mask = mask * inv_diagonal
    log_prob = logits - uniformity
    log_prob = (positive_mask * log_prob).sum(1) / positive_mask.sum(1)
    return (-log_prob).mean()


def exponential_loop(
    z: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    sigma: float = 2.0,
    kernel: str = "gaussian",
    reference_code: bool = False,
    anchors: Sequence[int] | None = None,
) -> Tensor:
    rows = Rows(z, y, temperature)
    w = KernelRows(rows, kernel, sigma)
    shift = 1 / temperature if reference_code else 0.0
    losses = []
    for i in rows.anchors(anchors):
        s = [s_ij - shift for s_ij in rows.similarities_of(i)]
        log_denominator = torch.log(sum(torch.exp(s[t] * (1 - w[i][t])) for t in range(rows.n) if t != i))
        total_weight = sum(w[i][j] for j in range(rows.n) if j != i)
        loss = 0.0
        for j in range(rows.n):
            if j != i:
                loss = loss - w[i][j] * (s[j] - log_denominator)
        losses.append(loss / total_weight)
    return _mean(losses)


def _class_loop(
    z: Tensor, y: Tensor, temperature: float, anchors: Sequence[int] | None, anchor_loss: Callable
) -> Tensor:
    rows = Rows(z, y, temperature)
    losses = []
    for i in rows.anchors(anchors):
        positives = [p for p in range(rows.n) if p != i and rows.labels[p] == rows.labels[i]]
        negatives = [t for t in range(rows.n) if rows.labels[t] != rows.labels[i]]
        if positives:
            losses.append(anchor_loss(i, rows.similarities_of(i), positives, negatives))
    return _mean(losses)


def supcon_loop(z: Tensor, y: Tensor, temperature: float = 0.1, anchors: Sequence[int] | None = None) -> Tensor:
    def anchor_loss(i, s, positives, negatives):
        log_denominator = torch.log(sum(torch.exp(s[t]) for t in range(len(s)) if t != i))
        return -sum(s[p] - log_denominator for p in positives) / len(positives)

    return _class_loop(z, y, temperature, anchors, anchor_loss)


def eps_supinfonce_loop(
    z: Tensor, y: Tensor, temperature: float = 0.1, eps: float = 0.0, anchors: Sequence[int] | None = None
) -> Tensor:
    def anchor_loss(i, s, positives, negatives):
        negative_sum = sum(torch.exp(s[t]) for t in negatives)  # the same for every p
        loss = 0.0
        for p in positives:
            denominator = torch.exp(s[p] - eps) + negative_sum
            loss = loss + (s[p] - torch.log(denominator))
        return -loss / len(positives)

    return _class_loop(z, y, temperature, anchors, anchor_loss)


def eps_supcon_loop(
    z: Tensor, y: Tensor, temperature: float = 0.1, eps: float = 0.0, anchors: Sequence[int] | None = None
) -> Tensor:
    def anchor_loss(i, s, positives, negatives):
        denominator = sum(torch.exp(s[q] - eps) for q in positives) + sum(torch.exp(s[t]) for t in negatives)
        return eps - sum(s[p] - torch.log(denominator) for p in positives) / len(positives)

    return _class_loop(z, y, temperature, anchors, anchor_loss)


def vicreg_loop(z: Tensor, lam: float = 25.0, mu: float = 25.0, nu: float = 1.0, form: str = "authors") -> Tensor:
    """VICReg on z of shape (N, 2, D), entry by entry (unbiased variances and covariances).

    ``form="authors"``: facebookresearch/vicreg ``main_vicreg.py`` at commit 4e12602
    (``F.mse_loss`` over N x D; ``mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``;
    ``off_diagonal(cov).pow(2).sum() / D`` summed over both branches).
    ``form="paper_sum"``: the paper's equation, invariance summed over D, variance terms added.
    """
    n, _, d = z.shape
    squared_differences = sum((z[b, 0, k] - z[b, 1, k]) ** 2 for b in range(n) for k in range(d))
    invariance = squared_differences / (n * d) if form == "authors" else squared_differences / n

    def variance_and_covariance(view):
        means = [sum(z[b, view, k] for b in range(n)) / n for k in range(d)]

        def cov(i, j):
            return sum((z[b, view, i] - means[i]) * (z[b, view, j] - means[j]) for b in range(n)) / (n - 1)

        v = sum(torch.clamp(1.0 - torch.sqrt(cov(k, k) + 1e-4), min=0.0) for k in range(d)) / d
        c = sum(cov(i, j) ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = variance_and_covariance(0)
    v2, c2 = variance_and_covariance(1)
    variance = (v1 + v2) / 2 if form == "authors" else v1 + v2
    return lam * invariance + mu * variance + nu * (c1 + c2)
