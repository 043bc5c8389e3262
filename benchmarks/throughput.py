"""Throughput and memory at the shapes users train at: bare step, engine step, FLOP/s vs. a conv3d peak, loader supply.

Run by hand from the repository root (the defaults are the OpenBHB shapes, VBM and quasi-raw;
they take hours on a CPU):

    python benchmarks/throughput.py --shape 24,28,24 --batch 2 --steps 1 --repeats 2   # quick check
    python benchmarks/throughput.py --shape 121,145,121 --batch 4 8 --json out.json      # OpenBHB VBM
    python benchmarks/throughput.py --device cuda --modes bf16+cl fp16+cl --batch 8      # one GPU
    python benchmarks/throughput.py --shape 24,28,24 --modes fp32 fp32+ckpt              # checkpointing cost
    python benchmarks/throughput.py --no-steps --losses 1024                             # contrastive losses
    python benchmarks/throughput.py --views --repeats 3                                  # view pipelines
    python benchmarks/throughput.py --views --reads-only --repeats 5                     # float16 vs float32 cache read

For each encoder x shape x mode x batch (``--batch`` subjects, 2 views each), where a mode is a
precision (fp32, bf16, fp16) with optional ``+cl`` (channels_last_3d) and ``+ckpt``
(``model.activation_checkpointing``):

- **bare**: a hand-written loop, ``loss(head(encoder(x))).backward(); opt.step(); opt.zero_grad()``
  under autocast (and a GradScaler for fp16), on a copy of the engine's networks and optimiser.
- **engine**: ``Trainer.run_epoch`` of the trainer ``build_pretraining`` makes of ``--recipe`` (default yaware_age) on a
  small synthetic cohort cached at the shape by ``medssl data cache``, fed the same pre-loaded
  batch (as in ``train_step.py``). Overhead = engine time / bare time - 1 (goal <= 10 %).
- **GFLOP/s**: FLOPs of one bare step counted by ``torch.utils.flop_counter.FlopCounterMode``
  divided by the bare step time (with ``+ckpt`` the recomputed forward counts too), against
  the **conv3d peak** of the same run: ResNet-18's
  layer-1 convolution (64 -> 64 channels, 3^3 kernel, a quarter of the volume edge) forward +
  backward in the same mode.
- **supply**: volumes/s of the recipe's TorchIO views read by the engine's DataLoader with
  ``--workers`` workers from the memory-mapped cache (first epoch dropped), against the engine's
  demand.
- **memory**: in a fresh subprocess per config and batch (CPU: peak RSS from ``getrusage``,
  CUDA: ``torch.cuda.max_memory_allocated``), peak minus the memory before the first step, at
  ``--memory-batches`` subjects; the slope is the memory per volume and extrapolates the largest
  batch that fits in ``--memory-gb``.

Bare and engine alternate within each repeat so that load drifts hit both; figures are medians.

``--views`` measures the view pipelines instead (no training step): views/s per CPU core of the
TorchIO path (``build_view_transform``, one volume at a time, as a DataLoader worker draws them)
and of the batched path (``build_batched_views`` on ``--views-batch`` volumes at once, on
``--device``), each with one intra-op thread (and one SimpleITK thread), for each transform of
``views:`` alone (p = 1, the section's default parameters) and for the whole views section of each
``--views-recipes`` recipe; medians of ``--repeats`` repeats in which the two paths alternate,
ratio batched / TorchIO. Then the cores each path needs to feed 100 volumes/s, and N volumes/s for
an estimated GPU demand N = ``--gpu-tflops`` x ``--gpu-utilisation`` / FLOPs of one volume's
forward + backward (counted on the meta device, no compute). Last, the memory-mapped cache read:
MB/s (stored bytes) and volumes/s of ``read_array_volume`` over ``--read-volumes`` rows of a
float32 and a float16 cache (page cache warm), the float16 one read as float16 (``views.device:
batch``, cast on the device) and as float32 (``loader``, cast in the worker).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import machine, timed_trainer  # noqa: E402

from medssl.data.cache import cache_cohort  # noqa: E402
from medssl.data.cohort import load_cohort  # noqa: E402
from medssl.data.synthetic import synthesize_cohort  # noqa: E402
from medssl.losses import NTXentLoss, YAwareLoss  # noqa: E402
from medssl.methods import fold_views, unfold_views  # noqa: E402
from medssl.models import ProjectionHead, build_encoder  # noqa: E402
from medssl.recipe import load_recipe
from medssl.train.pretraining import Pretraining, build_pretraining  # noqa: E402
from medssl.train.setup import make_optimizer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VIEWS = 2  # views per subject in every recipe measured here


@dataclass(frozen=True)
class Mode:
    """A precision, with channels_last_3d (``+cl``) and activation checkpointing (``+ckpt``)."""

    precision: str
    channels_last: bool
    checkpointing: bool

    @classmethod
    def parse(cls, text: str) -> Mode:
        precision, *flags = text.split("+")
        if precision not in DTYPES or set(flags) - {"cl", "ckpt"}:
            raise SystemExit(f"--modes {text!r}: expected fp32, bf16 or fp16, optionally followed by +cl and/or +ckpt")
        return cls(precision, "cl" in flags, "ckpt" in flags)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, calls: int = 1) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize(device)
    return time.perf_counter() - started


class BareStep:
    """One hand-written training step: autocast forward, (scaled) backward, optimiser step."""

    def __init__(self, encoder, head, loss, optimizer, views, labels, precision: str, device: torch.device):
        self.encoder, self.head, self.loss, self.optimizer = encoder, head, loss, optimizer
        self.views, self.labels, self.device = views, labels, device
        self.dtype, self.enabled = DTYPES[precision], precision != "fp32"
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled):
            z = unfold_views(self.head(self.encoder(fold_views(self.views))), self.views.shape[1])
            loss = self.loss(z, self.labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def bare_from(pretraining: Pretraining, batch: dict) -> BareStep:
    """The bare loop on its own copy of the engine's networks, loss and optimiser settings."""
    method, trainer = pretraining.method, pretraining.trainer
    encoder, head, loss = copy.deepcopy(method.encoder), copy.deepcopy(method.head), copy.deepcopy(method.loss)
    optimizer = make_optimizer(list(encoder.parameters()) + list(head.parameters()), pretraining.recipe)
    labels = batch["label"].to(trainer.device) if getattr(method, "uses_label", False) else None
    return BareStep(
        encoder, head, loss, optimizer, batch["views"].to(trainer.device), labels, trainer.precision, trainer.device
    )


