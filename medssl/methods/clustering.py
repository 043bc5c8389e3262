"""Building blocks of DeepCluster (Caron et al., ECCV 2018): pseudo-labels from k-means.

Each epoch, the encoder's features of every subject (no augmentation) are reduced by PCA
with whitening and L2-normalised (:func:`pca_whiten`), clustered by k-means
(:func:`kmeans`), empty clusters are re-filled (:func:`fix_empty_clusters`) and the
cluster indices become the classes of a re-initialised linear top layer, trained on
mini-batches drawn uniformly over clusters (:class:`ClusterUniformSampler`).
:func:`normalized_mutual_info` between consecutive epochs' assignments and
:func:`cluster_size_stats` monitor the clustering.

Functions take numpy arrays or torch tensors and return numpy arrays.

Example:
    >>> features = encoder_features_of_every_subject  # (n, d)
    >>> reduced = pca_whiten(features, dim=256)
    >>> assignments, centroids, inertia = kmeans(reduced, k=100, iterations=20)
    >>> assignments, centroids = fix_empty_clusters(reduced, assignments, centroids, rng=0)
    >>> sampler = ClusterUniformSampler(assignments, num_samples=len(assignments), seed=0)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler

from medssl.errors import RecipeError, TrainingError

ArrayLike = np.ndarray | torch.Tensor


def pca_whiten(features: ArrayLike, dim: int = 256, eps: float = 1e-5, normalize: bool = True) -> np.ndarray:
    """Project on the leading principal components, whiten, then L2-normalise each row.

    The features are centred and projected on the top min(dim, n_samples, n_features) principal
    axes (scikit-learn's ``PCA`` with the exact SVD solver: deterministic signs, components by
    decreasing variance); each component is divided by sqrt(variance + eps), variances divided by
    n - 1, so the projected features have (nearly) identity covariance, and each row is finally
    scaled to unit L2 norm (``sklearn.preprocessing.normalize``).

    Whitening divides by sqrt(variance + eps) itself rather than through ``PCA(whiten=True)``:
    scikit-learn floors that scale at machine epsilon, which blows the rounding noise of a
    zero-variance direction (a channel that is 0 for every subject, or more components than the
    n - 1 the centred data span) up to unit variance, and k-means would then cluster noise; with
    eps such components stay near 0 (faiss' ``PCAMatrix`` has the same ``epsilon``).

    Args:
        features: (n_samples, n_features) features, one row per subject.
        dim: number of principal components kept (256 in DeepCluster).
        eps: added to the component variances, so directions of (near) zero variance stay small.
        normalize: L2-normalise the rows of the whitened features (False returns them
            whitened only).

    Returns:
        (n_samples, min(dim, n_samples, n_features)) float32 C-contiguous array.
    """
    x = _as_feature_matrix(features).astype(np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {n}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    # scikit-learn is imported where it is used: reading a recipe imports this module (DeepCluster's section)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize as normalize_rows

    pca = PCA(n_components=min(dim, n, d), svd_solver="full").fit(x)
    whitened = pca.transform(x) / np.sqrt(pca.explained_variance_ + eps)
    if normalize:
        whitened = normalize_rows(whitened)
    return np.ascontiguousarray(whitened, dtype=np.float32)


def kmeans(
    features: ArrayLike,
    k: int,
    iterations: int = 20,
    seed: int = 0,
    backend: Literal["auto", "faiss", "sklearn"] = "auto",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means from k randomly chosen samples, a single run (no restarts).

    Args:
        features: (n_samples, d) features.
        k: number of clusters, 1 <= k <= n_samples.
        iterations: Lloyd iterations (20 in DeepCluster); both backends stop earlier
            once converged.
        seed: seed of the initial centroids.
        backend: "faiss" (on the GPU when faiss has GPU support and a GPU is visible,
            else on the CPU), "sklearn" (``sklearn.cluster.KMeans``, for comparison), or
            "auto": faiss when it is installed, else scikit-learn. On a CPU with few cores,
            faiss is much faster with ``OMP_WAIT_POLICY=PASSIVE`` in the environment
            (see benchmarks/README.md).

    Returns:
        assignments: (n_samples,) int64 cluster index of each sample; a cluster may be
            empty, see :func:`fix_empty_clusters`.
        centroids: (k, d) float32.
        inertia: sum of squared L2 distances of the samples to their centroid.
    """
    x = _as_feature_matrix(features)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise RecipeError(f"method.clusters: k-means with k = {k} clusters needs 1 <= k <= {n}, the number of samples")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if backend == "auto":
        backend = "faiss" if _faiss_installed() else "sklearn"
    if backend == "faiss":
        assignments, centroids = _faiss_kmeans(x, k, iterations, seed)
    elif backend == "sklearn":
        assignments, centroids = _sklearn_kmeans(x, k, iterations, seed)
    else:
        raise ValueError(f"backend must be 'auto', 'faiss' or 'sklearn', got {backend!r}")
    return assignments, centroids, _inertia(x, assignments, centroids)


def fix_empty_clusters(
    features: ArrayLike,
    assignments: ArrayLike,
    centroids: ArrayLike,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-fill empty clusters by splitting randomly chosen non-empty ones.

    For each empty cluster e, a cluster s with at least two members is drawn uniformly
    at random (a single-member cluster cannot give members away without emptying
    itself); its centroid is copied to e and the two are pushed apart by a tiny random
    perturbation, c_e = c_s + delta, c_s = c_s - delta, and the members of s go to the
    nearer of the two. If they all fall on one side (e.g. duplicated samples), they are
    split in two random halves. The loop ends when no cluster is empty.

    Args:
        features: (n_samples, d) the features that were clustered.
        assignments: (n_samples,) cluster index of each sample.
        centroids: (k, d) centroids.
        rng: numpy Generator or seed.

    Returns:
        New (assignments int64, centroids float32); the inputs are not modified.
    """
    x = _as_feature_matrix(features)
    labels = _as_assignments(assignments).copy()
    centroids = np.array(_to_numpy(centroids), dtype=np.float32)
    rng = np.random.default_rng(rng)
    k = centroids.shape[0]
    if labels.shape[0] != x.shape[0] or centroids.ndim != 2 or centroids.shape[1] != x.shape[1]:
        raise ValueError(
            f"expected features (n, d), assignments (n,), centroids (k, d), got {x.shape}, "
            f"{labels.shape}, {centroids.shape}"
        )
    if k > x.shape[0]:
        raise RecipeError(f"method.clusters: {k} clusters cannot all be non-empty with {x.shape[0]} samples")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"assignments must lie in [0, {k}), got values in [{labels.min()}, {labels.max()}]")

    sizes = np.bincount(labels, minlength=k)
    for empty in np.flatnonzero(sizes == 0):
        source = rng.choice(np.flatnonzero(sizes >= 2))
        members = np.flatnonzero(labels == source)
        delta = _tiny_perturbation(centroids[source], rng)
        # Nearer to c + delta than to c - delta  <=>  <x - c, delta> > 0.
        to_empty = (x[members] - centroids[source]) @ delta > 0
        if to_empty.all() or not to_empty.any():
            to_empty = np.zeros(members.size, dtype=bool)
            to_empty[rng.permutation(members.size)[: members.size // 2]] = True
        centroids[empty] = centroids[source] + delta
        centroids[source] = centroids[source] - delta
        labels[members[to_empty]] = empty
        sizes[empty] = int(to_empty.sum())
        sizes[source] -= sizes[empty]
    return labels, centroids


class ClusterUniformSampler(Sampler[int]):
    """Sample indices uniformly over non-empty clusters, then uniformly within the cluster.

    Every cluster is thus drawn equally often whatever its size, so large clusters do
    not dominate the pseudo-label classification (Caron et al., ECCV 2018). Draws are
    with replacement and reproducible: the order depends only on ``seed`` and on the
    epoch given to :meth:`set_epoch`.

    Args:
        assignments: (n_samples,) cluster index of each sample of the dataset.
        num_samples: indices drawn per epoch (the epoch length).
        seed: seed of the draws.

    Example:
        >>> sampler = ClusterUniformSampler(assignments, num_samples=len(dataset), seed=0)
        >>> loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(self, assignments: ArrayLike, num_samples: int, seed: int = 0) -> None:
        assignments = _as_assignments(assignments)
        if assignments.size == 0:
            raise ValueError("assignments is empty: there is nothing to sample")
        if assignments.min() < 0:
            raise ValueError(f"assignments must be >= 0, got {assignments.min()}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        # Sample indices grouped by cluster: cluster c owns by_cluster[starts[c] : starts[c] + sizes[c]].
        self._by_cluster = np.argsort(assignments, kind="stable")
        sizes = np.bincount(assignments)
        self._clusters = np.flatnonzero(sizes)
        self._sizes = sizes[self._clusters]
        self._starts = (np.cumsum(sizes) - sizes)[self._clusters]

    def set_epoch(self, epoch: int) -> None:
        """Use the draws of ``epoch`` (call before iterating, once per epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        cluster = rng.integers(len(self._clusters), size=self.num_samples)
        within = (rng.random(self.num_samples) * self._sizes[cluster]).astype(np.int64)
        indices = self._by_cluster[self._starts[cluster] + within]
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self.num_samples


def normalized_mutual_info(a: ArrayLike, b: ArrayLike) -> float:
    """Normalised mutual information between two labelings of the same samples, in [0, 1].

    DeepCluster tracks it between consecutive epochs' assignments to see the clustering
    stabilise (arithmetic-mean normalisation, scikit-learn's default).
    """
    a, b = _as_assignments(a), _as_assignments(b)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.shape[0]} and {b.shape[0]}")
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(a, b))


def cluster_size_stats(assignments: ArrayLike, k: int) -> dict[str, float]:
    """Sizes of the k clusters: {"min", "max", "mean", "empty"} (empty = number of empty clusters)."""
    assignments = _as_assignments(assignments)
    if assignments.size and (assignments.min() < 0 or assignments.max() >= k):
        raise ValueError(f"assignments must lie in [0, {k}), got values in [{assignments.min()}, {assignments.max()}]")
    sizes = np.bincount(assignments, minlength=k)
    return {
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "mean": float(sizes.mean()),
        "empty": int((sizes == 0).sum()),
    }


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    clustering = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iterations,
        nredo=1,
        seed=seed,
        gpu=use_gpu,
        verbose=False,
        # Cluster every sample (faiss subsamples to 256 per centroid by default, DeepCluster does not)
        # and stay quiet about small clusters.
        max_points_per_centroid=x.shape[0],
        min_points_per_centroid=1,
    )
    clustering.train(x)
    _, nearest = clustering.index.search(x, 1)
    return nearest[:, 0].astype(np.int64), np.ascontiguousarray(clustering.centroids, dtype=np.float32)


def _sklearn_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    # Random initial centroids and a fixed number of iterations, as faiss, so the two compare.
    model = KMeans(n_clusters=k, init="random", n_init=1, max_iter=iterations, tol=0.0, random_state=seed)
    model.fit(x)
    return model.labels_.astype(np.int64), np.ascontiguousarray(model.cluster_centers_, dtype=np.float32)


def _inertia(x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray) -> float:
    return float(np.sum((x.astype(np.float64) - centroids[assignments]) ** 2))


def _tiny_perturbation(centroid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    direction = rng.standard_normal(centroid.shape[0])
    direction /= np.linalg.norm(direction)
    scale = 1e-4 * max(float(np.linalg.norm(centroid)), 1e-3)
    return (scale * direction).astype(np.float32)


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_feature_matrix(features: ArrayLike) -> np.ndarray:
    """float32, C-contiguous (n, d) array, as faiss requires; rejects non-finite values."""
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu()
    x = np.ascontiguousarray(_to_numpy(features), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected features of shape (n_samples, n_features), got {x.shape}")
    if not np.isfinite(x).all():
        raise TrainingError(
            f"DeepCluster features contain {int((~np.isfinite(x)).sum())} NaN/inf values: "
            "the encoder diverged; lower train.lr or check the input volumes"
        )
    return x


def _as_assignments(assignments: ArrayLike) -> np.ndarray:
    values = _to_numpy(assignments)
    if values.ndim != 1:
        raise ValueError(f"expected assignments of shape (n_samples,), got {values.shape}")
    return values.astype(np.int64)
