"""Disorder models of the synthetic cohort: focal loss, brain-age gap, both (ad-like)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from typer.testing import CliRunner

from medssl.cli import app
from medssl.config import SyntheticCohortConfig
from medssl.data import anatomy, disorders, scanners
from medssl.data.cohort import load_cohort
from medssl.data.disorders import DISORDER_MODELS
from medssl.data.synthetic import cohort_key, synthesize_cohort
from medssl.errors import MedsslError
from medssl.eval.cohort_figures import diagnosis_oracle
from medssl.recipe import Recipe, load_recipe

TINY = dict(subjects=12, sites=3, external_sites=1, shape=8, diagnosis=True, seed=2)


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def scanner() -> tuple[scanners.Scanner, np.ndarray]:
    scanner = scanners.draw_scanners(np.random.default_rng(0), sites=2, external_sites=0)[0]
    return scanner, scanners.site_bias_field(scanner, 16)


def _render(scanner, age: float, patient: bool, model: str = "focal", gap: float = 0.0, seed: int = 5, ageing=None):
    scanner, bias = scanner
    stream = np.random.SeedSequence(seed)
    grid = anatomy.output_grid(16)
    return scanners.render_subject(
        grid, scanner, bias, age, True, patient, stream, DISORDER_MODELS[model], gap, ageing=ageing
    )


# ----------------------------------------------------------------------------- components
@pytest.mark.parametrize("model", list(DISORDER_MODELS))
def test_a_patient_is_their_control_with_the_models_components_and_nothing_else(scanner, model: str) -> None:
    age, gap = 55.0, 8.0
    components = DISORDER_MODELS[model]
    patient = _render(scanner, age, True, model, gap)
    # The same random stream as a control generated at the age the model's gap gives, with the
    # focal loss exactly when the model has it: every other draw (anatomy, scanner, noise) is shared.
    anatomy_age = age + gap if components.brain_age_gap is not None else age
    expected = _render(scanner, anatomy_age, components.focal_loss, "focal")
    np.testing.assert_array_equal(patient, expected)
    control = _render(scanner, age, False, model, gap)  # a control's gap is ignored
    np.testing.assert_array_equal(control, _render(scanner, age, False, "focal"))
    assert not np.array_equal(patient, control)


def test_the_focal_component_changes_the_volume_only_around_the_hippocampi(scanner) -> None:
    loss = _render(scanner, 40.0, False) - _render(scanner, 40.0, True)
    grid = anatomy.output_grid(16)
    distance = np.min(
        [np.linalg.norm(grid.points_mm - np.reshape(h, (3, 1, 1, 1)), axis=0) for h in disorders.HIPPOCAMPI_MM], axis=0
    )
    assert np.abs(loss).max() > 0
    assert np.abs(loss[distance > 60.0]).max() < 0.01 * np.abs(loss).max()


def test_the_gap_component_changes_the_ageing_quantities_and_the_focal_one_does_not(scanner) -> None:
    control, focal, ageing = {}, {}, {}
    _render(scanner, 50.0, False, ageing=control)
    _render(scanner, 50.0, True, "focal", ageing=focal)
    _render(scanner, 50.0, True, "ageing", 9.0, ageing=ageing)
    assert focal == control
    assert ageing["ventricular_enlargement"] > control["ventricular_enlargement"]
    assert ageing["cortical_grey_matter_loss"] > control["cortical_grey_matter_loss"]
    assert ageing["grey_white_contrast"] < control["grey_white_contrast"]


def test_the_gap_shifts_a_linear_age_probe_fitted_on_controls_by_about_the_drawn_gap() -> None:
    # The generator's own ageing quantities (ventricles, cortical thinning, grey/white contrast) of
    # 80 subjects as controls and, with the same streams, as ageing-model patients with drawn gaps.
    scanner = scanners.draw_scanners(np.random.default_rng(0), sites=2, external_sites=0)[0]
    grid, bias = anatomy.output_grid(8), scanners.site_bias_field(scanner, 8)
    rng = np.random.default_rng(0)
    n = 80
    ages, gaps = rng.uniform(20.0, 80.0, n), rng.uniform(*disorders.AD_BRAIN_AGE_GAP_YEARS, n)
    streams = np.random.SeedSequence(1).spawn(n)

    def features(index: int, patient: bool) -> list[float]:
        quantities: dict[str, float] = {}
        model = DISORDER_MODELS["ageing"]
        scanners.render_subject(
            grid, scanner, bias, ages[index], index % 2 == 0, patient, streams[index], model, gaps[index], quantities
        )
        return [quantities[key] for key in sorted(quantities)]

    controls = np.array([features(i, False) for i in range(n)])
    patients = np.array([features(i, True) for i in range(n)])
    fit, held_out = slice(0, n // 2), slice(n // 2, n)
    probe = LinearRegression().fit(controls[fit], ages[fit])
    assert probe.score(controls[held_out], ages[held_out]) > 0.8  # the probe reads age
    shift = probe.predict(patients[held_out]) - probe.predict(controls[held_out])
    assert shift.mean() == pytest.approx(gaps[held_out].mean(), rel=0.15)
    apparent_gap = probe.predict(patients[held_out]) - ages[held_out]
    control_gap = probe.predict(controls[held_out]) - ages[held_out]
    assert apparent_gap.mean() - control_gap.mean() == pytest.approx(gaps[held_out].mean(), rel=0.15)


# ----------------------------------------------------------------------------- cohorts
def test_cohort_json_and_the_table_record_the_model_and_its_parameters(tmp_path: Path) -> None:
    folder = synthesize_cohort(tmp_path / "ad", diagnosis_model="ad-like", **TINY)
    description = json.loads((folder / "cohort.json").read_text())
    assert description["config"]["diagnosis_model"] == "ad-like"
    effect = description["diagnosis_effect"]
    assert effect["model"] == "ad-like" and effect["grey_matter_loss"] == disorders.DIAGNOSIS_LOSS
    gap = effect["brain_age_gap_years"]
    assert (gap["distribution"], gap["low"], gap["high"]) == ("uniform", 6.7, 10.0)
    assert "Franke" in gap["source"]
    table = pd.read_csv(folder / "participants.tsv", sep="\t")
    patients = table["diagnosis"] == "patient"
    assert (table.loc[~patients, "brain_age_gap"] == 0).all()
    assert table.loc[patients, "brain_age_gap"].between(6.7, 10.0).all()

    ageing = json.loads(
        (synthesize_cohort(tmp_path / "ageing", diagnosis_model="ageing", **TINY) / "cohort.json").read_text()
    )
    assert ageing["diagnosis_effect"]["model"] == "ageing" and "grey_matter_loss" not in ageing["diagnosis_effect"]
    focal = json.loads((synthesize_cohort(tmp_path / "focal", **TINY) / "cohort.json").read_text())
    assert focal["diagnosis_effect"]["model"] == "focal" and "brain_age_gap_years" not in focal["diagnosis_effect"]


def test_focal_cohorts_are_bit_identical_to_diagnosis_true_and_controls_to_every_model(tmp_path: Path) -> None:
    default = _files(synthesize_cohort(tmp_path / "default", **TINY))
    focal = _files(synthesize_cohort(tmp_path / "focal", diagnosis_model="focal", **TINY))
    assert focal == default
    table = pd.read_csv(tmp_path / "focal" / "participants.tsv", sep="\t")
    assert "brain_age_gap" not in table.columns
    for model in ("ageing", "ad-like"):
        folder = synthesize_cohort(tmp_path / model, diagnosis_model=model, **TINY)
        other = pd.read_csv(folder / "participants.tsv", sep="\t")
        pd.testing.assert_frame_equal(other.drop(columns="brain_age_gap"), table)  # the gap is drawn last
        files = _files(folder)
        for row in table.itertuples():
            same = files[row.path] == focal[row.path]
            assert same == (row.diagnosis == "control"), (model, row.path)


def test_a_disorder_model_without_a_diagnosis_or_an_unknown_one_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(MedsslError, match="data.synthetic.diagnosis_model=ageing needs data.synthetic.diagnosis"):
        synthesize_cohort(tmp_path, subjects=8, sites=2, external_sites=1, shape=8, diagnosis_model="ageing")
    with pytest.raises(MedsslError, match="diagnosis_model=severe: expected one of focal, ageing, ad-like"):
        synthesize_cohort(tmp_path, diagnosis_model="severe", **TINY)
    with pytest.raises(MedsslError, match="data.synthetic.diagnosis_model = 'ad-like' needs"):
        load_recipe("finetune_ad", ["data.synthetic.diagnosis=false"])


def test_each_model_has_its_own_cache_folder_and_focal_keeps_the_old_one() -> None:
    keys = {
        model: cohort_key(SyntheticCohortConfig(subjects=8, sites=2, diagnosis=True, diagnosis_model=model))
        for model in DISORDER_MODELS
    }
    assert keys["focal"] == "s8-k2-e4-n32-d1-seed0"
    assert len(set(keys.values())) == 3 and keys["ad-like"] == "s8-k2-e4-n32-d1-ad-like-seed0"


def test_the_clinical_recipes_name_their_models() -> None:
    assert load_recipe("finetune_ad").data.synthetic.diagnosis_model == "ad-like"
    focal, diagnosis = load_recipe("finetune_focal").data.synthetic, load_recipe("finetune_diagnosis").data.synthetic
    assert focal.diagnosis_model == "focal" and focal == diagnosis  # finetune_diagnosis is the focal model


def test_data_synth_takes_the_model_and_inspect_reports_each_component(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    arguments = ["data", "synth", str(out), "--subjects", "12", "--sites", "3", "--shape", "8", "--seed", "2"]
    result = CliRunner().invoke(app, [*arguments, "--diagnosis", "ad-like"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "cohort.json").read_text())["diagnosis_effect"]["model"] == "ad-like"
    oracle = diagnosis_oracle(load_cohort(out), Recipe(), folds=2)
    assert oracle["model"] == "ad-like" and set(oracle["components"]) == {"focal", "gap", "both"}
    assert oracle["roc_auc"] == oracle["components"]["both"]
    result = CliRunner().invoke(app, [*arguments, "--diagnosis", "severe", "--overwrite"], env={"COLUMNS": "200"})
    assert result.exit_code != 0


def test_the_ageing_effect_map_darkens_the_ventricles_of_the_older_typical_brain() -> None:
    change = anatomy.ageing_effect_map(16)
    grid = anatomy.output_grid(16)
    centre = anatomy._mni_template().ventricle_centre_mm.reshape(3, 1, 1, 1)
    near_ventricles = np.linalg.norm(grid.points_mm - centre, axis=0) < 15.0
    assert change.shape == (16, 16, 16) and change.dtype == np.float32
    assert change[near_ventricles].sum() < 0
