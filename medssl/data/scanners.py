"""Sites of the embedded synthetic cohort: each scanner's signature, and one subject's volume as it acquires it.

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

:func:`render_subject` turns a subject's tissues (:mod:`medssl.data.anatomy`) into that T1
volume, with the components of the subject's disorder model (:mod:`medssl.data.disorders`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medssl.data.anatomy import Grid, grey_white_contrast, smooth_field, subject_tissues
from medssl.data.disorders import DISORDER_MODELS, DisorderModel

# Age mixture: children, young adults, adults, elderly.
AGE_MIXTURE_WEIGHTS = np.array([0.2, 0.45, 0.2, 0.15])
SITE_AGE_CONCENTRATION = 20.0


# ----------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class Scanner:
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


def draw_scanners(rng: np.random.Generator, sites: int, external_sites: int) -> list[Scanner]:
    """Every site's scanner, with its share of men, age-mixture weights and bias pattern."""
    values = _scanner_values(rng, sites, external_sites)
    male_fraction = rng.uniform(0.4, 0.6, size=sites)
    age_weights = rng.dirichlet(SITE_AGE_CONCENTRATION * AGE_MIXTURE_WEIGHTS, size=sites)
    bias_patterns = rng.standard_normal((sites, 27))
    return [
        Scanner(
            **{name: round(float(values[name][site]), 6) for name in _SCANNER_RANGES},
            male_fraction=round(float(male_fraction[site]), 6),
            age_weights=tuple(round(float(w), 6) for w in age_weights[site]),
            bias_pattern=tuple(float(b) for b in bias_patterns[site]),
        )
        for site in range(sites)
    ]


def site_bias_field(scanner: Scanner, shape: int) -> np.ndarray:
    """The site's bias-field exponent b B on the grid of ``shape``: its smooth pattern, standardised."""
    pattern = smooth_field(np.reshape(scanner.bias_pattern, (3, 3, 3)), shape)
    pattern = (pattern - pattern.mean()) / max(float(pattern.std()), 1e-6)
    return scanner.bias * pattern


# ----------------------------------------------------------------------------- one subject
def render_subject(
    grid: Grid,
    scanner: Scanner,
    site_bias: np.ndarray,
    age: float,
    male: bool,
    patient: bool,
    seed: np.random.SeedSequence,
    model: DisorderModel = DISORDER_MODELS["focal"],
    brain_age_gap: float = 0.0,
    ageing: dict[str, float] | None = None,
) -> np.ndarray:
    """One T1-weighted volume, float32 of shape (n, n, n); see the module docstring and :mod:`medssl.data.anatomy`'s.

    A patient gets the components of ``model``: the focal loss, and the anatomy of
    ``age + brain_age_gap`` (a control's gap is ignored). ``ageing``, if given, receives the
    subject's ageing quantities (:func:`subject_tissues` and the grey/white contrast).
    """
    rng = np.random.default_rng(seed)
    # + 0.0 leaves every float as it is: the focal model's volumes are those made before the gap existed.
    anatomy_age = age + (brain_age_gap if patient and model.brain_age_gap is not None else 0.0)
    focal = patient and model.focal_loss
    gm, wm, csf, brain = subject_tissues(grid, anatomy_age, male, focal, rng, ageing)
    contrast = grey_white_contrast(anatomy_age) * scanner.contrast * float(np.exp(rng.normal(0.0, 0.03)))
    if ageing is not None:
        ageing["grey_white_contrast"] = contrast
    csf_intensity = scanner.csf_intensity * float(np.exp(rng.normal(0.0, 0.05)))
    image = wm + gm * (1.0 - contrast) + csf * csf_intensity

    # Scanner, in acquisition order; the background stays 0 as in skull-stripped images.
    if scanner.blur > 0.05:
        image = ndimage.gaussian_filter(image, scanner.blur)
    subject_bias = 0.03 * smooth_field(rng.standard_normal((3, 3, 3)), grid.shape)
    image = np.maximum(image * np.exp(site_bias + subject_bias), 0.0) ** scanner.gamma
    real = image + rng.normal(0.0, scanner.noise, image.shape)
    imaginary = rng.normal(0.0, scanner.noise, image.shape)
    image = np.sqrt(real**2 + imaginary**2)
    image = (image + scanner.offset) * scanner.scale * brain
    return image.astype(np.float32)
