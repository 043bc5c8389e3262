"""``medssl data cache``: a cohort preprocessed once into one memory-mapped ``.npy`` array.

Reading and resampling a NIfTI volume costs far more than augmenting it, and every epoch
pays it again. Caching does it once: each volume is read, resampled to ``volume_shape``
exactly as training would (:func:`medssl.data.views.resize_transform`), and written as one
row of ``volumes.npy`` (N, C, D, H, W), streamed row by row so memory holds one volume at a
time. The output folder is itself a cohort that :func:`medssl.data.cohort.load_cohort`
reads memory-mapped::

    participants.tsv    the source table; path = volumes.npy, array_row = row in it
    volumes.npy         float32 (or float16) volumes, rows in table order
    volumes.json        {"spacing": [sx, sy, sz]} of the stored grid, its "dtype", and provenance

Intensities are stored as read (no normalisation): the recipe's ``views.normalize`` still
runs per view, so a cached cohort trains like its source. float16 (``data.cache_dtype``) halves
the disk and the page cache (OpenBHB quasi-raw: 29 MB a volume in float32, 94 GB for its 3,227
training scans) for a relative rounding of at most 2^-11 (intensities beyond float16's 65,504
are refused); training checks that the cache holds the recipe's type (:func:`check_cache_dtype`).

Example:
    >>> cache_cohort(load_cohort("/data/ixi"), "/scratch/ixi_64", volume_shape=[64, 64, 64])
    >>> recipe.data.root = "/scratch/ixi_64"          # the engine now reads the cache
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torchio as tio
from torch.utils.data import DataLoader

from medssl.data.arrays import ARRAY_ROW_COLUMN, is_array_path, open_array
from medssl.data.cohort import Cohort
from medssl.data.openbhb_kit import KIT_COLUMNS
from medssl.data.views import VolumeDataset, resize_transform
from medssl.errors import CohortError
from medssl.files import atomic_write_text, replacing

ARRAY_NAME = "volumes.npy"
DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504: larger intensities would be stored as inf


def cache_cohort(
    cohort: Cohort,
    out: str | Path,
    volume_shape: Sequence[int] | None = None,
    dtype: str = "float32",
    num_workers: int = 0,
    on_volume: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``cohort`` (resampled to ``volume_shape`` when given) as a memory-mapped cohort in ``out``.

    Args:
        cohort: A loaded cohort (NIfTI, OpenBHB or another cache).
        out: Output folder (created; an existing cache there is replaced).
        volume_shape: (D, H, W) to resample to; None keeps the stored shape, which must then
            be the same for every volume.
        dtype: ``float32`` or ``float16`` (half the disk and page cache, ~3 significant digits).
        num_workers: DataLoader processes reading and resampling volumes in parallel.
        on_volume: Called as ``on_volume(done, total)`` after each volume (progress bars).

    Returns:
        ``out``.
    """
    if dtype not in DTYPES:
        raise CohortError(f"cache dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if len(cohort) == 0:
        raise CohortError(f"{cohort.root}: no participant to cache")
    out = cache_folder(cohort.root, out)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = resize_transform(volume_shape) if volume_shape else None
    dataset = VolumeDataset(cohort.subjects(), preprocess=preprocess)
    first = dataset[0]["volume"]
    spacing = _spacing(dataset, preprocess)
    _write_volumes(cohort, dataset, out / ARRAY_NAME, tuple(first.shape), dtype, num_workers, on_volume)
    # The cache holds unmasked volumes: the challenge kit's unmasking columns no longer apply.
    table = cohort.table.drop(columns=list(KIT_COLUMNS), errors="ignore")
    table["path"] = ARRAY_NAME
    table[ARRAY_ROW_COLUMN] = np.arange(len(table))
    info = {
        "spacing": list(spacing),
        "shape": list(first.shape),
        "dtype": dtype,
        "source": str(cohort.root),
        "volume_shape": list(volume_shape) if volume_shape else None,
    }
    atomic_write_text(out / "volumes.json", json.dumps(info, indent=2))
    # The table last: a cache interrupted earlier has none and is not mistaken for a complete one.
    atomic_write_text(out / "participants.tsv", table.to_csv(sep="\t", index=False))
    return out


def cache_folder(source: str | Path, out: str | Path) -> Path:
    """``out`` as an absolute path, refused when it is the source cohort's own folder."""
    out = Path(out).expanduser().resolve()
    if out == Path(source).expanduser().resolve():
        raise CohortError(f"{out}: the cache must be written to another folder than its source")
    return out


def _write_volumes(
    cohort: Cohort,
    dataset: VolumeDataset,
    path: Path,
    shape: tuple[int, ...],
    dtype: str,
    num_workers: int,
    on_volume: Callable[[int, int], None] | None,
) -> None:
    """Write every volume of ``dataset`` as one row of the memory-mapped array at ``path``."""
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    with replacing(path) as temporary:
        # open_memmap writes the .npy header, then each row goes straight to disk.
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=(len(dataset), *shape))
        for batch in loader:
            index = int(batch["index"][0])
            volume = batch["volume"][0]
            if tuple(volume.shape) != shape:
                participant = cohort.table["participant_id"].iloc[index]
                raise CohortError(
                    f"{cohort.table['path'].iloc[index]}: participant {participant}: volume of shape "
                    f"{tuple(volume.shape)} (C, D, H, W), expected {shape} like the first volume; "
                    f"give a shape to resample every volume to (--shape D,H,W)"
                )
            if dtype == "float16":
                _check_float16_range(cohort, index, volume.numpy())
            array[index] = volume.numpy().astype(dtype, copy=False)
            if on_volume is not None:
                on_volume(index + 1, len(dataset))
        array.flush()
        del array


