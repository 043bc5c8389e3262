"""Cohorts: a folder of NIfTI volumes plus a BIDS-like participants table.

The table (``participants.tsv`` or ``participants.csv``) has one row per scan with the
columns ``participant_id``, ``age``, ``site`` and optionally ``sex``, ``diagnosis``,
``split`` (``train``, ``internal_test``, ``external_test``) and ``path`` (volume file,
relative to the cohort folder). Without ``path``, the volume is found as
``<participant_id>_*.nii[.gz]`` (or ``<participant_id>.nii[.gz]``) in the folder, its
``<participant_id>/anat`` or ``<participant_id>`` sub-folder, or a single BIDS session
``<participant_id>/ses-*/anat``; of several, the ``*_T1w`` one.
A ``path`` ending in ``.npy`` is a NumPy array read memory-mapped, with the optional
``array_row`` column giving the subject's row in a stacked array (see ``data.arrays``;
``medssl data cache`` writes such cohorts). A folder holding OpenBHB as downloaded
(``train/``, ``val/``... see ``data.openbhb``) or the OpenBHB challenge kit (``data/train.npy``...
see ``data.openbhb_kit``) is recognised and read the same way.

Validation happens once, on load, so that a long run never fails at hour three on a
missing file: every error names the file, the column or the participant and says what
was expected. Volume headers are checked (readable, 3-D) without reading voxel data;
voxels are read lazily, one subject at a time, when a dataset item is requested.

Example:
    >>> cohort = load_cohort("/data/openbhb_subset")
    >>> train = cohort.subset("train")
    >>> subjects = train.subjects()          # torchio.Subject list, images not yet loaded
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torchio as tio
from nibabel.arrayproxy import ArrayProxy
from nibabel.spatialimages import SpatialImage

from medssl.data.arrays import ARRAY_ROW_COLUMN, array_image, check_array_volume, is_array_path, row_or_none
from medssl.data.openbhb import is_openbhb_folder, openbhb_table
from medssl.data.openbhb_kit import (
    KIT_BLOCK_COLUMN,
    KIT_MASKS_COLUMN,
    is_kit_folder,
    kit_image,
    kit_table,
    kit_volume_shape,
)
from medssl.errors import CohortError

REQUIRED_COLUMNS = ("participant_id", "age", "site")  # sex is optional: only a probe target
SPLITS = ("train", "internal_test", "external_test")
TABLE_NAMES = ("participants.tsv", "participants.csv")
VOLUME_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Cohort:
    """A validated participants table whose ``path`` column holds absolute volume paths."""

    root: Path
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    @property
    def sites(self) -> list[str]:
        return sorted(self.table["site"].unique())

    def subset(self, *splits: str) -> Cohort:
        """Rows whose ``split`` is one of ``splits`` (a cohort without a split column is all ``train``)."""
        unknown = [split for split in splits if split not in SPLITS]
        if unknown:
            raise CohortError(f"unknown split {unknown[0]!r}: expected one of {', '.join(SPLITS)}")
        rows = self.table[self.table["split"].isin(splits)].reset_index(drop=True)
        return Cohort(self.root, rows)

    def head(self, n: int) -> Cohort:
        """The first ``n`` subjects, keeping every site represented where possible."""
        if n >= len(self.table):
            return self
        order = self.table.groupby("site", sort=True).cumcount().sort_values(kind="stable").index
        return Cohort(self.root, self.table.loc[order[:n]].sort_index().reset_index(drop=True))

    def stored_shape(self) -> tuple[int, int, int] | None:
        """The spatial shape every volume has on disk, when the array headers say so (``.npy``
        cohorts); None for NIfTI cohorts or mixed shapes. Lets a cached cohort skip resampling."""
        if len(self.table) == 0 or not all(is_array_path(path) for path in self.table["path"]):
            return None
        if KIT_BLOCK_COLUMN in self.table:
            shapes = {
                kit_volume_shape(block, masks)[1:]
                for block, masks in zip(self.table[KIT_BLOCK_COLUMN], self.table[KIT_MASKS_COLUMN])
            }
            return shapes.pop() if len(shapes) == 1 else None
        rows = self.table[ARRAY_ROW_COLUMN] if ARRAY_ROW_COLUMN in self.table else [None] * len(self.table)
        shapes = {
            check_array_volume(path, row_or_none(row), pid)[1:]
            for pid, path, row in zip(self.table["participant_id"], self.table["path"], rows)
        }
        return shapes.pop() if len(shapes) == 1 else None

    def subjects(self, keep_float16: bool = False) -> list[tio.Subject]:
        """One ``torchio.Subject`` per row: the volume under ``image`` (lazy) plus every column.

        Volumes are read as float32, except with ``keep_float16`` those of a float16 array (a
        float16 ``medssl data cache``), read as stored for a cast on the training device.
        """
        subjects = []
        for row in self.table.itertuples(index=False):
            fields = row._asdict()
            path, array_row = fields.pop("path"), row_or_none(fields.pop(ARRAY_ROW_COLUMN, None))
            kit_block, kit_masks = fields.pop(KIT_BLOCK_COLUMN, None), fields.pop(KIT_MASKS_COLUMN, None)
            if isinstance(kit_block, str):
                if array_row is None:
                    raise CohortError(
                        f"{path}: a challenge-kit row of participant {fields.get('participant_id')} has no {ARRAY_ROW_COLUMN}"
                    )
                image = kit_image(path, array_row, kit_block, kit_masks)
            elif is_array_path(path):
                image = array_image(path, array_row, keep_float16=keep_float16)
            else:
                image = tio.ScalarImage(
                    path, reader=partial(read_nifti_volume, participant_id=str(fields["participant_id"]))
                )
            subjects.append(tio.Subject(image=image, **fields))
        return subjects


def find_table(root: Path) -> Path:
    found = [root / name for name in TABLE_NAMES if (root / name).is_file()]
    if len(found) > 1:
        raise CohortError(
            f"{root}: both {' and '.join(path.name for path in found)}; keep the one that describes the cohort"
        )
    if not found:
        raise CohortError(f"{root}: no participants table (expected one of {', '.join(TABLE_NAMES)})")
    return found[0]


def read_table(path: Path) -> pd.DataFrame:
    separator = "\t" if path.suffix == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=separator, dtype={"participant_id": str, "site": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CohortError(
            f"{path}: cannot be read as a {'TSV' if separator == chr(9) else 'CSV'} table ({exc})"
        ) from None


def _find_volume(root: Path, participant_id: str) -> Path | None:
    """``<participant_id>.nii[.gz]`` or ``<participant_id>_*.nii[.gz]`` (BIDS entities follow the
    id after ``_``: ``sub-1`` is not ``sub-10``) in the first of the folder, ``<participant_id>/anat``
    and ``<participant_id>/`` that has one, else in the BIDS sessions ``<participant_id>/ses-*/anat``;
    of several, the one ``*_T1w``, else refused."""
    for folder in (root, root / participant_id / "anat", root / participant_id):
        found = _volumes_in(folder, participant_id)
        if found:
            return _the_only_volume(found, folder, participant_id)
    sessions = sorted((root / participant_id).glob("ses-*/anat")) if (root / participant_id).is_dir() else []
    found = [path for folder in sessions for path in _volumes_in(folder, participant_id)]
    return _the_only_volume(found, root / participant_id, participant_id) if found else None


def _volumes_in(folder: Path, participant_id: str) -> list[Path]:
    """The participant's volumes in ``folder``: only the ``*_T1w`` ones when some are."""
    if not folder.is_dir():
        return []
    found = sorted(
        path
        for suffix in VOLUME_SUFFIXES
        for path in (*folder.glob(f"{participant_id}_*{suffix}"), folder / f"{participant_id}{suffix}")
        if path.is_file()
    )
    return [path for path in found if path.name.endswith(("_T1w.nii.gz", "_T1w.nii"))] or found


