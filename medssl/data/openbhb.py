"""OpenBHB as users download it: a participants table and ``.npy`` arrays, read memory-mapped.

OpenBHB (Dufumier et al., NeuroImage 2022) ships each scan preprocessed as NumPy arrays:
``quasiraw`` (skull-stripped, bias-corrected, affinely registered to MNI152 at 1 mm,
1x182x218x182) and ``vbm`` (CAT12 grey-matter density at 1.5 mm, 1x121x145x121). Both
distributions are recognised, found from ``data.root``:

- Hugging Face (``benoit-dufumier/openBHB``)::

      participants.tsv                       participant_id, age, sex, site, siteXacq, split, ...
      train/derivatives/sub-<id>/ses-1/sub-<id>_preproc-quasiraw_T1w.npy
      val/derivatives/sub-<id>/ses-1/sub-<id>_preproc-cat12vbm_desc-gm_T1w.npy

- IEEE DataPort zips (``train.zip``, ``val.zip`` unpacked)::

      train/train_labels/participants.tsv    val/val_labels/participants.tsv
      train/train_quasiraw/sub-<id>_preproc-quasiraw_T1w.npy
      val/val_vbm/sub-<id>_preproc-cat12vbm_desc-gm_T1w.npy

  (``train_labels/``, ``train_quasiraw/``... may also sit directly in ``data.root``).

Instead of one file per subject, a split's volumes may be **stacked** in one array of shape
(N, 1, D, H, W) whose rows follow the table's rows of that split, in table order:
``<group>_<modality>.npy`` with ``<group>`` one of ``train``, ``val`` (every internal and
external test row), ``internal_test`` or ``external_test``, searched in ``data.root``,
``data.root/<group>/`` and ``data.root/<group>_<modality>/`` (where the only ``.npy``
file of that folder is also taken).

The table becomes a medssl cohort table: ``site`` is OpenBHB's ``siteXacq`` when present
(site x acquisition setting: the 64 training "sites" of the challenge; the original
``site`` column is kept as ``site_name``); a table without ``split`` is ``train`` for the
train part, and for the validation part ``internal_test`` when the site occurs in
training, else ``external_test`` (the challenge's definition). When no volume at all of
the train or validation part is present (e.g. only ``train.zip`` was downloaded), its
rows are dropped with a warning; any other missing volume is an error naming the file.

Example:
    >>> table, source = openbhb_table("/data/openbhb", modality="quasiraw")
    >>> table[["participant_id", "split", "path", "array_row"]].head(2)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.arrays import ARRAY_ROW_COLUMN, open_array, volume_shape
from medssl.errors import CohortError

TEST_SPLITS = ("internal_test", "external_test")


@dataclass(frozen=True)
class OpenBHBModality:
    """How one of OpenBHB's preprocessings is named and shaped."""

    suffix: str  # file name after "sub-<id>_"
    shape: tuple[int, int, int]


MODALITIES = {
    "quasiraw": OpenBHBModality("preproc-quasiraw_T1w.npy", (182, 218, 182)),
    "vbm": OpenBHBModality("preproc-cat12vbm_desc-gm_T1w.npy", (121, 145, 121)),
}
PART_OF_SPLIT = {"train": "train", "internal_test": "val", "external_test": "val"}


def is_openbhb_folder(root: str | Path) -> bool:
    """Whether ``root`` looks like an OpenBHB download (train/val parts, labels or .npy volumes).

    A participants table with a ``path`` column names its volumes itself (NIfTI cohorts,
    ``medssl data cache`` folders): such a folder is never read as OpenBHB.
    """
    root = Path(root)
    for name in ("participants.tsv", "participants.csv"):
        if (root / name).is_file():
            with (root / name).open() as stream:
                header = stream.readline().rstrip("\r\n")
            if "path" in [column.strip('"') for column in header.split("\t" if name.endswith(".tsv") else ",")]:
                return False
    markers = ["train", "val", "train_labels", "val_labels"] + [
        f"{part}_{name}" for part in ("train", "val") for name in MODALITIES
    ]
    if any((root / marker).is_dir() for marker in markers):
        return True
    return any(root.glob("*_quasiraw.npy")) or any(root.glob("*_vbm.npy")) or any(root.glob("sub-*_preproc-*.npy"))


