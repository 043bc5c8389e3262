"""Frozen features of a cohort: batched, no augmentation, in the participants table's order.

Used by evaluation and by methods that cluster the training cohort's features every epoch
(DeepCluster), hence here, below both.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from medssl.config import RecipeSections
from medssl.data.cohort import Cohort, check_same_shape
from medssl.data.views import VolumeDataset, build_eval_transform, resize_transform
from medssl.progress import progress_bar


def volume_dataset(cohort: Cohort, recipe: RecipeSections) -> VolumeDataset:
    """The cohort's volumes, normalised (and resized) as in training, without augmentation."""
    shape = recipe.data.volume_shape
    if not shape:
        check_same_shape(cohort)
    preprocess = resize_transform(shape) if shape and cohort.stored_shape() != tuple(shape) else None
    return VolumeDataset(cohort.subjects(), build_eval_transform(recipe.views), preprocess=preprocess)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    cohort: Cohort,
    recipe: RecipeSections,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    description: str = "features",
    console: Console | None = None,
) -> np.ndarray:
    """(n_subjects, feature_dim) float32 features of ``encoder`` in eval mode."""
    device = torch.device(device)
    loader = DataLoader(
        volume_dataset(cohort, recipe),
        batch_size=batch_size or recipe.eval.batch_size,
        shuffle=False,
        num_workers=recipe.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    was_training = encoder.training
    encoder.eval()
    chunks = []
    progress = progress_bar(console, disable=console is None)
    with progress:
        task = progress.add_task(description, total=len(cohort))
        for batch in loader:
            volumes = batch["volume"].to(device, non_blocking=True)
            chunks.append(encoder(volumes).float().cpu().numpy())
            progress.update(task, advance=len(volumes))
    encoder.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, getattr(encoder, "feature_dim", 0)), dtype=np.float32)
