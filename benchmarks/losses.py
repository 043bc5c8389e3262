"""Forward + backward time of each contrastive loss against its peer formula or its loop.

Run by hand from the repository root:

    python benchmarks/losses.py --threads 1                    # medssl / peer time ratios
    python benchmarks/losses.py --against loops --sizes 256    # vectorised vs. loop transcription

``--against peers`` (the default) prints, for 2N = 512 and 2048 embeddings of D = 128 (and 4096
for the threshold loss; Barlow Twins also at D = 1024, the projector of its recipe, for 2N = 64,
its batch, 512 and 2048), in float32 and bfloat16, the time ratio medssl / peer of
``loss(z).backward()`` on z of shape (N, 2, D): NT-Xent and Barlow Twins against lightly's formulas (written out below,
as lightly 1.5 computes them, since lightly is not a dependency), y-aware and exponential
against a plain dense implementation of the same formula, ThresholdLoss against YAwareLoss.
Each repeat times the two in alternating order; the ratio is the median of the paired ratios.

``--against loops``: the loop versions (tests/losses/reference.py) are timed on the first k and
2k anchors and extrapolated linearly to all n = 2N anchors (t(n) = t(k) + (t(2k) - t(k)) (n - k) / k),
which keeps their anchor-independent set-up from being scaled. The threshold loops sum the
innermost term as a masked vector sum rather than a third Python loop, so their times flatter
the loops.

Labels: ages uniform in [10, 90) for the regression losses, two classes for the class losses.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssl.losses import (  # noqa: E402
    BarlowTwinsLoss,
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

TAU = 0.1  # every contrastive loss and peer below uses the same temperature

# name, vectorised loss, loop(z, y, anchors), label kind
CASES: list[tuple[str, torch.nn.Module, Callable, str]] = [
    ("NTXentLoss", NTXentLoss(), lambda z, y, a: reference.ntxent_loop(z, anchors=a), "none"),
    ("DecoupledNTXentLoss", DecoupledNTXentLoss(), lambda z, y, a: reference.decoupled_loop(z, anchors=a), "none"),
    ("YAwareLoss", YAwareLoss(), lambda z, y, a: reference.yaware_loop(z, y, anchors=a), "age"),
    (
        "ThresholdLoss",
        ThresholdLoss(),
        lambda z, y, a: reference.threshold_loop(z, y, anchors=a, literal_inner=False),
        "age",
    ),
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
    (
        "EpsSupInfoNCELoss",
        EpsSupInfoNCELoss(eps=0.25),
        lambda z, y, a: reference.eps_supinfonce_loop(z, y, eps=0.25, anchors=a),
        "class",
    ),
    (
        "EpsSupConLoss",
        EpsSupConLoss(eps=0.25),
        lambda z, y, a: reference.eps_supcon_loop(z, y, eps=0.25, anchors=a),
        "class",
    ),
]


def lightly_ntxent(out0: torch.Tensor, out1: torch.Tensor, temperature: float = TAU) -> torch.Tensor:
    """lightly's ``NTXentLoss.forward`` without memory bank, on one process."""
    batch_size = out0.shape[0]
    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    diag_mask = torch.eye(batch_size, device=out0.device, dtype=torch.bool)
    logits_00 = torch.einsum("nc,mc->nm", out0, out0) / temperature
    logits_01 = torch.einsum("nc,mc->nm", out0, out1) / temperature
    logits_10 = torch.einsum("nc,mc->nm", out1, out0) / temperature
    logits_11 = torch.einsum("nc,mc->nm", out1, out1) / temperature
    logits_00 = logits_00[~diag_mask].view(batch_size, -1)
    logits_11 = logits_11[~diag_mask].view(batch_size, -1)
    logits = torch.cat([torch.cat([logits_01, logits_00], dim=1), torch.cat([logits_10, logits_11], dim=1)])
    labels = torch.arange(batch_size, device=out0.device).repeat(2)
    return F.cross_entropy(logits, labels)


def lightly_barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lambda_param: float = 5e-3) -> torch.Tensor:
    """lightly's ``BarlowTwinsLoss.forward`` on one process.

    lightly standardises the two views stacked together (one batch_norm over 2N rows), medssl
    each view on its own as the paper does, so the values differ a little; the work is the same.
    """
    combined = torch.stack([z_a, z_b])
    normalized = F.batch_norm(combined.flatten(0, 1), None, None, training=True).view_as(combined)
    c = normalized[0].T @ normalized[1]
    c.div_(z_a.shape[0])
    n = c.shape[0]
    off_diagonal = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
    return torch.diagonal(c).add(-1).pow(2).sum() + lambda_param * off_diagonal.pow(2).sum()