def _the_only_volume(found: list[Path], folder: Path, participant_id: str) -> Path:
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(folder)) for path in found)
        raise CohortError(
            f"{folder}: participant {participant_id}: several volumes ({names}); "
            "name the one to use in a 'path' column of the participants table"
        )
    return found[0]


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def check_volume(path: Path, participant_id: str) -> tuple[int, ...]:
    """Read the NIfTI header only; return the spatial shape or raise a :class:`CohortError`.

    An uncompressed ``.nii`` shorter than its header announces is refused here, at no cost;
    a truncated ``.nii.gz`` can only be told by decompressing it, which
    :func:`read_nifti_volume` does when the volume is used."""
    try:
        image = cast(SpatialImage, nib.load(str(path)))
        shape = tuple(int(size) for size in image.shape)
        needed = int(cast(ArrayProxy, image.dataobj).offset) + int(np.prod(shape)) * image.get_data_dtype().itemsize
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CohortError(
            f"{path}: unreadable or corrupt NIfTI for participant {participant_id} ({_first_line(exc)})"
        ) from None
    spatial = tuple(size for size in shape[3:] if size != 1)
    if len(shape) < 3 or spatial:
        raise CohortError(f"{path}: expected a 3-D volume for participant {participant_id}, got shape {shape}")
    size = path.stat().st_size
    if str(path).endswith(".nii") and size < needed:
        raise CohortError(
            f"{path}: truncated NIfTI for participant {participant_id}: {size} bytes on disk, "
            f"its header describes {needed}"
        )
    return shape[:3]


