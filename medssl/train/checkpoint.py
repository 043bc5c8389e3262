"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch

from medssl.errors import CheckpointError
from medssl.files import atomic_torch_save

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, *, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, step: int, recipe_yaml: str) -> Path:
    """Everything needed to continue: weights of every network, optimiser and scheduler
    state, the torch RNG state, and the number of completed epochs and steps."""
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
