"""ComBat harmonisation of frozen features (medssl.eval.combat) and its row in the evaluation report."""

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from neuroCombat import neuroCombat
from rich.console import Console

from medssl.eval import challenge_protocol, cross_validate_probes, evaluate_representation, print_report
from medssl.eval.combat import NOTE, apply_combat, combat_challenge_protocol, combat_harmonise, fit_combat, fold_combat

SITES = ("A", "B", "C", "D")


def cohort(per_site: int = 40, seed: int = 0) -> pd.DataFrame:
    """Sites A-D, three quarters of each in train, the rest internal test; site E external."""
    rng = np.random.default_rng(seed)
    sites = np.repeat([*SITES, "E"], per_site)
    position = np.tile(np.arange(per_site), len(SITES) + 1)
    split = np.where(sites == "E", "external_test", np.where(position < 3 * per_site // 4, "train", "internal_test"))
    return pd.DataFrame(
        {"participant_id": [f"sub-{i:03d}" for i in range(len(sites))], "age": rng.uniform(20, 80, len(sites))}
    ).assign(site=sites, split=split)


def site_shifted_features(table: pd.DataFrame, dims: int = 12, seed: int = 1) -> np.ndarray:
    """An age signal plus, per site, an additive shift and a multiplicative scale of the noise."""
    rng = np.random.default_rng(seed)
    codes = pd.factorize(table["site"], sort=True)[0]
    n_sites = codes.max() + 1
    age = (table["age"].to_numpy() - 50) / 17
    shift = rng.normal(scale=1.5, size=(n_sites, dims))
    scale = rng.uniform(0.5, 2.0, size=(n_sites, dims))
    noise = rng.normal(size=(len(table), dims))
    return np.outer(age, rng.normal(size=dims)) + shift[codes] + scale[codes] * noise


@pytest.fixture(scope="module")
def shifted():
    table = cohort()
    return table, site_shifted_features(table)


def train_rows(table: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero(table["split"].to_numpy() == "train")


def test_combat_fitted_on_training_rows_removes_the_site_and_keeps_the_age(shifted):
    table, features = shifted
    raw = challenge_protocol(features, table)
    harmonised = combat_challenge_protocol(features, table)
    assert raw["bacc_site"] > 0.8  # the shift is linearly readable: 4 sites, chance 0.25
    assert harmonised["bacc_site"] < 0.45 and harmonised["bacc_site"] < raw["bacc_site"] - 0.4
    assert harmonised["mae_internal"] < 1.15 * raw["mae_internal"]
    assert harmonised["r2_internal"] > 0.8


def test_the_fit_sees_training_rows_only(shifted):
    # if test rows (or their ages) entered the fit, changing them would move the training rows' harmonised values
    table, features = shifted
    train = train_rows(table)
    test = np.setdiff1d(np.arange(len(table)), train)
    harmonised = combat_harmonise(features, table, train)
    changed_features = features.copy()
    changed_features[test] = np.random.default_rng(3).normal(loc=5.0, scale=4.0, size=(len(test), features.shape[1]))
    changed_table = table.assign(age=np.where(table["split"] == "train", table["age"], 99.0))
    changed = combat_harmonise(changed_features, changed_table, train)
    assert np.array_equal(changed[train], harmonised[train])
    # a test row's harmonised features depend on its own features only, never on its age
    aged = combat_harmonise(features, changed_table, train)
    assert np.array_equal(aged, harmonised)


def test_rows_of_sites_absent_from_the_training_rows_are_left_as_they_are(shifted):
    table, features = shifted
    harmonised = combat_harmonise(features, table, train_rows(table))
    external = (table["site"] == "E").to_numpy()
    assert np.array_equal(harmonised[external], features[external])
    internal = (table["split"] == "internal_test").to_numpy()
    assert not np.allclose(harmonised[internal], features[internal])  # rows of training sites: harmonised


def test_applying_the_estimates_reproduces_neurocombat_on_its_own_rows(shifted):
    # without covariate, neuroCombat's harmonised data is the application of its estimates to the rows it was fitted on
    table, features = shifted
    train = train_rows(table)
    sites = table["site"].to_numpy()[train]
    with contextlib.redirect_stdout(io.StringIO()):
        expected = neuroCombat(features[train].T, pd.DataFrame({"site": sites}), "site")["data"].T
    assert np.allclose(apply_combat(fit_combat(features[train], sites), features[train], sites), expected)


def test_with_fewer_than_two_training_sites_features_are_returned_unchanged(shifted):
    table, features = shifted
    one_site = np.flatnonzero((table["site"] == "A").to_numpy() & (table["split"] == "train").to_numpy())
    assert np.array_equal(combat_harmonise(features, table, one_site), features)
    # site B has a single training row: no variance to estimate, so A alone is left: nothing to harmonise
    with_one_b = np.append(one_site, np.flatnonzero(table["site"].to_numpy() == "B")[0])
    assert fit_combat(features[with_one_b], table["site"].to_numpy()[with_one_b]) is None


def test_constant_features_and_sites_with_one_training_row_are_left_as_they_are(shifted):
    table, features = shifted
    features = features.copy()
    features[:, 0] = 1.0  # constant everywhere
    features[(table["site"] == "A").to_numpy(), 1] = 0.0  # constant within site A (a unit silent there)
    train = train_rows(table)
    lone_c = np.flatnonzero((table["site"] == "C").to_numpy())[0]
    train = np.concatenate([train[table["site"].to_numpy()[train] != "C"], [lone_c]])
    harmonised = combat_harmonise(features, table, train)
    assert np.isfinite(harmonised).all()
    assert np.array_equal(harmonised[:, :2], features[:, :2])
    site_c = (table["site"] == "C").to_numpy()
    assert np.array_equal(harmonised[site_c], features[site_c])
    assert not np.allclose(
        harmonised[~site_c & (table["site"] != "E").to_numpy()], features[~site_c & (table["site"] != "E").to_numpy()]
    )


def test_each_fold_is_harmonised_on_its_own_training_rows(shifted):
    table, features = shifted
    seen: list[np.ndarray] = []
    harmonise = fold_combat(features, table)

    def spy(train_idx: np.ndarray) -> np.ndarray:
        seen.append(train_idx)
        return harmonise(train_idx)

    folds = [(train_rows(table), np.flatnonzero((table["split"] == "internal_test").to_numpy()))]
    metrics = cross_validate_probes(features, table, ("age", "site"), folds=folds, transform=spy)
    assert len(seen) == 2 and all(np.array_equal(train_idx, folds[0][0]) for train_idx in seen)
    site_bacc = metrics.query("target == 'site' and metric == 'balanced_accuracy'")["mean"].item()
    raw = cross_validate_probes(features, table, ("site",), folds=folds)
    assert site_bacc < raw.query("metric == 'balanced_accuracy'")["mean"].item() - 0.4


def test_the_report_carries_the_combat_row_when_the_training_rows_span_two_sites(tmp_path):
    table = cohort(per_site=16)
    results = evaluate_representation(site_shifted_features(table), table, tmp_path, folds=2, targets=("age", "site"))
    assert list(results)[:2] == ["pretrained", "combat"]
    combat = results["combat"]
    assert combat["bacc_site"] < results["pretrained"]["bacc_site"]
    assert combat["site_stratified"]["site"]["balanced_accuracy"]["mean"] is not None
    assert NOTE in combat["notes"] and NOTE not in results["pretrained"]["notes"]
    assert (tmp_path / "predictions_combat.csv").is_file()
    long = pd.read_csv(tmp_path / "metrics.csv")
    assert {"challenge", "site_stratified", "leave_site_out"} <= set(
        long.query("representation == 'combat'")["protocol"]
    )
    console = Console(record=True, width=80)
    print_report(results, console=console)
    text = console.export_text()
    assert "ComBat" in text and "left unharmonised" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_no_combat_row_with_a_single_site(tmp_path):
    table = cohort(per_site=16).query("site == 'A'").drop(columns="split").reset_index(drop=True)
    results = evaluate_representation(site_shifted_features(table), table, tmp_path, folds=2, targets=("age",))
    assert "combat" not in results and not (tmp_path / "predictions_combat.csv").exists()
    console = Console(record=True, width=80)
    print_report(results, console=console)
    assert "ComBat" not in console.export_text()


def test_five_representations_print_whole_at_80_columns(tmp_path):
    table = cohort(per_site=16)
    features = site_shifted_features(table)
    references = {"intensity": features[:, :3].copy(), "mean": np.zeros((len(table), 1))}
    results = evaluate_representation(
        features,
        table,
        tmp_path,
        folds=2,
        targets=("age",),
        baseline_features=features[::-1].copy(),
        reference_features=references,
    )
    console = Console(record=True, width=80)
    print_report(results, console=console)
    text = console.export_text()
    assert text.count("medssl evaluation") >= 2 and "training" in text and "ComBat" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    wide = Console(record=True, width=200)
    print_report(results, console=wide)
    assert wide.export_text().count("medssl evaluation") == 1
