"""The disorder models of the embedded synthetic cohort: what sets a patient apart from a control.

Disorder models (``diagnosis_model``; :data:`DISORDER_MODELS`). A patient differs from the
control with the same random stream by the model's components only:

- ``focal``: patients lose another 50 % of their GM at the peak of two Gaussian blobs
  (sd 14 mm) on the left and right hippocampi (MNI +-26, -22, -14 mm): an effect sized for
  the embedded resolution (at 32^3, 6 mm voxels, a blob spans about 5-6 voxels at half
  maximum), so that the diagnosis can be learnt from a few hundred subjects;
  :func:`~medssl.data.anatomy.diagnosis_effect_map` gives its location. ``diagnosis: true`` alone means this
  model, and its cohorts are the ones generated before the other models existed.
- ``ageing``: a brain-age gap. The patient's brain is generated as a control's ``gap``
  years older: every age-dependent part of the anatomy (:mod:`medssl.data.anatomy`: ventricles, cortical thinning,
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
  holds each subject's gap (0 for controls); :func:`~medssl.data.anatomy.ageing_effect_map` gives the image
  change it makes.
- ``ad-like``: both, the gap and then the focal loss on the older brain.

The models are applied by the generator (:mod:`medssl.data.synthetic`): the focal loss in
:func:`medssl.data.anatomy.subject_tissues`, the brain-age gap in
:func:`medssl.data.scanners.render_subject`; :mod:`medssl.data.anatomy` draws their effect maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medssl.errors import RecipeError

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


def diagnosis_effect(model: str = "focal") -> dict:
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


def hippocampal_blobs(points_mm: np.ndarray) -> np.ndarray:
    """Sum of the two Gaussian blobs (sd ``DIAGNOSIS_SD_MM``) centred on the hippocampi."""
    column = (3,) + (1,) * (points_mm.ndim - 1)
    return sum(
        np.exp(-0.5 * ((points_mm - np.reshape(h, column)) ** 2).sum(0) / DIAGNOSIS_SD_MM**2) for h in HIPPOCAMPI_MM
    )
