"""The registry of evaluation protocols: its entries, the kNN probe in the report, a protocol added
in a test reaching metrics.json, metrics.csv, the printed table and the leaderboard; the online probe."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from medssl.eval import evaluate_representation, print_report, read_predictions, score_predictions
from medssl.eval.combat import combat_harmonise
from medssl.eval.leaderboard import collect_runs, leaderboard, write_leaderboard
from medssl.eval.probes import KNNProbe, knn_protocol, regression_probe
from medssl.eval.protocols import (
    PROTOCOLS,
    LeaderboardColumn,
    Protocol,
    leaderboard_metrics,
    online_probe_scores,
    plan,
    report_order,
    run_protocol,
)
from medssl.eval.score import EvaluationError

KNN_ROWS = [("kNN", "mae_internal ↓"), ("kNN", "mae_external ↓"), ("kNN", "bacc_site ↓")]


def cohort(n_per_site: int = 12, seed: int = 0) -> pd.DataFrame:
    """4 sites: A, B, C split 2:1 into train and internal test, D external."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(["A", "B", "C", "D"], n_per_site)
    position = np.tile(np.arange(n_per_site), 4)
    split = np.where(sites == "D", "external_test", np.where(position % 3 < 2, "train", "internal_test"))
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{index:02d}" for index in range(len(sites))],
            "age": rng.uniform(20, 80, len(sites)),
            "sex": rng.choice(["F", "M"], len(sites)),
            "site": sites,
            "split": split,
        }
    )


def angle_features(table: pd.DataFrame, noise: float = 0.02) -> np.ndarray:
    """Age as an angle (20 -> 0, 80 -> 90 degrees) plus small noise: cosine neighbours are age neighbours."""
    rng = np.random.default_rng(1)
    angle = (table["age"].to_numpy() - 20) / 60 * np.pi / 2
    return np.column_stack([np.cos(angle), np.sin(angle)]) + noise * rng.normal(size=(len(table), 2))


def toy_protocol(name: str = "toy") -> Protocol:
    """A "scores" protocol that reports the mean feature norm, as a user would register one."""

    def run(features: np.ndarray, setup, transform) -> dict:
        return {"mean_norm": float(np.linalg.norm(features, axis=1).mean()), "n_rows": len(setup.table)}

    return Protocol(
        name=name,
        description="mean L2 norm of the features",
        needs=(),
        run=run,
        check=lambda setup: (True, []),
        reports="scores",
        label="toy",
        metrics={"mean_norm": "features"},
        lower_is_better=frozenset({"mean_norm"}),
        leaderboard=(LeaderboardColumn("toy_norm", "toy norm", (name, "mean_norm")),),
    )


@pytest.fixture
def registry():
    """PROTOCOLS, restored to its entries and their order after the test."""
    saved = dict(PROTOCOLS)
    yield PROTOCOLS
    PROTOCOLS.clear()
    PROTOCOLS.update(saved)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    table = cohort()
    out_dir = tmp_path_factory.mktemp("report")
    random = np.random.default_rng(2).normal(size=(len(table), 2))
    results = evaluate_representation(angle_features(table), table, out_dir, folds=3, baseline_features=random)
    return table, results, out_dir


def test_every_entry_is_a_plain_dataclass_under_its_own_name():
    assert list(PROTOCOLS) == ["site_stratified", "leave_site_out", "kit_folds", "challenge", "knn"]
    for name, protocol in PROTOCOLS.items():
        assert dataclasses.is_dataclass(protocol) and type(protocol) is Protocol
        assert protocol.name == name and protocol.description and protocol.label and protocol.metrics
        assert protocol.reports in ("scores", "folds") and callable(protocol.run) and callable(protocol.check)
        assert protocol.lower_is_better | protocol.higher_is_better <= set(protocol.metrics)
        assert not protocol.lower_is_better & protocol.higher_is_better
    assert [protocol.name for protocol in report_order()] == [
        "challenge",
        "knn",
        "site_stratified",
        "leave_site_out",
        "kit_folds",
    ]
    knn = PROTOCOLS["knn"]
    assert "k = 20" in knn.description and "T = 0.07" in knn.description and "solo-learn" in knn.description
    assert set(knn.needs) == set(PROTOCOLS["challenge"].needs)


def test_directions_come_from_the_entries():
    challenge, cv = PROTOCOLS["challenge"], PROTOCOLS["site_stratified"]
    assert challenge.direction("site", "bacc_site") == "↓" and challenge.direction("age", "r2_internal") == "↑"
    assert challenge.direction("site", "chance_bacc") == ""  # reported, not ranked
    assert cv.direction("age", "mae") == "↓" and cv.direction("sex", "roc_auc") == "↑"
    assert cv.direction("site", "balanced_accuracy") == ""  # site information: a property, not a score
    assert PROTOCOLS["knn"].direction("site", "bacc_site") == "↓"


