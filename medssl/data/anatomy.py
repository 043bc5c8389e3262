"""Anatomy of the embedded synthetic cohort: the template, the output grid, one subject's tissues.

Anatomy. Grey-matter (GM) and white-matter (WM) probability maps and the brain mask
are those of the MNI152 template that ships inside nilearn (2 mm grid, no download).
CSF = brain mask - GM - WM; the ventricles are the two largest connected components of
CSF > 0.5 inside a central ellipsoid. Volumes cover a 192 mm cube centred on the brain,
so voxels are isotropic, 192 / ``shape`` mm (6 mm at 32, 1.5 mm at 128), in RAS order.

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

A patient's tissues also carry the focal loss of its disorder model
(:mod:`medssl.data.disorders`); the effect maps at the end of this module show, on the typical
brain, where each disorder changes the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
from scipy import ndimage

from medssl.data.disorders import AD_BRAIN_AGE_GAP_YEARS, AGEING_MAP_AGE, DIAGNOSIS_LOSS, hippocampal_blobs

FIELD_OF_VIEW_MM = 192.0


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
class Grid:
    """The output grid of one cube edge and the template maps smoothed for it."""

    shape: int
    affine: np.ndarray
    points_mm: np.ndarray  # (3, n, n, n) float32 centres of the output voxels
    tissues: np.ndarray  # template tissue maps, low-pass filtered against aliasing


@lru_cache(maxsize=4)
def output_grid(shape: int) -> Grid:
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
    return Grid(shape=shape, affine=affine, points_mm=points, tissues=tissues)


@lru_cache(maxsize=8)
def _spline_matrix(coarse: int, shape: int) -> np.ndarray:
    """(shape, coarse) matrix of 1-D cubic-spline interpolation from ``coarse`` nodes to ``shape`` points."""
    positions = np.linspace(0.0, coarse - 1.0, shape)[None, :]
    matrix = np.stack(
        [ndimage.map_coordinates(unit, positions, order=3, mode="nearest") for unit in np.eye(coarse)], axis=1
    )
    matrix.flags.writeable = False
    return matrix.astype(np.float32)


def smooth_field(control: np.ndarray, shape: int) -> np.ndarray:
    """Smooth (..., shape, shape, shape) fields: cubic splines through (..., c, c, c) control values.

    Tensor-product splines are separable, so three small matrix products replace a 3-D
    spline interpolation.
    """
    matrix = _spline_matrix(control.shape[-1], shape)
    return np.einsum("ai,bj,ck,...ijk->...abc", matrix, matrix, matrix, control.astype(np.float32), optimize=True)


# ----------------------------------------------------------------------------- one subject
def _cortical_loss(age: float) -> float:
    """Fraction of GM lost since age 8: pruning in adolescence, 0.3 % a year after 20."""
    return 0.002 * min(max(age - 8.0, 0.0), 12.0) + 0.003 * max(age - 20.0, 0.0)


def grey_white_contrast(age: float) -> float:
    """Grey/white contrast k(age) of the T1 image, before the site's and the subject's factors."""
    return 0.40 - 0.001 * (age - 8.0)


def subject_tissues(
    grid: Grid,
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
    source = source + smooth_field(rng.normal(0.0, 3.0, (3, 5, 5, 5)), n)

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
        lost = lost + DIAGNOSIS_LOSS * hippocampal_blobs(source) * (gm - lost)
    return gm - lost, wm, csf + lost, brain


# ----------------------------------------------------------------------------- effect maps
def diagnosis_effect_map(shape: int) -> np.ndarray:
    """Where patients lose grey matter, on the output grid of ``shape``: the template's GM
    times the hippocampal blobs, float32 (shape, shape, shape). The oracle of the clinical
    cohort reads the volumes through this map (``medssl data inspect``)."""
    grid = output_grid(shape)
    voxels = _voxel_to_mm(np.linalg.inv(_mni_template().affine), grid.points_mm)
    gm = ndimage.map_coordinates(grid.tissues[0], voxels, order=1, mode="constant", cval=0.0, output=np.float32)
    return (DIAGNOSIS_LOSS * hippocampal_blobs(grid.points_mm) * gm).astype(np.float32)


class _MeanDraws:
    """Stands in for the random generator of :func:`subject_tissues` and gives every draw's
    mean: the typical subject, with no individual anatomy."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: tuple[int, ...] | None = None) -> float | np.ndarray:
        return loc if size is None else np.full(size, loc)


def _typical_image(grid: Grid, age: float) -> np.ndarray:
    """T1 image of the typical brain of ``age`` (both sexes averaged) before any scanner: every
    subject draw at its mean, mid-range site contrast (1) and CSF intensity (0.10)."""
    typical = cast(np.random.Generator, _MeanDraws())
    images = []
    for male in (False, True):
        gm, wm, csf, brain = subject_tissues(grid, age, male, False, typical)
        images.append((wm + gm * (1.0 - grey_white_contrast(age)) + 0.10 * csf) * brain)
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
    grid = output_grid(shape)
    return (_typical_image(grid, age + years) - _typical_image(grid, age)).astype(np.float32)
