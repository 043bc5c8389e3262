"""The embedded synthetic cohort: multi-site T1-weighted brain MRI that needs no download.

Every recipe runs end-to-end on this cohort. It behaves like a small OpenBHB-style
multi-site cohort: subjects differ in anatomy, age changes the brain in the ways
brain-age models rely on, each site (scanner) leaves a learnable signature, and some
sites are held out as an external test set. All of it follows from one seed.

Generative model
----------------
Anatomy. Grey-matter (GM) and white-matter (WM) probability maps and the brain mask
are those of the MNI152 template that ships inside nilearn (2 mm grid, no download).
CSF = brain mask - GM - WM; the ventricles are the two largest connected components of
CSF > 0.5 inside a central ellipsoid. Volumes cover a 192 mm cube centred on the brain,
so voxels are isotropic, 192 / ``shape`` mm (6 mm at 32, 1.5 mm at 128), in RAS order.

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

Subject (its own random stream, spawned from the seed). Three maps, composed, warp the
tissue maps (linear interpolation):

- ventricular enlargement, a radial warp about the ventricles' centre c,
  p -> c + (p - c) / (1 + e g(p)), g a Gaussian of twice the ventricles' extent, with
  e = 0.15 a + 0.35 a^2 + N(0, 0.03), a = (age - 8) / 80: the ventricles grow severalfold
  from 8 to 88 years, faster late in life;
- brain size: x1.015 for men, x0.985 for women, times a subject factor N(1, 0.02);
- individual anatomy: a smooth displacement, a cubic spline through a 5^3 grid of
  N(0, 3 mm) control vectors.

Cortical thinning then turns GM lying next to CSF into CSF (sulci widen), a fraction
r(age) = 0.002 min(age - 8, 12) + 0.003 max(age - 20, 0) of the subject's GM (0.3 % a
year after 20), times a subject factor LogNormal(0, 0.2). The T1 image is
sum_tissue p_tissue x T_tissue with T_WM = 1, T_GM = 1 - k(age) and T_CSF from the site:
grey/white contrast k(age) = 0.40 - 0.001 (age - 8) fades with age (Salat et al.,
NeuroImage 2009), times the site's contrast and a subject factor LogNormal(0, 0.03).

Disorder models (``diagnosis_model``; :data:`DISORDER_MODELS`). A patient differs from the
control with the same random stream by the model's components only:

- ``focal``: patients lose another 50 % of their GM at the peak of two Gaussian blobs
  (sd 14 mm) on the left and right hippocampi (MNI +-26, -22, -14 mm): an effect sized for
  the embedded resolution (at 32^3, 6 mm voxels, a blob spans about 5-6 voxels at half
  maximum), so that the diagnosis can be learnt from a few hundred subjects;
  :func:`diagnosis_effect_map` gives its location. ``diagnosis: true`` alone means this
  model, and its cohorts are the ones generated before the other models existed.
- ``ageing``: a brain-age gap. The patient's brain is generated as a control's ``gap``
  years older: every age-dependent part of the model above (ventricles, cortical thinning,
  grey/white contrast) is evaluated at age + gap, while the recorded age stays the
  chronological one. The gap is drawn per patient, U(6.7, 10.0) years
  (:data:`AD_BRAIN_AGE_GAP_YEARS`), from the range of the Alzheimer's-disease group means of
  the BrainAGE studies summarised by Franke & Gaser (Frontiers in Neurology 10:789, 2019):
  +6.7 years at baseline in ADNI (Franke & Gaser, GeroPsych 25:235, 2012) and +10.0 years
  (Franke et al., NeuroImage 50:883, 2010). Those studies report group means, not the
  spread of each patient's true gap apart from the estimator's error, so each patient draws
  uniformly between the two means. The same studies report smaller gaps for other
  disorders, not used by the shipped models: progressive MCI +6.2 at baseline and stable
  MCI -0.5 (Franke & Gaser 2012), schizophrenia +5.5 (Koutsouleris et al., Schizophrenia
  Bulletin 40:1140, 2014) and +3.4 (Schnack et al., American Journal of Psychiatry
  173:607, 2016). The values were fixed from these papers before any method was run on
  the cohorts, not tuned against a method's outcome. The table's ``brain_age_gap`` column
  holds each subject's gap (0 for controls); :func:`ageing_effect_map` gives the image
  change it makes.
- ``ad-like``: both, the gap and then the focal loss on the older brain.

Site (scanner) signature, applied in acquisition order: Gaussian blur (sd 0-0.6 voxel),
a multiplicative bias field exp(b B) with B a smooth site pattern (b in 0-0.1) plus a
weak subject pattern, a contrast gamma (0.85-1.15), Rician noise (sd 1-4 % of WM), an
offset (0-0.05) and a scale (0.5-2, log-uniform); GM/WM contrast x(0.85-1.15) and
T_CSF in 0.05-0.15. These are the differences that remain after the standard OpenBHB
preprocessing (bias-field correction, skull stripping, affine registration); z-scoring
then removes scale and offset. Each parameter is drawn as a Latin hypercube over the
training sites, so they span every range; external sites are drawn uniformly inside the
training sites' range of each parameter, as OpenBHB's external sites are other scanners
of the same kinds. Outside the subject's brain mask the image is 0, as in skull-stripped
data.

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
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from medssl.errors import RecipeError

if TYPE_CHECKING:
    from medssl.config import SyntheticCohortConfig

GENERATOR_VERSION = 2
FIELD_OF_VIEW_MM = 192.0
MARKER_NAME = "cohort.json"
TABLE_NAME = "participants.tsv"
INTERNAL_TEST_FRACTION = 0.2
HIPPOCAMPI_MM = ((-26.0, -22.0, -14.0), (26.0, -22.0, -14.0))
# Patients' medial-temporal grey-matter loss: large enough to be learnt at the embedded
# resolution (6 mm voxels at 32^3). A narrow ResNet-18 trained from scratch (one seed) stayed at
# chance with 40 % at sd 12 mm on 323 training subjects (internal AUC 0.52), and reached 0.94
# with 50 % at sd 14 mm on 237.
DIAGNOSIS_LOSS = 0.5
DIAGNOSIS_SD_MM = 14.0
# Brain-age gap of Alzheimer's disease, years: the range of the group means reported by the
# BrainAGE studies (Franke & Gaser 2012, +6.7; Franke et al. 2010, +10.0; module docstring).
AD_BRAIN_AGE_GAP_YEARS = (6.7, 10.0)
AGEING_MAP_AGE = 48.0  # the middle of the generator's 8-88 years
# Age mixture: children, young adults, adults, elderly.
AGE_MIXTURE_WEIGHTS = np.array([0.2, 0.45, 0.2, 0.15])
SITE_AGE_CONCENTRATION = 20.0
STALE_TEMPORARY_S = 3600.0


@dataclass(frozen=True)
class DisorderModel:
    """What sets a disorder model's patients apart from their controls (module docstring)."""

    focal_loss: bool  # the hippocampal grey-matter loss
    brain_age_gap: tuple[float, float] | None  # years, U(low, high) per patient; None: no gap


