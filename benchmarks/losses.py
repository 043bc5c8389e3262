"""Forward + backward time of each contrastive loss: vectorised vs. the loop transcription.

Run by hand from the repository root:

    python benchmarks/losses.py                 # N = 256 and 1024 subjects, two views, D = 128
    python benchmarks/losses.py --sizes 256 --repeats 3 --threads 1

Labels: ages uniform in [10, 90) for the regression losses, two classes for the class losses.
The loop versions (tests/losses/reference.py) are timed on the first k and 2k anchors and
extrapolated linearly to all n = 2N anchors (t(n) = t(k) + (t(2k) - t(k)) (n - k) / k), which
keeps their anchor-independent set-up from being scaled. The threshold loops sum the innermost
term as a masked vector sum rather than a third Python loop, so their times flatter the loops.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssl.losses import (  # noqa: E402
    DecoupledNTXentLoss,
    EpsSupConLoss,
    EpsSupInfoNCELoss,
    ExponentialLoss,
    NTXentLoss,
    SupConLoss,
    ThresholdLoss,
    YAwareLoss,
)
from tests.losses import reference  # noqa: E402

# name, vectorised loss, loop(z, y, anchors), label kind
CASES: list[tuple[str, torch.nn.Module, Callable, str]] = [
    ("NTXentLoss", NTXentLoss(), lambda z, y, a: reference.ntxent_loop(z, anchors=a), "none"),
    ("DecoupledNTXentLoss", DecoupledNTXentLoss(), lambda z, y, a: reference.decoupled_loop(z, anchors=a), "none"),
    ("YAwareLoss", YAwareLoss(), lambda z, y, a: reference.yaware_loop(z, y, anchors=a), "age"),
    ("ThresholdLoss", ThresholdLoss(), lambda z, y, a: reference.threshold_loop(z, y, anchors=a, literal_inner=False), "age"),
    (
        "ThresholdLoss(reference_code)",
        ThresholdLoss(reference_code=True),
        lambda z, y, a: reference.threshold_reference_code_loop(z, y, anchors=a, literal_inner=False),
        "age",
    ),
    ("ExponentialLoss", ExponentialLoss(), lambda z, y, a: reference.exponential_loop(z, y, anchors=a), "age"),
    (
        "ExponentialLoss(reference_code)",
        ExponentialLoss(reference_code=True),
        lambda z, y, a: reference.exponential_loop(z, y, reference_code=True, anchors=a),
        "age",
    ),
    ("SupConLoss", SupConLoss(), lambda z, y, a: reference.supcon_loop(z, y, anchors=a), "class"),
    ("EpsSupInfoNCELoss", EpsSupInfoNCELoss(eps=0.25), lambda z, y, a: reference.eps_supinfonce_loop(z, y, eps=0.25, anchors=a), "class"),
    ("EpsSupConLoss", EpsSupConLoss(eps=0.25), lambda z, y, a: reference.eps_supcon_loop(z, y, eps=0.25, anchors=a), "class"),
]


def forward_backward_seconds(compute: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``compute(z).backward()``."""
    times = []
    for _ in range(repeats):
        z.grad = None
        start = time.perf_counter()
        compute(z).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="numbers of subjects N (two views each)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
    parser.add_argument("--repeats", type=int, default=5, help="runs per vectorised timing (median)")
    parser.add_argument("--loop-repeats", type=int, default=3, help="runs per loop timing (median)")
    parser.add_argument("--loop-anchors", type=int, default=8, help="k: the loops are timed on k and 2k anchors")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"loop times: extrapolated from the first {args.loop_anchors} and {2 * args.loop_anchors} anchors to all n = 2N")
    print(f"{'loss':<32} {'N':>5} {'vectorised ms':>14} {'loop s (est.)':>14} {'speed-up':>10}")
    generator = torch.Generator().manual_seed(0)
    for n_subjects in args.sizes:
        z = torch.randn(n_subjects, 2, args.dim, generator=generator).requires_grad_()
        labels = {
            "none": None,
            "age": torch.rand(n_subjects, generator=generator) * 80 + 10,
            "class": torch.randint(0, 2, (n_subjects,), generator=generator),
        }
        n = 2 * n_subjects
        k = args.loop_anchors
        for name, loss, loop, kind in CASES:
            y = labels[kind]
            loss(z, y).backward()  # warm-up
            # Default arguments bind this iteration's loss and labels (ruff B023), though each lambda is timed at once.
            vectorised = forward_backward_seconds(lambda z, loss=loss, y=y: loss(z, y), z, args.repeats)
            few = forward_backward_seconds(lambda z, loop=loop, y=y, k=k: loop(z, y, range(k)), z, args.loop_repeats)
            more = forward_backward_seconds(lambda z, loop=loop, y=y, k=k: loop(z, y, range(2 * k)), z, args.loop_repeats)
            looped = few + max(more - few, 0.0) * (n - k) / k
            print(f"{name:<32} {n_subjects:>5} {vectorised * 1e3:>14.1f} {looped:>14.1f} {looped / vectorised:>9.0f}x", flush=True)


if __name__ == "__main__":
    main()
