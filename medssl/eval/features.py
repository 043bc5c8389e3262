"""The trivial representation every encoder must beat: intensity percentiles of each volume."""

from __future__ import annotations

import torch

from medssl.models.features import extract_features, volume_dataset

__all__ = ["INTENSITY_PERCENTILES", "IntensityStatistics", "extract_features", "volume_dataset"]

INTENSITY_PERCENTILES = (1, 5, 10, 20, 30, 50, 70, 80, 90, 95, 99)


class IntensityStatistics(torch.nn.Module):
    """A representation with no learning: percentiles of each volume's foreground intensities.

    The trivial baseline of a brain-age representation: a probe on these 11 numbers reads
    global intensity (tissue proportions, contrast, scanner) and nothing spatial. An encoder
    that does not beat it on unseen sites has not learnt anatomy. Voxels equal to the volume's
    most frequent value (the background of a skull-stripped, normalised image) are left out.

    Example:
        >>> IntensityStatistics()(torch.rand(2, 1, 16, 16, 16)).shape
        torch.Size([2, 11])
    """

    feature_dim = len(INTENSITY_PERCENTILES)
    quantiles: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, percentiles: tuple[float, ...] = INTENSITY_PERCENTILES):
        super().__init__()
        self.register_buffer("quantiles", torch.tensor(percentiles, dtype=torch.float64) / 100.0, persistent=False)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        rows = []
        for volume in volumes.flatten(1).double():
            background = volume.mode().values
            foreground = volume[volume != background]
            rows.append(torch.quantile(foreground if foreground.numel() else volume, self.quantiles))
        return torch.stack(rows).float()
