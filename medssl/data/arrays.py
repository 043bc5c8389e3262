"""Volumes stored as NumPy ``.npy`` arrays, read memory-mapped one subject at a time.

Two ways of storing volumes are read:

- one file per subject, e.g. OpenBHB's ``sub-1234_preproc-quasiraw_T1w.npy`` of shape
  (1, 1, 182, 218, 182): leading axes of size 1 are dropped down to (C, D, H, W);
- one stacked file per group of subjects, shape (N, C, D, H, W) or (N, D, H, W), and a row
  index per subject (the participants table's ``array_row`` column) -- the layout
  ``medssl data cache`` writes.

Files are opened with ``np.load(mmap_mode="r")``: only the pages of the rows actually read
come into memory, and the operating system's page cache is shared by every DataLoader
worker, so a cohort of any size costs a constant amount of RAM.

Voxel spacing (mm) comes from a sidecar ``<name>.json`` (``{"spacing": [sx, sy, sz]}``,
written by ``medssl data cache``), else from the known OpenBHB grids (quasi-raw
182x218x182: 1 mm; CAT12 VBM 121x145x121: 1.5 mm), else 1 mm.

Example:
    >>> image = array_image("/data/cache/volumes.npy", row=12)    # lazy tio.ScalarImage
    >>> image.data.shape                                           # reads row 12 only
    torch.Size([1, 64, 64, 64])
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from medssl.errors import CohortError

ARRAY_ROW_COLUMN = "array_row"
ARRAY_SUFFIX = ".npy"
# OpenBHB's grids: quasi-raw in MNI152 at 1 mm, CAT12 VBM grey matter at 1.5 mm.
KNOWN_SPACINGS = {(182, 218, 182): 1.0, (121, 145, 121): 1.5}


def is_array_path(path: str | Path) -> bool:
    return str(path).endswith(ARRAY_SUFFIX)


def row_or_none(value) -> int | None:
    """The ``array_row`` cell as an int, or None for a one-subject file (empty / NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


@lru_cache(maxsize=64)
def _open(path: str, _mtime_ns: int, _size: int) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def open_array(path: str | Path) -> np.ndarray:
    """Memory-map an ``.npy`` file (cached per process; a rewritten file is reopened)."""
    path = str(path)
    try:
        stat = os.stat(path)
        return _open(path, stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        raise CohortError(f"{path}: array file does not exist") from None
    except (ValueError, OSError) as exc:
        raise CohortError(f"{path}: not a readable .npy array ({exc})") from None


def volume_shape(array_shape: tuple[int, ...], row: int | None, path: str | Path = "") -> tuple[int, int, int, int]:
    """(C, D, H, W) of one volume given the file's shape and the row (None: one-subject file)."""
    shape = tuple(int(size) for size in (array_shape[1:] if row is not None else array_shape))
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        expected = (
            "(N, C, D, H, W) or (N, D, H, W) with one row per subject"
            if row is not None
            else "(C, D, H, W), (D, H, W) or (1, 1, D, H, W)"
        )
        raise CohortError(
            f"{path}: array of shape {tuple(array_shape)} does not hold 3-D volumes (expected {expected})"
        )
    return shape


def check_array_volume(path: str | Path, row: int | None, participant_id: str) -> tuple[int, int, int, int]:
    """Read the array header only; return the volume's (C, D, H, W) or raise a :class:`CohortError`."""
    array = open_array(path)
    if row is not None and not 0 <= row < array.shape[0]:
        raise CohortError(
            f"{path}: participant {participant_id}: {ARRAY_ROW_COLUMN} {row} is out of range "
            f"(the array holds {array.shape[0]} volume{'s' if array.shape[0] != 1 else ''}, rows 0..{array.shape[0] - 1})"
        )
    return volume_shape(array.shape, row, path)


def spacing_of(path: str | Path, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """Voxel spacing in mm: sidecar JSON, else a known OpenBHB grid, else 1 mm."""
    sidecar = Path(path).with_suffix(".json")
    if sidecar.is_file():
        try:
            spacing = json.loads(sidecar.read_text())["spacing"]
            return tuple(float(value) for value in spacing)  # type: ignore[return-value]
        except (ValueError, KeyError, TypeError) as exc:
            raise CohortError(f'{sidecar}: expected {{"spacing": [sx, sy, sz]}} ({exc})') from None
    depth, height, width = shape[-3:]
    edge = KNOWN_SPACINGS.get((depth, height, width), 1.0)
    return (edge, edge, edge)


def read_array_volume(
    path: str | Path, row: int | None = None, keep_float16: bool = False
) -> tuple[torch.Tensor, np.ndarray]:
    """(float32 tensor (C, D, H, W), 4x4 affine) of one volume; a TorchIO ``reader``.

    With ``keep_float16``, a float16 array's volume stays float16 (half the bytes to collate,
    pin and copy to the device, where ``views.device: batch`` casts it); any other is float32.
    """
    array = open_array(path)
    shape = volume_shape(array.shape, row, path)
    block = array[row] if row is not None else array
    dtype = np.float16 if keep_float16 and array.dtype == np.float16 else np.float32
    data = np.array(block, dtype=dtype).reshape(shape)  # copies just these pages out of the map
    affine = np.diag([*spacing_of(path, shape), 1.0])
    return torch.from_numpy(data), affine


def array_image(path: str | Path, row: int | None = None, keep_float16: bool = False) -> tio.ScalarImage:
    """A lazy ``tio.ScalarImage`` of one volume of an ``.npy`` file (nothing read until used);
    ``keep_float16``: see :func:`read_array_volume`."""
    return tio.ScalarImage(path, reader=partial(read_array_volume, row=row, keep_float16=keep_float16))
