import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_predict

from medssl.eval import challenge_protocol, cross_validate_probes, score_predictions, site_stratified_folds
from medssl.eval.probes import (
    CHALLENGE_ALPHAS,
    CHALLENGE_CS,
    KNN_K,
    KNN_TEMPERATURE,
    MAX_FEATURES,
    KNNProbe,
    check_features,
    knn_protocol,
    out_of_fold_predictions,
)
from medssl.eval.score import EvaluationError


def cohort(n_per_site: int = 25, sites=("A", "B", "C", "D", "E"), external=("E",), seed: int = 0) -> pd.DataFrame:
    """Sites of equal size; in the non-external sites, 70% train and 30% internal test."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in sites:
        for k in range(n_per_site):
            split = "external_test" if site in external else ("train" if k < 0.7 * n_per_site else "internal_test")
            rows.append({"participant_id": f"{site}-{k:02d}", "site": site, "split": split})
    table = pd.DataFrame(rows)
    table["age"] = rng.uniform(20, 80, len(table))
    table["sex"] = rng.choice(["F", "M"], len(table))
    return table


def age_features(table: pd.DataFrame, dims: int = 32, noise: float = 0.05, seed: int = 1) -> np.ndarray:
    """Every dimension a noisy linear function of age: a ridge probe recovers age almost exactly."""
    rng = np.random.default_rng(seed)
    age = (table["age"].to_numpy() - 50) / 17
    return np.outer(age, rng.normal(size=dims)) + noise * rng.normal(size=(len(table), dims))


def site_features(table: pd.DataFrame, dims: int = 32, seed: int = 2) -> np.ndarray:
    """One random direction per site plus small noise: the site is linearly separable."""
    rng = np.random.default_rng(seed)
    codes = pd.factorize(table["site"])[0]
    directions = rng.normal(size=(codes.max() + 1, dims))
    return directions[codes] + 0.1 * rng.normal(size=(len(table), dims))


def random_features(table: pd.DataFrame, dims: int = 32, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(table), dims))


def metric(result: pd.DataFrame, target: str, name: str) -> float:
    return float(result.set_index(["target", "metric"]).loc[(target, name), "mean"])


def mean_predictor_mae(ages: np.ndarray) -> float:
    return float(np.mean(np.abs(ages - ages.mean())))


def test_features_that_encode_age_give_a_small_cross_validated_mae():
    table = cohort()
    result = cross_validate_probes(age_features(table), table, targets=("age",))
    baseline = mean_predictor_mae(table["age"].to_numpy())
    assert metric(result, "age", "mae") < 0.1 * baseline
    assert metric(result, "age", "r2") > 0.95


def test_age_in_whole_decades_is_still_regressed_and_a_target_may_be_one_string():
    table = cohort()
    table["age"] = (table["age"] // 10 * 10).astype(int)  # 20, 30, ... 70: fewer than 11 distinct values
    result = cross_validate_probes(age_features(table), table, targets="age")
    assert set(result["metric"]) == {"mae", "r2"} and set(result["target"]) == {"age"}
    table["decade"] = table["age"]  # the same values under another name are categories
    assert "balanced_accuracy" in set(cross_validate_probes(age_features(table), table, targets=["decade"])["metric"])


def test_random_features_give_an_mae_near_the_mean_predictor():
    table = cohort()
    result = cross_validate_probes(random_features(table), table, targets=("age",))
    baseline = mean_predictor_mae(table["age"].to_numpy())
    assert 0.85 * baseline < metric(result, "age", "mae") < 1.3 * baseline
    assert metric(result, "age", "r2") < 0.1


def test_features_that_encode_site_give_a_high_site_balanced_accuracy_and_random_ones_chance():
    table = cohort()
    encoded = cross_validate_probes(site_features(table), table, targets=("site",))
    random = cross_validate_probes(random_features(table), table, targets=("site",))
    assert metric(encoded, "site", "balanced_accuracy") > 0.95
    assert metric(encoded, "site", "roc_auc") > 0.95
    assert metric(random, "site", "balanced_accuracy") < 0.2 + 0.15  # chance is 1/5
    assert abs(metric(random, "site", "roc_auc") - 0.5) < 0.15


def test_result_is_long_format_with_mean_std_over_folds_and_binary_auc_for_sex():
    table = cohort()
    folds = site_stratified_folds(table, n_folds=4, seed=0)
    result = cross_validate_probes(age_features(table), table, targets=("age", "sex"), folds=folds, protocol="custom")
    assert list(result.columns) == ["protocol", "target", "metric", "mean", "std", "n_folds"]
    assert set(zip(result["target"], result["metric"])) == {
        ("age", "mae"),
        ("age", "r2"),
        ("sex", "balanced_accuracy"),
        ("sex", "roc_auc"),
    }
    assert (result["protocol"] == "custom").all()
    assert (result["n_folds"] == 4).all()
    assert (result["std"] >= 0).all()
    # sex is unrelated to these features
    assert abs(metric(result, "sex", "roc_auc") - 0.5) < 0.2


def test_missing_targets_are_skipped_with_a_note_and_missing_values_are_left_out():
    table = cohort()
    table.loc[::3, "sex"] = None
    result = cross_validate_probes(age_features(table), table, targets=("age", "diagnosis", "sex"))
    assert set(result["target"]) == {"age", "sex"}
    assert any("diagnosis" in note for note in result.attrs["notes"])


def test_probes_do_not_depend_on_the_scale_of_each_feature():
    # StandardScaler sits inside the pipeline: rescaling columns changes nothing
    table = cohort()
    features = age_features(table, noise=0.5) + random_features(table)
    scales = np.logspace(-3, 3, features.shape[1])
    plain = cross_validate_probes(features, table, targets=("age", "sex"))
    scaled = cross_validate_probes(features * scales, table, targets=("age", "sex"))
    np.testing.assert_allclose(plain["mean"], scaled["mean"], rtol=1e-5)


def test_out_of_fold_predictions_cover_every_row_once():
    table = cohort(n_per_site=10)
    folds = site_stratified_folds(table, n_folds=5)
    predicted = out_of_fold_predictions(age_features(table), table, folds)
    assert np.isfinite(predicted).all()
    assert np.mean(np.abs(predicted - table["age"])) < 3.0


def test_challenge_protocol_on_site_free_age_features_gives_small_mae_and_chance_site_accuracy():
    table = cohort()
    results = challenge_protocol(age_features(table), table)
    assert results["mae_internal"] < 2.0 and results["mae_external"] < 2.0
    assert results["n_sites"] == 4 and results["chance_bacc"] == 0.25
    assert results["bacc_site"] < 0.25 + 0.25
    assert results["age_alpha"] in CHALLENGE_ALPHAS and results["site_C"] in CHALLENGE_CS


def test_challenge_protocol_detects_site_information():
    table = cohort()
    features = np.hstack([age_features(table), site_features(table)])
    results = challenge_protocol(features, table)
    assert results["bacc_site"] > 0.9
    assert results["challenge_score"] == pytest.approx(results["bacc_site"] ** 0.3 * results["mae_external"])


def test_challenge_protocol_returns_score_predictions_keys_and_rescorable_predictions():
    table = cohort()
    results = challenge_protocol(random_features(table), table)
    predictions = results["predictions"]
    rescored = score_predictions(predictions)
    for key, value in rescored.items():
        assert results[key] == pytest.approx(value, nan_ok=True)
    train = predictions["split"] == "train"
    assert predictions.loc[train, "age_pred"].isna().all()
    assert predictions.loc[~train, "age_pred"].notna().all()
    assert set(predictions.loc[~train, "site_pred"]) <= {"A", "B", "C", "D"}
    assert list(predictions["participant_id"]) == list(table["participant_id"])


def test_random_features_in_the_challenge_protocol_score_near_the_mean_predictor():
    table = cohort()
    results = challenge_protocol(random_features(table), table)
    external = table["split"] == "external_test"
    ages = table.loc[external, "age"].to_numpy()
    train_mean = table.loc[table["split"] == "train", "age"].mean()
    assert results["mae_external"] > 0.8 * np.mean(np.abs(ages - train_mean))


def test_challenge_protocol_is_quick_on_100_subjects_with_512_features():
    table = cohort(n_per_site=20)
    start = time.perf_counter()
    challenge_protocol(random_features(table, dims=512), table)
    assert time.perf_counter() - start < 20.0


def test_features_are_validated_against_the_table_and_the_challenge_limit():
    table = cohort(n_per_site=4)
    with pytest.raises(EvaluationError, match="rows but the participants table has"):
        check_features(np.zeros((3, 4)), table)
    with pytest.raises(EvaluationError, match=f"at most {MAX_FEATURES}"):
        check_features(np.zeros((len(table), MAX_FEATURES + 1), dtype=np.float32), table)
    features = np.zeros((len(table), 4))
    features[2, 1] = np.nan
    with pytest.raises(EvaluationError, match="row 2 has NaN"):
        check_features(features, table)
    with pytest.raises(EvaluationError, match="expected \\(n_subjects, n_features\\)"):
        check_features(np.zeros(len(table)), table)


def test_challenge_protocol_requires_its_columns_and_two_training_sites():
    table = cohort()
    with pytest.raises(EvaluationError, match="missing column 'split'"):
        challenge_protocol(age_features(table), table.drop(columns="split"))
    one_site = table.copy()
    one_site.loc[one_site["split"] == "train", "site"] = "A"
    with pytest.raises(EvaluationError, match="at least 2 sites"):
        challenge_protocol(age_features(one_site), one_site)


def test_challenge_age_probe_is_the_kits_plain_ridge_grid_search_and_standardize_is_a_variant():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    table = cohort()
    features = (age_features(table, noise=0.5) + random_features(table)) * np.logspace(-2, 2, 32)
    results = challenge_protocol(features, table)
    train = (table["split"] == "train").to_numpy()
    kit = GridSearchCV(Ridge(), {"alpha": CHALLENGE_ALPHAS}, cv=5, scoring="r2").fit(
        features[train], table["age"][train]
    )
    tested = ~train
    np.testing.assert_allclose(results["predictions"]["age_pred"][tested], kit.predict(features[tested]), rtol=1e-6)
    standardized = challenge_protocol(features, table, standardize=True)
    rescaled = challenge_protocol(features / np.logspace(-2, 2, 32), table, standardize=True)
    assert standardized["mae_internal"] == pytest.approx(rescaled["mae_internal"], rel=1e-5)
    assert standardized["mae_internal"] != pytest.approx(results["mae_internal"], rel=1e-3)


def test_leave_site_out_probes_choose_regularisation_on_whole_sites():
    from medssl.eval.probes import site_grouped_splits

    sites = np.repeat(np.array(["A", "B", "C", "D"]), 5)
    for train_idx, validation_idx in site_grouped_splits(sites):
        assert not set(sites[train_idx]) & set(sites[validation_idx])
    assert site_grouped_splits(np.array(["A"] * 4)) is None
    table = cohort()
    folds = site_stratified_folds(table, n_folds=5)
    grouped = cross_validate_probes(age_features(table), table, targets=("age",), folds=folds, group_inner_by="site")
    assert grouped.query("metric == 'mae'")["mean"].item() < 3.0


# ----------------------------------------------------------------------------- the kNN probe
def knn_by_hand(train, targets, test, k=20, temperature=0.07, vote=False):
    """The kNN probe's formula, one test row and one neighbour at a time: cosine similarity of
    the L2-normalised rows, the k most similar training rows, weights exp(s / T); the weighted
    vote (and each class's share of the weights) or the weighted mean of the targets."""
    train, test = np.asarray(train, dtype=float).tolist(), np.asarray(test, dtype=float).tolist()

    def unit(row):
        norm = math.sqrt(sum(value * value for value in row))
        return [value / norm for value in row]

    predictions, shares = [], []
    for row in test:
        query = unit(row)
        similarities = [sum(a * b for a, b in zip(query, unit(other))) for other in train]
        nearest = sorted(range(len(train)), key=lambda index: -similarities[index])[: min(k, len(train))]
        weights = {index: math.exp(similarities[index] / temperature) for index in nearest}
        if vote:
            totals: dict = {}
            for index, weight in weights.items():
                totals[targets[index]] = totals.get(targets[index], 0.0) + weight
            predictions.append(max(totals, key=totals.get))
            shares.append({label: total / sum(totals.values()) for label, total in totals.items()})
        else:
            predictions.append(
                sum(weight * targets[index] for index, weight in weights.items()) / sum(weights.values())
            )
    return (np.array(predictions), shares) if vote else np.array(predictions)


def test_the_knn_probe_has_solo_learns_defaults():
    probe = KNNProbe()
    assert (KNN_K, KNN_TEMPERATURE) == (20, 0.07)
    assert probe.get_params() == {"k": 20, "temperature": 0.07, "regression": None}
    assert clone(KNNProbe(k=5, temperature=0.1)).get_params()["k"] == 5


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (5, 0.5), (1, 0.07), (200, 1.0)])
def test_knn_regression_is_the_similarity_weighted_mean_of_the_formula(k, temperature):
    rng = np.random.default_rng(k)
    train, test = rng.normal(size=(60, 6)), rng.normal(size=(15, 6))
    ages = rng.uniform(20, 80, 60)
    probe = KNNProbe(k=k, temperature=temperature, regression=True).fit(train, ages)
    np.testing.assert_allclose(probe.predict(test), knn_by_hand(train, ages, test, k, temperature), rtol=1e-10)
    assert probe.n_neighbors_ == min(k, 60)  # k cut to the training rows, as solo-learn does


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (7, 0.3)])
def test_knn_classification_is_the_weighted_vote_of_the_formula(k, temperature):
    rng = np.random.default_rng(k)
    train, test = rng.normal(size=(80, 5)), rng.normal(size=(25, 5))
    sites = rng.choice(["A", "B", "C"], 80)
    probe = KNNProbe(k=k, temperature=temperature).fit(train, sites)
    expected, shares = knn_by_hand(train, sites, test, k, temperature, vote=True)
    assert list(probe.predict(test)) == list(expected)
    probabilities = probe.predict_proba(test)
    for row, share in zip(probabilities, shares):
        np.testing.assert_allclose(row, [share.get(label, 0.0) for label in probe.classes_], rtol=1e-10)