DISORDER_MODELS = {
    "focal": DisorderModel(focal_loss=True, brain_age_gap=None),
    "ageing": DisorderModel(focal_loss=False, brain_age_gap=AD_BRAIN_AGE_GAP_YEARS),
    "ad-like": DisorderModel(focal_loss=True, brain_age_gap=AD_BRAIN_AGE_GAP_YEARS),
}


# ----------------------------------------------------------------------------- template
@dataclass(frozen=True)
class _Template:
    """MNI152 tissue maps on their 2 mm grid and the landmarks the generator uses."""

    tissues: np.ndarray  # (3, X, Y, Z) float32: GM, WM, CSF
    affine: np.ndarray  # voxel -> mm
    brain_centre_mm: np.ndarray
    ventricle_centre_mm: np.ndarray
    ventricle_extent_mm: np.ndarray  # standard deviation of the ventricles along each axis


@lru_cache(maxsize=1)
def _mni_template() -> _Template:
    from nilearn import datasets  # slow import, only needed once per process

    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    mask_image = datasets.load_mni152_brain_mask(resolution=2)
    mask = mask_image.get_fdata(dtype=np.float32) > 0.5
    affine = mask_image.affine.astype(np.float64)
    gm, wm = np.clip(gm, 0, 1) * mask, np.clip(wm, 0, 1) * mask
    overlap = np.maximum(gm + wm, 1.0)
    gm, wm = gm / overlap, wm / overlap
    csf = np.clip(mask - gm - wm, 0, 1)

    voxels = np.argwhere(mask)
    bbox_centre = (voxels.min(0) + voxels.max(0)) / 2.0
    mm = _voxel_to_mm(affine, np.indices(mask.shape, dtype=np.float32))
    ventricles = _ventricle_map(csf, mm)
    weights = ventricles / ventricles.sum()
    centre = (mm * weights).sum(axis=(1, 2, 3))
    extent = np.sqrt((((mm - centre[:, None, None, None]) ** 2) * weights).sum(axis=(1, 2, 3)))
    return _Template(
        tissues=np.stack([gm, wm, csf]).astype(np.float32),
        affine=affine,
        brain_centre_mm=affine[:3, :3] @ bbox_centre + affine[:3, 3],
        ventricle_centre_mm=centre,
        ventricle_extent_mm=extent,
    )


