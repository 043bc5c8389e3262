"""The exponential loss L^exp (Barbano et al., ISBI 2023)."""

from __future__ import annotations

from torch import Tensor, nn

from medssl.losses.kernels import check_kernel, pair_weights
from medssl.losses.layout import check_temperature, contrastive_batch, mean_over_anchors


class ExponentialLoss(nn.Module):
    """Exponential contrastive loss for regression labels (Barbano et al., "Contrastive
    learning for regression in multi-site brain age prediction", ISBI 2023).

    Every other sample is a positive with strength w_ij = K(y_i, y_j); the repulsion of t is
    softened by how close its label is. With s_ij = <z_i, z_j> / tau on L2-normalised
    embeddings:

        l_i = - (1 / sum_{j != i} w_ij) sum_{j != i} w_ij [ s_ij - log sum_{t != i} exp(s_it (1 - w_it)) ]

    ``reference_code=True`` computes what the authors' code computes instead: the similarities
    are shifted by their row maximum 1/tau before the (1 - w) factor,

        l_i = - (1 / sum_j w_ij) sum_{j != i} w_ij [ (s_ij - 1/tau) - log sum_{t != i} exp((s_it - 1/tau)(1 - w_it)) ]

    which reproduces the published numbers.

    Args:
        temperature: tau.
        sigma: kernel bandwidth, in label units (years for age).
        kernel: "gaussian" (the paper's), "rbf" or "cauchy".
        reference_code: compute the authors' code's variant.

    Example:
        >>> import torch
        >>> from medssl.losses import ExponentialLoss
        >>> loss_fn = ExponentialLoss(temperature=0.1, sigma=2.0, kernel="gaussian")
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
            # The authors' code subtracts the row maximum, the self-similarity 1/tau.
            s = s - 1.0 / self.temperature
        weights = pair_weights(batch.subject_labels, batch.n_views, self.kernel, self.sigma, s.dtype)
        attraction = (weights * s).sum(dim=1) / weights.sum(dim=1)
        # The diagonal of 1 - w is wrong (w_ii is zeroed), but the anchor is masked out anyway.
        repulsion = (s * (1.0 - weights)).masked_fill(~batch.not_self, float("-inf")).logsumexp(dim=1)
        return mean_over_anchors(repulsion - attraction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}, kernel={self.kernel!r}, reference_code={self.reference_code}"