def test_knn_probe_known_answers():
    # two training rows along the axes, the test row on the first: similarities 1 and 0
    train, ages = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([10.0, 20.0])
    probe = KNNProbe(k=2, temperature=1.0, regression=True).fit(train, ages)
    expected = (10 * math.e + 20) / (math.e + 1)  # weights e^1 and e^0
    assert probe.predict([[3.0, 0.0]])[0] == pytest.approx(expected)  # 12.689...: the length does not count
    assert KNNProbe(k=1, regression=True).fit(train, ages).predict([[2.0, 0.1]])[0] == 10.0
    # one neighbour of class b at similarity 1, three of class a at similarity 0.5:
    # at T = 0.07 e^(1/T) outweighs 3 e^(0.5/T); at T = 10, 3 e^0.05 outweighs e^0.1
    half = [0.5, math.sqrt(0.75)]
    votes = np.array([[1.0, 0.0], half, half, half])
    labels = np.array(["b", "a", "a", "a"])
    assert KNNProbe(k=4).fit(votes, labels).predict([[1.0, 0.0]])[0] == "b"
    assert KNNProbe(k=4, temperature=10.0).fit(votes, labels).predict([[1.0, 0.0]])[0] == "a"


def test_knn_probe_composes_with_the_cv_splitters_and_decides_its_task_from_the_target():
    table = cohort()
    folds = site_stratified_folds(table, n_folds=5)
    features = site_features(table)
    predicted = cross_val_predict(KNNProbe(), features, table["site"].to_numpy(), cv=folds)
    assert np.mean(predicted == table["site"].to_numpy()) > 0.95  # every site its own direction
    ages = cross_val_predict(KNNProbe(), features, table["age"].to_numpy(), cv=folds)
    assert np.issubdtype(ages.dtype, np.floating) and not np.isin(ages, table["age"]).all()  # a weighted mean
    search = GridSearchCV(KNNProbe(regression=True), {"k": [1, 10]}, cv=folds, scoring="neg_mean_absolute_error")
    assert search.fit(features, table["age"]).best_params_["k"] in (1, 10)