def _voxel_to_mm(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Map (3, ...) voxel coordinates to (3, ...) mm coordinates."""
    return np.einsum("ij,j...->i...", affine[:3, :3], voxels) + affine[:3, 3].reshape(3, *([1] * (voxels.ndim - 1)))


def _ventricle_map(csf: np.ndarray, mm: np.ndarray) -> np.ndarray:
    """CSF of the lateral ventricles: the two largest CSF blobs near the brain's centre."""
    centre = np.array([0.0, -10.0, 12.0]).reshape(3, 1, 1, 1)
    radii = np.array([25.0, 45.0, 25.0]).reshape(3, 1, 1, 1)
    central = (((mm - centre) / radii) ** 2).sum(0) < 1.0
    labels, count = ndimage.label((csf > 0.5) & central)
    sizes = ndimage.sum_labels(np.ones_like(csf), labels, index=np.arange(1, count + 1))
    largest = 1 + np.argsort(sizes)[-2:]
    return csf * ndimage.binary_dilation(np.isin(labels, largest))


@dataclass(frozen=True)
class _Grid:
    """The output grid of one cube edge and the template maps smoothed for it."""

    shape: int
    affine: np.ndarray
    points_mm: np.ndarray  # (3, n, n, n) float32 centres of the output voxels
    tissues: np.ndarray  # template tissue maps, low-pass filtered against aliasing


@lru_cache(maxsize=4)
def _grid(shape: int) -> _Grid:
    template = _mni_template()
    spacing = FIELD_OF_VIEW_MM / shape
    origin = template.brain_centre_mm - spacing * (shape - 1) / 2.0
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    points = _voxel_to_mm(affine, np.indices((shape,) * 3, dtype=np.float32)).astype(np.float32)
    template_spacing = float(abs(template.affine[0, 0]))
    sigma = max(0.0, (spacing / template_spacing - 1.0) / 2.0)
    tissues = np.stack([ndimage.gaussian_filter(t, sigma) if sigma > 0 else t for t in template.tissues])
    tissues.flags.writeable = False
    points.flags.writeable = False
    return _Grid(shape=shape, affine=affine, points_mm=points, tissues=tissues)


@lru_cache(maxsize=8)
def _spline_matrix(coarse: int, shape: int) -> np.ndarray:
    """(shape, coarse) matrix of 1-D cubic-spline interpolation from ``coarse`` nodes to ``shape`` points."""
    positions = np.linspace(0.0, coarse - 1.0, shape)[None, :]
    matrix = np.stack(
        [ndimage.map_coordinates(unit, positions, order=3, mode="nearest") for unit in np.eye(coarse)], axis=1
    )
    matrix.flags.writeable = False
    return matrix.astype(np.float32)


def _smooth_field(control: np.ndarray, shape: int) -> np.ndarray:
    """Smooth (..., shape, shape, shape) fields: cubic splines through (..., c, c, c) control values.

    Tensor-product splines are separable, so three small matrix products replace a 3-D
    spline interpolation.
    """
    matrix = _spline_matrix(control.shape[-1], shape)
    return np.einsum("ai,bj,ck,...ijk->...abc", matrix, matrix, matrix, control.astype(np.float32), optimize=True)


# ----------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class _Scanner:
    """One site's acquisition signature (see the module docstring for the ranges)."""

    scale: float
    offset: float
    gamma: float
    contrast: float
    csf_intensity: float
    bias: float
    noise: float
    blur: float
    male_fraction: float
    age_weights: tuple[float, ...]
    bias_pattern: tuple[float, ...]  # 3x3x3 control values of the bias field, flattened


# Scanner differences as they remain after the standard OpenBHB preprocessing (bias-field
# correction, skull stripping, affine registration) and a z-scoring of the volume: a residual
# bias field, small intensity non-linearities, noise and resolution differences. The scale
# and offset are removed by z-scoring; they are kept so raw volumes differ as raw scans do.
_SCANNER_RANGES = {
    "scale": (np.log(0.5), np.log(2.0)),
    "offset": (0.0, 0.05),
    "gamma": (0.85, 1.15),
    "contrast": (0.85, 1.15),
    "csf_intensity": (0.05, 0.15),
    "bias": (0.0, 0.1),
    "noise": (0.01, 0.04),
    "blur": (0.0, 0.6),
}


def _scanner_values(rng: np.random.Generator, sites: int, external_sites: int) -> dict[str, np.ndarray]:
    """Each parameter's value per site: a Latin hypercube over the training sites, so they
    span every range, then external sites drawn uniformly *inside* the training sites' range
    (OpenBHB's external sites are other scanners of the same kinds, not new kinds)."""
    internal = sites - external_sites
    strata = rng.permuted(np.tile(np.arange(internal), (len(_SCANNER_RANGES), 1)), axis=1)
    unit = (strata + rng.random(strata.shape)) / internal
    values = {}
    for k, (name, (low, high)) in enumerate(_SCANNER_RANGES.items()):
        trained = low + (high - low) * unit[k]
        external = rng.uniform(trained.min(), trained.max(), size=external_sites)
        values[name] = np.concatenate([trained, external])
    values["scale"] = np.exp(values["scale"])
    return values


def _draw_scanners(rng: np.random.Generator, sites: int, external_sites: int) -> list[_Scanner]:
    values = _scanner_values(rng, sites, external_sites)
    male_fraction = rng.uniform(0.4, 0.6, size=sites)
    age_weights = rng.dirichlet(SITE_AGE_CONCENTRATION * AGE_MIXTURE_WEIGHTS, size=sites)
    bias_patterns = rng.standard_normal((sites, 27))
    return [
        _Scanner(
            **{name: round(float(values[name][site]), 6) for name in _SCANNER_RANGES},
            male_fraction=round(float(male_fraction[site]), 6),
            age_weights=tuple(round(float(w), 6) for w in age_weights[site]),
            bias_pattern=tuple(float(b) for b in bias_patterns[site]),
        )
        for site in range(sites)
    ]


def _site_bias_field(scanner: _Scanner, shape: int) -> np.ndarray:
    pattern = _smooth_field(np.reshape(scanner.bias_pattern, (3, 3, 3)), shape)
    pattern = (pattern - pattern.mean()) / max(float(pattern.std()), 1e-6)
    return scanner.bias * pattern


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
    scanners: list[_Scanner],
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


# ----------------------------------------------------------------------------- one subject
def _cortical_loss(age: float) -> float:
    """Fraction of GM lost since age 8: pruning in adolescence, 0.3 % a year after 20."""
    return 0.002 * min(max(age - 8.0, 0.0), 12.0) + 0.003 * max(age - 20.0, 0.0)


def _grey_white_contrast(age: float) -> float:
    return 0.40 - 0.001 * (age - 8.0)


def _subject_tissues(
    grid: _Grid,
    age: float,
    male: bool,
    patient: bool,
    rng: np.random.Generator,
    ageing: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM and CSF probabilities and the brain mask of one subject on the output grid.

    ``patient`` adds the focal hippocampal loss; ``age`` is the age the anatomy is generated
    at. ``ageing``, if given, receives the subject's drawn ageing quantities (the ventricular
    enlargement and the fraction of GM lost to cortical thinning).
    """
    template = _mni_template()
    n = grid.shape
    column = (3, 1, 1, 1)

    # Geometry, composed backwards: output point -> template point (mm).
    centre = template.ventricle_centre_mm.reshape(column)
    offset = grid.points_mm - centre
    reach = (2.0 * template.ventricle_extent_mm).reshape(column)
    closeness = np.exp(-0.5 * ((offset / reach) ** 2).sum(0))
    decades = (age - 8.0) / 80.0
    enlargement = max(0.15 * decades + 0.35 * decades**2 + rng.normal(0.0, 0.03), -0.2)
    source = centre + offset / (1.0 + enlargement * closeness)
    size = (1.015 if male else 0.985) * rng.normal(1.0, 0.02)
    brain_centre = template.brain_centre_mm.reshape(column)
    source = brain_centre + (source - brain_centre) / size
    source = source + _smooth_field(rng.normal(0.0, 3.0, (3, 5, 5, 5)), n)

    voxels = _voxel_to_mm(np.linalg.inv(template.affine), source)
    gm, wm, csf = (
        ndimage.map_coordinates(t, voxels, order=1, mode="constant", cval=0.0, output=np.float32) for t in grid.tissues
    )
    brain = (gm + wm + csf) > 0.5

    # Cortical thinning where GM meets CSF, scaled to remove the target fraction of GM.
    near_csf = ndimage.gaussian_filter(csf, max(0.5, 3.0 * n / FIELD_OF_VIEW_MM))
    target = _cortical_loss(age) * float(np.exp(rng.normal(0.0, 0.2)))
    rate = target * gm.sum() / max(float((gm * near_csf).sum()), 1e-6)
    lost = gm * np.clip(rate * near_csf, 0.0, 0.9)
    if ageing is not None:
        ageing.update(ventricular_enlargement=float(enlargement), cortical_grey_matter_loss=target)
    if patient:
        lost = lost + DIAGNOSIS_LOSS * _hippocampal_blobs(source) * (gm - lost)
    return gm - lost, wm, csf + lost, brain


def _hippocampal_blobs(points_mm: np.ndarray) -> np.ndarray:
    """Sum of the two Gaussian blobs (sd ``DIAGNOSIS_SD_MM``) centred on the hippocampi."""
    column = (3,) + (1,) * (points_mm.ndim - 1)
    return sum(
        np.exp(-0.5 * ((points_mm - np.reshape(h, column)) ** 2).sum(0) / DIAGNOSIS_SD_MM**2) for h in HIPPOCAMPI_MM
    )


def diagnosis_effect_map(shape: int) -> np.ndarray:
    """Where patients lose grey matter, on the output grid of ``shape``: the template's GM
    times the hippocampal blobs, float32 (shape, shape, shape). The oracle of the clinical
    cohort reads the volumes through this map (``medssl data inspect``)."""
    grid = _grid(shape)
    voxels = _voxel_to_mm(np.linalg.inv(_mni_template().affine), grid.points_mm)
    gm = ndimage.map_coordinates(grid.tissues[0], voxels, order=1, mode="constant", cval=0.0, output=np.float32)
    return (DIAGNOSIS_LOSS * _hippocampal_blobs(grid.points_mm) * gm).astype(np.float32)


class _MeanDraws:
    """Stands in for the random generator of :func:`_subject_tissues` and gives every draw's
    mean: the typical subject, with no individual anatomy."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: tuple[int, ...] | None = None) -> float | np.ndarray:
        return loc if size is None else np.full(size, loc)


def _typical_image(grid: _Grid, age: float) -> np.ndarray:
    """T1 image of the typical brain of ``age`` (both sexes averaged) before any scanner: every
    subject draw at its mean, mid-range site contrast (1) and CSF intensity (0.10)."""
    typical = cast(np.random.Generator, _MeanDraws())
    images = []
    for male in (False, True):
        gm, wm, csf, brain = _subject_tissues(grid, age, male, False, typical)
        images.append((wm + gm * (1.0 - _grey_white_contrast(age)) + 0.10 * csf) * brain)
    return np.mean(images, axis=0)


def ageing_effect_map(shape: int, age: float = AGEING_MAP_AGE, years: float | None = None) -> np.ndarray:
    """How the typical brain's T1 image changes from ``age`` to ``age + years`` (default: the
    middle of the generator's ages and the mean Alzheimer's brain-age gap), on the grid of
    ``shape``: float32 (shape, shape, shape), negative where the older brain is darker
    (ventricles, sulci), positive where it is brighter (grey matter, as the grey/white
    contrast fades). The oracle of the brain-age gap reads the volumes through this map
    (``medssl data inspect``), as that of the focal loss reads them through
    :func:`diagnosis_effect_map`."""
    years = float(np.mean(AD_BRAIN_AGE_GAP_YEARS)) if years is None else years
    grid = _grid(shape)
    return (_typical_image(grid, age + years) - _typical_image(grid, age)).astype(np.float32)


def _render_subject(
    grid: _Grid,
    scanner: _Scanner,
    site_bias: np.ndarray,
    age: float,
    male: bool,
    patient: bool,
    seed: np.random.SeedSequence,
    model: DisorderModel = DISORDER_MODELS["focal"],
    brain_age_gap: float = 0.0,
    ageing: dict[str, float] | None = None,
) -> np.ndarray:
    """One T1-weighted volume, float32 of shape (n, n, n); see the module docstring.

    A patient gets the components of ``model``: the focal loss, and the anatomy of
    ``age + brain_age_gap`` (a control's gap is ignored). ``ageing``, if given, receives the
    subject's ageing quantities (:func:`_subject_tissues` and the grey/white contrast).
    """
    rng = np.random.default_rng(seed)
    # + 0.0 leaves every float as it is: the focal model's volumes are those made before the gap existed.
    anatomy_age = age + (brain_age_gap if patient and model.brain_age_gap is not None else 0.0)
    focal = patient and model.focal_loss
    gm, wm, csf, brain = _subject_tissues(grid, anatomy_age, male, focal, rng, ageing)
    contrast = _grey_white_contrast(anatomy_age) * scanner.contrast * float(np.exp(rng.normal(0.0, 0.03)))
    if ageing is not None:
        ageing["grey_white_contrast"] = contrast
    csf_intensity = scanner.csf_intensity * float(np.exp(rng.normal(0.0, 0.05)))
    image = wm + gm * (1.0 - contrast) + csf * csf_intensity

    # Scanner, in acquisition order; the background stays 0 as in skull-stripped images.
    if scanner.blur > 0.05:
        image = ndimage.gaussian_filter(image, scanner.blur)
    subject_bias = 0.03 * _smooth_field(rng.standard_normal((3, 3, 3)), grid.shape)
    image = np.maximum(image * np.exp(site_bias + subject_bias), 0.0) ** scanner.gamma
    real = image + rng.normal(0.0, scanner.noise, image.shape)
    imaginary = rng.normal(0.0, scanner.noise, image.shape)
    image = np.sqrt(real**2 + imaginary**2)
    image = (image + scanner.offset) * scanner.scale * brain
    return image.astype(np.float32)


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
    scanners = _draw_scanners(np.random.default_rng(sites_stream), sites, external_sites)
    table = _demographics(
        np.random.default_rng(cohort_stream), scanners, subjects, external_sites, diagnosis, model.brain_age_gap
    )
    _write_volumes(out_dir, table, scanners, subjects_stream.spawn(subjects), shape, diagnosis, progress, model)
    table.drop(columns="site_index").to_csv(out_dir / TABLE_NAME, sep="\t", index=False)
    description = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "config": _config_dict(subjects, sites, external_sites, shape, diagnosis, seed, diagnosis_model),
        "diagnosis_effect": _diagnosis_effect(diagnosis_model) if diagnosis else None,
        "voxel_size_mm": FIELD_OF_VIEW_MM / shape,
        "sites": _site_descriptions(table, scanners, external_sites),
    }
    (out_dir / MARKER_NAME).write_text(json.dumps(description, indent=2) + "\n")
    return out_dir


