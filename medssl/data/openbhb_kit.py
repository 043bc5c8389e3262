"""The OpenBHB challenge kit's data layout, read memory-mapped and unmasked one row at a time.

Participants of the OpenBHB challenge (``ramp-kits/brain_age_with_site_removal``) have on
disk, at the kit's root::

    data/train.tsv  data/train.npy    age, site, split; one .npy row per table row
    data/test.tsv   data/test.npy     split internal_test / external_test (external sites blank)
    cat12vbm_space-MNI152_desc-gm_TPM.nii.gz        vbm mask: voxels kept where > 0.05
    quasiraw_space-MNI152_desc-brain_T1w.nii.gz     quasiraw mask: voxels kept where > 0

Each ``.npy`` row holds every preprocessing of one scan as float32 values, in six blocks, in
the order of the kit's ``FeatureExtractor.MODALITIES``:

    vbm            CAT12 grey matter 1x121x145x121, masked     519,945 values
    quasiraw       T1w 1x182x218x182, masked                 1,827,095 values
    xhemi          8 x 163,842 surface values                 1,310,736 values
    vbm_roi        284
    desikan_roi    7 x 68 = 476
    destrieux_roi  7 x 148 = 1,036                     in all 3,659,572 values

``data.openbhb_modality`` picks the volume block; each row is unmasked on the fly: the
block's values fill the mask's kept voxels in C order of the mask array, zeros elsewhere.
The volume blocks' sizes are counted from the masks (``data.openbhb_masks`` names their
folder, by default the kit's root), so a wrong mask shows as a wrong row length.

The tables become a medssl cohort table: ``path`` is the ``.npy`` file, ``array_row`` the
row, ``kit_block`` and ``kit_masks`` tell :func:`kit_image` how to unmask it. The kit's
tables carry no participant id or sex: ids are ``train-<row>`` / ``test-<row>``, the table
has no sex column (the sex probe says so), and external sites, withheld by the kit, are
``external``.

The kit also ships ``cv_splits_indices.json`` at its root: the challenge's cross-validation,
``{"fold0": {"train": [...], "internal_test": [...], "external_test": [...]}, ...}``, row
numbers of ``data/train.tsv``; each fold holds out whole sites as ``external_test`` and some
subjects of the remaining sites as ``internal_test``. :func:`read_kit_folds` reads and checks it.

Example:
    >>> table, source = kit_table("/data/brain_age_with_site_removal", modality="vbm")
    >>> kit_image(table["path"][0], 0, "vbm", table["kit_masks"][0]).data.shape
    torch.Size([1, 121, 145, 121])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torchio as tio
from nibabel.spatialimages import SpatialImage

from medssl.data.arrays import ARRAY_ROW_COLUMN, open_array, spacing_of
from medssl.data.openbhb import bare_id
from medssl.errors import CohortError

KIT_BLOCK_COLUMN = "kit_block"
KIT_MASKS_COLUMN = "kit_masks"
KIT_COLUMNS = (KIT_BLOCK_COLUMN, KIT_MASKS_COLUMN)
KIT_PARTS = ("train", "test")
KIT_FOLDS_FILE = "cv_splits_indices.json"
FOLD_PARTS = ("train", "internal_test", "external_test")
EXTERNAL_SITE = "external"


@dataclass(frozen=True)
class KitMask:
    """A mask image of the kit: the voxels of a volume block are those where the image > threshold."""

    file: str
    threshold: float


KIT_MASKS = {
    "vbm": KitMask("cat12vbm_space-MNI152_desc-gm_TPM.nii.gz", 0.05),
    "quasiraw": KitMask("quasiraw_space-MNI152_desc-brain_T1w.nii.gz", 0.0),
}
# Surface and ROI blocks: fixed sizes, never read, but they place the blocks after them.
FEATURE_BLOCK_SIZES = {"xhemi": 8 * 163_842, "vbm_roi": 284, "desikan_roi": 7 * 68, "destrieux_roi": 7 * 148}
BLOCK_ORDER = ("vbm", "quasiraw", "xhemi", "vbm_roi", "desikan_roi", "destrieux_roi")


def is_kit_folder(root: str | Path) -> bool:
    """Whether ``root`` is a challenge kit: ``data/train.tsv`` + ``.npy`` or ``data/test.tsv`` + ``.npy``."""
    data = Path(root) / "data"
    return any((data / f"{part}.tsv").is_file() and (data / f"{part}.npy").is_file() for part in KIT_PARTS)


def kit_masks(folder: str) -> dict[str, np.ndarray]:
    """The two volume masks of the kit (boolean arrays), read once per process and folder."""
    # The files' times and sizes are part of the cache key: a mask replaced on disk is read again.
    stamps = []
    for mask in KIT_MASKS.values():
        path = Path(folder) / mask.file
        stamps.append((path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None)
    return _read_masks(folder, tuple(stamps))


@lru_cache(maxsize=8)
def _read_masks(folder: str, _stamps: tuple) -> dict[str, np.ndarray]:
    masks = {}
    for block, mask in KIT_MASKS.items():
        path = Path(folder) / mask.file
        if not path.is_file():
            raise CohortError(
                f"{path}: the challenge kit's {block} mask is missing; the kit's rows cannot be unmasked "
                f"without it (set data.openbhb_masks to the folder holding {KIT_MASKS['vbm'].file} and "
                f"{KIT_MASKS['quasiraw'].file})"
            )
        try:
            image = cast(SpatialImage, nib.load(path)).get_fdata()  # a mask file is a NIfTI volume
        except Exception as exc:  # nibabel raises many types for a broken file
            raise CohortError(f"{path}: the {block} mask cannot be read ({str(exc).splitlines()[0]})") from None
        # Compared in float64, as the kit does: a voxel stored as float32 0.05 is just above 0.05 and kept.
        masks[block] = image.reshape(image.shape[:3]) > mask.threshold
    return masks


def block_sizes(folder: str) -> dict[str, int]:
    """Values per row of each block, in row order: the volume blocks count their mask's kept voxels."""
    masks = kit_masks(folder)
    counts = {block: int(mask.sum()) for block, mask in masks.items()}
    return {block: counts.get(block, FEATURE_BLOCK_SIZES.get(block, 0)) for block in BLOCK_ORDER}


