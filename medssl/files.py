"""Atomic file writes: a killed process never leaves a half-written checkpoint or table."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with replacing(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    with replacing(path) as temporary:
        torch.save(obj, temporary)
    return Path(path)


def remove_stale_temporaries(*folders: str | Path) -> list[Path]:
    """Remove the hidden ``.NAME.*.tmp`` files that a process killed during :func:`replacing`
    left behind (a checkpoint's can weigh hundreds of MB); call it before writing again."""
    removed = []
    for folder in folders:
        for path in Path(folder).glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
