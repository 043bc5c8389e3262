"""Method-independent figures of a cohort: scanner ranges, trivial probes, the diagnosis oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medssl.cli import app
from medssl.data.cohort import load_cohort
from medssl.data.synthetic import synthesize_cohort
from medssl.eval.cohort_figures import diagnosis_oracle, inspect_cohort, scanner_ranges
from medssl.eval.features import INTENSITY_PERCENTILES, IntensityStatistics
from medssl.recipe import Recipe


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clinical")
    return synthesize_cohort(folder, subjects=120, sites=6, external_sites=2, shape=24, diagnosis=True, seed=3)


def test_every_external_scanner_lies_inside_the_training_sites_ranges(clinical):
    ranges = scanner_ranges(load_cohort(clinical))
    assert ranges["all_external_inside"] and ranges["training_sites"] == 4 and ranges["external_sites"] == 2
    for row in ranges["parameters"]:
        assert all(row["train_min"] <= value <= row["train_max"] for value in row["external"])


def test_the_oracle_reads_the_diagnosis_and_loses_it_when_the_labels_are_shuffled(clinical):
    cohort = load_cohort(clinical)
    recipe = Recipe()
    assert diagnosis_oracle(cohort, recipe)["roc_auc"] >= 0.85
    cohort.table["diagnosis"] = np.random.default_rng(0).permutation(cohort.table["diagnosis"].to_numpy())
    assert abs(diagnosis_oracle(cohort, recipe)["roc_auc"] - 0.5) < 0.2


def test_trivial_probes_constant_predictor_is_at_chance_and_intensity_reads_age(clinical):
    figures = inspect_cohort(load_cohort(clinical), Recipe())
    mean, intensity = figures["probes"]["training_mean"], figures["probes"]["intensity"]
    assert mean["bacc_site"] == pytest.approx(mean["chance_bacc"])
    assert intensity["mae_internal"] < mean["mae_internal"]
    assert json.dumps(figures)  # JSON-ready


def test_intensity_statistics_are_percentiles_of_the_foreground():
    volume = torch.zeros(1, 1, 8, 8, 8)
    volume[0, 0, 2:6, 2:6, 2:6] = torch.arange(64, dtype=torch.float32).reshape(4, 4, 4) + 1
    features = IntensityStatistics()(volume)
    expected = np.percentile(np.arange(64) + 1.0, INTENSITY_PERCENTILES)
    assert np.allclose(features.numpy()[0], expected, atol=1e-4)


def test_data_inspect_prints_the_figures_and_writes_json(clinical, tmp_path):
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, ["data", "inspect", str(clinical), "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Scanner parameters" in result.output and "Diagnosis oracle" in result.output
    saved = json.loads(out.read_text())
    assert saved["subjects"] == 120 and saved["scanner_ranges"]["all_external_inside"]
    # each split's subjects and sites, as the table has them
    table = load_cohort(clinical).table
    for split, counts in saved["splits"].items():
        rows = table[table["split"] == split]
        assert counts == {"subjects": len(rows), "sites": rows["site"].nunique()}
        assert f"{split} {len(rows)} ({rows['site'].nunique()} sites)" in result.output
    assert list(saved["splits"]) == ["train", "internal_test", "external_test"]
    assert sum(counts["subjects"] for counts in saved["splits"].values()) == 120


def test_data_inspect_of_a_cohort_without_splits_says_the_probes_need_them(tiny_cohort, tmp_path):
    # README: without a split column every subject is train, and the challenge protocol is skipped
    import shutil

    import pandas as pd

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    table = pd.read_csv(cohort / "participants.tsv", sep="\t")
    table.drop(columns="split").to_csv(cohort / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, ["data", "inspect", str(cohort), "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (
        "Trivial probes skipped (no internal_test / external_test rows): the challenge protocol needs train, "
        "internal_test and external_test rows in the 'split' column" in " ".join(result.output.split())
    )
    assert "Traceback" not in result.output and "age MAE" not in result.output
    saved = json.loads(out.read_text())
    assert saved["probes"] == {} and saved["probes_skipped"] == "no internal_test / external_test rows"


def test_data_inspect_prints_n_a_for_site_scores_of_too_few_subjects_per_site(tiny_cohort, tmp_path):
    """The tiny cohort has one or two internal-test subjects a site: site BAcc and L_c would read as results."""
    from medssl.eval.score import MIN_SUBJECTS_PER_SITE

    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, ["data", "inspect", str(tiny_cohort), "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    fewest = min(scores["min_internal_per_site"] for scores in saved["probes"].values())
    assert fewest < MIN_SUBJECTS_PER_SITE
    rows = [line for line in result.output.splitlines() if "│ training mean" in line or "│ intensity " in line]
    assert rows and all(line.count("n/a") == 2 for line in rows)  # site BAcc and L_c, the MAEs still shown
    assert f"n/a (too few subjects: {fewest} per site)" in result.output


def test_data_inspect_with_scratch_fine_tunes_from_scratch_on_the_whole_training_split(clinical, tmp_path):
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(
        app,
        ["data", "inspect", str(clinical), "finetune.epochs=1", "finetune.seeds=[0]", "--scratch", "--json", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for split in ("internal_test", "external_test"):
        assert f"from scratch (resnet18, diagnosis, whole training split, 1 seeds), {split}: roc_auc" in result.output
    scratch = json.loads(out.read_text())["from_scratch"]
    assert set(scratch) == {"internal_test", "external_test"}
    assert 0 <= scratch["internal_test"]["roc_auc"]["mean"] <= 1
