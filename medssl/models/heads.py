"""Projection and prediction heads put on top of an encoder's features."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """An MLP ``in_dim -> hidden_dim -> ... -> out_dim`` with ReLU (and optional BatchNorm).

    SimCLR (Chen et al., ICML 2020) and y-aware (Dufumier et al., MICCAI 2021) use two
    layers without BatchNorm; BYOL, SimSiam and VICReg heads use BatchNorm.

    Example:
        >>> head = ProjectionHead(512, hidden_dim=512, out_dim=128)
        >>> head(torch.zeros(4, 512)).shape
        torch.Size([4, 128])
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2, batch_norm: bool = False
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"ProjectionHead: layers={layers}, expected at least 1 (the output Linear)")
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            modules.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                modules.append(nn.BatchNorm1d(hidden_dim))
            modules.append(nn.ReLU(inplace=True))
            width = hidden_dim
        modules.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*modules)
        self.out_dim = out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.layers(features)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al., ICCV 2021): an MLP to a bottleneck, L2
    normalisation, then a weight-normalised linear layer onto ``out_dim`` prototypes.

    Example:
        >>> DINOHead(512, out_dim=4096)(torch.zeros(4, 512)).shape
        torch.Size([4, 4096])
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 256, out_dim: int = 4096):
        super().__init__()
        self.mlp = ProjectionHead(in_dim, hidden_dim=hidden_dim, out_dim=bottleneck_dim, layers=3)
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.out_dim = out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim) prototype scores."""
        return self.prototypes(nn.functional.normalize(self.mlp(features), dim=-1))