def read_nifti_volume(path: str | Path, participant_id: str) -> tuple[torch.Tensor, np.ndarray]:
    """(float32 tensor (D, H, W), affine) of one NIfTI volume; a TorchIO ``reader``.

    Replaces TorchIO's default reader, SimpleITK, which fills the missing part of a truncated
    ``.nii.gz`` with zeros and returns it without a word; nibabel raises, and the error names
    the participant."""
    try:
        image = cast(SpatialImage, nib.load(str(path), mmap=False))
        data = image.get_fdata(dtype=np.float32)
    except Exception as exc:  # EOFError for a cut gzip stream, OSError for a short .nii, zlib.error...
        raise CohortError(
            f"{path}: participant {participant_id}: truncated or corrupt NIfTI ({_first_line(exc)})"
        ) from None
    # nibabel returns Fortran order; C order makes every later copy and transform several times faster
    return torch.from_numpy(np.ascontiguousarray(data.reshape(data.shape[:3]))), image.affine


def _plain(value):
    """A numpy scalar as the Python value it holds: messages say ``nan``, not ``np.float64(nan)``."""
    return value.item() if isinstance(value, np.generic) else value


def check_same_shape(cohort: Cohort) -> None:
    """Refuse volumes of different shapes, which could not be batched, naming the first odd one out."""
    first = None
    for participant_id, path in zip(cohort.table["participant_id"], cohort.table["path"]):
        if is_array_path(path):
            continue  # arrays of one cache share one shape
        shape = check_volume(Path(path), participant_id)
        if first is None:
            first = (path, shape)
        elif shape != first[1]:
            raise CohortError(
                f"{path}: participant {participant_id}: volume of shape {shape}, unlike {Path(first[0]).name} "
                f"{first[1]}; set data.volume_shape (e.g. data.volume_shape=[{', '.join(map(str, first[1]))}]) "
                "to resample every volume to one shape"
            )


def _site_spelling_key(site: str) -> str:
    text = site.strip()
    try:
        return repr(float(text))
    except ValueError:
        return text


def _check_sites_written_one_way(sites: pd.Series, source: str | Path) -> None:
    """Refuse one site written two ways ('1' and '01', '3' and ' 3'): read as two sites, it would
    add a class to the site probe and split the site's subjects between them."""
    first_spelling: dict[str, tuple[str, int]] = {}
    for line, site in enumerate(sites, start=2):
        earlier = first_spelling.setdefault(_site_spelling_key(site), (site, line))
        if earlier[0] != site:
            raise CohortError(
                f"{source}: column 'site' writes one site two ways, {site!r} (line {line}) and "
                f"{earlier[0]!r} (line {earlier[1]}); write each site one way"
            )