def make_cache(workdir: Path, shape: tuple[int, ...], subjects: int) -> Path:
    """A synthetic cohort resampled once to ``shape`` by ``medssl data cache`` (memory-mapped)."""
    name = "x".join(map(str, shape))
    nifti = workdir / "nifti"
    if not (nifti / "participants.tsv").is_file():
        synthesize_cohort(nifti, subjects=subjects, sites=4, external_sites=0, shape=16, seed=0)
    return cache_cohort(load_cohort(nifti), workdir / f"cache-{name}", volume_shape=list(shape))


def engine_recipe(args, encoder: str, mode: Mode, batch: int, root: Path, workers: int = 0):
    overrides = [
        f"data.root={root}",
        f"data.num_workers={workers}",
        f"model.encoder={encoder}",
        f"model.activation_checkpointing={str(mode.checkpointing).lower()}",
        f"train.batch_size={batch}",
        "train.epochs=1",
        f"train.precision={mode.precision}",
        f"train.channels_last={str(mode.channels_last).lower()}",
        f"train.device={args.device}",
        "eval.after_pretrain=false",
    ]
    return load_recipe(args.recipe, overrides)


def engine_step_timer(pretraining: Pretraining, batch: dict, steps: int):
    """``run_epoch`` over ``steps`` copies of one batch, progress bar rendered to /dev/null (as train_step.py)."""
    trainer = timed_trainer(pretraining, batch, steps)
    epochs = iter(range(1, 10**6))
    return lambda: trainer.run_epoch(next(epochs), 0, 10**9)


