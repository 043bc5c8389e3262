"""DeepCluster building blocks: PCA whitening, k-means backends, empty clusters, cluster-uniform sampling."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from sklearn.datasets import make_blobs

from medssl.errors import RecipeError, TrainingError
from medssl.methods.clustering import (
    ClusterUniformSampler,
    cluster_size_stats,
    fix_empty_clusters,
    kmeans,
    normalized_mutual_info,
    pca_whiten,
)


def correlated_features(n=500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.logspace(0, 2, d)  # very different scales, correlated
    return (rng.standard_normal((n, d)) @ mixing + 5.0).astype(np.float32)


# ----------------------------------------------------------------------------- pca_whiten
def test_pca_whiten_gives_identity_covariance_before_normalisation():
    whitened = pca_whiten(correlated_features(), dim=8, normalize=False)
    assert whitened.shape == (500, 8) and whitened.dtype == np.float32
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(8), atol=1e-3)


def test_pca_whiten_keeps_the_leading_components_in_order():
    features = correlated_features()
    centered = features - features.mean(axis=0)
    whitened = pca_whiten(features, dim=3, normalize=False)
    # Component i is centered @ v_i / sqrt(lambda_i): regressing the data on it gives sqrt(lambda_i) v_i,
    # so the squared loadings are the three largest eigenvalues, largest first.
    top = np.sort(np.linalg.eigvalsh(np.cov(centered, rowvar=False)))[::-1][:3]
    loadings = np.linalg.lstsq(whitened.astype(np.float64), centered, rcond=None)[0]
    np.testing.assert_allclose((loadings**2).sum(axis=1), top, rtol=1e-3)


def test_pca_whiten_normalises_rows_and_caps_dimension_at_sample_count():
    rows = pca_whiten(correlated_features(), dim=256)
    assert rows.shape == (500, 12) and rows.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    few_samples = pca_whiten(np.random.default_rng(1).standard_normal((20, 50)), dim=256)
    assert few_samples.shape == (20, 20) and np.isfinite(few_samples).all()


def test_pca_whiten_keeps_zero_variance_directions_near_zero():
    # A channel that is constant for every subject (a dead ReLU unit) gives a component of rounding
    # noise only; whitening without eps would scale that noise up to unit variance.
    features = correlated_features().astype(np.float64)
    features[:, 3] = 0.0
    features[:, 7] = 2.5
    whitened = pca_whiten(features, dim=12, normalize=False)
    np.testing.assert_allclose(np.cov(whitened[:, :10], rowvar=False), np.eye(10), atol=1e-3)
    assert np.abs(whitened[:, 10:]).max() < 1e-6


def test_pca_whiten_then_kmeans_recovers_well_separated_clusters():
    features, truth = make_blobs(400, 32, centers=5, cluster_std=0.5, center_box=(-20, 20), random_state=3)
    assignments, _, _ = kmeans(pca_whiten(features, dim=8), 5, iterations=20, seed=0, backend="sklearn")
    assert normalized_mutual_info(assignments, truth) == pytest.approx(1.0)


def test_pca_whiten_accepts_torch_tensors():
    features = correlated_features()
    np.testing.assert_allclose(pca_whiten(torch.from_numpy(features), dim=4), pca_whiten(features, dim=4), atol=1e-6)


def test_pca_whiten_rejects_non_finite_features():
    features = correlated_features()
    features[3, 2] = np.nan
    with pytest.raises(TrainingError, match="NaN"):
        pca_whiten(features)


# ----------------------------------------------------------------------------- kmeans
def test_faiss_and_sklearn_kmeans_reach_the_same_inertia_on_blobs():
    features, _ = make_blobs(2000, 32, centers=10, cluster_std=4.0, random_state=0)
    best = {}
    for backend in ("faiss", "sklearn"):
        best[backend] = min(kmeans(features, 10, iterations=20, seed=seed, backend=backend)[2] for seed in range(6))
    assert best["faiss"] == pytest.approx(best["sklearn"], rel=0.02)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_returns_nearest_centroid_assignments_and_their_inertia(backend):
    features, _ = make_blobs(300, 8, centers=4, random_state=1)
    assignments, centroids, inertia = kmeans(features, 4, iterations=10, seed=0, backend=backend)
    assert assignments.shape == (300,) and assignments.dtype == np.int64
    assert centroids.shape == (4, 8) and centroids.dtype == np.float32
    distances = ((features[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(assignments, distances.argmin(axis=1))
    assert inertia == pytest.approx(distances.min(axis=1).sum(), rel=1e-4)


def test_kmeans_is_reproducible_from_its_seed():
    features, _ = make_blobs(400, 8, centers=5, random_state=2)
    first, second = kmeans(features, 5, seed=3), kmeans(features, 5, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_kmeans_with_more_clusters_than_samples_names_the_recipe_key():
    with pytest.raises(RecipeError, match="method.clusters.*k = 11"):
        kmeans(np.zeros((10, 4), dtype=np.float32), 11)


def test_kmeans_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        kmeans(np.random.default_rng(0).standard_normal((20, 4)), 2, backend="cuml")


# ----------------------------------------------------------------------------- fix_empty_clusters
def test_fix_empty_clusters_fills_every_empty_cluster_by_splitting_another():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((60, 5)).astype(np.float32)
    assignments = np.repeat([0, 1, 3], 20)  # clusters 2, 4 and 5 are empty
    centroids = np.stack([features[assignments == c].mean(0) if c in (0, 1, 3) else np.full(5, 50.0) for c in range(6)])
    fixed, new_centroids = fix_empty_clusters(features, assignments, centroids, rng=np.random.default_rng(1))
    sizes = np.bincount(fixed, minlength=6)
    assert (sizes > 0).all() and sizes.sum() == 60
    # Only members move, and each refilled cluster's centroid sits next to its donor's old one.
    for c in (2, 4, 5):
        donor_labels = set(assignments[fixed == c])
        assert len(donor_labels) == 1
        assert np.linalg.norm(new_centroids[c] - centroids[donor_labels.pop()]) < 1e-3
    assert (np.bincount(assignments, minlength=6) == [20, 20, 0, 20, 0, 0]).all()  # inputs untouched


def test_fix_empty_clusters_splits_duplicated_samples_in_halves():
    features = np.ones((8, 3), dtype=np.float32)
    fixed, _ = fix_empty_clusters(features, np.zeros(8, dtype=np.int64), np.ones((2, 3)), rng=0)
    assert sorted(np.bincount(fixed, minlength=2)) == [4, 4]


def test_fix_empty_clusters_leaves_a_full_partition_unchanged():
    features = np.random.default_rng(0).standard_normal((9, 2))
    assignments = np.arange(9) % 3
    centroids = np.zeros((3, 2))
    fixed, new_centroids = fix_empty_clusters(features, assignments, centroids, rng=0)
    np.testing.assert_array_equal(fixed, assignments)
    np.testing.assert_array_equal(new_centroids, centroids)


# ----------------------------------------------------------------------------- ClusterUniformSampler
def test_cluster_uniform_sampler_draws_unbalanced_clusters_equally_often():
    assignments = np.repeat([0, 1, 2, 3, 5], [2000, 200, 20, 1, 5])  # cluster 4 is empty
    sampler = ClusterUniformSampler(assignments, num_samples=50_000, seed=0)
    indices = np.fromiter(iter(sampler), dtype=np.int64)
    assert len(indices) == len(sampler) == 50_000
    counts = np.bincount(assignments[indices], minlength=6)
    assert counts[4] == 0
    assert chisquare(counts[[0, 1, 2, 3, 5]]).pvalue > 1e-3
    # Within the largest cluster, members are drawn uniformly too.
    within = np.bincount(indices[assignments[indices] == 0], minlength=2000)
    assert chisquare(within).pvalue > 1e-3


def test_cluster_uniform_sampler_is_reproducible_per_seed_and_epoch():
    assignments = np.random.default_rng(0).integers(0, 7, size=300)
    first = ClusterUniformSampler(assignments, num_samples=100, seed=4)
    second = ClusterUniformSampler(torch.as_tensor(assignments), num_samples=100, seed=4)
    assert list(first) == list(second)
    epoch_zero = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_zero
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(ClusterUniformSampler(assignments, num_samples=100, seed=5)) != epoch_zero


# ----------------------------------------------------------------------------- monitoring
def test_normalized_mutual_info_ignores_label_names():
    a = np.random.default_rng(0).integers(0, 5, size=400)
    assert normalized_mutual_info(a, (a + 2) % 5) == pytest.approx(1.0)
    independent = np.random.default_rng(1).integers(0, 5, size=400)
    assert normalized_mutual_info(a, independent) < 0.05


def test_cluster_size_stats_counts_empty_clusters():
    stats = cluster_size_stats(np.array([0, 0, 0, 2, 2, 3]), k=5)
    assert stats == {"min": 0, "max": 3, "mean": 1.2, "empty": 2}
