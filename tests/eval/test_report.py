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
    assert set(long["protocol"]) == {"challenge", "knn", "site_stratified", "leave_site_out"}
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


def crafted_entry(shift: float, per_site: int = 10) -> dict:
    """A metrics.json entry with challenge, CV and kit-folds rows; ``shift`` added to the age errors."""
    challenge = {
        "mae_internal": 4.0 + shift,
        "mae_external": 5.0 + shift,
        "bacc_site": 0.3,
        "challenge_score": 3.5 + shift,
        "ramp_combined": 2.0 + shift,
        "r2_internal": 0.6 - shift / 10,
        "r2_external": 0.5 - shift / 10,
        "chance_bacc": 0.25,
        "min_internal_per_site": per_site,
    }

    def cv(mean: float, **extra) -> dict:
        return {"mean": mean, "std": 0.1, "n_folds": 3, **extra}

    folds = {"min_internal_per_site": per_site}
    return {
        "challenge": challenge,
        "site_stratified": {
            "age": {"mae": cv(6.0 + shift), "r2": cv(0.4)},
            "sex": {"balanced_accuracy": cv(0.6), "roc_auc": cv(0.7)},
            "site": {"balanced_accuracy": cv(0.9)},
        },
        "kit_folds": {
            "age": {"mae_internal": cv(4.5 + shift, **folds)},
            "site": {"bacc_site": cv(0.0, **folds)},
            "age+site": {"challenge_score": cv(0.0, **folds)},
        },
        "notes": [],
    }


def crafted_report(names=("pretrained", "baseline", "intensity", "mean"), per_site: int = 10) -> dict:
    return {name: crafted_entry(shift=index, per_site=per_site) for index, name in enumerate(names)}


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize(
    "names",
    [("pretrained", "baseline", "intensity", "mean"), ("pretrained", "combat", "baseline", "intensity", "mean")],
)
def test_the_printed_report_never_drops_a_representation_at_80_columns_or_fewer(names, width):
    results = crafted_report(names)
    console = Console(record=True, width=width)
    print_report(results, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    for index in range(len(names)):  # each representation's own numbers: its column was printed
        assert f"{4.0 + index:.3f}" in text and f"{6.0 + index:.3f}" in text
    for word in ("trained", "ComBat" if "combat" in names else "trained", "random", "intensity", "training"):
        assert word in text


def test_each_ranked_row_shows_its_direction_and_an_unranked_one_none():
    console = Console(record=True, width=200)
    print_report(crafted_report(), console=console)
    lines = console.export_text().splitlines()

    def row(protocol: str, metric: str) -> str:
        return next(line for line in lines if line.split()[:1] == [protocol] and f" {metric} " in line)

    lower = ["mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"]
    for protocol, metric in [
        *(("challenge", f"{name} ↓") for name in lower),
        ("challenge", "r2_internal ↑"),
        ("site-strat.", "age mae ↓"),
        ("site-strat.", "age r2 ↑"),
        ("site-strat.", "sex BAcc ↑"),
        ("site-strat.", "sex ROC AUC ↑"),
        ("kit", "challenge_score ↓"),
    ]:
        assert row(protocol, metric)
    # site prediction in a CV protocol and the chance level are reported, not ranked
    assert row("site-strat.", "site BAcc").split("site BAcc")[1].split() == ["0.900"] * 4
    assert "↑" not in row("challenge", "chance_bacc") and "↓" not in row("challenge", "chance_bacc")
    assert "↓ lower is better, ↑ higher is better" in "\n".join(lines)


def test_a_trivial_baseline_beating_the_trained_encoder_is_named_in_one_line_under_the_table():
    results = crafted_report()
    console = Console(record=True, width=400)
    print_report(results, console=console)
    assert "trivial baseline" not in console.export_text()  # the trained encoder is best everywhere
    results["mean"]["challenge"]["ramp_combined"] = 1.5  # the training mean "wins" ramp_combined
    results["intensity"]["challenge"]["challenge_score"] = 3.0
    results["intensity"]["site_stratified"]["sex"]["roc_auc"]["mean"] = 0.71
    console = Console(record=True, width=400)
    print_report(results, console=console)
    (line,) = [line for line in console.export_text().splitlines() if "trivial baseline" in line]
    assert line.startswith("warning: a trivial baseline beats the trained encoder on 3 of ")
    assert "training mean on challenge ramp_combined" in line
    assert "intensity stats on challenge challenge_score, site-strat. sex ROC AUC" in line


def test_site_scores_with_too_few_subjects_per_site_print_as_na_with_the_count():
    results = crafted_report(per_site=2)
    console = Console(record=True, width=200)
    print_report(results, console=console)
    text = console.export_text()
    for protocol, metric in [
        ("challenge", "bacc_site ↓"),
        ("challenge", "challenge_score ↓"),
        ("kit folds", "bacc_site ↓"),
    ]:
        line = next(line for line in text.splitlines() if line.strip().startswith(protocol) and metric in line)
        assert line.split(metric)[1].split() == ["n/a"] * 4, line
    assert "0.000" not in text  # the kit folds' perfect-looking 0.000 ± 0.000
    assert "n/a (too few subjects: 2 per site): bacc_site, challenge_score, ramp_combined need at least 5" in text
    assert f"{results['pretrained']['challenge']['mae_internal']:.3f}" in text  # the age scores stay


def test_site_scores_from_five_subjects_per_site_are_printed():
    console = Console(record=True, width=200)
    print_report(crafted_report(per_site=5), console=console)
    assert "n/a" not in console.export_text()
