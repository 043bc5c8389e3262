"""Toolkit overhead of a training step: medssl's engine step vs. the same step written by hand.

Run by hand from the repository root:

    python benchmarks/train_step.py                       # ResNet-18, 8 subjects x 2 views of 32^3
    python benchmarks/train_step.py --shape 64 --batch 16 --steps 10 --repeats 5 --encoder resnet18

Both sides train the same encoder + projection head with the same y-aware loss and Adam on
the same pre-loaded tensors (no data loading on either side):

- **engine**: ``Trainer.run_epoch`` of a trainer built by ``build_pretraining``, handed a
  loader that serves one pre-loaded batch again and again -- autocast context,
  ``Method`` forward (view folding, gather hook, loss), finiteness check, backward,
  gradient-norm computation and check, optimiser and scheduler steps, EMA hook, one
  ``metrics.csv`` row + TensorBoard scalars + progress-bar update per step (to /dev/null).
  The once-per-epoch diagnostics are left out (they are not per step).
- **bare**: ``loss(head(encoder(x))).backward(); optimizer.step(); optimizer.zero_grad()``.

Each repeat times ``--steps`` steps of each side, alternating sides so that machine load
drifts hit both; the ratio is of medians over repeats. Overhead target: <= 10 %.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssl.data.synthetic import synthesize_cohort  # noqa: E402
from medssl.methods import fold_views  # noqa: E402
from medssl.recipe import Recipe
from medssl.train.metrics_log import MetricsLog  # noqa: E402
from medssl.train.pretraining import Pretraining, build_pretraining  # noqa: E402
from medssl.train.setup import make_optimizer  # noqa: E402
from medssl.train.trainer import Trainer  # noqa: E402


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, {model}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )


class RepeatedBatch:
    """A loader part serving one pre-loaded batch ``steps`` times per epoch: the step without data loading."""

    def __init__(self, batch: dict, steps: int):
        self.batch, self.steps = batch, steps

    def epoch(self, epoch: int, sampler=None) -> list[dict]:
        return [self.batch] * self.steps

    def close(self) -> None:
        pass


def timed_trainer(pretraining: Pretraining, batch: dict, steps: int) -> Trainer:
    """The pre-training trainer's parts, fed ``batch`` ``steps`` times an epoch, without the per-epoch
    diagnostics; progress bar rendered to /dev/null, metrics written as in a run."""
    from rich.console import Console

    built = pretraining.trainer
    trainer = Trainer(
        built.objective,
        built.optimizer,
        RepeatedBatch(batch, steps),
        built.run_dir,
        dataclasses.replace(built.schedule, steps_per_epoch=steps),
        scheduler=built.scheduler,
        device=built.device,
        precision=built.precision,
        model=built.model,
        console=Console(file=open(os.devnull, "w"), force_terminal=True),
    )
    trainer.log = MetricsLog(built.run_dir, enabled=True)
    return trainer


def build(args, workdir: Path) -> tuple[Pretraining, dict]:
    cohort = synthesize_cohort(
        workdir / "cohort", subjects=max(2 * args.batch, 16), sites=4, external_sites=0, shape=args.shape, seed=0
    )
    recipe = Recipe(
        data={"root": str(cohort), "label": "age"},
        model={"encoder": args.encoder},
        views={"crop": {"p": 1.0}, "cutout": {"p": 1.0}},
        method={"name": "yaware"},
        train={"batch_size": args.batch, "epochs": 1, "device": "cpu", "precision": args.precision},
        eval={"after_pretrain": False},
    )
    pretraining = build_pretraining(recipe, workdir / "run")
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    batch = next(iter(pretraining.data.loader.epoch(0)))
    pretraining.data.loader.close()
    return pretraining, batch


def time_engine(pretraining: Pretraining, batch: dict, steps: int, epoch: int) -> float:
    trainer = timed_trainer(pretraining, batch, steps)
    started = time.perf_counter()
    trainer.run_epoch(epoch, epoch * steps, 10**9)
    elapsed = time.perf_counter() - started
    trainer.log.close()
    return elapsed


def time_bare(encoder, head, loss_fn, optimizer, batch: dict, steps: int) -> float:
    views, labels = batch["views"], batch["label"]
    started = time.perf_counter()
    for _ in range(steps):
        z = head(encoder(fold_views(views)))
        z = z.reshape(views.shape[1], views.shape[0], -1).transpose(0, 1)
        loss = loss_fn(z, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--shape", type=int, default=32, help="Edge of the cubic volumes.")
    parser.add_argument("--batch", type=int, default=8, help="Subjects per step (2 views each).")
    parser.add_argument("--steps", type=int, default=8, help="Steps per timed repeat.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        pretraining, batch = build(args, Path(tmp))
        method = pretraining.method
        # The bare loop trains its own copy of the same networks and loss.
        bare_encoder, bare_head, bare_loss = (
            copy.deepcopy(method.encoder),
            copy.deepcopy(method.head),
            copy.deepcopy(method.loss),
        )
        bare_optimizer = make_optimizer(
            list(bare_encoder.parameters()) + list(bare_head.parameters()), pretraining.recipe
        )
        volumes = batch["views"].shape[0] * batch["views"].shape[1]
        # warm-up (allocator, oneDNN primitive caches) on both sides
        time_engine(pretraining, batch, 2, 0)
        time_bare(bare_encoder, bare_head, bare_loss, bare_optimizer, batch, 2)
        engine_times, bare_times = [], []
        for repeat in range(args.repeats):
            engine_times.append(time_engine(pretraining, batch, args.steps, repeat + 1))
            bare_times.append(time_bare(bare_encoder, bare_head, bare_loss, bare_optimizer, batch, args.steps))
            print(
                f"repeat {repeat + 1}: engine {args.steps * volumes / engine_times[-1]:6.1f} vol/s, "
                f"bare {args.steps * volumes / bare_times[-1]:6.1f} vol/s",
                flush=True,
            )
    engine_speed = args.steps * volumes / statistics.median(engine_times)
    bare_speed = args.steps * volumes / statistics.median(bare_times)
    print(
        f"\n{args.encoder}, {args.batch} subjects x 2 views of {args.shape}^3 ({volumes} volumes/step), {args.precision}, "
        f"{args.steps} steps x {args.repeats} repeats (medians)"
    )
    print("| path   | volumes/s | s/step |")
    print("|--------|-----------|--------|")
    print(f"| bare   | {bare_speed:9.1f} | {volumes / bare_speed:6.3f} |")
    print(f"| engine | {engine_speed:9.1f} | {volumes / engine_speed:6.3f} |")
    print(f"engine overhead: {100 * (bare_speed / engine_speed - 1):+.1f} % time per step (target <= 10 %)")


if __name__ == "__main__":
    main()
