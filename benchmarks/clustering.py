"""Time the two k-means backends of DeepCluster: faiss vs scikit-learn.

Clusters strongly overlapping gaussian blobs (10,000 x 256 by default, so that Lloyd's
algorithm does not converge within a few iterations) into k = 100 and 1,000 clusters with
at most 20 iterations from random initial centroids, a single run each, and reports the
median wall time over a few repetitions, the speed ratio and the inertia of both backends.

faiss-cpu wheels run OpenMP threads that spin while waiting; on few cores they compete with
OpenBLAS and the other thread pools. Compare with ``OMP_WAIT_POLICY=PASSIVE`` set:

    python benchmarks/clustering.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/clustering.py
    python benchmarks/clustering.py --samples 20000 --ks 100 1000 3000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import faiss
import numpy as np
import sklearn
from sklearn.datasets import make_blobs

from medssl.methods.clustering import kmeans


def median_time(features: np.ndarray, k: int, backend: str, iterations: int, repeats: int) -> tuple[float, float]:
    """(median seconds, median inertia) over ``repeats`` runs with seeds 0..repeats-1."""
    times, inertias = [], []
    for seed in range(repeats):
        start = time.perf_counter()
        _, _, inertia = kmeans(features, k, iterations=iterations, seed=seed, backend=backend)
        times.append(time.perf_counter() - start)
        inertias.append(inertia)
    return statistics.median(times), statistics.median(inertias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    features, _ = make_blobs(args.samples, args.dim, centers=200, cluster_std=20.0, random_state=0)
    features = features.astype(np.float32)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print(
        f"{args.samples} x {args.dim} float32 blobs, {args.iterations} iterations, median of {args.repeats} runs; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), faiss {faiss.__version__} "
        f"({gpus} GPU), scikit-learn {sklearn.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"| {'k':>5} | {'faiss (s)':>9} | {'sklearn (s)':>11} | {'sklearn / faiss':>15} | {'inertia faiss / sklearn':>23} |"
    )
    print(f"|{'-' * 7}|{'-' * 11}|{'-' * 13}|{'-' * 17}|{'-' * 25}|")
    for k in args.ks:
        faiss_time, faiss_inertia = median_time(features, k, "faiss", args.iterations, args.repeats)
        sklearn_time, sklearn_inertia = median_time(features, k, "sklearn", args.iterations, args.repeats)
        print(
            f"| {k:>5} | {faiss_time:>9.2f} | {sklearn_time:>11.2f} | {sklearn_time / faiss_time:>14.1f}x "
            f"| {faiss_inertia / sklearn_inertia:>23.3f} |"
        )


if __name__ == "__main__":
    main()
