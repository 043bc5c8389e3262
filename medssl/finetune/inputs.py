"""What the network is shown: the volumes of a cohort part, their loaders, and frozen features
standardised on the fit part."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from medssl.config import DataConfig
from medssl.data.cohort import Cohort
from medssl.data.views import VolumeDataset, build_eval_transform, build_view_transform, resize_transform, seed_worker
from medssl.recipe import Recipe


def volume_dataset(part: Cohort, recipe: Recipe, augment: bool) -> VolumeDataset:
    """Volumes of a cohort part, normalised (and resized) as in pre-training; random views if ``augment``."""
    preprocess = resize_transform(recipe.data.volume_shape) if recipe.data.volume_shape else None
    transform = build_view_transform(recipe.views) if augment else build_eval_transform(recipe.views)
    return VolumeDataset(part.subjects(), transform, preprocess=preprocess)


def make_loader(dataset: Dataset, batch_size: int, data: DataConfig, device: torch.device | None = None) -> DataLoader:
    """The batches of a part that is predicted, not trained on: in order, all of them."""
    # torch types Dataset without __len__; the map-style datasets here all have one
    size = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=min(batch_size, size),
        shuffle=False,
        num_workers=data.num_workers,
        worker_init_fn=seed_worker,
        pin_memory=device is not None and device.type == "cuda",
    )


def standardize_features(features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each part's features standardised with the statistics of the ``"fit"`` part, by scikit-learn's
    ``StandardScaler`` as the probes' pipelines do: a feature constant on the fit subjects is
    centred, not divided by its zero spread (which would blow its test values up to ~1e5)."""
    scaler = StandardScaler().fit(features["fit"].numpy())
    return {
        name: torch.from_numpy(scaler.transform(values.numpy())).to(values.dtype) for name, values in features.items()
    }