def dense_parts(
    z: torch.Tensor, y: torch.Tensor, sigma: float, kernel: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarities (float32) of the view-major rows, kernel weights on the repeated labels and the self mask, written plainly."""
    z = z.transpose(0, 1).flatten(0, 1)  # (N, V, D) -> (V*N, D)
    n = z.shape[0]
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)  # float64 kept (accuracy)
    s = z @ z.T / TAU
    labels = y.to(z.dtype).repeat(n // len(y))
    d2 = (labels[:, None] - labels[None, :]) ** 2
    if kernel == "cauchy":
        w = 1 / (1 + d2 / sigma**2)
    else:
        w = torch.exp(-d2 / (2 * sigma**2))
        if kernel == "gaussian":
            w = w / (math.sqrt(2 * math.pi) * sigma)
    return s, w, torch.eye(n, dtype=torch.bool)


def dense_yaware(z: torch.Tensor, y: torch.Tensor, sigma: float = 5.0, kernel: str = "rbf") -> torch.Tensor:
    """y-aware InfoNCE as the formula reads, on dense n x n tensors."""
    s, w, eye = dense_parts(z, y, sigma, kernel)
    w = w.masked_fill(eye, 0)
    log_probability = s - s.masked_fill(eye, float("-inf")).logsumexp(dim=1, keepdim=True)
    return (-(w * log_probability).sum(dim=1) / w.sum(dim=1)).mean()


def dense_exponential(z: torch.Tensor, y: torch.Tensor, sigma: float = 2.0, kernel: str = "gaussian") -> torch.Tensor:
    """L^exp as the formula reads, on dense n x n tensors."""
    s, w, eye = dense_parts(z, y, sigma, kernel)
    log_denominator = (s * (1 - w)).masked_fill(eye, float("-inf")).logsumexp(dim=1, keepdim=True)
    w = w.masked_fill(eye, 0)
    return (-(w * (s - log_denominator)).sum(dim=1) / w.sum(dim=1)).mean()


def two_views(peer: Callable) -> Callable:
    """A peer taking two (N, D) views, called on medssl's (N, 2, D) input."""
    return lambda z, y: peer(z[:, 0], z[:, 1])


def upcast(peer: Callable) -> Callable:
    """The peer on a float32 copy of bfloat16 input: the cheapest way to give it medssl's precision."""
    return lambda z, y: peer(z.to(torch.promote_types(z.dtype, torch.float32)), y)


BOTH = (torch.float32, torch.bfloat16)
RECIPE_DIM = 1024  # recipes/barlow_twins.yaml's projector output (its batch: 32 subjects)

# name, medssl loss(z, y), peer(z, y), (number of subjects N, embedding dimension D or None for --dim), input dtypes
PEERS: list[tuple[str, Callable, Callable, tuple[tuple[int, int | None], ...], tuple[torch.dtype, ...]]] = [
    ("NTXentLoss / lightly", NTXentLoss(temperature=TAU), two_views(lightly_ntxent), ((256, None), (1024, None)), BOTH),
    (
        "BarlowTwinsLoss / lightly",
        BarlowTwinsLoss(),
        two_views(lightly_barlow_twins),
        ((256, None), (1024, None), (32, RECIPE_DIM), (256, RECIPE_DIM), (1024, RECIPE_DIM)),
        BOTH,
    ),
    (
        "BarlowTwinsLoss / lightly f32",
        BarlowTwinsLoss(),
        upcast(two_views(lightly_barlow_twins)),
        ((256, None), (1024, None), (32, RECIPE_DIM), (256, RECIPE_DIM), (1024, RECIPE_DIM)),
        (torch.bfloat16,),
    ),
    ("YAwareLoss / dense", YAwareLoss(temperature=TAU), dense_yaware, ((256, None), (1024, None)), BOTH),
    ("ExponentialLoss / dense", ExponentialLoss(temperature=TAU), dense_exponential, ((256, None), (1024, None)), BOTH),
    (
        "ThresholdLoss / YAwareLoss",
        ThresholdLoss(temperature=TAU),
        YAwareLoss(temperature=TAU),
        ((256, None), (1024, None), (2048, None)),
        BOTH,
    ),
]


def gradient_error(compute: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> float:
    """Relative error ||g - g64|| / ||g64|| of the gradient of ``compute`` at z, against the same
    function evaluated in float64 on the same (already rounded) input."""
    low = z.detach().requires_grad_()
    high = z.detach().double().requires_grad_()
    (g_low,) = torch.autograd.grad(compute(low), low)
    (g_high,) = torch.autograd.grad(compute(high), high)
    return float((g_low.double() - g_high).norm() / g_high.norm())


def agreeing_views(n_subjects: int, dim: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Embeddings as late in training: the two views of a subject correlate at 0.99 per dimension."""
    subject = torch.randn(n_subjects, 1, dim, generator=generator) * 2.0 + 1.0
    views = subject + 0.2 * torch.randn(n_subjects, 2, dim, generator=generator)
    return views.to(dtype)


def seconds(compute: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> float:
    """Wall time of one ``compute(z).backward()`` (the device's queue drained before and after)."""
    z.grad = None
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    start = time.perf_counter()
    compute(z).backward()
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    return time.perf_counter() - start


def forward_backward_seconds(compute: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``compute(z).backward()``."""
    return statistics.median(seconds(compute, z) for _ in range(repeats))


def paired_times(ours: Callable, peer: Callable, z: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median times of ``ours`` and ``peer`` and median of their paired ratios, in alternating order.

    Alternating the order and pairing each run with its neighbour keeps the load of a shared
    machine, which drifts over seconds, out of the ratio.
    """
    ours_times, peer_times = [], []
    for repeat in range(repeats):
        if repeat % 2:
            peer_times.append(seconds(peer, z))
            ours_times.append(seconds(ours, z))
        else:
            ours_times.append(seconds(ours, z))
            peer_times.append(seconds(peer, z))
    ratio = statistics.median(a / b for a, b in zip(ours_times, peer_times))
    return statistics.median(ours_times), statistics.median(peer_times), ratio


def peer_table(args: argparse.Namespace) -> None:
    print(
        f"{'loss / peer':<30} {'dtype':>8} {'2N':>5} {'D':>5} {'medssl ms':>10} {'peer ms':>10} {'ratio':>6}"
        f" {'medssl err':>11} {'peer err':>9}"
    )
    generator = torch.Generator().manual_seed(0)
    for dtype in BOTH:
        for name, ours, peer, shapes, dtypes in PEERS:
            if (args.only and not name.startswith(args.only)) or dtype not in dtypes:
                continue
            for n_subjects, dim in shapes:
                dim = dim or args.dim
                z = torch.randn(n_subjects, 2, dim, generator=generator).to(args.device, dtype).requires_grad_()
                y = (torch.rand(n_subjects, generator=generator) * 80 + 10).to(args.device)
                ours_fn, peer_fn = (lambda z, f=ours, y=y: f(z, y)), (lambda z, f=peer, y=y: f(z, y))
                for _ in range(2):  # warm-up
                    seconds(ours_fn, z), seconds(peer_fn, z)
                repeats = args.repeats if n_subjects <= 1024 else max(3, args.repeats // 3)
                ours_s, peer_s, ratio = paired_times(ours_fn, peer_fn, z, repeats)
                late = agreeing_views(n_subjects, dim, dtype, generator).to(args.device)
                errors = f"{gradient_error(ours_fn, late):>11.1e} {gradient_error(peer_fn, late):>9.1e}"
                dtype_name = str(dtype).removeprefix("torch.")
                print(
                    f"{name:<30} {dtype_name:>8} {2 * n_subjects:>5} {dim:>5} {ours_s * 1e3:>10.1f} {peer_s * 1e3:>10.1f}"
                    f" {ratio:>6.2f} {errors}",
                    flush=True,
                )


def loop_table(args: argparse.Namespace) -> None:
    print(
        f"loop times: extrapolated from the first {args.loop_anchors} and {2 * args.loop_anchors} anchors to all n = 2N"
    )
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
            vectorised = forward_backward_seconds(lambda z, f=loss, y=y: f(z, y), z, args.repeats)
            few = forward_backward_seconds(lambda z, f=loop, y=y, k=k: f(z, y, range(k)), z, args.loop_repeats)
            more = forward_backward_seconds(lambda z, f=loop, y=y, k=k: f(z, y, range(2 * k)), z, args.loop_repeats)
            looped = few + max(more - few, 0.0) * (n - k) / k
            print(
                f"{name:<32} {n_subjects:>5} {vectorised * 1e3:>14.1f} {looped:>14.1f} {looped / vectorised:>9.0f}x",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--against", choices=("peers", "loops"), default="peers", help="what each loss is timed against"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 1024], help="loops: numbers of subjects N (two views each)"
    )
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
    parser.add_argument(
        "--repeats", type=int, default=21, help="runs per timing (median); a third of it from N = 2048 on (peers)"
    )
    parser.add_argument("--loop-repeats", type=int, default=3, help="runs per loop timing (median)")
    parser.add_argument("--loop-anchors", type=int, default=8, help="k: the loops are timed on k and 2k anchors")
    parser.add_argument(
        "--only", default=None, help="peers: only the rows whose name starts with this (e.g. BarlowTwinsLoss)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="peers: where the embeddings live (cpu, cuda)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where or platform.machine()}")
    peer_table(args) if args.against == "peers" else loop_table(args)


if __name__ == "__main__":
    main()
