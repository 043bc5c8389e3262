"""Supply vs. demand: volumes/s of the data + augmentation pipeline against the training step's.

Run by hand from the repository root:

    python benchmarks/loader.py                     # 64 subjects of 32^3, workers 0/1/2, NIfTI and cached
    python benchmarks/loader.py --shape 64 --workers 0 2 4 --epochs 4

Supply: the engine's own ``DataLoader`` (``EpochLoader``: epoch-seeded views, persistent
workers) over the train split of a synthetic cohort stored at ``--stored-shape`` and
trained at ``--shape`` (``data.volume_shape``), with SimCLR-style views (crop-resize p=1,
cutout p=1, flip p=0.5, z-score), two views per subject, read from NIfTI files (resampled
per item) and from the same cohort cached at ``--shape`` by ``medssl data cache``
(memory-mapped .npy, no resampling). Each epoch is timed; the
first (worker start-up, cold caches) is dropped; settings are run in rounds, interleaved
with the demand measurement, and medians over rounds are reported.

Demand: volumes/s of the engine's training step (ResNet-18, y-aware loss, Adam) on a
pre-loaded batch of the same shape (see ``train_step.py``), measured in the same run.
A ratio supply / demand above 1 means the GPU-less step, not the data, limits training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import build, machine, time_engine  # noqa: E402

from medssl.data.cache import cache_cohort  # noqa: E402
from medssl.data.cohort import load_cohort  # noqa: E402
from medssl.data.synthetic import synthesize_cohort  # noqa: E402
from medssl.methods import method_needs  # noqa: E402
from medssl.recipe import Recipe
from medssl.train.distributed import DistributedContext  # noqa: E402
from medssl.train.pretraining import Notes, pretraining_data  # noqa: E402


def supply(root: Path, workers: int, epochs: int, batch: int, shape: int, workdir: Path) -> tuple[float, int]:
    recipe = Recipe(
        data={"root": str(root), "num_workers": workers, "label": None, "volume_shape": [shape] * 3},
        views={"crop": {"p": 1.0}, "cutout": {"p": 1.0}, "flip": {"p": 0.5}},
        method={"name": "simclr"},
        train={"batch_size": batch, "device": "cpu"},
    )
    loader = pretraining_data(
        recipe, method_needs(recipe), DistributedContext(), torch.device("cpu"), Notes(None, True), None
    ).loader
    times, volumes = [], 0
    for epoch in range(epochs):
        started = time.perf_counter()
        volumes = sum(int(b["views"].shape[0] * b["views"].shape[1]) for b in loader.epoch(epoch))
        times.append(time.perf_counter() - started)
    loader.close()  # stop the persistent workers
    return volumes / statistics.median(times[1:]), volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=64)
    parser.add_argument("--shape", type=int, default=32, help="Training edge (data.volume_shape).")
    parser.add_argument("--stored-shape", type=int, default=48, help="Edge of the NIfTI volumes on disk.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per setting and round (the first is dropped).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over all settings (medians over rounds).")
    parser.add_argument("--steps", type=int, default=4, help="Timed training steps per round.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        nifti = synthesize_cohort(
            workdir / "nifti", subjects=args.subjects, sites=4, external_sites=0, shape=args.stored_shape, seed=0
        )
        cached = cache_cohort(load_cohort(nifti), workdir / "cached", volume_shape=[args.shape] * 3)
        settings = [
            (name, root, workers)
            for name, root in (("NIfTI (.nii.gz)", nifti), ("cached (.npy memmap)", cached))
            for workers in args.workers
        ]

        class Step:
            encoder, shape, batch, precision = "resnet18", args.shape, args.batch, "fp32"

        pretraining, batch = build(Step, workdir / "demand")
        time_engine(pretraining, batch, 2, 0)
        step_volumes = batch["views"].shape[0] * batch["views"].shape[1]
        # Rounds over every setting, so that bursts of load from other jobs hit all of them alike.
        speeds: dict = {setting[::2]: [] for setting in settings}
        demands = []
        for round_ in range(args.rounds):
            for name, root, workers in settings:
                speed, volumes_per_epoch = supply(root, workers, args.epochs, args.batch, args.shape, workdir)
                speeds[(name, workers)].append(speed)
            demands.append(args.steps * step_volumes / time_engine(pretraining, batch, args.steps, round_ + 1))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{name} w{workers} {values[-1]:.0f}" for (name, workers), values in speeds.items())
                + f"; demand {demands[-1]:.1f} volumes/s",
                flush=True,
            )
        demand = statistics.median(demands)
        rows = [(name, workers, statistics.median(values)) for (name, workers), values in speeds.items()]
    print(
        f"\n{volumes_per_epoch} volumes/epoch ({args.subjects} subjects, train split), stored {args.stored_shape}^3, trained at "
        f"{args.shape}^3, batch {args.batch}; demand = engine step, resnet18: {demand:.1f} volumes/s"
    )
    print("| source | workers | volumes/s | supply / demand |")
    print("|--------|---------|-----------|-----------------|")
    for name, workers, speed in rows:
        print(f"| {name} | {workers} | {speed:.1f} | {speed / demand:.1f}x |")


if __name__ == "__main__":
    main()
