"""Atomic file writes: a killed process never leaves a half-written checkpoint or table.

Files are written with the user's umask (``tempfile.mkstemp`` alone would leave them 0600, so
colleagues could not read a shared encoder or cache), and a full disk or a read-only folder is
reported as an :class:`~medssl.errors.OutputError` naming the file, never as a traceback.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from medssl.errors import OutputError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def output_error(error: OSError, path: str | Path) -> OutputError | None:
    """The one-line error for a write that failed for lack of space or permission; None otherwise.

    It names the file the OS names, unless that is the hidden temporary of ``path`` (which
    the user never asked for): then ``path``."""
    target = Path(path)
    failed = Path(error.filename) if error.filename else target
    same_folder = Path(os.path.abspath(failed.parent)) == Path(os.path.abspath(target.parent))  # one may be relative
    is_temporary = same_folder and failed.name.startswith(f".{target.name}.")
    path = target if is_temporary else failed
    if error.errno in NO_SPACE:
        folder = next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))
        free = shutil.disk_usage(folder).free / 2**20
        return OutputError(
            f"no space left on device writing {path} ({free:.0f} MB free there); free some space and rerun"
        )
    if error.errno == errno.EISDIR:
        return OutputError(f"cannot write {path}: it is a folder; give a file name")
    if error.errno in NOT_WRITABLE:
        return OutputError(
            f"cannot write {path}: {error.strerror or os.strerror(error.errno)}; choose a writable folder"
        )
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk or a read-only folder met in the block into an OutputError naming ``path``."""
    try:
        yield
    except OSError as error:
        reported = output_error(error, path)
        if reported is None:
            raise
        raise reported from None


def user_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
        try:
            yield temporary
            with open(temporary, "rb") as stream:
                os.fsync(stream.fileno())
            os.chmod(temporary, user_mode())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with replacing(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def open_for_writing(path: Path) -> BinaryIO:
    return open(path, "wb")


class _KeepWriteError:
    """A stream that remembers what cut a write, a full disk or a Ctrl-C: torch.save's zip writer,
    closing after it, raises ``RuntimeError: enforce fail at inline_container.cc ... unexpected
    pos`` over it."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.error: OSError | KeyboardInterrupt | None = None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except (OSError, KeyboardInterrupt) as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.stream.flush()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    with replacing(path) as temporary:
        with open_for_writing(temporary) as stream:
            writer = _KeepWriteError(stream)
            try:
                torch.save(obj, writer)  # type: ignore[arg-type]
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
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


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities as None and numpy scalars as Python numbers, so that
    ``json.dumps`` writes strict JSON (``NaN`` is not JSON)."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
