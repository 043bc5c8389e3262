"""The benchmark leaderboard: runs collected, mean ± sd over seeds, paired bootstrap CIs with known answers, files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from medssl.eval.leaderboard import (
    collect_runs,
    leaderboard,
    paired_differences,
    resampled_balanced_accuracy,
    write_leaderboard,
)
from medssl.eval.score import EvaluationError

SEEDS = (0, 1, 2)
SITES = ("site-a", "site-b", "site-c")
SPLIT_SIZES = {"train": 12, "internal_test": 30, "external_test": 20}


def cohort() -> pd.DataFrame:
    """62 subjects: train, internal and external test rows over three training sites."""
    splits = [split for split, size in SPLIT_SIZES.items() for _ in range(size)]
    table = pd.DataFrame({"participant_id": [f"sub-{index:03d}" for index in range(len(splits))], "split": splits})
    table["site"] = [SITES[index % 3] if split != "external_test" else "site-x" for index, split in enumerate(splits)]
    table["age"] = 20.0 + np.arange(len(table))
    return table


def predictions(age_error: np.ndarray, site_correct: bool) -> pd.DataFrame:
    """Predictions whose absolute age error on test rows is ``age_error``; train rows empty, as the contract says."""
    table = cohort()
    test = (table["split"] != "train").to_numpy()
    table["age_pred"] = np.nan
    table.loc[test, "age_pred"] = table.loc[test, "age"] + age_error
    wrong_site = table["site"].map({"site-a": "site-b", "site-b": "site-c", "site-c": "site-a", "site-x": "site-a"})
    table["site_pred"] = np.where(test, table["site"] if site_correct else wrong_site, None)
    return table


def representation(mae_internal: float, bacc: float = 0.5, cv_mae: float = 7.0) -> dict:
    cv = {"age": {"mae": {"mean": cv_mae, "std": 0.1, "n_folds": 3}, "r2": {"mean": 0.1, "std": 0.1, "n_folds": 3}}}
    return {
        "mae_internal": mae_internal,
        "mae_external": mae_internal + 2,
        "bacc_site": bacc,
        "challenge_score": bacc**0.3 * (mae_internal + 2),
        "ramp_combined": None,
        "site_stratified": cv,
        "leave_site_out": {"age": {"mae": {"mean": cv_mae + 1, "std": 0.2, "n_folds": 3}}},
    }


def write_run(run_dir, entries: dict[str, tuple[dict, pd.DataFrame]]) -> None:
    """A finished run: eval/metrics.json and one predictions file per representation."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True)
    metrics = {name: entry for name, (entry, _) in entries.items()}
    (eval_dir / "metrics.json").write_text(json.dumps({**metrics, "settings": {"folds": 3}}))
    for name, (_, table) in entries.items():
        table.to_csv(eval_dir / ("predictions.csv" if name == "pretrained" else f"predictions_{name}.csv"), index=False)