def test_evaluate_reports_the_knn_probe_next_to_the_ridge_probe(report):
    table, results, out_dir = report
    for name in ("pretrained", "combat", "baseline"):
        entry = results[name]
        assert list(entry).index("knn") == list(entry).index("challenge") + 1
        knn = entry["knn"]
        assert {"mae_internal", "mae_external", "bacc_site"} <= set(knn)
        assert (knn["k"], knn["temperature"]) == (20, 0.07) and "predictions" not in knn
    direct = knn_protocol(angle_features(table), table)
    for key in ("mae_internal", "mae_external", "bacc_site", "challenge_score"):
        assert results["pretrained"]["knn"][key] == pytest.approx(direct[key])
    # age as an angle: cosine neighbours read it; random features do not
    assert results["pretrained"]["knn"]["mae_external"] < 0.3 * results["baseline"]["knn"]["mae_external"]
    long = pd.read_csv(out_dir / "metrics.csv")
    knn_rows = long[long["protocol"] == "knn"]
    assert set(knn_rows["representation"]) == {"pretrained", "combat", "baseline"}
    assert list(knn_rows.query("representation == 'pretrained'")[["target", "metric"]].itertuples(index=False)) == [
        ("age", "mae_internal"),
        ("age", "mae_external"),
        ("site", "bacc_site"),
    ]
    assert list(dict.fromkeys(long["protocol"]))[:2] == ["challenge", "knn"]


def test_the_printed_report_shows_the_knn_rows_right_after_the_challenge_rows(report):
    _, results, _ = report
    console = Console(record=True, width=80)
    print_report(results, console=console)
    lines = [line.split() for line in console.export_text().splitlines()]
    protocols = [words[0] for words in lines if words and words[0] in ("challenge", "kNN", "site-strat.")]
    assert protocols == ["challenge"] * 8 + ["kNN"] * 3 + ["site-strat."] * 4
    for protocol, metric in KNN_ROWS:
        assert any(" ".join(words).startswith(f"{protocol} {metric}") for words in lines)


def test_the_knn_rows_of_combat_use_features_harmonised_on_the_train_rows(report):
    table, results, _ = report
    train = np.flatnonzero(table["split"] == "train")
    harmonised = combat_harmonise(angle_features(table), table, train)
    assert results["combat"]["knn"]["mae_internal"] == pytest.approx(knn_protocol(harmonised, table)["mae_internal"])


def test_a_protocol_added_to_the_registry_appears_in_the_report(registry, tmp_path):
    registry["toy"] = toy_protocol()
    for name in ("leave_site_out", "kit_folds", "challenge"):  # and removed ones disappear from it
        del registry[name]
    table = cohort()
    features = angle_features(table)
    results = evaluate_representation(features, table, tmp_path, folds=3)
    entry = results["pretrained"]
    assert entry["toy"] == {"mean_norm": pytest.approx(np.linalg.norm(features, axis=1).mean()), "n_rows": 48}
    assert "challenge" not in entry and "leave_site_out" not in entry and "mae_internal" not in entry
    assert json.loads((tmp_path / "metrics.json").read_text())["pretrained"]["toy"]["n_rows"] == 48
    long = pd.read_csv(tmp_path / "metrics.csv")
    assert list(dict.fromkeys(long["protocol"])) == ["knn", "toy", "site_stratified"]
    toy = long.query("representation == 'pretrained' and protocol == 'toy'")
    assert toy[["target", "metric"]].values.tolist() == [["features", "mean_norm"]]
    # no challenge protocol: the predictions file is the first protocol's that returns predictions, kNN's
    rescored = score_predictions(read_predictions(tmp_path / "predictions.csv"))
    assert rescored["mae_internal"] == pytest.approx(entry["knn"]["mae_internal"])
    console = Console(record=True, width=120)
    print_report(results, console=console)
    (row,) = [line for line in console.export_text().splitlines() if line.split()[:1] == ["toy"]]
    assert "mean_norm ↓" in row and f"{entry['toy']['mean_norm']:.3f}" in row


def test_a_protocol_that_cannot_run_says_why_in_the_notes(registry, tmp_path):
    registry["toy"] = dataclasses.replace(
        toy_protocol(), check=lambda setup: (False, ["toy: needs a scanner, skipped"])
    )
    table = cohort().drop(columns="split")
    results = evaluate_representation(angle_features(table), table, tmp_path, folds=3)
    entry = results["pretrained"]
    assert entry["toy"] is None and entry["knn"] is None and entry["challenge"] is None
    assert "toy: needs a scanner, skipped" in entry["notes"]
    assert "knn: no 'split' column, protocol skipped" in entry["notes"]