def validate_table(table: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Check columns and values; return a cleaned copy (types normalised, ``split`` filled)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        other_separator = any(";" in str(column) or "\t" in str(column) for column in table.columns)
        hint = "; the header looks separated by another character than the file name's (.csv: commas, .tsv: tabs)"
        raise CohortError(
            f"{source}: missing column '{missing[0]}' (required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(map(str, table.columns))})"
            + (hint if other_separator else "")
        )
    table = table.copy()
    for column in [column for column in ("participant_id", "sex", "site") if column in table.columns]:
        blank = table[column].isna()
        if blank.any():
            index = int(np.argmax(blank.to_numpy()))
            who = "" if column == "participant_id" else f"participant {table['participant_id'].iloc[index]}: "
            raise CohortError(f"{source}: {who}column '{column}' is empty (line {index + 2} of the table)")
        table[column] = table[column].astype(str)
    _check_sites_written_one_way(table["site"], source)
    duplicated = table["participant_id"].duplicated()
    if duplicated.any():
        raise CohortError(f"{source}: duplicate participant_id '{table['participant_id'][duplicated].iloc[0]}'")
    age = pd.to_numeric(table["age"], errors="coerce")
    bad_age = age.isna() | (age < 0) | ~np.isfinite(age.fillna(0))
    if bad_age.any():
        index = int(np.argmax(bad_age.to_numpy()))
        row = table.iloc[index]
        problem = (
            f"is missing (empty, n/a or NA; line {index + 2} of the table)"
            if pd.isna(row["age"])
            else f"{_plain(row['age'])!r} is not a non-negative number (line {index + 2} of the table)"
        )
        raise CohortError(f"{source}: participant {row['participant_id']}: age {problem}")
    table["age"] = age.astype(float)
    if "split" not in table.columns:
        table["split"] = "train"
    table["split"] = table["split"].astype(str)
    unknown = ~table["split"].isin(SPLITS)
    if unknown.any():
        row = table[unknown].iloc[0]
        raise CohortError(
            f"{source}: participant {row['participant_id']}: split {_plain(row['split'])!r} is not one of {', '.join(SPLITS)}"
        )
    if "diagnosis" in table.columns:
        table["diagnosis"] = table["diagnosis"].astype(str)
    return table


def load_cohort(
    root: str | Path,
    check_headers: bool = True,
    openbhb_modality: str = "quasiraw",
    openbhb_masks: str | Path | None = None,
) -> Cohort:
    """Load and validate the cohort in ``root``; raise :class:`CohortError` on the first problem.

    ``openbhb_modality`` (quasiraw or vbm) picks the volumes of an OpenBHB download or of the
    challenge kit, whose masks are in ``openbhb_masks`` (None: the kit's root).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "is a file, not a cohort folder" if root.exists() else "cohort folder does not exist"
        raise CohortError(f"{root}: {what}")
    if is_kit_folder(root):
        table, kit_source = kit_table(root, modality=openbhb_modality, masks=openbhb_masks)  # rows checked there
        return Cohort(root, validate_table(table, kit_source).reset_index(drop=True))
    if is_openbhb_folder(root):
        table, openbhb_source = openbhb_table(root, modality=openbhb_modality)  # paths checked there
        return Cohort(root, validate_table(table, openbhb_source).reset_index(drop=True))
    source = find_table(root)
    table = validate_table(read_table(source), source)
    rows = table[ARRAY_ROW_COLUMN] if ARRAY_ROW_COLUMN in table else [None] * len(table)
    paths = []
    for participant_id, relative, array_row in zip(
        table["participant_id"], table["path"] if "path" in table else [None] * len(table), rows
    ):
        if isinstance(relative, str) and relative:
            path = (root / relative) if not Path(relative).is_absolute() else Path(relative)
            if not path.is_file():
                raise CohortError(f"{source}: participant {participant_id}: volume file {path} does not exist")
        else:
            found = _find_volume(root, participant_id)
            if found is None:
                raise CohortError(
                    f"{root}: no volume found for participant {participant_id} (expected {participant_id}_*.nii[.gz] "
                    f"in the folder, in {participant_id}/anat/, {participant_id}/ or {participant_id}/ses-*/anat/, or a 'path' column)"
                )
            path = found
        if is_array_path(path):
            check_array_volume(path, row_or_none(array_row), participant_id)
        elif check_headers:
            check_volume(path, participant_id)
        paths.append(str(path))
    table["path"] = paths
    return Cohort(root, table.reset_index(drop=True))
