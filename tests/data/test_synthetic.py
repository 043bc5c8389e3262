"""The embedded synthetic cohort: files, reproducibility, age/site/diagnosis effects, splits, cache."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medssl.config import SyntheticCohortConfig
from medssl.data import anatomy, disorders
from medssl.data.synthetic import default_cache_dir, embedded_cohort, synthesize_cohort
from medssl.errors import MedsslError

SHAPE = 24
SITES = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_cohort(
        tmp_path_factory.mktemp("cohort"),
        subjects=64,
        sites=SITES,
        external_sites=1,
        shape=SHAPE,
        diagnosis=True,
        seed=0,
    )


@pytest.fixture(scope="module")
def table(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "participants.tsv", sep="\t")


@pytest.fixture(scope="module")
def volumes(cohort: Path, table: pd.DataFrame) -> np.ndarray:
    return np.stack([nib.load(cohort / path).get_fdata(dtype=np.float32) for path in table["path"]])


def _read_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- files
def test_table_has_the_documented_columns_and_plausible_values(table: pd.DataFrame) -> None:
    assert list(table.columns) == ["participant_id", "age", "sex", "site", "split", "path", "diagnosis"]
    assert table["participant_id"].tolist() == [f"sub-{i:04d}" for i in range(64)]
    assert table["age"].between(8, 88).all()
    assert table["age"].median() < table["age"].mean()  # skewed young, like OpenBHB
    assert set(table["sex"]) == {"F", "M"}
    assert set(table["site"]) == {f"site-{i:02d}" for i in range(SITES)}
    assert table["site"].value_counts().nunique() > 1  # sites differ in size


def test_volumes_are_finite_float32_cubes_with_an_isotropic_ras_affine(cohort: Path, table: pd.DataFrame) -> None:
    for path in table["path"]:
        image = nib.load(cohort / path)
        data = np.asanyarray(image.dataobj)
        assert data.shape == (SHAPE,) * 3 and data.dtype == np.float32
        assert np.isfinite(data).all() and (data >= 0).all()
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.diag(image.affine)[:3], anatomy.FIELD_OF_VIEW_MM / SHAPE)
        assert data[0].max() == 0 and data[-1].max() == 0  # skull-stripped: empty background at the edges
        assert 0.2 < (data > 0).mean() < 0.7  # a brain fills the middle


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    settings = dict(subjects=8, sites=2, external_sites=1, shape=12)
    first = _read_bytes(synthesize_cohort(tmp_path / "a", seed=3, **settings))
    again = _read_bytes(synthesize_cohort(tmp_path / "b", seed=3, **settings))
    other = _read_bytes(synthesize_cohort(tmp_path / "c", seed=4, **settings))
    assert first == again
    assert first.keys() == other.keys()
    assert first["participants.tsv"] != other["participants.tsv"]
    assert all(first[name] != other[name] for name in first if name.endswith(".nii.gz"))


def test_without_diagnosis_the_column_is_absent(tmp_path: Path) -> None:
    folder = synthesize_cohort(tmp_path, subjects=8, sites=2, external_sites=0, shape=8)
    table = pd.read_csv(folder / "participants.tsv", sep="\t")
    assert "diagnosis" not in table.columns
    assert set(table["split"]) <= {"train", "internal_test"}


def test_too_few_subjects_per_site_is_rejected_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(MedsslError, match="subjects=5"):
        synthesize_cohort(tmp_path, subjects=5, sites=4, external_sites=1, shape=8)
    with pytest.raises(MedsslError, match="external_sites=4"):
        synthesize_cohort(tmp_path, subjects=16, sites=4, external_sites=4, shape=8)


# ----------------------------------------------------------------------------- splits and labels
def test_external_sites_are_only_external_test_and_internal_sites_are_in_train(table: pd.DataFrame) -> None:
    splits_by_site = table.groupby("site")["split"].agg(set)
    assert splits_by_site["site-03"] == {"external_test"}  # the last site is external
    internal = splits_by_site.drop("site-03")
    assert all(splits == {"train", "internal_test"} for splits in internal)
    internal_rows = table[table["site"] != "site-03"]
    assert 0.1 < (internal_rows["split"] == "internal_test").mean() < 0.3


def test_diagnosis_is_balanced_with_both_classes_at_every_site(table: pd.DataFrame) -> None:
    counts = pd.crosstab(table["site"], table["diagnosis"])
    assert list(counts.columns) == ["control", "patient"]
    assert (counts > 0).all().all()
    assert (counts["patient"] - counts["control"]).abs().max() <= 1


# ----------------------------------------------------------------------------- effects
def test_older_twin_has_less_grey_matter_and_more_csf() -> None:
    grid = anatomy.output_grid(16)

    def tissues(age: float) -> tuple[np.ndarray, ...]:
        return anatomy.subject_tissues(grid, age, male=False, patient=False, rng=np.random.default_rng(7))

    young_gm, _, young_csf, _ = tissues(20.0)
    old_gm, _, old_csf, _ = tissues(80.0)
    assert old_gm.sum() < 0.9 * young_gm.sum()
    assert old_csf.sum() > 1.3 * young_csf.sum()


def test_patients_lose_grey_matter_only_around_the_hippocampi() -> None:
    grid = anatomy.output_grid(24)
    control_gm = anatomy.subject_tissues(grid, 40.0, male=True, patient=False, rng=np.random.default_rng(1))[0]
    patient_gm = anatomy.subject_tissues(grid, 40.0, male=True, patient=True, rng=np.random.default_rng(1))[0]
    loss = control_gm - patient_gm
    assert loss.min() > -1e-6 and 0.005 < loss.sum() / control_gm.sum() < 0.05
    distance = np.min(
        [np.linalg.norm(grid.points_mm - np.reshape(h, (3, 1, 1, 1)), axis=0) for h in disorders.HIPPOCAMPI_MM], axis=0
    )
    assert distance[np.unravel_index(loss.argmax(), loss.shape)] < 12.0
    assert loss[distance > 60.0].max() < 0.01 * loss.max()


def test_a_ventricle_proxy_correlates_with_age_within_sites(table: pd.DataFrame, volumes: np.ndarray) -> None:
    # Dark voxels (CSF) in a central box around the ventricles, scored against each image's own range;
    # scanners shift it, so it is standardised within each site before pooling.
    centre, half = SHAPE // 2, SHAPE // 8
    box = (
        slice(centre - half, centre + half),
        slice(centre - 2 * half, centre + half),
        slice(centre - half, centre + 2 * half),
    )
    proxy = []
    for volume in volumes:
        brain = volume[volume > 0]
        low, high = np.percentile(brain, [2, 95])
        proxy.append((volume[box] < low + 0.3 * (high - low)).mean())
    by_site = pd.Series(proxy).groupby(table["site"])
    standardised = (pd.Series(proxy) - by_site.transform("mean")) / by_site.transform("std")
    assert spearmanr(standardised, table["age"]).statistic > 0.5


def test_sites_are_separable_from_scale_free_intensity_statistics(table: pd.DataFrame, volumes: np.ndarray) -> None:
    features = []
    for volume in volumes:
        brain = volume[volume > 0]
        standardised = (brain - brain.mean()) / brain.std()
        inside = (volume[1:] > 0) & (volume[:-1] > 0)
        roughness = np.abs(np.diff(volume, axis=0))[inside].mean() / brain.std()
        features.append(np.r_[np.percentile(standardised, [1, 5, 10, 25, 50, 75, 90, 95, 99]), roughness])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    accuracy = cross_val_score(classifier, np.array(features), table["site"], cv=folds).mean()
    chance = table["site"].value_counts(normalize=True).max()
    assert accuracy > max(0.7, 2 * chance)


# ----------------------------------------------------------------------------- cache
def test_embedded_cohort_is_generated_once_then_reused(tmp_path: Path) -> None:
    config = SyntheticCohortConfig(subjects=8, sites=2, external_sites=1, shape=8, seed=5)
    folder = embedded_cohort(config, cache_dir=tmp_path)
    assert folder == tmp_path / "synthetic" / "s8-k2-e1-n8-d0-seed5"
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert embedded_cohort(config, cache_dir=tmp_path) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps
    assert [path.name for path in (tmp_path / "synthetic").iterdir()] == [folder.name]  # no temporary left


def test_embedded_cohort_replaces_an_incomplete_folder(tmp_path: Path) -> None:
    config = SyntheticCohortConfig(subjects=8, sites=2, external_sites=1, shape=8, diagnosis=True)
    half_written = tmp_path / "synthetic" / "s8-k2-e1-n8-d1-seed0"
    half_written.mkdir(parents=True)
    (half_written / "sub-0000_T1w.nii.gz").write_bytes(b"truncated")
    folder = embedded_cohort(config, cache_dir=tmp_path)
    assert folder == half_written
    table = pd.read_csv(folder / "participants.tsv", sep="\t")
    assert len(table) == 8 and "diagnosis" in table.columns
    nib.load(folder / "sub-0000_T1w.nii.gz").get_fdata()


def test_default_cache_dir_follows_medssl_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSSL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MEDSSL_CACHE")
    assert default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "medssl"
