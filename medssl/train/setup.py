"""What pre-training, fine-tuning and evaluation all set up the same way: device, seeds,
precision, optimiser and schedule, the length of a run given in steps and the recipe's cohort.

Both ``medssl.train`` (which builds trainers) and ``medssl.eval`` (which fine-tunes and
evaluates encoders) import these, so each rule exists once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from medssl.config import TrainConfig
from medssl.data.cohort import Cohort, load_cohort
from medssl.data.synthetic import embedded_cohort
from medssl.errors import RecipeError
from medssl.recipe import Recipe
from medssl.train.lars import LARS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists twenty device types, most of which medssl never runs on
        raise RecipeError(f"train.device = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise RecipeError(f"train.device = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device = {name!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return device


def autocast(precision: str, device: torch.device):
    """bf16/fp16 autocast on ``device``; fp32 runs untouched."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def embedded_cohort_note(recipe: Recipe) -> str | None:
    """What a run without ``data.root`` trains on: the embedded cohort, with the profile's budget."""
    if not recipe.uses_embedded_cohort:
        return None
    train, synthetic = recipe.train, recipe.data.synthetic
    length = (
        f"{train.steps} step{'s' if train.steps != 1 else ''}"
        if train.steps is not None
        else f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}"
    )
    widths = f" ({'-'.join(map(str, recipe.model.widths))} channels)" if recipe.model.widths else ""
    return (
        f"data.root not set: using the embedded synthetic cohort ({synthetic.subjects} subjects, {synthetic.sites} sites, "
        f"{synthetic.shape}^3 voxels) with profile {recipe.profile}: {recipe.model.encoder}{widths}, {length} of batch {train.batch_size}."
    )


def epochs_from_steps(train: TrainConfig, steps_per_epoch: int) -> str | None:
    """Set the epochs of a run given in ``train.steps``, scaling the warm-up with them; returns a
    note when whole epochs make more steps than asked.

    The warm-up keeps the share of ``train.epochs`` it has (10 of 300 epochs stays a thirtieth),
    so a schedule written for real data scales with the steps actually run.
    """
    steps = train.steps
    if steps is None:
        return None
    epochs = max(1, math.ceil(steps / max(steps_per_epoch, 1)))
    if train.warmup_epochs:
        share = train.warmup_epochs * epochs / train.epochs
        train.warmup_epochs = min(epochs - 1, round(share))
    train.epochs = epochs
    if epochs * steps_per_epoch == steps:
        return None
    return (
        f"train.steps = {steps}, in whole epochs: {epochs} epoch{'s' if epochs != 1 else ''}"
        f" x {steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} = {epochs * steps_per_epoch} optimiser steps."
    )


def open_cohort(recipe: Recipe, console: Console | None = None) -> Cohort:
    """The recipe's cohort: ``data.root``, or the embedded synthetic cohort (generated once, cached)."""
    root = recipe.data.root
    if root is None:
        root = embedded_cohort(recipe.data.synthetic, progress=console is not None)
    return load_cohort(root, openbhb_modality=recipe.data.openbhb_modality, openbhb_masks=recipe.data.openbhb_masks)


def bias_classes_for(cohort: Cohort, column: str) -> dict[str, int]:
    """The classes of the bias column (``data.bias``, the site) of the training subjects, as text."""
    if column not in cohort.table.columns:
        raise RecipeError(
            f"data.bias = {column!r}: no such column in the participants table (columns: {', '.join(cohort.table.columns)})"
        )
    values = sorted(cohort.table[column].astype(str).unique())
    if len(values) < 2:
        raise RecipeError(
            f"data.bias = {column!r}: the training subjects have one value ({values[0]}), nothing to remove"
        )
    return {value: index for index, value in enumerate(values)}