def test_run_protocol_turns_an_evaluation_error_into_a_note():
    table = cohort()
    table.loc[table["split"] == "train", "site"] = "A"  # a single training site: no site probe
    scores, notes = run_protocol(PROTOCOLS["knn"], angle_features(table), plan(table, 3, ("age",), 0))
    assert scores is None and len(notes) == 1 and notes[0].startswith("knn: ") and "protocol skipped" in notes[0]


def test_a_knn_probe_with_fewer_training_rows_than_k_says_so():
    table = cohort(n_per_site=6)  # 12 training rows
    scores, notes = run_protocol(PROTOCOLS["knn"], angle_features(table), plan(table, 3, ("age",), 0))
    assert (scores["k"], scores["n_neighbors"], scores["n_train"]) == (20, 12, 12) and "notes" not in scores
    assert notes == [
        "knn: k = 20 cut to the 12 training rows: every training row is a neighbour, the age predicted is a "
        "weighted mean of all training ages"
    ]
    _, notes = run_protocol(PROTOCOLS["knn"], angle_features(cohort()), plan(cohort(), 3, ("age",), 0))
    assert notes == []


def test_the_leaderboard_takes_its_columns_from_the_registry(registry, tmp_path):
    assert list(leaderboard_metrics()) == [
        "mae_internal",
        "mae_external",
        "bacc_site",
        "challenge_score",
        "knn_mae_internal",
        "knn_mae_external",
        "knn_bacc_site",
        "cv_age_mae_site_stratified",
        "cv_age_mae_leave_site_out",
    ]
    registry["toy"] = toy_protocol()
    for seed, norm in ((0, 2.0), (1, 4.0)):
        run_dir = tmp_path / "runs" / "simclr" / f"seed{seed}" / "eval"
        run_dir.mkdir(parents=True)
        entry = {"mae_internal": 5.0, "knn": {"mae_internal": 6.0 + seed}, "toy": {"mean_norm": norm}}
        (run_dir / "metrics.json").write_text(json.dumps({"pretrained": entry}))
    table = leaderboard(collect_runs(tmp_path)).set_index("method")
    assert table.loc["simclr", "toy_norm_mean"] == pytest.approx(3.0)
    assert table.loc["simclr", "knn_mae_internal_mean"] == pytest.approx(6.5)
    assert table.loc["simclr", "knn_mae_internal_sd"] == pytest.approx(np.std([6.0, 7.0], ddof=1))
    assert np.isnan(table.loc["simclr", "knn_bacc_site_mean"])
    markdown = write_leaderboard(tmp_path, n_resamples=10)["md"].read_text()
    assert "| kNN MAE internal | kNN MAE external | kNN site BAcc |" in markdown and "| toy norm |" in markdown


def test_online_probe_scores_are_the_knn_and_ridge_age_maes_on_the_held_out_rows():
    table = cohort(n_per_site=30)
    features, ages = angle_features(table), table["age"].to_numpy()
    train, held_out = np.arange(100), np.arange(100, 120)
    scores = online_probe_scores(features[train], ages[train], features[held_out], ages[held_out])
    assert set(scores) == {"knn_age_mae", "ridge_age_mae"} and all(isinstance(v, float) for v in scores.values())
    knn = KNNProbe(regression=True).fit(features[train], ages[train]).predict(features[held_out])
    ridge = regression_probe().fit(features[train], ages[train]).predict(features[held_out])
    assert scores["knn_age_mae"] == pytest.approx(np.mean(np.abs(knn - ages[held_out])))
    assert scores["ridge_age_mae"] == pytest.approx(np.mean(np.abs(ridge - ages[held_out])))
    assert scores["knn_age_mae"] < 3.0  # age as an angle: a few years at most
    ten = online_probe_scores(features[train], ages[train], features[held_out], ages[held_out], k=1)
    assert (
        ten["knn_age_mae"] != pytest.approx(scores["knn_age_mae"]) and ten["ridge_age_mae"] == scores["ridge_age_mae"]
    )


@pytest.mark.parametrize(
    "train_rows, test_width, ages, message",
    [
        (1, 2, None, "needs 2 and 1 at least"),
        (10, 3, None, "2 training feature dimensions but 3 test ones"),
        (10, 2, "nan", "training ages: expected 10 finite values"),
    ],
)
def test_online_probe_scores_refuses_what_it_cannot_score(train_rows, test_width, ages, message):
    rng = np.random.default_rng(0)
    train_ages = rng.uniform(20, 80, train_rows)
    if ages == "nan":
        train_ages[0] = np.nan
    with pytest.raises(EvaluationError, match=message):
        online_probe_scores(rng.normal(size=(train_rows, 2)), train_ages, rng.normal(size=(4, test_width)), np.ones(4))
