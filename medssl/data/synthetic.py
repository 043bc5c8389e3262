"""The embedded synthetic cohort: multi-site T1-weighted brain MRI that needs no download.

Every recipe runs end-to-end on this cohort. It behaves like a small OpenBHB-style
multi-site cohort: subjects differ in anatomy, age changes the brain in the ways
brain-age models rely on, each site (scanner) leaves a learnable signature, and some
sites are held out as an external test set. All of it follows from one seed.

Generative model
----------------
This module draws the cohort's table (sites, ages, sexes, splits, diagnoses) and writes the
cohort; each site's scanner is drawn in :mod:`medssl.data.scanners`, each subject's anatomy
from the MNI152 template in :mod:`medssl.data.anatomy`, and patients differ from controls as
their disorder model says (:mod:`medssl.data.disorders`). Each module's docstring describes
its part of the model.

Cohort (one random stream). Site sizes follow Dirichlet(3) proportions (at least two
subjects per site). Ages follow an OpenBHB-like, young-skewed mixture: children
U(8, 18), young adults 18 + Gamma(2, 4 years), adults U(30, 88), elderly N(70, 8),
with weights 0.2 / 0.45 / 0.2 / 0.15 that vary mildly across sites (Dirichlet with
concentration 20); ages are clipped to [8, 88] years. Sex is "M" with a site-specific
probability in U(0.4, 0.6). The last ``external_sites`` sites form ``external_test``;
in every other site about 20 % of the subjects, spread over its age range, form
``internal_test``, the rest ``train``. With ``diagnosis``, half of each site (rounded
at random) are patients; with a brain-age gap in the disorder model, each patient's gap
is drawn last, so the rest of the table is that of every other model.

Example:
    >>> from medssl.data.synthetic import synthesize_cohort
    >>> folder = synthesize_cohort("/tmp/cohort", subjects=16, sites=4, external_sites=1, shape=16)
    >>> sorted(path.name for path in folder.iterdir())[:2]
    ['cohort.json', 'participants.tsv']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd

from medssl.data.anatomy import FIELD_OF_VIEW_MM, output_grid
from medssl.data.disorders import DISORDER_MODELS, DisorderModel, diagnosis_effect, disorder_model
from medssl.data.scanners import Scanner, draw_scanners, render_subject, site_bias_field
from medssl.errors import RecipeError

if TYPE_CHECKING:
    from medssl.config import SyntheticCohortConfig

GENERATOR_VERSION = 2
MARKER_NAME = "cohort.json"
TABLE_NAME = "participants.tsv"
INTERNAL_TEST_FRACTION = 0.2
STALE_TEMPORARY_S = 3600.0


# ----------------------------------------------------------------------------- demographics
def _draw_ages(rng: np.random.Generator, weights: np.ndarray, count: int) -> np.ndarray:
    component = rng.choice(len(weights), size=count, p=weights / weights.sum())
    candidates = np.stack(
        [
            rng.uniform(8.0, 18.0, count),
            18.0 + rng.gamma(2.0, 4.0, count),
            rng.uniform(30.0, 88.0, count),
            rng.normal(70.0, 8.0, count),
        ]
    )
    return np.round(np.clip(candidates[component, np.arange(count)], 8.0, 88.0), 2)


def _site_sizes(rng: np.random.Generator, subjects: int, sites: int) -> np.ndarray:
    floor = min(4, subjects // sites)
    proportions = rng.dirichlet(np.full(sites, 3.0))
    return floor + rng.multinomial(subjects - floor * sites, proportions)


def _assign_splits(rng: np.random.Generator, site: np.ndarray, age: np.ndarray, external: set[int]) -> np.ndarray:
    split = np.full(len(site), "train", dtype=object)
    for index in np.unique(site):
        members = np.flatnonzero(site == index)
        if index in external:
            split[members] = "external_test"
            continue
        n_test = max(1, round(INTERNAL_TEST_FRACTION * len(members))) if len(members) >= 3 else 0
        if n_test == 0:
            continue
        by_age = members[np.argsort(age[members], kind="stable")]
        # One test subject from each of n_test age strata of the site.
        picks = [rng.choice(stratum) for stratum in np.array_split(by_age, n_test)]
        split[picks] = "internal_test"
    return split


def _assign_diagnosis(rng: np.random.Generator, site: np.ndarray) -> np.ndarray:
    diagnosis = np.empty(len(site), dtype=object)
    for index in np.unique(site):
        members = rng.permutation(np.flatnonzero(site == index))
        n_patients = len(members) // 2 + (len(members) % 2) * int(rng.integers(2))
        diagnosis[members[:n_patients]] = "patient"
        diagnosis[members[n_patients:]] = "control"
    return diagnosis


def _demographics(
    rng: np.random.Generator,
    scanners: list[Scanner],
    subjects: int,
    external_sites: int,
    diagnosis: bool,
    brain_age_gap: tuple[float, float] | None = None,
) -> pd.DataFrame:
    sites = len(scanners)
    site = rng.permutation(np.repeat(np.arange(sites), _site_sizes(rng, subjects, sites)))
    age = np.empty(subjects)
    male = np.empty(subjects, dtype=bool)
    for index, scanner in enumerate(scanners):
        members = np.flatnonzero(site == index)
        age[members] = _draw_ages(rng, np.asarray(scanner.age_weights), len(members))
        male[members] = rng.random(len(members)) < scanner.male_fraction
    external = set(range(sites - external_sites, sites))
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:04d}" for i in range(subjects)],
            "age": age,
            "sex": np.where(male, "M", "F"),
            "site": [f"site-{s:02d}" for s in site],
            "split": _assign_splits(rng, site, age, external),
            "path": [f"sub-{i:04d}_T1w.nii.gz" for i in range(subjects)],
        }
    )
    if diagnosis:
        table["diagnosis"] = _assign_diagnosis(rng, site)
        if brain_age_gap is not None:  # drawn last: the table above is every model's
            patients = (table["diagnosis"] == "patient").to_numpy()
            gap = np.zeros(subjects)
            gap[patients] = np.round(rng.uniform(*brain_age_gap, size=int(patients.sum())), 2)
            table["brain_age_gap"] = gap
    table["site_index"] = site
    return table


# ----------------------------------------------------------------------------- cohort
def recipe_key(name: str, value: int) -> str:
    """How :func:`check_sizes` names a setting given in a recipe: ``data.synthetic.subjects=4``."""
    return f"data.synthetic.{name}={value}"


def check_sizes(
    subjects: int, sites: int, external_sites: int, shape: int, named: Callable[[str, int], str] = recipe_key
) -> None:
    """Refuse sizes no cohort can have, naming each setting as ``named(name, value)`` says: a
    recipe key by default, the command-line option for ``medssl data synth``."""
    if sites < 1:
        raise RecipeError(f"{named('sites', sites)}: expected at least 1 site")
    if subjects < 2 * sites:
        raise RecipeError(
            f"{named('subjects', subjects)}: expected at least 2 subjects per site "
            f"(>= {2 * sites} for {named('sites', sites)})"
        )
    if not 0 <= external_sites < sites:
        raise RecipeError(
            f"{named('external_sites', external_sites)}: expected 0 to {sites - 1} "
            f"(at least one internal site of {named('sites', sites)})"
        )
    if shape < 8:
        raise RecipeError(f"{named('shape', shape)}: expected at least 8 voxels")


def synthesize_cohort(
    out_dir: str | Path,
    subjects: int = 256,
    sites: int = 8,
    external_sites: int = 2,
    shape: int = 32,
    diagnosis: bool = False,
    seed: int = 0,
    progress: bool = False,
    diagnosis_model: str = "focal",
) -> Path:
    """Write a synthetic multi-site T1 cohort: ``participants.tsv``, volumes and ``cohort.json``.

    The table has ``participant_id``, ``age``, ``sex``, ``site``, ``split``, ``path`` (and
    ``diagnosis`` when asked, and ``brain_age_gap`` when the disorder model has one); each
    ``sub-XXXX_T1w.nii.gz`` is a float32 ``shape``^3 volume with an isotropic RAS affine.
    ``cohort.json``, written last, records the settings, the disorder model and its
    parameters, and every site's scanner signature. The same arguments give bit-identical files.

    Args:
        out_dir: folder to write into (created if missing).
        subjects: number of subjects (at least 2 per site).
        sites: number of sites (scanners).
        external_sites: sites whose subjects all form ``external_test`` (the last ones).
        shape: edge of the cubic volumes in voxels.
        diagnosis: add a balanced control/patient ``diagnosis``.
        seed: seed of every random draw.
        progress: show a progress bar.
        diagnosis_model: what sets patients apart, a key of :data:`DISORDER_MODELS`:
            ``focal`` (hippocampal GM loss), ``ageing`` (brain-age gap) or ``ad-like`` (both).

    Returns:
        ``out_dir`` as a ``Path``.

    Example:
        >>> folder = synthesize_cohort("/tmp/cohort", subjects=16, sites=4, external_sites=1, shape=16)
        >>> pd.read_csv(folder / "participants.tsv", sep="\\t").shape
        (16, 6)
    """
    check_sizes(subjects, sites, external_sites, shape)
    model = disorder_model(diagnosis_model, diagnosis)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort_stream, sites_stream, subjects_stream = np.random.SeedSequence(seed % 2**64).spawn(3)
    scanners = draw_scanners(np.random.default_rng(sites_stream), sites, external_sites)
    table = _demographics(
        np.random.default_rng(cohort_stream), scanners, subjects, external_sites, diagnosis, model.brain_age_gap
    )
    _write_volumes(out_dir, table, scanners, subjects_stream.spawn(subjects), shape, diagnosis, progress, model)
    table.drop(columns="site_index").to_csv(out_dir / TABLE_NAME, sep="\t", index=False)
    description = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "config": _config_dict(subjects, sites, external_sites, shape, diagnosis, seed, diagnosis_model),
        "diagnosis_effect": diagnosis_effect(diagnosis_model) if diagnosis else None,
        "voxel_size_mm": FIELD_OF_VIEW_MM / shape,
        "sites": _site_descriptions(table, scanners, external_sites),
    }
    (out_dir / MARKER_NAME).write_text(json.dumps(description, indent=2) + "\n")
    return out_dir


def _write_volumes(
    out_dir: Path,
    table: pd.DataFrame,
    scanners: list[Scanner],
    subject_streams: list[np.random.SeedSequence],
    shape: int,
    diagnosis: bool,
    progress: bool,
    model: DisorderModel = DISORDER_MODELS["focal"],
) -> None:
    """Render and save every subject's volume, each from its own random stream."""
    from rich.progress import track

    grid = output_grid(shape)
    site_bias: dict[int, np.ndarray] = {}
    rows = track(
        table.itertuples(index=False),
        total=len(table),
        disable=not progress,
        description=f"Synthesising {len(table)} brains ({shape}^3)",
    )
    for row, stream in zip(rows, subject_streams):
        scanner = scanners[row.site_index]
        if row.site_index not in site_bias:
            site_bias[row.site_index] = site_bias_field(scanner, shape)
        patient = diagnosis and row.diagnosis == "patient"
        gap = float(getattr(row, "brain_age_gap", 0.0))
        volume = render_subject(
            grid, scanner, site_bias[row.site_index], float(row.age), row.sex == "M", patient, stream, model, gap
        )
        nib.save(nib.Nifti1Image(volume, grid.affine), out_dir / row.path)