def block_span(folder: str, block: str) -> slice:
    """Columns of ``block`` in a row."""
    sizes = block_sizes(folder)
    start = sum(sizes[name] for name in BLOCK_ORDER[: BLOCK_ORDER.index(block)])
    return slice(start, start + sizes[block])


def describe_layout(folder: str) -> str:
    sizes = block_sizes(folder)
    parts = []
    for block in BLOCK_ORDER:
        mask = KIT_MASKS.get(block)
        where = f" (kept voxels of {mask.file} > {mask.threshold:g})" if mask else ""
        parts.append(f"{block} {sizes[block]:,}{where}")
    return f"{sum(sizes.values()):,} float32 values per row = " + " + ".join(parts)


def _read_part_table(data: Path, part: str) -> pd.DataFrame:
    path = data / f"{part}.tsv"
    try:
        table = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CohortError(f"{path}: cannot be read as the kit's {part} table ({exc})") from None
    missing = [
        column for column in ("age", "site") + (("split",) if part == "test" else ()) if column not in table.columns
    ]
    if missing:
        raise CohortError(
            f"{path}: missing column '{missing[0]}' (the kit's tables have age, site and split; "
            f"found: {', '.join(map(str, table.columns))})"
        )
    return table


def _medssl_columns(table: pd.DataFrame, part: str) -> pd.DataFrame:
    """The kit's columns as the cohort layer expects them (ids, text sites, train split).

    A missing sex stays missing: filled with a placeholder, it would read as a column of one class."""
    table = table.copy()
    if "participant_id" not in table.columns:
        table["participant_id"] = [f"{part}-{row}" for row in range(len(table))]
    # The kit blanks the external test sites: the challenge keeps them secret.
    table["site"] = table["site"].map(lambda value: bare_id(value) if pd.notna(value) else EXTERNAL_SITE)
    if part == "train":
        table["split"] = "train"
    return table


def _check_rows(array_path: Path, array: np.ndarray, rows: int, masks_folder: str) -> None:
    expected = sum(block_sizes(masks_folder).values())
    if array.ndim != 2 or array.shape[1] != expected:
        raise CohortError(
            f"{array_path}: array of shape {tuple(array.shape)}, expected ({rows}, {expected}): "
            f"the challenge kit's layout is {describe_layout(masks_folder)}"
        )
    if array.shape[0] != rows:
        raise CohortError(
            f"{array_path}: holds {array.shape[0]} row{'s' if array.shape[0] != 1 else ''} but "
            f"{array_path.with_suffix('.tsv')} lists {rows} participant{'s' if rows != 1 else ''}; "
            "expected one row per table row, in table order"
        )


