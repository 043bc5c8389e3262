"""DeepCluster for 3D volumes: alternate k-means on features and classification of the clusters."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medssl.config import METHOD_NAME_FIELD, MethodSection, RecipeSections
from medssl.methods.base import EpochServices, Method, MethodEntry
from medssl.methods.clustering import (
    ClusterUniformSampler,
    cluster_size_stats,
    fix_empty_clusters,
    kmeans,
    normalized_mutual_info,
    pca_whiten,
)
from medssl.models import Encoder


class DeepCluster(Method):
    """DeepCluster (Caron et al., ECCV 2018).

    Before each epoch: features of every training subject (no augmentation) -> PCA to
    ``pca_dim`` with whitening -> L2 normalisation -> k-means (faiss) -> empty clusters fixed
    -> pseudo-labels. During the epoch: cross-entropy of a freshly re-initialised linear top
    layer on those pseudo-labels, with mini-batches sampled uniformly over clusters.

    Example:
        >>> method = DeepCluster(build_encoder("resnet18"), clusters=100)
    """

    has_projection = False
    assignments: torch.Tensor  # a buffer: the cluster of every training subject, this epoch

    def __init__(
        self, encoder: Encoder, clusters: int = 100, pca_dim: int = 256, kmeans_iters: int = 20, seed: int = 0
    ):
        super().__init__(encoder, nn.Identity())
        self.classifier = nn.Linear(encoder.feature_dim, clusters)
        self.clusters = clusters
        self.pca_dim = pca_dim
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.register_buffer("assignments", torch.zeros(0, dtype=torch.long), persistent=False)
        self.previous_assignments: np.ndarray | None = None

    def prepare_epoch(self, epoch: int, context: EpochServices) -> torch.utils.data.Sampler:
        features = context.extract_features(self.encoder)
        reduced = pca_whiten(features, dim=self.pca_dim)
        k = min(self.clusters, len(reduced))
        assignments, centroids, _ = kmeans(reduced, k, iterations=self.kmeans_iters, seed=self.seed + epoch)
        assignments, centroids = fix_empty_clusters(
            reduced, assignments, centroids, np.random.default_rng(self.seed + epoch)
        )
        logs = {f"clusters_{key}": float(value) for key, value in cluster_size_stats(assignments, k).items()}
        if self.previous_assignments is not None:
            logs["nmi_previous"] = float(normalized_mutual_info(self.previous_assignments, assignments))
        context.log(logs)
        self.previous_assignments = assignments
        self.assignments = torch.as_tensor(assignments, dtype=torch.long, device=self.classifier.weight.device)
        self.classifier.reset_parameters()
        context.forget_optimizer_state(self.classifier.parameters())
        return ClusterUniformSampler(assignments, num_samples=len(assignments), seed=self.seed + epoch)

    def get_extra_state(self) -> dict:
        # Checkpointed so that a resumed run logs the same nmi_previous as an uninterrupted one.
        previous = self.previous_assignments if self.previous_assignments is not None else np.zeros(0)
        return {"previous_assignments": torch.as_tensor(previous, dtype=torch.long)}

    def set_extra_state(self, state: dict) -> None:
        previous = state["previous_assignments"]
        self.previous_assignments = previous.numpy().copy() if previous.numel() else None

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.classifier(self.encoder(batch["views"][:, 0]))
        targets = self.assignments[batch["index"].to(self.assignments.device)]
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
        return loss, {"cluster_accuracy": accuracy}


class DeepClusterConfig(MethodSection):
    """DeepCluster (Caron et al., ECCV 2018): k-means pseudo-labels of the features, re-clustered every epoch."""

    name: Annotated[Literal["deepcluster"], METHOD_NAME_FIELD] = "deepcluster"
    clusters: int = Field(100, ge=2, description="k of k-means.")
    pca_dim: int = Field(256, ge=2, description="PCA dimension (whitened) before k-means.")
    kmeans_iters: int = Field(20, ge=1, description="k-means iterations.")

    def smoke(self) -> DeepClusterConfig:
        return self.model_copy(update={"clusters": min(self.clusters, 3), "pca_dim": min(self.pca_dim, 8)})


def build_deepcluster(section: DeepClusterConfig, recipe: RecipeSections, encoder: Encoder) -> DeepCluster:
    return DeepCluster(
        encoder,
        clusters=section.clusters,
        pca_dim=section.pca_dim,
        kmeans_iters=section.kmeans_iters,
        seed=recipe.train.seed,
    )


DEEPCLUSTER_METHOD = MethodEntry(
    DeepClusterConfig, build_deepcluster, views=1, distributed=False, training_features=True
)
