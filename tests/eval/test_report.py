import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from medssl.eval import evaluate_representation, print_report, read_predictions, score_predictions

CHALLENGE_KEYS = ["mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"]


def cohort(seed: int = 0) -> pd.DataFrame:
    """60 subjects over 4 sites: A, B, C split into train / internal test, D external."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(["A", "B", "C", "D"], 15)
    position = np.tile(np.arange(15), 4)
    split = np.where(sites == "D", "external_test", np.where(position < 10, "train", "internal_test"))
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i:02d}" for i in range(60)],
            "age": rng.uniform(20, 80, 60),
            "sex": rng.choice(["F", "M"], 60),
            "site": sites,
            "split": split,
        }
    )


def age_features(table: pd.DataFrame, dims: int = 16) -> np.ndarray:
    rng = np.random.default_rng(1)
    age = (table["age"].to_numpy() - 50) / 17
    return np.outer(age, rng.normal(size=dims)) + 0.05 * rng.normal(size=(len(table), dims))


def random_features(table: pd.DataFrame, dims: int = 16) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(len(table), dims))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    table = cohort()
    out_dir = tmp_path_factory.mktemp("report")
    results = evaluate_representation(
        age_features(table), table, out_dir, folds=3, baseline_features=random_features(table)
    )
    return results, out_dir


def test_report_writes_every_file(report):
    _, out_dir = report
    for name in (
        "metrics.json",
        "metrics.csv",
        "predictions.csv",
        "predictions_baseline.csv",
        "age_predictions.png",
        "embedding.png",
    ):
        assert (out_dir / name).stat().st_size > 0, name


def test_metrics_json_opens_each_representation_with_the_challenge_keys(report):
    results, out_dir = report
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert saved == results
    for name in ("pretrained", "baseline"):
        entry = saved[name]
        assert list(entry)[: len(CHALLENGE_KEYS)] == CHALLENGE_KEYS
        assert all(isinstance(entry[key], float) for key in CHALLENGE_KEYS)
        assert entry["challenge"]["n_sites"] == 3
        assert set(entry["site_stratified"]) == {"age", "sex"}
        assert set(entry["leave_site_out"]) == {"age", "sex"}
        assert set(entry["site_stratified"]["age"]["mae"]) == {"mean", "std", "n_folds"}
    assert saved["settings"]["leave_site_out_folds"] == 3


def test_features_that_encode_age_beat_random_features_in_every_protocol(report):
    results, _ = report
    pretrained, baseline = results["pretrained"], results["baseline"]
    assert pretrained["mae_external"] < 0.3 * baseline["mae_external"]
    assert pretrained["challenge_score"] < baseline["challenge_score"]
    for protocol in ("site_stratified", "leave_site_out"):
        assert pretrained[protocol]["age"]["mae"]["mean"] < 0.3 * baseline[protocol]["age"]["mae"]["mean"]


def test_metrics_csv_is_long_format_and_matches_the_json(report):
    results, out_dir = report
    long = pd.read_csv(out_dir / "metrics.csv")
    assert list(long.columns) == ["representation", "protocol", "target", "metric", "mean", "std"]
    assert set(long["representation"]) == {"pretrained", "combat", "baseline"}  # 3 sites: ComBat's row too
    assert set(long["protocol"]) == {"challenge", "site_stratified", "leave_site_out"}
    row = long.query("representation == 'baseline' and protocol == 'leave_site_out' and metric == 'mae'")
    assert row["mean"].item() == pytest.approx(results["baseline"]["leave_site_out"]["age"]["mae"]["mean"])
    score = long.query("representation == 'pretrained' and metric == 'challenge_score'")
    assert score["mean"].item() == pytest.approx(results["pretrained"]["challenge_score"])


def test_predictions_csv_rescores_to_the_reported_challenge_numbers(report):
    results, out_dir = report
    rescored = score_predictions(read_predictions(out_dir / "predictions.csv"))
    for key in CHALLENGE_KEYS:
        assert rescored[key] == pytest.approx(results["pretrained"][key])


def test_print_report_shows_pretrained_and_baseline_side_by_side(report):
    results, _ = report
    console = Console(record=True, width=160)
    print_report(results, console=console)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "trained" in line and "random" in line)
    assert header.index("trained") < header.index("random")
    assert "challenge_score" in text and "site-out" in text
    assert f"{results['pretrained']['mae_external']:.3f}" in text


def test_without_test_splits_the_challenge_is_skipped_with_a_note(tmp_path):
    table = cohort().drop(columns="split")
    results = evaluate_representation(age_features(table), table, tmp_path, folds=3, targets=("age", "site"))
    entry = results["pretrained"]
    assert all(entry[key] is None for key in CHALLENGE_KEYS) and entry["challenge"] is None
    assert any("challenge" in note and "skipped" in note for note in entry["notes"])
    assert "site" in entry["site_stratified"] and "site" not in entry["leave_site_out"]
    assert "baseline" not in results
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert set(predictions["fold"]) == {0, 1, 2}
    assert np.mean(np.abs(predictions["age_pred"] - predictions["age"])) < 3.0
    assert (tmp_path / "age_predictions.png").exists() and (tmp_path / "embedding.png").exists()
    console = Console(record=True, width=160)
    print_report(results, console=console)
    assert "baseline" not in console.export_text()


def test_reference_baselines_get_their_own_entries_and_the_constant_one_predicts_the_training_mean(tmp_path):
    table = cohort()
    constant = np.zeros((len(table), 1))
    results = evaluate_representation(
        age_features(table),
        table,
        tmp_path,
        folds=3,
        reference_features={"mean": constant, "intensity": random_features(table, 11)},
    )
    assert {"pretrained", "mean", "intensity"} <= set(results)
    predictions = pd.read_csv(tmp_path / "predictions_mean.csv")
    train_mean = table.loc[table["split"] == "train", "age"].mean()
    tested = predictions["split"] != "train"
    assert np.allclose(predictions.loc[tested, "age_pred"], train_mean)
    # one site predicted for everyone: balanced accuracy at chance
    assert results["mean"]["bacc_site"] == pytest.approx(1 / 3)
    assert results["pretrained"]["mae_internal"] < results["mean"]["mae_internal"]
    console = Console(record=True, width=200)
    print_report(results, console=console)
    text = console.export_text()
    assert "training mean" in text and "intensity stats" in text


def test_the_printed_report_fits_80_columns_without_cutting_a_name(report):
    results, _ = report
    console = Console(record=True, width=80)
    print_report(results, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert "mae_external" in text and "sex BAcc" in text and f"{results['baseline']['mae_external']:.3f}" in text