def label_encoder_for(cohort: Cohort, label: str | None) -> dict[str, int] | None:
    """Map a categorical label column (sex, diagnosis, site) to integers; None for numeric ones."""
    if label is None:
        return None
    if label not in cohort.table.columns:
        raise RecipeError(
            f"data.label = {label!r}: no such column in the participants table (columns: {', '.join(cohort.table.columns)})"
        )
    values = cohort.table[label]
    if values.isna().any():
        raise RecipeError(f"data.label = {label!r}: the column has missing values")
    # pandas >= 3 reads text columns as StringDtype, which numpy cannot interpret: ask pandas.
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return None
    return {value: index for index, value in enumerate(sorted(values.astype(str).unique()))}


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then constant, cosine or per-epoch step decay."""
    total = max(train.epochs * steps_per_epoch, 1)
    warmup = train.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.scheduler == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if train.scheduler == "step":
            return train.step_gamma ** (step // steps_per_epoch)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], recipe: Recipe, lr: float | None = None
) -> torch.optim.Optimizer:
    """The recipe's ``train.optimizer`` over the parameters that require a gradient, at ``lr``
    (default ``train.lr``)."""
    train = recipe.train
    lr = train.lr if lr is None else lr
    parameters = [p for p in parameters if p.requires_grad]
    # One fused kernel per step instead of ~10 passes over the weights: 7x faster on CPU for
    # ResNet-18's 33M weights (benchmarks/README.md), also the fastest path on CUDA.
    fused = bool(parameters) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=train.weight_decay, fused=fused or None)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=train.weight_decay, fused=fused or None)
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "lars":
        return LARS(parameters, lr=lr, weight_decay=train.weight_decay, momentum=train.momentum)
    raise RecipeError(f"train.optimizer = {train.optimizer!r}: expected adam, adamw, sgd or lars")


def bf16_conv_hazards(model: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Conv3d layers with a 3x3x3 kernel whose input has depth 2.

    torch 2.13 on CPU computes wrong weight gradients for such bf16 convolutions, so
    :func:`safe_precision` falls back to float32 when this returns anything.
    """
    hazards: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv3d) and tuple(module.kernel_size) == (3, 3, 3):

            def record(module, inputs, output, name=name):
                if inputs[0].shape[2] == 2:
                    hazards.append(name)

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return hazards


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); True when torch cannot tell."""
    # torch exposes the check only as an operator of its oneDNN backend, without a public wrapper.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return True


def safe_precision(
    precision: str, device: torch.device, network: torch.nn.Module, sample: torch.Tensor
) -> tuple[str, str | None]:
    """``precision``, or fp32 with a note when bf16 on CPU would be slow (no native bf16
    instructions) or wrong (:func:`bf16_conv_hazards`)."""
    if precision != "bf16" or device.type != "cpu":
        return precision, None
    if not cpu_has_native_bf16():
        return "fp32", (
            "train.precision = 'bf16' falls back to fp32: this CPU has no native bfloat16 instructions "
            "(AVX512-BF16 or AMX), on which bf16 convolutions run several times slower than fp32."
        )
    was_training = network.training
    network.eval()
    try:
        hazards = bf16_conv_hazards(network, sample)
    finally:
        network.train(was_training)
    if not hazards:
        return precision, None
    return "fp32", (
        f"train.precision = 'bf16' falls back to fp32: on CPU, 3x3x3 convolutions with depth-2 inputs "
        f"({', '.join(hazards[:3])}) get wrong bf16 gradients in this torch version."
    )


def check_input_size(encoder: torch.nn.Module, sample: torch.Tensor, encoder_name: str) -> None:
    """Refuse volumes too small for the encoder (its pooling would reach zero size) in one line."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(sample)
    except RuntimeError as exc:
        raise RecipeError(
            f"model.encoder = {encoder_name!r} cannot take volumes of shape {tuple(sample.shape[2:])} "
            f"({str(exc).splitlines()[0]}); use larger volumes (data.volume_shape)"
        ) from None
    finally:
        encoder.train(was_training)