def _site_descriptions(table: pd.DataFrame, scanners: list[Scanner], external_sites: int) -> list[dict]:
    """Each site's name, role, size and scanner signature, for ``cohort.json``."""
    return [
        {
            "site": f"site-{index:02d}",
            "external": index >= len(scanners) - external_sites,
            "subjects": int((table["site_index"] == index).sum()),
            **{key: value for key, value in asdict(scanner).items() if key != "bias_pattern"},
        }
        for index, scanner in enumerate(scanners)
    ]


def _config_dict(
    subjects: int,
    sites: int,
    external_sites: int,
    shape: int,
    diagnosis: bool,
    seed: int,
    diagnosis_model: str = "focal",
) -> dict:
    return {
        "subjects": subjects,
        "sites": sites,
        "external_sites": external_sites,
        "shape": shape,
        "diagnosis": bool(diagnosis),
        "seed": seed,
        "diagnosis_model": diagnosis_model,
    }


def cohort_key(config: SyntheticCohortConfig) -> str:
    """Folder name of a cached cohort, e.g. ``s256-k8-e2-n32-d0-seed0``, ``s360-k8-e2-n32-d1-ad-like-seed1``."""
    model = "" if config.diagnosis_model == "focal" else f"-{config.diagnosis_model}"
    return (
        f"s{config.subjects}-k{config.sites}-e{config.external_sites}-n{config.shape}"
        f"-d{int(config.diagnosis)}{model}-seed{config.seed}"
    )