def _write_volumes(
    out_dir: Path,
    table: pd.DataFrame,
    scanners: list[_Scanner],
    subject_streams: list[np.random.SeedSequence],
    shape: int,
    diagnosis: bool,
    progress: bool,
    model: DisorderModel = DISORDER_MODELS["focal"],
) -> None:
    """Render and save every subject's volume, each from its own random stream."""
    from rich.progress import track

    grid = _grid(shape)
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
            site_bias[row.site_index] = _site_bias_field(scanner, shape)
        patient = diagnosis and row.diagnosis == "patient"
        gap = float(getattr(row, "brain_age_gap", 0.0))
        volume = _render_subject(
            grid, scanner, site_bias[row.site_index], float(row.age), row.sex == "M", patient, stream, model, gap
        )
        nib.save(nib.Nifti1Image(volume, grid.affine), out_dir / row.path)


def _site_descriptions(table: pd.DataFrame, scanners: list[_Scanner], external_sites: int) -> list[dict]:
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


def disorder_model(name: str, diagnosis: bool = True) -> DisorderModel:
    """The disorder model called ``name``; a recipe-key error for an unknown name, or for a
    model other than ``focal`` without a diagnosis (it would silently make no patients)."""
    if name not in DISORDER_MODELS:
        raise RecipeError(f"data.synthetic.diagnosis_model={name}: expected one of {', '.join(DISORDER_MODELS)}")
    if name != "focal" and not diagnosis:
        raise RecipeError(
            f"data.synthetic.diagnosis_model={name} needs data.synthetic.diagnosis=true (without it there are no patients)"
        )
    return DISORDER_MODELS[name]


def _diagnosis_effect(model: str = "focal") -> dict:
    """The disorder model and its parameters, recorded in ``cohort.json``: a cached cohort of
    another effect is regenerated."""
    components = DISORDER_MODELS[model]
    effect: dict = {"model": model}
    if components.focal_loss:
        effect.update(
            grey_matter_loss=DIAGNOSIS_LOSS, sd_mm=DIAGNOSIS_SD_MM, centres_mm=[list(c) for c in HIPPOCAMPI_MM]
        )
    if components.brain_age_gap is not None:
        effect["brain_age_gap_years"] = {
            "distribution": "uniform",
            "low": components.brain_age_gap[0],
            "high": components.brain_age_gap[1],
            "source": "Alzheimer's-disease BrainAGE group means: Franke & Gaser 2012 (+6.7), Franke et al. 2010 "
            "(+10.0); review: Franke & Gaser, Frontiers in Neurology 10:789, 2019",
        }
    return effect


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
    effect = _diagnosis_effect(expected["diagnosis_model"]) if expected.get("diagnosis") else None
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