def random_init_errors(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(
        2.0, 10.0, size=SPLIT_SIZES["internal_test"] + SPLIT_SIZES["external_test"]
    )


@pytest.fixture
def bench(tmp_path):
    """Recipes ``better`` (first in benchmark.json) and ``simclr``, seeds 0-2, with known differences.

    ``better``: every test subject's absolute age error is random init's minus 1 year, every site
    prediction wrong (BAcc 0 against random init's 1). ``simclr``: random init's errors plus a
    +1/-1 alternation that averages to 0. The baselines of ``better`` (the first recipe) must be
    the ones used; ``simclr``'s carry other numbers.
    """
    (tmp_path / "benchmark.json").write_text(json.dumps({"recipes": ["better", "simclr"], "seeds": list(SEEDS)}))
    alternation = np.where(np.arange(len(random_init_errors(0))) % 2 == 0, 1.0, -1.0)
    for seed in SEEDS:
        errors = random_init_errors(seed)
        baselines = {
            "baseline": (representation(10.0 + seed), predictions(errors, site_correct=True)),
            "intensity": (representation(8.0), predictions(errors + 0.5, site_correct=True)),
            "mean": (representation(18.0, bacc=1 / 3), predictions(errors + 5, site_correct=False)),
        }
        write_run(
            tmp_path / "runs" / "better" / f"seed{seed}",
            {
                "pretrained": (representation(4.0 + seed, bacc=0.2), predictions(errors - 1, site_correct=False)),
                **baselines,
            },
        )
        other = {name: (representation(99.0), table) for name, (_, table) in baselines.items()}
        write_run(
            tmp_path / "runs" / "simclr" / f"seed{seed}",
            {
                "pretrained": (
                    representation(6.0, bacc=0.9, cv_mae=5.0 + 2 * seed),
                    predictions(errors + alternation, True),
                ),
                **other,
            },
        )
    (tmp_path / "runs" / "simclr" / "seed3" / "checkpoints").mkdir(parents=True)  # a killed run: no eval/metrics.json
    return tmp_path


def difference(table: pd.DataFrame, method: str, reference: str, metric: str) -> pd.Series:
    rows = table[(table["method"] == method) & (table["reference"] == reference) & (table["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_collect_runs_reads_finished_runs_and_takes_baselines_from_the_first_recipe(bench):
    runs = collect_runs(bench)
    rows = runs.metrics
    assert list(dict.fromkeys(rows["method"])) == [
        "better",
        "simclr",
        "random init",
        "intensity statistics",
        "training mean",
    ]
    assert sorted(rows.loc[rows["method"] == "simclr", "seed"]) == [0, 1, 2]  # seed3 was killed: not read
    assert list(rows.loc[rows["method"] == "random init", "mae_internal"]) == [10.0, 11.0, 12.0]  # from better, not 99
    assert runs.n_sites == 3
    assert set(runs.predictions) >= {("better", 0), ("random init", 2), ("training mean", 1)}


def test_leaderboard_reports_mean_and_sd_over_seeds(bench):
    table = leaderboard(collect_runs(bench)).set_index("method")
    assert table.loc["better", "mae_internal_mean"] == pytest.approx(5.0)
    assert table.loc["better", "mae_internal_sd"] == pytest.approx(1.0)
    assert table.loc["better", "mae_external_mean"] == pytest.approx(7.0)
    assert table.loc["simclr", "cv_age_mae_site_stratified_mean"] == pytest.approx(7.0)
    assert table.loc["simclr", "cv_age_mae_site_stratified_sd"] == pytest.approx(2.0)
    assert table.loc["simclr", "cv_age_mae_leave_site_out_mean"] == pytest.approx(8.0)
    assert table.loc["simclr", "mae_internal_sd"] == pytest.approx(0.0)
    assert table.loc["training mean", "bacc_site_mean"] == pytest.approx(1 / 3)
    assert list(table["n_seeds"]) == [3] * 5
    assert list(table["kind"]) == ["method", "method", "baseline", "baseline", "baseline"]


def test_errors_one_year_lower_on_every_subject_give_minus_one_with_a_point_ci(bench):
    table = paired_differences(collect_runs(bench), n_resamples=300)
    for metric in ("mae_internal", "mae_external"):
        row = difference(table, "better", "random init", metric)
        assert row["difference"] == pytest.approx(-1.0)
        assert row["ci_low"] == pytest.approx(-1.0) and row["ci_high"] == pytest.approx(-1.0)
        assert row["excludes_zero"] and row["n_seeds"] == 3
    site = difference(table, "better", "random init", "bacc_site")
    assert (site["difference"], site["ci_low"], site["ci_high"]) == pytest.approx((-1.0, -1.0, -1.0))


def test_a_method_with_random_init_errors_on_average_has_a_ci_containing_zero(bench):
    table = paired_differences(collect_runs(bench), n_resamples=300)
    row = difference(table, "simclr", "random init", "mae_internal")
    assert row["difference"] == pytest.approx(0.0, abs=1e-9)
    assert row["ci_low"] < 0 < row["ci_high"]
    assert not row["excludes_zero"]
    against_simclr = difference(table, "better", "simclr", "mae_internal")  # errors e - 1 vs e +/- 1
    assert against_simclr["difference"] == pytest.approx(-1.0)
    assert against_simclr["ci_low"] < -1 < against_simclr["ci_high"] < 0
    assert set(table["reference"]) == {"random init", "simclr"}
    assert not ((table["method"] == "simclr") & (table["reference"] == "simclr")).any()


def test_bootstrap_is_seeded_and_shared_across_comparisons(bench):
    runs = collect_runs(bench)
    first = paired_differences(runs, n_resamples=200, seed=5)
    pd.testing.assert_frame_equal(first, paired_differences(runs, n_resamples=200, seed=5))
    assert not first.equals(paired_differences(runs, n_resamples=200, seed=6))


def test_resampled_balanced_accuracy_equals_scikit_learn_with_draw_counts():
    rng = np.random.default_rng(0)
    y_true = rng.choice(["a", "b", "c", "d"], size=40)
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.choice(["a", "b", "c", "d"], size=40))
    counts = np.stack([np.bincount(rng.integers(0, 40, size=40), minlength=40) for _ in range(25)]).astype(float)
    ours = resampled_balanced_accuracy(y_true, y_pred, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" on some resamples
        expected = [balanced_accuracy_score(y_true, y_pred, sample_weight=row) for row in counts]
    np.testing.assert_allclose(ours, expected)


def test_write_leaderboard_writes_the_four_files_with_every_row(bench):
    paths = write_leaderboard(bench, command="medssl benchmark --out bench", wall_time_s=90.0, n_resamples=200)
    assert {path.name for path in paths.values()} == {
        f"leaderboard.{extension}" for extension in ("md", "json", "csv", "png")
    }
    markdown = paths["md"].read_text()
    assert "`medssl benchmark --out bench`" in markdown and "1.5 min" in markdown
    assert "| better | 3 | 5.000 ± 1.000 |" in markdown
    assert "-1.000 [-1.000, -1.000]*" in markdown
    assert "1/3 = 0.333" in markdown
    report = json.loads(paths["json"].read_text())
    assert [row["method"] for row in report["leaderboard"]] == [
        "better",
        "simclr",
        "random init",
        "intensity statistics",
        "training mean",
    ]
    assert report["machine"]["cpu_count"] >= 1 and report["wall_time_s"] == 90.0
    assert len(report["differences"]) == 9  # better vs both references, simclr vs random init; 3 metrics each
    assert list(pd.read_csv(paths["csv"])["method"]) == [row["method"] for row in report["leaderboard"]]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluations_without_intensity_and_mean_leave_their_rows_out_with_a_note(tmp_path):
    for recipe in ("simclr", "yaware_age"):
        for seed in (0, 1):
            errors = random_init_errors(seed)
            write_run(
                tmp_path / "runs" / recipe / f"seed{seed}",
                {
                    "pretrained": (representation(5.0), predictions(errors - 1, True)),
                    "baseline": (representation(9.0), predictions(errors, True)),
                },
            )
    paths = write_leaderboard(tmp_path, n_resamples=100)
    report = json.loads(paths["json"].read_text())
    assert [row["method"] for row in report["leaderboard"]] == ["simclr", "yaware_age", "random init"]
    assert any("intensity statistics" in note and "seed(s) 0, 1" in note for note in report["notes"])
    assert "note: row 'training mean' left out" in paths["md"].read_text()


def test_recipes_with_another_encoder_than_the_baselines_get_a_note(bench):
    for recipe, encoder in (("better", "resnet18"), ("simclr", "densenet121")):
        for seed in SEEDS:
            (bench / "runs" / recipe / f"seed{seed}" / "recipe.yaml").write_text(f"model:\n  encoder: {encoder}\n")
    notes = collect_runs(bench).notes
    assert any("(resnet18)" in note and "simclr (densenet121)" in note for note in notes)


def test_a_folder_without_finished_runs_is_an_error(tmp_path):
    (tmp_path / "runs" / "simclr" / "seed0").mkdir(parents=True)
    with pytest.raises(EvaluationError, match="no finished run"):
        collect_runs(tmp_path)


def test_an_extra_reference_such_as_a_control_is_compared_with_every_other_method(bench):
    from medssl.eval.leaderboard import REFERENCES

    paths = write_leaderboard(bench, n_resamples=200, references=(*REFERENCES, "better"))
    rows = pd.DataFrame(json.loads(paths["json"].read_text())["differences"])
    against_better = rows[rows["reference"] == "better"]
    assert set(against_better["method"]) == {"simclr"}
    mae = against_better[against_better["metric"] == "mae_internal"].iloc[0]
    assert mae["difference"] > 0  # simclr's errors are one year larger than better's on average


def test_a_reference_that_is_no_row_is_refused_naming_the_rows(bench):
    from medssl.eval.leaderboard import REFERENCES

    with pytest.raises(EvaluationError, match=r"reference 'bettr': no such row in .*its rows: .*better.*simclr"):
        write_leaderboard(bench, n_resamples=200, references=(*REFERENCES, "bettr"))
    assert not (bench / "leaderboard.md").exists()


def test_a_rebuild_keeps_the_benchmark_wall_time(bench):
    write_leaderboard(bench, command="medssl benchmark --out bench", wall_time_s=90.0, n_resamples=200)
    paths = write_leaderboard(bench, n_resamples=200)  # medssl leaderboard BENCH
    assert json.loads(paths["json"].read_text())["wall_time_s"] == 90.0
    assert "wall time: 1.5 min" in paths["md"].read_text()


def test_a_missing_benchmark_folder_is_named_as_missing(tmp_path):
    with pytest.raises(EvaluationError, match="no such folder"):
        collect_runs(tmp_path / "bench")