def _read(path: Path) -> pd.DataFrame:
    separator = "\t" if path.suffix == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=separator, dtype={"participant_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CohortError(f"{path}: cannot be read as a participants table ({exc})") from None


def _find_tables(root: Path) -> list[tuple[str | None, Path]]:
    """(part, table) pairs: one table for the whole cohort (part None) or one per part."""
    for name in ("participants.tsv", "participants.csv"):
        if (root / name).is_file():
            return [(None, root / name)]
    tables: list[tuple[str | None, Path]] = []
    for part in ("train", "val"):
        for folder in (root / part / f"{part}_labels", root / f"{part}_labels", root / part):
            found = [folder / name for name in ("participants.tsv", "participants.csv") if (folder / name).is_file()]
            if found:
                tables.append((part, found[0]))
                break
    if not tables:
        raise CohortError(
            f"{root}: no OpenBHB participants table (expected participants.tsv, "
            f"or train/train_labels/participants.tsv and val/val_labels/participants.tsv)"
        )
    return tables


def bare_id(participant_id: str) -> str:
    text = str(participant_id)
    text = text[4:] if text.startswith("sub-") else text
    return text[:-2] if text.endswith(".0") else text  # ids read as floats by other tools


def _assign_splits(table: pd.DataFrame, parts: pd.Series, source: str) -> pd.Series:
    """OpenBHB's split, or the challenge's definition when the table has none."""
    if "split" in table.columns and table["split"].notna().all():
        return table["split"].astype(str)
    if parts.isna().any():
        raise CohortError(
            f"{source}: no 'split' column; expected split = train, internal_test or external_test per participant"
        )
    train_sites = set(table.loc[parts == "train", "site"])
    internal = table["site"].isin(train_sites)
    return pd.Series(
        np.where(parts == "train", "train", np.where(internal, "internal_test", "external_test")), index=table.index
    )


def read_participants(root: Path) -> tuple[pd.DataFrame, str]:
    """The participants table(s) merged, with medssl's ``site`` and ``split`` columns."""
    pieces, parts = [], []
    tables = _find_tables(root)
    for part, path in tables:
        table = _read(path)
        pieces.append(table)
        parts.append(pd.Series([part] * len(table), dtype=object))
    table = pd.concat(pieces, ignore_index=True)
    part = pd.concat(parts, ignore_index=True)
    source = " + ".join(str(path) for _, path in tables)
    if "participant_id" not in table.columns:
        raise CohortError(f"{source}: missing column 'participant_id' (found: {', '.join(map(str, table.columns))})")
    if "siteXacq" in table.columns:
        if "site" in table.columns:
            table = table.rename(columns={"site": "site_name"})
        table["site"] = table["siteXacq"]
    if "site" in table.columns:
        # 12.0 and 12 are the same site; read as text by the cohort layer.
        table["site"] = table["site"].map(lambda value: bare_id(value) if pd.notna(value) else value)
        table["split"] = _assign_splits(table, part, source)
    table["participant_id"] = table["participant_id"].map(bare_id)
    return table, source


def _index_subject_files(root: Path, suffix: str) -> dict[str, Path]:
    """participant id -> file, for every ``sub-<id>_<suffix>`` below ``root``."""
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith("sub-") and name.endswith("_" + suffix):
                found.setdefault(name[4 : -len(suffix) - 1], Path(folder) / name)
    return found


def _find_stacked(root: Path, group: str, modality: str) -> Path | None:
    name = f"{group}_{modality}.npy"
    for folder in (root, root / group, root / f"{group}_{modality}"):
        if (folder / name).is_file():
            return folder / name
    folder = root / f"{group}_{modality}"
    arrays = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if len(arrays) == 1 and not arrays[0].name.startswith("sub-"):
        return arrays[0]
    return None


def _stacked_paths(root: Path, table: pd.DataFrame, modality: str, source: str) -> tuple[list, list] | None:
    """Paths and rows from stacked per-split arrays, or None when there are none."""
    groups = [
        ("train", ("train",)),
        ("val", TEST_SPLITS),
        ("internal_test", ("internal_test",)),
        ("external_test", ("external_test",)),
    ]
    paths: list = [None] * len(table)
    rows: list = [np.nan] * len(table)
    any_found = False
    for group, splits in groups:
        array_path = _find_stacked(root, group, modality)
        if array_path is None:
            continue
        members = np.flatnonzero(table["split"].isin(splits).to_numpy())
        if any(paths[i] is not None for i in members):
            continue  # val_* already covered these rows
        any_found = True
        array = open_array(array_path)
        if array.shape[0] != len(members):
            raise CohortError(
                f"{array_path}: holds {array.shape[0]} volumes (shape {tuple(array.shape)}) but {source} "
                f"lists {len(members)} participants with split {' or '.join(splits)}; expected one volume "
                f"per row, in table order"
            )
        volume_shape(array.shape, 0, array_path)
        for row, index in enumerate(members):
            paths[index], rows[index] = str(array_path), row
    return (paths, rows) if any_found else None


def openbhb_table(root: str | Path, modality: str = "quasiraw") -> tuple[pd.DataFrame, str]:
    """The OpenBHB download in ``root`` as a cohort table with absolute ``path`` and ``array_row``.

    Every volume's array header is read (not its voxels) and checked: one 3-D volume per
    participant, all of the same shape. Raises :class:`CohortError` naming the file and
    what was expected.
    """
    if modality not in MODALITIES:
        raise CohortError(f"data.openbhb_modality = {modality!r}: expected one of {', '.join(MODALITIES)}")
    root = Path(root).expanduser().resolve()
    table, source = read_participants(root)
    if "split" not in table.columns:
        raise CohortError(
            f"{source}: missing column 'site' (or 'siteXacq'), needed to tell internal from external test sites"
        )
    stacked = _stacked_paths(root, table, modality, source)
    if stacked is not None:
        paths, rows = stacked
        missing = [i for i, path in enumerate(paths) if path is None]
        if missing:
            split = table["split"].iloc[missing[0]]
            raise CohortError(
                f"{root}: no stacked {modality} array for the {len(missing)} "
                f"participant{'s' if len(missing) != 1 else ''} with split {split} "
                f"(expected {split}_{modality}.npy or {PART_OF_SPLIT[split]}_{modality}.npy)"
            )
    else:
        spec = MODALITIES[modality]
        found = table["participant_id"].map(_index_subject_files(root, spec.suffix))
        if found.isna().all():
            raise CohortError(f"{root}: no {modality} volume found (expected files named sub-<id>_{spec.suffix})")
        parts = table["split"].map(PART_OF_SPLIT)
        keep = pd.Series(True, index=table.index)
        for part in ("train", "val"):
            in_part = parts == part
            if in_part.any() and found[in_part].isna().all():
                warnings.warn(
                    f"{root}: no {modality} volume of OpenBHB's {part} part is present; "
                    f"its {int(in_part.sum())} participant{'s are' if in_part.sum() != 1 else ' is'} left out",
                    stacklevel=2,
                )
                keep &= ~in_part
        table, found = table[keep], found[keep]
        if found.isna().any():
            first = table[found.isna()].iloc[0]
            pid, part = first["participant_id"], PART_OF_SPLIT[first["split"]]
            raise CohortError(
                f"{root}: no {modality} volume for participant {pid} ({int(found.isna().sum())} missing in all); "
                f"expected a file sub-{pid}_{spec.suffix}, e.g. in {part}/derivatives/sub-{pid}/ses-1/ "
                f"or {part}/{part}_{modality}/"
            )
        paths = [str(path) for path in found]
        rows = [np.nan] * len(table)
    table = table.reset_index(drop=True)
    table["path"] = paths
    table[ARRAY_ROW_COLUMN] = rows
    check_shapes(table)
    return table, source


def check_shapes(table: pd.DataFrame) -> tuple[int, int, int, int]:
    """Every volume is 3-D and all have the first one's shape; return it as (C, D, H, W)."""
    expected = None
    for participant_id, path, row in zip(table["participant_id"], table["path"], table[ARRAY_ROW_COLUMN]):
        array = open_array(path)
        row = None if pd.isna(row) else int(row)
        shape = volume_shape(array.shape, row, path)
        if expected is None:
            expected, first = shape, path
        elif shape != expected:
            raise CohortError(
                f"{path}: participant {participant_id}: volume of shape {shape} (C, D, H, W), expected "
                f"{expected} like {first}"
            )
    return expected  # type: ignore[return-value]