def default_cache_dir() -> Path:
    """``$MEDSSL_CACHE`` if set, else ``~/.cache/medssl``; cohorts live under ``<cache>/synthetic/<key>``."""
    configured = os.environ.get("MEDSSL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "medssl"


def _is_complete(folder: Path, expected: dict) -> bool:
    try:
        description = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    effect = diagnosis_effect(expected["diagnosis_model"]) if expected.get("diagnosis") else None
    return (
        description.get("version") == GENERATOR_VERSION
        and description.get("config") == expected
        and description.get("diagnosis_effect") == effect
        and (folder / TABLE_NAME).is_file()
    )


def _remove_stale_temporaries(parent: Path, key: str) -> None:
    """Delete what generations killed long ago left behind (recent ones may still be running)."""
    for leftover in parent.glob(f".{key}.*"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_TEMPORARY_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _discard(folder: Path) -> None:
    """Move ``folder`` aside, then delete it (another process may be discarding it too)."""
    graveyard = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.replace(folder, graveyard / folder.name)
    except FileNotFoundError:
        pass
    shutil.rmtree(graveyard, ignore_errors=True)


def embedded_cohort(config: SyntheticCohortConfig, cache_dir: str | Path | None = None, progress: bool = False) -> Path:
    """The folder of the cached synthetic cohort of ``config``, generated on first use.

    Generation writes into a temporary folder beside the cache entry and renames it into
    place, so a killed generation never leaves a half cohort, and concurrent processes
    (e.g. distributed ranks) end up sharing one complete folder. A folder from another
    generator version is regenerated.

    Example:
        >>> from medssl.config import SyntheticCohortConfig
        >>> folder = embedded_cohort(SyntheticCohortConfig(subjects=16, sites=4, external_sites=1, shape=16))
        >>> folder.name
        's16-k4-e1-n16-d0-seed0'
    """
    key = cohort_key(config)
    parent = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    parent = parent / "synthetic"
    folder = parent / key
    expected = _config_dict(
        config.subjects,
        config.sites,
        config.external_sites,
        config.shape,
        config.diagnosis,
        config.seed,
        config.diagnosis_model,
    )
    if _is_complete(folder, expected):
        return folder

    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(parent, key)
    temporary = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any folder
    try:
        synthesize_cohort(temporary, progress=progress, **expected)
        if folder.exists() and not _is_complete(folder, expected):
            _discard(folder)
        try:
            os.rename(temporary, folder)
        except OSError:
            if not _is_complete(folder, expected):  # another process won the race with a complete cohort
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder
