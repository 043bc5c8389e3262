"""The y-aware InfoNCE loss (Dufumier et al., MICCAI 2021)."""

from __future__ import annotations

from torch import Tensor, nn

from medssl.losses.kernels import check_kernel, pair_weights
from medssl.losses.layout import check_temperature, contrastive_batch, mean_over_anchors


class YAwareLoss(nn.Module):
    """y-aware InfoNCE (Dufumier et al., "Contrastive Learning with Continuous Proxy
    Meta-Data for 3D MRI Classification", MICCAI 2021).

    Every other sample is a positive, weighted by how close its label is. With
    s_ij = <z_i, z_j> / tau on L2-normalised embeddings, w_ij = K(y_i, y_j) and
    a_ij = w_ij / sum_{t != i} w_it:

        l_i = - sum_{j != i} a_ij [ s_ij - log sum_{t != i} exp(s_it) ]

    The other view of the same subject has w = K(0), the strongest positive. As sigma -> 0
    (with distinct labels) the loss becomes NT-Xent.

    Args:
        temperature: tau.
        sigma: kernel bandwidth, in label units (years for age).
        kernel: "rbf", "gaussian" or "cauchy" (see :mod:`medssl.losses.kernels`).

    Example:
        >>> import torch
        >>> from medssl.losses import YAwareLoss
        >>> loss_fn = YAwareLoss(temperature=0.1, sigma=5.0, kernel="rbf")
        >>> z, ages = torch.randn(8, 2, 128), torch.rand(8) * 80 + 10
        >>> loss = loss_fn(z, ages)
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 5.0, kernel: str = "rbf"):
        super().__init__()
        check_temperature(temperature)
        check_kernel(kernel, sigma)
        self.temperature = temperature
        self.sigma = sigma
        self.kernel = kernel

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
        weights = pair_weights(batch.subject_labels, batch.n_views, self.kernel, self.sigma, s.dtype)
        attraction = (weights * s).sum(dim=1) / weights.sum(dim=1)
        log_denominator = s.masked_fill(~batch.not_self, float("-inf")).logsumexp(dim=1)
        return mean_over_anchors(log_denominator - attraction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}, kernel={self.kernel!r}"