def test_knn_probe_refuses_a_bad_k_or_temperature_and_probabilities_of_a_regression():
    features, ages = np.eye(3), np.array([20.5, 30.5, 40.5])
    for settings in ({"k": 0}, {"k": 2.5}, {"temperature": 0.0}):
        with pytest.raises(EvaluationError, match="kNN probe"):
            KNNProbe(**settings).fit(features, ages)
    with pytest.raises(EvaluationError, match="categorical target"):
        KNNProbe().fit(features, ages).predict_proba(features)


def test_knn_protocol_scores_the_challenge_splits_like_the_challenge_protocol():
    table = cohort()
    features = np.hstack([age_features(table), site_features(table)])
    results = knn_protocol(features, table)
    assert (results["k"], results["temperature"], results["n_train"]) == (
        20,
        0.07,
        int((table["split"] == "train").sum()),
    )
    assert results["bacc_site"] > 0.9  # the site directions dominate the cosine
    rescored = score_predictions(results["predictions"])
    for key, value in rescored.items():
        assert results[key] == pytest.approx(value, nan_ok=True)
    train = (table["split"] == "train").to_numpy()
    tested = ~train
    by_hand = knn_by_hand(features[train], table["age"].to_numpy()[train], features[tested])
    np.testing.assert_allclose(results["predictions"]["age_pred"][tested], by_hand, rtol=1e-10)
    with pytest.raises(EvaluationError, match="missing column 'split'"):
        knn_protocol(features, table.drop(columns="split"))