def _check_float16_range(cohort: Cohort, index: int, volume: np.ndarray) -> None:
    peak = float(np.abs(volume).max())
    if math.isfinite(peak) and peak > FLOAT16_MAX:
        participant = cohort.table["participant_id"].iloc[index]
        raise CohortError(
            f"{cohort.table['path'].iloc[index]}: participant {participant}: intensities up to {peak:g} "
            f"exceed float16's largest value ({FLOAT16_MAX:g}); cache it as float32 (--dtype float32)"
        )


def recorded_dtype(path: str | Path) -> str | None:
    """The type a ``medssl data cache`` array holds (its header's, which ``volumes.json`` records);
    None for an array that is not such a cache (an OpenBHB file)."""
    sidecar = Path(path).with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict) or "dtype" not in info:
        return None
    return str(open_array(path).dtype)


def check_cache_dtype(cohort: Cohort, dtype: str) -> None:
    """Refuse a cohort read from a ``medssl data cache`` of another type than ``dtype`` (the
    recipe's ``data.cache_dtype``) in one line naming the cache file and both types; cohorts
    that are no cache pass."""
    for path in dict.fromkeys(cohort.table["path"]):
        if not is_array_path(path):
            continue
        stored = recorded_dtype(path)
        if stored is not None and stored != dtype:
            raise CohortError(
                f"{path}: the cache holds {stored} volumes, the recipe asks for data.cache_dtype = {dtype}; "
                f"set data.cache_dtype: {stored}, or rebuild the cache with medssl data cache --dtype {dtype}"
            )


def _spacing(dataset: VolumeDataset, preprocess) -> tuple[float, float, float]:
    """Voxel spacing (mm) of the stored grid, taken from the first volume after resampling."""
    loaded = copy.deepcopy(dataset.subjects[0])
    loaded.load()
    if preprocess is not None:
        loaded = preprocess(loaded)
    spacing_i, spacing_j, spacing_k = cast(tio.Image, loaded["image"]).spacing
    return float(spacing_i), float(spacing_j), float(spacing_k)
