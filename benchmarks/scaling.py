"""Does a bigger cohort cost more memory? Peak RSS and epoch time for 64, 256 and 1,024 volumes.

Run by hand from the repository root:

    python benchmarks/scaling.py                      # 64 / 256 / 1024 subjects of 32^3, AlexNet3D
    python benchmarks/scaling.py --sizes 64 256 1024 4096 --encoder resnet18

Cohorts: ``--unique`` synthetic subjects (32^3, written once), listed repeatedly under new
participant ids until each size is reached (the participants table's ``path`` column may
name a file twice); every size is also cached with ``medssl data cache`` into one
memory-mapped .npy of that many rows. Each (source, size) trains one epoch through the
engine (``pretrain``: y-aware, batch 16 x 2 views, Adam, no evaluation) in a fresh
Python process, which reports:

- epoch time (from the start of the run to the end of its one epoch, checkpoint included) and
  volumes per epoch (2 views per subject);
- peak RSS (``VmHWM``) and, sampled every 20 ms, peak anonymous RSS (``RssAnon``: what the
  process allocated itself; pages of a memory-mapped file count in RSS while mapped, but the
  kernel can drop them at any time, so ``RssAnon`` is the honest "memory used").

Memory must stay flat (volumes are read one at a time, never all at once) and time must
grow linearly in the number of volumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(root: str, size: int, encoder: str, batch: int) -> None:
    """One epoch on ``size`` subjects; prints one JSON line."""
    from medssl.recipe import Recipe
    from medssl.train.pretraining import build_pretraining, run_pretraining

    peak_anon = [status_kb("RssAnon")]
    done = threading.Event()
    epoch_seconds: list[float] = []

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    recipe = Recipe(
        name="scaling",
        data={"root": root, "max_subjects": size, "label": "age"},
        model={"encoder": encoder},
        views={"crop": {"p": 1.0}, "cutout": {"p": 1.0}},
        method={"name": "yaware"},
        train={"epochs": 1, "batch_size": batch, "device": "cpu"},
        eval={"after_pretrain": False},
    )
    pretraining = build_pretraining(recipe, Path(tempfile.mkdtemp()) / "run")
    started = time.perf_counter()
    run_pretraining(pretraining, on_epoch_end=lambda epoch: epoch_seconds.append(time.perf_counter() - started))
    done.set()
    volumes = pretraining.trainer.schedule.steps_per_epoch * pretraining.data.loader.batch_size * 2
    print(
        json.dumps(
            {
                "size": size,
                "volumes": volumes,
                "epoch_s": epoch_seconds[0],
                "peak_rss_mb": status_kb("VmHWM") / 1024,
                "peak_anon_mb": max(peak_anon[0], status_kb("RssAnon")) / 1024,
                "threads": torch.get_num_threads(),
            }
        )
    )


def cohorts(workdir: Path, sizes: list[int], unique: int, shape: int) -> dict[tuple[str, int], Path]:
    import pandas as pd

    from medssl.data.cache import cache_cohort
    from medssl.data.cohort import load_cohort
    from medssl.data.synthetic import synthesize_cohort

    base = synthesize_cohort(workdir / "unique", subjects=unique, sites=8, external_sites=0, shape=shape, seed=0)
    table = pd.read_csv(base / "participants.tsv", sep="\t", dtype={"participant_id": str, "site": str})
    table["path"] = [str(base / path) for path in table["path"]]
    roots = {}
    for size in sizes:
        rows = table.iloc[[i % len(table) for i in range(size)]].copy()
        rows["participant_id"] = [f"{pid}-{i // len(table)}" for i, pid in enumerate(rows["participant_id"])]
        rows["split"] = "train"
        folder = workdir / f"nifti-{size}"
        folder.mkdir()
        rows.to_csv(folder / "participants.tsv", sep="\t", index=False)
        roots[("NIfTI", size)] = folder
        roots[("cached .npy", size)] = cache_cohort(load_cohort(folder), workdir / f"cached-{size}")
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--unique", type=int, default=256, help="Distinct synthetic subjects behind the cohorts.")
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--encoder", default="alexnet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], int(args.child[1]), args.encoder, args.batch)
        return
    from train_step import machine

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        roots = cohorts(Path(tmp), args.sizes, args.unique, args.shape)
        print(f"cohorts written in {time.perf_counter() - started:.0f} s", flush=True)
        results = []
        for (source, size), root in roots.items():
            command = [
                sys.executable,
                __file__,
                "--encoder",
                args.encoder,
                "--batch",
                str(args.batch),
                "--child",
                str(root),
                str(size),
            ]
            command += ["--threads", str(args.threads)] if args.threads else []
            output = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results.append((source, result))
            print(
                f"{source:12s} {size:5d} subjects: {result['volumes']} volumes in {result['epoch_s']:.1f} s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB, peak anon {result['peak_anon_mb']:.0f} MB",
                flush=True,
            )
    print(f"\n{args.encoder}, {args.shape}^3, batch {args.batch} x 2 views, 1 epoch per run, fresh process per run")
    print("| source | subjects | volumes/epoch | epoch (s) | ms / volume | peak RSS (MB) | peak RssAnon (MB) |")
    print("|--------|----------|---------------|-----------|-------------|---------------|-------------------|")
    for source, result in results:
        print(
            f"| {source} | {result['size']} | {result['volumes']} | {result['epoch_s']:.1f} | "
            f"{1000 * result['epoch_s'] / result['volumes']:.1f} | {result['peak_rss_mb']:.0f} | {result['peak_anon_mb']:.0f} |"
        )
    for source in dict.fromkeys(source for source, _ in results):
        rows = [result for name, result in results if name == source]
        small, large = rows[0], rows[-1]
        print(
            f"{source}: {large['volumes'] / small['volumes']:.0f}x the volumes -> {large['epoch_s'] / small['epoch_s']:.1f}x the epoch "
            f"time, {large['peak_anon_mb'] / small['peak_anon_mb']:.2f}x the peak anonymous memory, "
            f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the peak RSS"
        )


if __name__ == "__main__":
    main()
