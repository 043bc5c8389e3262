"""Run folders are never reused by accident: a second run into a used ``--out`` is refused
(it would mix two runs' checkpoints, metrics and TensorBoard events) unless ``--resume``
continues it or ``--overwrite`` asks for a fresh start."""

from __future__ import annotations

import shutil
from pathlib import Path

from medssl.errors import MedsslError

# What pretrain and finetune write: --overwrite removes these and nothing else, so a mistyped
# --out pointing at a folder of the user's own files loses none of them.
RUN_ARTEFACTS = (
    "recipe.yaml",
    "run_notes.txt",
    "metrics.csv",
    "tensorboard",
    "checkpoints",
    "encoder.pt",
    "encoder.json",
    "loss.png",
    "eval",
    "finetune.json",
    "finetune.csv",
    "predictions.csv",
    "history.csv",
    "seeds",
    "roc_*.png",
    "predictions_*.png",
    "pretrained-n*",  # finetune --train-sizes: one fine-tuning folder per encoder and size, and the curve
    "scratch-n*",
    "label_efficiency.*",
)


def run_artefacts(run_dir: Path) -> list[Path]:
    """What a previous pretrain or finetune left in ``run_dir`` (other files are the user's)."""
    return [path for pattern in RUN_ARTEFACTS for path in run_dir.glob(pattern)] if run_dir.is_dir() else []


def check_run_folder(run_dir: Path, *, resume: bool = False, overwrite: bool = False, can_resume: bool = True) -> None:
    """Refuse to write into a folder that already holds a run unless ``resume`` or ``overwrite``
    says what to do with it; with ``overwrite``, remove medssl's previous run artefacts.

    Files that are no run artefact (a log the launcher writes there, notes) neither block a
    run nor are removed."""
    if resume and overwrite:
        raise MedsslError("--resume and --overwrite contradict each other: give one of them")
    if resume or not run_artefacts(run_dir):
        return
    if overwrite:
        for path in run_artefacts(run_dir):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return
    options = "rerun with --resume to continue it, " if can_resume else ""
    raise MedsslError(
        f"{run_dir}: the folder already holds a run; {options}choose a new --out, or add --overwrite to replace it"
    )