def count_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def conv_peak(shape, mode: Mode, device: torch.device, repeats: int) -> float:
    """GFLOP/s of ResNet-18's layer-1 convolution, forward + backward: the best case of 3D CNN training here."""
    edge = [max(size // 4, 16) for size in shape]  # stem stride 2 then max-pool stride 2
    memory_format = torch.channels_last_3d if mode.channels_last else torch.contiguous_format
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).to(device, memory_format=memory_format)
    x = torch.randn(4, 64, *edge, device=device).to(memory_format=memory_format).requires_grad_()
    dtype, enabled = DTYPES[mode.precision], mode.precision != "fp32"

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=enabled):
            y = conv(x)
        y.backward(torch.ones_like(y))
        conv.weight.grad = x.grad = None

    flops = count_flops(step)
    step()  # warm-up: oneDNN / cuDNN algorithm choice
    return flops / statistics.median(timed(step, device) for _ in range(repeats)) / 1e9


def loader_supply(args, shape, batch: int, root: Path, workdir: Path) -> float:
    """Volumes/s the engine's DataLoader delivers (recipe views, ``--workers`` workers), first epoch dropped."""
    from medssl.methods import method_needs
    from medssl.train.distributed import DistributedContext
    from medssl.train.pretraining import Notes, pretraining_data

    recipe = engine_recipe(args, "resnet18", Mode("fp32", False, False), batch, root, workers=args.workers)
    loader = pretraining_data(
        recipe, method_needs(recipe), DistributedContext(), torch.device(args.device), Notes(None, True), None
    ).loader
    times, volumes = [], 0
    for epoch in range(args.loader_epochs + 1):
        started = time.perf_counter()
        volumes = sum(int(b["views"].shape[0] * b["views"].shape[1]) for b in loader.epoch(epoch))
        times.append(time.perf_counter() - started)
    loader.close()  # stops the persistent workers
    return volumes / statistics.median(times[1:])


def measure_step(args, encoder: str, shape, mode: Mode, batch: int, root: Path, workdir: Path) -> dict:
    """Bare vs. engine volumes/s (interleaved repeats, medians), FLOPs of one step."""
    pretraining = build_pretraining(engine_recipe(args, encoder, mode, batch, root), workdir / "run")
    trainer = pretraining.trainer
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    data = next(iter(pretraining.data.loader.epoch(0)))
    pretraining.data.loader.close()
    bare = bare_from(pretraining, data)
    flops = count_flops(bare)  # also the bare loop's warm-up
    engine_step_timer(pretraining, data, 1)()  # warm-up
    engine = engine_step_timer(pretraining, data, args.steps)
    bare_times, engine_times = [], []
    for _ in range(args.repeats):
        bare_times.append(timed(bare, trainer.device, args.steps))
        engine_times.append(timed(engine, trainer.device))
    volumes = batch * VIEWS * args.steps
    row = {
        "encoder": encoder,
        "shape": list(shape),
        "mode": mode_name(mode),
        "batch": batch,
        "volumes_per_step": batch * VIEWS,
        "precision_run": trainer.precision,
        "bare_volumes_per_s": volumes / statistics.median(bare_times),
        "engine_volumes_per_s": volumes / statistics.median(engine_times),
        "gflop_per_step": flops / 1e9,
    }
    row["engine_overhead_pct"] = 100 * (statistics.median(engine_times) / statistics.median(bare_times) - 1)
    row["bare_seconds"], row["engine_seconds"] = bare_times, engine_times  # each repeat, to judge the noise
    row["gflop_per_s"] = row["gflop_per_step"] * row["bare_volumes_per_s"] / row["volumes_per_step"]
    del pretraining, trainer, bare, engine
    gc.collect()
    return row


def mode_name(mode: Mode) -> str:
    return mode.precision + ("+cl" if mode.channels_last else "") + ("+ckpt" if mode.checkpointing else "")


