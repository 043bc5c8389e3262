"""FairKL, a debiasing term on the similarities of embeddings (Barbano et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.layout import LossInputError, check_temperature, compute_dtype, outside_autocast, view_major

AUTHORS_COMMIT = "25b39810f4a01e65d28fbeb856648041a7a4b6e2"
"""EIDOSLAB/unbiased-contrastive-learning commit whose ``debiasing/losses.py`` ``fairkl`` the
``reference_code=True`` variant reproduces."""


class FairKLLoss(nn.Module):
    """FairKL (Barbano et al., "Unbiased Supervised Contrastive Learning", ICLR 2023): the
    similarities of a pair must not depend on whether the pair shares its bias (e.g. its site).

    Pairs (i, j) of the V*N rows are split by the labels y into positives (y_i = y_j) and
    negatives, and by the bias b into bias-aligned (b_i = b_j) and bias-conflicting pairs.
    With s_ij = <z_i, z_j> / tau on L2-normalised embeddings, each of the four sets is
    summarised by the mean mu and the spread sigma of its s_ij.

    **Paper** (``reference_code=False``): each set's s_ij are taken as a Gaussian (maximum
    likelihood: mean and variance over the set's ordered pairs i != j), and

        R = KL(N(mu_{+,a}, var_{+,a}) || N(mu_{+,c}, var_{+,c})) + KL(same for the negatives)
        KL(N_a || N_c) = 1/2 [ (var_a + (mu_a - mu_c)^2) / var_c - log(var_a / var_c) - 1 ]

    with var + ``variance_eps`` in place of each var (a set of one pair has var = 0). A half
    (positives or negatives) whose aligned or conflicting set is empty adds nothing. The paper
    writes the KL on distances; for any distance affine in s (1 - cos, ||z_i - z_j||^2, -s) it
    is the same number, and tau changes it only through ``variance_eps``.

    **Authors' code** (``reference_code=True``, default): ``fairkl`` of ``debiasing/losses.py``
    in EIDOSLAB/unbiased-contrastive-learning at commit 25b3981, applied to the V*N rows. It
    matches moments instead of computing the KL and adds two margin terms:

        R_code = (mu_{+,c} - mu_{+,a})^2 + (mu_{-,a} - mu_{-,c})^2
                 + std_weight [ (sd_{+,a} - sd_{+,c})^2 + (sd_{-,a} - sd_{-,c})^2 ]
                 - mu_{+,c} + mu_{-,a}

    where, unlike the paper, the pairs include i = j (s_ii = 1/tau counts as a bias-aligned
    positive); mu = sum over the set / max(count, 1) (an empty set has mean 0); and sd is
    ``torch.std`` (divisor n^2 - 1) of the whole n x n matrix s masked to the set, **zeros
    included**, not the spread of the set's own values. The authors call it on the encoder's
    L2-normalised features of the first view only (``feats[:, 0]``, so pass ``z[:, :1]`` to
    reproduce them), with tau = 1 and std weight ``--kld`` 1, added with weight ``--lambd``.

    **Positives for age.** ``y`` is compared for equality, so it must be class labels. For a
    continuous label such as age, pass ``y=None``: the positives are then the other views of
    each subject. Why: it needs no new hyper-parameter and is y-aware's own strongest positive
    (weight K(0)); an age window |y_i - y_j| < delta would instead find bias-conflicting
    positives only where the sites' age ranges overlap (OpenBHB sites differ widely in age), a
    term estimated from few pairs. A subject has one site, so with ``y=None`` every positive
    is bias-aligned: the positive half is empty and FairKL acts through the negatives alone,
    asking that two different subjects be as similar, in mean and spread, whether or not they
    share a site. (Sites also differ in age, so this may remove some age information: the
    trade-off the debiasing benchmark measures.) The authors' code was written for class
    labels: it takes an empty set's mean and std as 0, which with ``y=None`` would push the
    views of a subject apart, so ``reference_code=True`` refuses ``y=None``.

    Args:
        reference_code: True computes the authors' code (above), False the paper's formula.
        temperature: tau (1.0 in the authors' code; the paper form hardly depends on it).
        std_weight: weight of the standard-deviation terms of the authors' code (their
            ``kld``); unused by the paper form.
        variance_eps: added to each variance of the paper form, in units of s^2 (> 0).

    Example:
        >>> import torch
        >>> from medssl.losses import FairKLLoss
        >>> z, site = torch.randn(8, 2, 128), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
        >>> diagnosis = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
        >>> debias = FairKLLoss()(z, diagnosis, site)  # the authors' code
        >>> debias_age = FairKLLoss(reference_code=False)(z, None, site)  # views of one subject
    """

    def __init__(
        self, reference_code: bool = True, temperature: float = 1.0, std_weight: float = 1.0, variance_eps: float = 1e-6
    ):
        super().__init__()
        check_temperature(temperature)
        if not variance_eps > 0:
            raise LossInputError(f"variance_eps={variance_eps!r} must be a positive number")
        self.reference_code = reference_code
        self.temperature = temperature
        self.std_weight = std_weight
        self.variance_eps = variance_eps

    def forward(self, z: Tensor, y: Tensor | Sequence[float] | None, bias: Tensor | Sequence[int]) -> Tensor:
        """
        Args:
            z: (N, V, D) embeddings, V >= 1.
            y: (N,) class labels defining positives (repeated over views), or None for
                "the other views of the same subject".
            bias: (N,) integer bias labels (e.g. site codes), repeated over views.

        Returns:
            0-dim float32 tensor (float64 for float64 z).
        """
        name = type(self).__name__
        if self.reference_code and y is None:
            raise LossInputError(
                f"{name}(reference_code=True) needs class labels y: with y=None the positives are views of one "
                "subject, which always share their bias, and the authors' code would push them apart (the empty "
                "bias-conflicting positives count as mean 0, std 0); use reference_code=False for y=None"
            )
        rows, y, n_views = view_major(z, y, loss_name=name, min_views=1, labels_used=True)
        bias = check_bias(bias, z, loss_name=name)
        if y is not None and y.is_floating_point() and not bool((y == y.round()).all()):
            raise LossInputError(
                f"{name}: y defines positives by equality and must hold class labels, got non-integer values "
                "(for a continuous label such as age pass y=None: positives are then the views of one subject)"
            )
        groups = y if y is not None else torch.arange(len(bias), device=bias.device)
        positives = _same(groups.repeat(n_views))
        aligned = _same(bias.repeat(n_views))
        with outside_autocast(rows):
            unit = F.normalize(rows.to(compute_dtype(rows)), dim=1)
            s = (unit / self.temperature) @ unit.T
            if self.reference_code:
                return authors_code_value(s, positives, aligned, self.std_weight)
            not_self = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
            return _kl_half(s, positives & aligned & not_self, positives & ~aligned, self.variance_eps) + _kl_half(
                s, ~positives & aligned, ~positives & ~aligned, self.variance_eps
            )

    def extra_repr(self) -> str:
        return (
            f"reference_code={self.reference_code}, temperature={self.temperature}, "
            f"std_weight={self.std_weight}, variance_eps={self.variance_eps}"
        )


def check_bias(bias: Tensor | Sequence[int] | None, z: Tensor, *, loss_name: str) -> Tensor:
    """``bias`` as an (N,) tensor on z's device; :class:`LossInputError` unless it holds one
    whole-number code (no NaN, no inf) per subject of the checked (N, V, D) ``z``."""
    if bias is None:
        raise LossInputError(f"{loss_name}: needs bias labels of shape (N,) (e.g. site codes), got None")
    bias = torch.as_tensor(bias)
    if bias.ndim != 1:
        raise LossInputError(f"{loss_name}: bias must have shape (N,), got shape {tuple(bias.shape)}")
    if len(bias) != z.shape[0]:
        raise LossInputError(
            f"{loss_name}: bias has {len(bias)} labels but z of shape {tuple(z.shape)} holds N={z.shape[0]} subjects"
        )
    whole = torch.isfinite(bias) & (bias == bias.round()) if bias.is_floating_point() else None
    if whole is not None and not bool(whole.all()):
        bad = (~whole).nonzero().flatten().tolist()
        raise LossInputError(
            f"{loss_name}: bias labels must be integer codes (e.g. site), got {bias[bad[0]].item()} at index {bad[0]}"
        )
    return bias.to(z.device)


def _same(labels: Tensor) -> Tensor:
    """(n, n) bool: rows i and j carry the same label (the diagonal included)."""
    return labels[:, None] == labels[None, :]


def authors_code_value(s: Tensor, positives: Tensor, aligned: Tensor, std_weight: float) -> Tensor:
    """The value of the authors' ``fairkl`` (commit 25b3981) on the n x n similarities ``s``,
    with the diagonal in ``positives`` and ``aligned`` as their code builds them."""
    sets = {
        "pos_aligned": positives & aligned,
        "pos_conflicting": positives & ~aligned,
        "neg_aligned": ~positives & aligned,
        "neg_conflicting": ~positives & ~aligned,
    }
    masked = {key: s * mask.to(s.dtype) for key, mask in sets.items()}
    mu = {key: masked[key].sum() / mask.sum().clamp(min=1) for key, mask in sets.items()}
    sd = {key: torch.std(masked[key]) for key in masked}
    mean_terms = (mu["pos_conflicting"] - mu["pos_aligned"]) ** 2 + (mu["neg_aligned"] - mu["neg_conflicting"]) ** 2
    std_terms = (sd["pos_aligned"] - sd["pos_conflicting"]) ** 2 + (sd["neg_aligned"] - sd["neg_conflicting"]) ** 2
    return mean_terms + std_weight * std_terms - mu["pos_conflicting"] + mu["neg_aligned"]


def _kl_half(s: Tensor, aligned: Tensor, conflicting: Tensor, variance_eps: float) -> Tensor:
    """KL(N(mu_a, var_a) || N(mu_c, var_c)) of the s_ij over two pair sets; 0 (connected to s)
    when either set is empty."""
    mu_a, var_a, count_a = _moments(s, aligned)
    mu_c, var_c, count_c = _moments(s, conflicting)
    var_a, var_c = var_a + variance_eps, var_c + variance_eps
    kl = 0.5 * ((var_a + (mu_a - mu_c) ** 2) / var_c - torch.log(var_a / var_c) - 1)
    return torch.where((count_a > 0) & (count_c > 0), kl, torch.zeros_like(kl))


def _moments(s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and maximum-likelihood variance of s over ``mask`` (0 and 0 when empty), and its count."""
    count = mask.sum()
    mean = torch.where(mask, s, torch.zeros_like(s)).sum() / count.clamp(min=1)
    variance = torch.where(mask, (s - mean) ** 2, torch.zeros_like(s)).sum() / count.clamp(min=1)
    return mean, variance, count