def kit_table(
    root: str | Path, modality: str = "quasiraw", masks: str | Path | None = None
) -> tuple[pd.DataFrame, str]:
    """The kit in ``root`` as a cohort table (``path``, ``array_row``, ``kit_block``, ``kit_masks``).

    Reads the tables and the arrays' headers (not their values); raises :class:`CohortError`
    naming the file and the expected layout when a row length or row count does not fit.
    """
    if modality not in KIT_MASKS:
        raise CohortError(
            f"data.openbhb_modality = {modality!r}: the challenge kit's volumes are {', '.join(KIT_MASKS)}"
        )
    root = Path(root).expanduser().resolve()
    masks_folder = str(Path(masks).expanduser().resolve() if masks is not None else root)
    data = root / "data"
    pieces, sources = [], []
    for part in KIT_PARTS:
        if not ((data / f"{part}.tsv").is_file() and (data / f"{part}.npy").is_file()):
            continue
        table = _medssl_columns(_read_part_table(data, part), part)
        array_path = data / f"{part}.npy"
        _check_rows(array_path, open_array(array_path), len(table), masks_folder)
        table["path"] = str(array_path)
        table[ARRAY_ROW_COLUMN] = np.arange(len(table))
        pieces.append(table)
        sources.append(str(data / f"{part}.tsv"))
    if not pieces:
        raise CohortError(
            f"{root}: no challenge kit data (expected data/train.tsv + data/train.npy or data/test.tsv + data/test.npy)"
        )
    table = pd.concat(pieces, ignore_index=True)
    table[KIT_BLOCK_COLUMN] = modality
    table[KIT_MASKS_COLUMN] = masks_folder
    return table, " + ".join(sources)


def read_kit_volume(path: str | Path, row: int, block: str, masks_folder: str) -> tuple[torch.Tensor, np.ndarray]:
    """(float32 tensor (1, D, H, W), 4x4 affine) of one row's ``block``, unmasked; a TorchIO ``reader``."""
    mask = kit_masks(masks_folder)[block]
    values = open_array(path)[row, block_span(masks_folder, block)]  # reads only this block's pages
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values  # boolean assignment fills the kept voxels in C order, as the kit's masking did
    affine = np.diag([*spacing_of(path, mask.shape), 1.0])
    return torch.from_numpy(volume[None]), affine


def kit_image(path: str | Path, row: int, block: str, masks_folder: str) -> tio.ScalarImage:
    """A lazy ``tio.ScalarImage`` of one row of a kit array (nothing read until used)."""
    return tio.ScalarImage(path, reader=partial(read_kit_volume, row=row, block=block, masks_folder=masks_folder))


def kit_volume_shape(block: str, masks_folder: str) -> tuple[int, int, int, int]:
    """(C, D, H, W) of the unmasked volumes of ``block``."""
    return (1, *kit_masks(masks_folder)[block].shape)


def read_kit_folds(path: str | Path, n_train_rows: int) -> dict[str, dict[str, np.ndarray]]:
    """The folds of a ``cv_splits_indices.json``: ``{fold: {part: row numbers}}``, in the file's order.

    Row numbers count the rows of the kit's ``data/train.tsv`` (the cohort's ``train`` rows, in
    table order), of which there are ``n_train_rows``. Raises :class:`CohortError` naming the
    file, the fold and the part when the file is not that layout: a missing or empty part, a
    value that is not a row number below ``n_train_rows``, a row twice in one fold.
    """
    path = Path(path).expanduser()
    expected = (
        f'expected {{"fold0": {{"train": [...], "internal_test": [...], "external_test": [...]}}, ...}} '
        f"with row numbers 0..{n_train_rows - 1} of the {n_train_rows} train rows"
    )
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise CohortError(f"{path}: folds file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CohortError(f"{path}: cannot be read as JSON ({exc}); {expected}") from None
    if not isinstance(content, dict) or not content or not all(isinstance(fold, dict) for fold in content.values()):
        raise CohortError(f"{path}: not a set of folds; {expected}")
    return {name: _fold_rows(path, name, fold, n_train_rows, expected) for name, fold in content.items()}


def _fold_rows(path: Path, name: str, fold: dict, n_train_rows: int, expected: str) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    for part in FOLD_PARTS:
        values = fold.get(part)
        if not isinstance(values, list) or not values:
            problem = "missing" if values is None else "empty" if values == [] else "not a list"
            raise CohortError(f"{path}: {name}.{part} is {problem}; {expected}")
        wrong = next(
            (
                value
                for value in values
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_train_rows
            ),
            None,
        )
        if wrong is not None:
            raise CohortError(f"{path}: {name}.{part} holds {json.dumps(wrong)}; {expected}")
        unique, counts = np.unique(values, return_counts=True)
        repeated = seen.intersection(values) | set(unique[counts > 1].tolist())
        if repeated:
            raise CohortError(
                f"{path}: row {min(repeated)} is twice in {name} (in {part}); "
                "expected each row in at most one part of a fold"
            )
        seen.update(values)
        rows[part] = np.asarray(values, dtype=np.int64)
    return rows