# ----------------------------------------------------------------------------- memory (fresh processes)
def current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak(device: torch.device) -> None:
    """Start a new peak, so that the one-off allocations of the first step (optimiser state,
    oneDNN / cuDNN workspaces chosen once) are not mistaken for the step's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # Linux: resets the process's peak resident set (VmHWM)
    except OSError:
        pass  # then the peak is that of the whole process so far


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def probe(spec: dict) -> dict:
    """Run in a fresh process: memory before and at the peak of two training steps (or loss passes)."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    if spec["kind"] == "loss":
        n = spec["n"] // VIEWS
        z = torch.randn(n, VIEWS, 128, device=device, requires_grad=True)
        y = torch.rand(n, device=device) * 60 + 20
        loss = {"NTXentLoss": NTXentLoss(), "YAwareLoss": YAwareLoss()}[spec["loss"]]
        step = lambda: loss(z, y).backward()  # noqa: E731
    else:
        mode = Mode.parse(spec["mode"])
        memory_format = torch.channels_last_3d if mode.channels_last else torch.contiguous_format
        encoder = build_encoder(spec["encoder"], activation_checkpointing=mode.checkpointing)
        head = ProjectionHead(encoder.feature_dim)
        encoder.to(device, memory_format=memory_format), head.to(device)
        optimizer = torch.optim.Adam(list(encoder.parameters()) + list(head.parameters()), lr=1e-4, fused=True)
        views = torch.randn(spec["batch"], VIEWS, 1, *spec["shape"], device=device)
        labels = torch.rand(spec["batch"], device=device) * 60 + 20
        step = BareStep(encoder, head, YAwareLoss(), optimizer, views, labels, mode.precision, device)
    step()
    reset_peak(device)
    before = current_bytes(device)
    step()
    return {"before": before, "peak": peak_bytes(device)}


