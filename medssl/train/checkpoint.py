"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from medssl.errors import CheckpointError, RecipeError
from medssl.files import atomic_torch_save
from medssl.recipe import move_legacy_method_keys, trim_flat_method_section

CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | Path,
    *,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    epoch: int,
    step: int,
    recipe_yaml: str,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
) -> Path:
    """Everything needed to continue: weights of every network, optimiser and scheduler
    state, the torch RNG state, the number of completed epochs and steps, and the fp16
    loss scale (``scaler``, when enabled: a resume that restarted from the initial scale
    would skip steps the uninterrupted run takes). ``extra`` holds what else a run keeps
    between epochs (early stopping's best weights), under its own keys."""
    state = {
        **(extra or {}),
        "version": CHECKPOINT_VERSION,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
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


# Settings a resumed pre-training run may change: they only say how far to go, how often to
# save, how to read the data, what to evaluate or how a later fine-tuning runs, so the folder
# stays true to what was trained. Any other change would be overridden by the checkpoint's
# optimiser state or contradict the epochs already run.
RESUMABLE_CHANGES = (
    "name",
    "description",
    "train.epochs",
    "train.steps",
    "profile",  # the values a profile gave are compared one by one
    "train.embedded.",  # medssl before profiles: its budget's values are compared one by one
    "train.checkpoint_every",
    "data.num_workers",
    "eval.",
    "finetune.",
)


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {key: value for name, child in tree.items() for key, value in flatten(child, f"{prefix}{name}.").items()}


def yaml_value(value: object) -> str:
    """A recipe value as YAML spells it: null, true, 0.001, [16, 32]; strings quoted only where YAML needs it ('3')."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()


def resume_differences(
    saved_yaml: str, current_yaml: str, resumable: tuple[str, ...] = RESUMABLE_CHANGES
) -> tuple[list[str], list[str]]:
    """``KEY: SAVED -> NOW`` for every recipe key that differs, split into (refused, allowed):
    allowed are the keys starting with one of ``resumable``."""
    # A run saved while medssl had one flat method section compares by its method's own keys, and a
    # run saved before a method key took its constructor's name (local_crops) under the new name.
    saved = flatten(move_legacy_method_keys(trim_flat_method_section(yaml.safe_load(saved_yaml) or {}))[0])
    current = flatten(yaml.safe_load(current_yaml) or {})
    refused: list[str] = []
    allowed: list[str] = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            change = f"{key}: {yaml_value(saved.get(key))} -> {yaml_value(current.get(key))}"
            # a key the saved recipe lacks is a setting added to medssl since: not the user's change
            (allowed if key.startswith(resumable) or key not in saved else refused).append(change)
    return refused, allowed


def resumable_checkpoint(
    path: Path,
    recipe_yaml: str,
    epochs: int,
    epochs_key: str = "train.epochs",
    resumable: tuple[str, ...] = RESUMABLE_CHANGES,
) -> tuple[dict, list[str]]:
    """The checkpoint at ``path`` once its recipe is known to agree with ``recipe_yaml`` (see
    :func:`resume_differences`) and ``epochs`` covers what it holds; and the allowed changes.

    Called before anything in the run folder is touched, so a refused resume changes nothing.
    """
    state = load_checkpoint(path)
    refused, allowed = resume_differences(state.get("recipe", ""), recipe_yaml, resumable)
    if refused:
        raise CheckpointError(
            f"{path}: does not fit the recipe, which changes settings the run was trained with "
            f"({'; '.join(refused)}); resume with the run's recipe, or start a new --out"
        )
    epochs_done = int(state["epochs_done"])
    if epochs < epochs_done:
        raise RecipeError(
            f"{epochs_key} = {epochs}: {path} already holds {epochs_done} epoch{'s' if epochs_done != 1 else ''}; "
            f"resume with {epochs_key} >= {epochs_done}"
        )
    return state, allowed
