"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch

from medssl.errors import CheckpointError
from medssl.files import atomic_torch_save

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, *, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, step: int, recipe_yaml: str,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    """Everything needed to continue: weights of every network, optimiser and scheduler
    state, the torch RNG state, the number of completed epochs and steps, and the fp16
    loss scale (``scaler``, when enabled: a resume that restarted from the initial scale
    would skip steps the uninterrupted run takes)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epochs_done": epoch,
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "recipe": recipe_yaml,
    }
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not a medssl checkpoint (version {CHECKPOINT_VERSION} expected)")
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def restore_scaler(state: dict, scaler: torch.amp.GradScaler) -> None:
    """Load the checkpoint's loss scale into an enabled ``scaler``; checkpoints of fp32/bf16
    runs and those written before medssl saved it hold none, and the scaler keeps its initial scale."""
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
