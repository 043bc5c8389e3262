"""Output folders are never reused by accident: a second run into a used ``--out`` is refused
(it would mix two runs' checkpoints, metrics and TensorBoard events) unless ``--resume``
continues it or ``--overwrite`` asks for a fresh start; ``medssl data synth`` and ``data cache``
refuse a folder that already holds a cohort unless ``--overwrite`` replaces it."""

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
# What makes a folder a cohort, and what data synth / data cache write there: --overwrite removes
# these (a second participants table would make the folder unreadable), never the user's other files.
COHORT_TABLES = ("participants.tsv", "participants.csv")
SYNTHETIC_COHORT_ARTEFACTS = (*COHORT_TABLES, "cohort.json", "sub-*_T1w.nii.gz")
CACHE_ARTEFACTS = (*COHORT_TABLES, "volumes.npy", "volumes.json")


def run_artefacts(run_dir: Path, patterns: tuple[str, ...] = RUN_ARTEFACTS) -> list[Path]:
    """The files and folders of ``run_dir`` that match ``patterns`` (by default what pretrain and
    finetune write); other files are the user's."""
    return sorted(path for pattern in patterns for path in run_dir.glob(pattern)) if run_dir.is_dir() else []


def remove_artefacts(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


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
        remove_artefacts(run_artefacts(run_dir))
        return
    options = "rerun with --resume to continue it, " if can_resume else ""
    raise MedsslError(
        f"{run_dir}: the folder already holds a run; {options}choose a new --out, or add --overwrite to replace it"
    )


def check_cohort_folder(out: Path, artefacts: tuple[str, ...], *, overwrite: bool = False) -> list[Path]:
    """Refuse to write a cohort into ``out`` when it already holds one (any of ``artefacts``:
    :data:`SYNTHETIC_COHORT_ARTEFACTS` or :data:`CACHE_ARTEFACTS`) unless ``overwrite``. An
    absent or empty ``out`` is fine.

    Returns:
        the previous cohort's files, for :func:`remove_artefacts` once the new cohort's input
        is known to be good (empty unless ``overwrite``); the user's other files are not listed.
    """
    if out.exists() and not out.is_dir():
        raise MedsslError(f"{out}: is a file; expected a folder to write the cohort into")
    found = run_artefacts(out, artefacts)
    if not found or overwrite:
        return found
    names = ", ".join(path.name for path in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise MedsslError(
        f"{out}: the folder already holds a cohort ({names}); choose another folder, or add --overwrite to replace it"
    )