def run_probe(spec: dict) -> dict:
    command = [sys.executable, __file__, "--probe", json.dumps(spec)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_memory(args, encoder: str, shape, mode: Mode) -> dict:
    """Step memory at two batch sizes; the slope per volume extrapolates the largest batch in the budget."""
    small, large = args.memory_batches
    spec = {"kind": "step", "device": args.device, "encoder": encoder, "shape": list(shape), "mode": mode_name(mode)}
    probes = [run_probe({**spec, "batch": batch}) for batch in (small, large)]
    if any("error" in result for result in probes):
        return {"memory_error": next(result["error"] for result in probes if "error" in result)}
    peaks = [result["peak"] for result in probes]
    row = {
        "peak_mb": [peak / 2**20 for peak in peaks],
        "step_mb": [(r["peak"] - r["before"]) / 2**20 for r in probes],
        "memory_batches": [small, large],
    }
    per_volume = (peaks[1] - peaks[0]) / ((large - small) * VIEWS)
    if per_volume < 2**20:
        # At tiny shapes the peak is set by batch-independent parts (optimiser step, workspaces).
        row["memory_error"] = "peak does not grow with the batch at this size"
        return row
    fixed = peaks[0] - per_volume * small * VIEWS
    fits = int((args.memory_gb * 2**30 - fixed) // per_volume)
    return {
        **row,
        "mb_per_volume": per_volume / 2**20,
        "fixed_mb": fixed / 2**20,
        "max_volumes_in_budget": fits,
        "max_batch_in_budget": fits // VIEWS,
    }


# ----------------------------------------------------------------------------- losses
def measure_losses(args) -> list[dict]:
    """Forward + backward time (interleaved repeats, medians) and peak memory (fresh process) per loss and 2N."""
    device = torch.device(args.device)
    rows = []
    for n in args.losses:
        z = torch.randn(n // VIEWS, VIEWS, 128, device=device, requires_grad=True)
        y = torch.rand(n // VIEWS, device=device) * 60 + 20
        losses = {"NTXentLoss": NTXentLoss(), "YAwareLoss": YAwareLoss()}
        steps = {name: (lambda loss=loss, z=z, y=y: loss(z, y).backward()) for name, loss in losses.items()}
        for step in steps.values():
            step()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                times[name].append(timed(step, device))
        for name in steps:
            memory = run_probe({"kind": "loss", "device": args.device, "loss": name, "n": n})
            rows.append(
                {
                    "loss": name,
                    "n": n,
                    "ms": 1000 * statistics.median(times[name]),
                    "memory_mb": (memory["peak"] - memory["before"]) / 2**20 if "peak" in memory else None,
                }
            )
    return rows


# ----------------------------------------------------------------------------- views
VIEW_STEPS = {  # each transform alone: the section's defaults with p = 1
    "normalize (zscore)": {"n_views": 1},
    "crop": {"n_views": 1, "normalize": "none", "crop": {"p": 1.0}},
    "flip": {"n_views": 1, "normalize": "none", "flip": {"p": 1.0}},
    "affine": {"n_views": 1, "normalize": "none", "affine": {"p": 1.0}},
    "cutout": {"n_views": 1, "normalize": "none", "cutout": {"p": 1.0}},
    "blur": {"n_views": 1, "normalize": "none", "blur": {"p": 1.0}},
    "noise": {"n_views": 1, "normalize": "none", "noise": {"p": 1.0}},
}


def brain_like(batch: int, shape, seed: int = 0) -> torch.Tensor:
    """Zero background around an ellipsoid of positive intensities (what zscore's mask sees in a scan)."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*(torch.linspace(-1, 1, size) for size in shape), indexing="ij")
    inside = sum(axis.square() / 0.8**2 for axis in axes) <= 1
    return (1 + torch.rand(batch, 1, *shape, generator=generator)) * inside


def view_configs(recipes: list[str]) -> dict[str, object]:
    from medssl.config import ViewsConfig

    configs: dict[str, object] = {name: ViewsConfig(**values) for name, values in VIEW_STEPS.items()}
    for recipe in recipes:
        configs[f"{recipe} views"] = load_recipe(recipe).views
    return configs


def measure_views(args) -> list[dict]:
    """Views/s per CPU core of the TorchIO and the batched path, per transform and per recipe (interleaved repeats)."""
    import SimpleITK as sitk
    import torchio as tio

    from medssl.data.batched_views import build_batched_views
    from medssl.data.views import build_view_transform

    torch.set_num_threads(1)  # per core; DataLoader workers run one thread each
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # tio.Affine resamples with SimpleITK
    device = torch.device(args.device)
    rows = []
    for shape in args.shape:
        volumes = brain_like(args.views_batch, shape)
        subjects = [tio.Subject(image=tio.ScalarImage(tensor=volume.clone())) for volume in volumes]
        on_device = volumes.to(device)
        generator = torch.Generator().manual_seed(0)  # parameters on the CPU: no device sync (batched_views.py)
        for name, config in view_configs(args.views_recipes).items():
            transform, batched = build_view_transform(config), build_batched_views(config)
            n_views = config.n_views

            def torchio_views(transform=transform, n_views=n_views, subjects=subjects) -> None:
                for subject in subjects:
                    for _ in range(n_views):
                        transform(subject)

            def batched_views(batched=batched, volumes=on_device, generator=generator) -> None:
                batched(volumes, generator)

            torchio_views(), batched_views()  # warm-up
            times: dict[str, list[float]] = {"torchio": [], "batched": []}
            for _ in range(args.repeats):
                times["torchio"].append(timed(torchio_views, torch.device("cpu")))
                times["batched"].append(timed(batched_views, device))
            count = args.views_batch * n_views
            row = {
                "shape": list(shape),
                "views": name,
                "torchio_views_per_s": count / statistics.median(times["torchio"]),
                "batched_views_per_s": count / statistics.median(times["batched"]),
                "torchio_seconds": times["torchio"],
                "batched_seconds": times["batched"],
            }
            row["ratio"] = row["batched_views_per_s"] / row["torchio_views_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def measure_cache_reads(args) -> list[dict]:
    """MB/s (stored bytes) and volumes/s of reading every row of a memory-mapped cache, float32 vs float16.

    The caches are written afresh in a temporary folder and read once before timing, so the
    pages are in the page cache (what a node whose page cache holds the cohort sees); the read
    is ``read_array_volume``, a TorchIO reader's copy of one row out of the map.
    """
    from medssl.data.arrays import read_array_volume

    variants = (("float32", False), ("float16", True), ("float16", False))  # (stored, keep_float16)
    rows = []
    for shape in args.shape:
        volumes = brain_like(args.read_volumes, shape).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for dtype in ("float32", "float16"):
                path = paths[dtype] = Path(tmp) / dtype / "volumes.npy"
                path.parent.mkdir()
                array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=volumes.shape)
                array[:] = volumes
                array.flush()
                del array
                path.with_suffix(".json").write_text(json.dumps({"spacing": [1.0, 1.0, 1.0], "dtype": dtype}))

            def read_all(path: Path, keep: bool, count: int = len(volumes)) -> None:
                for row in range(count):
                    read_array_volume(path, row, keep_float16=keep)

            times: dict[tuple[str, bool], list[float]] = {variant: [] for variant in variants}
            for variant in variants:
                read_all(paths[variant[0]], variant[1])  # warm: the pages into the page cache
            for _ in range(args.repeats):
                for variant in variants:
                    times[variant].append(timed(partial(read_all, paths[variant[0]], variant[1]), torch.device("cpu")))
        for (dtype, keep), seconds in times.items():
            median = statistics.median(seconds)
            stored = volumes[0].size * np.dtype(dtype).itemsize
            row = {
                "shape": list(shape),
                "cache": dtype,
                "read_as": "float16" if keep else "float32",
                "mb_per_s": stored * len(volumes) / median / 1e6,
                "volumes_per_s": len(volumes) / median,
                "seconds": seconds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def gpu_demand(args) -> list[dict]:
    """Estimated volumes/s a GPU consumes: its throughput over the FLOPs of one volume's forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    demands = []
    for encoder in args.encoders:
        network = build_encoder(encoder).to("meta")
        for shape in args.shape:
            try:
                with FlopCounterMode(display=False) as counter:
                    network(torch.empty(2, 1, *shape, device="meta")).sum().backward()  # 2: batch norm
            except (RuntimeError, ValueError) as error:  # a shape too small for the network
                print(f"{encoder} at {'x'.join(map(str, shape))}: no FLOP count ({error})")
                continue
            flops = counter.get_total_flops() / 2
            demands.append(
                {
                    "encoder": encoder,
                    "shape": list(shape),
                    "gflop_per_volume": flops / 1e9,
                    "volumes_per_s": args.gpu_tflops * 1e12 * args.gpu_utilisation / flops,
                }
            )
    return demands


def print_views(rows: list[dict], demands: list[dict], args) -> None:
    where = "CPU" if args.device == "cpu" else args.device
    print(
        f"\n| shape | views | TorchIO views/s per core | batched views/s per core ({where}, batch {args.views_batch}) | ratio |"
    )
    print("|" + "---|" * 5)
    for r in rows:
        print(
            f"| {'x'.join(map(str, r['shape']))} | {r['views']} | {r['torchio_views_per_s']:.2f} "
            f"| {r['batched_views_per_s']:.2f} | {r['ratio']:.2f}x |"
        )
    print(
        f"\nEstimated GPU demand N (estimate: {args.gpu_tflops:g} TFLOP/s x {args.gpu_utilisation:g} utilisation "
        "/ counted FLOPs of one volume's forward + backward) and CPU cores to feed it, recipe views:"
    )
    print(
        "| encoder | shape | GFLOP / volume | N volumes/s (estimate) | views | cores per 100 vol/s TorchIO | batched | cores for N TorchIO | batched |"
    )
    print("|" + "---|" * 9)
    for demand in demands:
        for r in rows:
            if r["shape"] != demand["shape"] or not r["views"].endswith(" views"):
                continue
            torchio, batched = 100 / r["torchio_views_per_s"], 100 / r["batched_views_per_s"]
            n = demand["volumes_per_s"] / 100
            print(
                f"| {demand['encoder']} | {'x'.join(map(str, demand['shape']))} | {demand['gflop_per_volume']:.0f} "
                f"| {demand['volumes_per_s']:.0f} | {r['views']} | {torchio:.1f} | {batched:.1f} "
                f"| {torchio * n:.0f} | {batched * n:.0f} |"
            )


def print_cache_reads(rows: list[dict], args) -> None:
    print(f"\nMemory-mapped cache read ({args.read_volumes} volumes, page cache warm, medians of {args.repeats}):")
    print("| shape | cache | read as | MB/s (stored) | volumes/s |")
    print("|" + "---|" * 5)
    for r in rows:
        print(
            f"| {'x'.join(map(str, r['shape']))} | {r['cache']} | {r['read_as']} | {r['mb_per_s']:.0f} "
            f"| {r['volumes_per_s']:.1f} |"
        )


# ----------------------------------------------------------------------------- report
def print_steps(rows: list[dict]) -> None:
    print(
        "\n| encoder | shape | mode | batch (vol) | bare vol/s | engine vol/s | overhead | GFLOP/s | % conv peak "
        "| supply vol/s | supply/demand | MB/volume | max batch in budget |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        mode = r["mode"] + ("" if r["precision_run"] == r["mode"].split("+")[0] else f" (ran {r['precision_run']})")
        memory = (
            f"{r['mb_per_volume']:.0f} | {r['max_batch_in_budget']}"
            if "mb_per_volume" in r
            else ("| " if "memory_error" not in r else "error | ") + r.get("memory_error", "-")
        )
        print(
            f"| {r['encoder']} | {'x'.join(map(str, r['shape']))} | {mode} | {r['batch']} ({r['volumes_per_step']}) "
            f"| {r['bare_volumes_per_s']:.2f} | {r['engine_volumes_per_s']:.2f} | {r['engine_overhead_pct']:+.1f} % "
            f"| {r['gflop_per_s']:.1f} | {r['pct_of_conv_peak']:.0f} % | {r.get('supply_volumes_per_s', float('nan')):.1f} "
            f"| {r.get('supply_over_demand', float('nan')):.1f}x | {memory} |"
        )


def checkpointing_costs(rows: list[dict]) -> list[dict]:
    """Each +ckpt row against the same config without it: time and memory ratios."""
    index = {(r["encoder"], tuple(r["shape"]), r["mode"], r["batch"]): r for r in rows}
    costs = []
    for (encoder, shape, mode, batch), r in index.items():
        plain = index.get((encoder, shape, mode.replace("+ckpt", ""), batch))
        if "+ckpt" not in mode or plain is None:
            continue
        cost = {
            "encoder": encoder,
            "shape": list(shape),
            "mode": mode,
            "batch": batch,
            "time_ratio": plain["bare_volumes_per_s"] / r["bare_volumes_per_s"],
        }
        if "mb_per_volume" in r and "mb_per_volume" in plain:
            cost["memory_per_volume_ratio"] = r["mb_per_volume"] / plain["mb_per_volume"]
            cost["max_batch_in_budget"] = [plain["max_batch_in_budget"], r["max_batch_in_budget"]]
        costs.append(cost)
        print(
            f"activation checkpointing, {encoder} {'x'.join(map(str, shape))} {mode} batch {batch}: "
            f"time per step x{cost['time_ratio']:.2f}"
            + (
                f", memory per volume x{cost['memory_per_volume_ratio']:.2f}, largest batch in budget "
                f"{cost['max_batch_in_budget'][0]} -> {cost['max_batch_in_budget'][1]}"
                if "max_batch_in_budget" in cost
                else ""
            )
        )
    return costs


def run_steps(args, workdir: Path) -> list[dict]:
    rows, peaks, supplies = [], {}, {}
    for shape in args.shape:
        root = make_cache(workdir, shape, subjects=max(4 * max(args.batch), 16))
        for batch in args.batch:
            if not args.no_loader:
                supplies[batch] = loader_supply(args, shape, batch, root, workdir)
            for encoder in args.encoders:
                for mode in map(Mode.parse, args.modes):
                    row = measure_step(args, encoder, shape, mode, batch, root, workdir)
                    # against the peak of the precision that ran (the engine may fall back to fp32)
                    ran = Mode(row["precision_run"], mode.channels_last, False)
                    key = (tuple(shape), ran)
                    if key not in peaks:
                        peaks[key] = conv_peak(shape, ran, torch.device(args.device), args.repeats)
                    row["conv_peak_gflop_per_s"] = peaks[key]
                    row["pct_of_conv_peak"] = 100 * row["gflop_per_s"] / peaks[key]
                    if batch in supplies:
                        row["supply_volumes_per_s"] = supplies[batch]
                        row["supply_over_demand"] = supplies[batch] / row["engine_volumes_per_s"]
                    if args.memory:
                        row.update(measure_memory(args, encoder, shape, mode))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        nargs="+",
        default=[(121, 145, 121), (182, 218, 182)],
        help="D,H,W volume shapes (default: OpenBHB VBM and quasi-raw).",
    )
    parser.add_argument("--encoders", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "bf16+cl"],
        help="fp32|bf16|fp16 [+cl: channels_last_3d] [+ckpt: activation checkpointing].",
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[4], help="Subjects per step (2 views each).")
    parser.add_argument("--steps", type=int, default=2, help="Steps per timed repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--recipe", default="yaware_age", help="Recipe of the engine and the loader's views (an embedding-loss method)."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the supply measurement.")
    parser.add_argument("--loader-epochs", type=int, default=2, help="Timed loader epochs (after one dropped).")
    parser.add_argument("--no-loader", action="store_true", help="Skip the loader supply.")
    parser.add_argument(
        "--memory", action=argparse.BooleanOptionalAction, default=True, help="Measure step memory in subprocesses."
    )
    parser.add_argument(
        "--memory-batches", type=int, nargs=2, default=[1, 2], help="Two batch sizes (subjects) of the memory probes."
    )
    parser.add_argument(
        "--memory-gb", type=float, default=24.0, help="Memory budget of the largest-batch extrapolation."
    )
    parser.add_argument("--no-steps", action="store_true", help="Only the losses (--losses).")
    parser.add_argument(
        "--losses",
        type=int,
        nargs="*",
        default=[],
        help="2N sizes of the NTXentLoss / YAwareLoss measurement (e.g. 8192).",
    )
    parser.add_argument("--views", action="store_true", help="Only the view pipelines: TorchIO vs batched.")
    parser.add_argument("--views-batch", type=int, default=4, help="Volumes per call of the batched views.")
    parser.add_argument(
        "--views-recipes", nargs="+", default=["yaware_age", "simclr"], help="Recipes whose views to time."
    )
    parser.add_argument(
        "--read-volumes", type=int, default=8, help="Volumes of the float32 / float16 cache read (--views)."
    )
    parser.add_argument("--reads-only", action="store_true", help="With --views: only the cache read.")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=989.0,
        help="GPU throughput of the demand estimate (default: H100 SXM dense BF16 tensor-core peak, NVIDIA datasheet).",
    )
    parser.add_argument(
        "--gpu-utilisation", type=float, default=0.25, help="Assumed fraction of --gpu-tflops a 3D CNN step reaches."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    parser.add_argument("--json", type=Path, default=None, help="Also write every figure to this JSON file.")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory probe
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return
    print(machine() + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""), flush=True)
    report = {"machine": machine(), "args": {key: value for key, value in vars(args).items() if key != "json"}}
    report["args"]["shape"] = [list(shape) for shape in args.shape]
    if args.views:
        if not args.reads_only:
            report["views"], report["gpu_demand"] = measure_views(args), gpu_demand(args)
            print_views(report["views"], report["gpu_demand"], args)
        report["cache_reads"] = measure_cache_reads(args)
        print_cache_reads(report["cache_reads"], args)
    elif not args.no_steps:
        with tempfile.TemporaryDirectory() as tmp:
            report["steps"] = run_steps(args, Path(tmp))
        print_steps(report["steps"])
        report["checkpointing"] = checkpointing_costs(report["steps"])
    if args.losses:
        report["losses"] = measure_losses(args)
        print(
            f"\n| loss | 2N | forward + backward ms | memory MB | ({args.device}, fp32, 128-d, medians of {args.repeats})"
        )
        for r in report["losses"]:
            print(
                f"| {r['loss']} | {r['n']} | {r['ms']:.1f} | {r['memory_mb'] if r['memory_mb'] is None else round(r['memory_mb'])} |"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
