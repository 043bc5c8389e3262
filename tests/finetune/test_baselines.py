"""finetune.baselines: the constant and intensity baselines, on every training part the command accepts."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.eval.probes import quiet_fits
from medssl.finetune.baselines import intensity_probe
from medssl.finetune.protocol import finetune_encoder

from .helpers import tiny_recipe


@pytest.mark.parametrize(
    ("labels", "probe", "note"),
    [
        (["a"] * 5 + ["b"] * 4, "GridSearchCV", ""),
        (["a"] * 2 + ["b"] * 3, "GridSearchCV", "2-fold inner CV"),
        (["a"] * 1 + ["b"] * 3, "Pipeline", "C fixed at 1, no inner CV"),
        (["b"] * 4, "DummyClassifier", "class frequencies"),
    ],
)
def test_the_intensity_probe_fits_every_training_part_the_command_accepts(labels, probe, note):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(labels), 5))
    fitted, said = intensity_probe(np.array(labels, dtype=object), classification=True)
    assert type(fitted).__name__ == probe and (note in said if note else said == "")
    with quiet_fits(features):
        fitted.fit(features, np.array(labels, dtype=object))
    probabilities = fitted.predict_proba(features)
    assert probabilities.shape == (len(labels), len(set(labels)))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    if probe == "GridSearchCV":
        assert fitted.n_splits_ == min(3, min(labels.count(label) for label in set(labels)))


def test_fine_tuning_on_four_training_subjects_scores_every_baseline_and_says_how(tmp_path, tiny_cohort):
    recipe = tiny_recipe(tiny_cohort, seeds=[0, 1, 2], train_size=4)
    results = finetune_encoder(recipe, None, tmp_path / "run")
    for run in results["runs"]:
        assert run["n_fit"] + run["n_validation"] == 4
        for split in ("internal_test", "external_test"):
            assert 0.0 <= run["baselines"]["intensity"][split]["balanced_accuracy"] <= 1.0
        # four subjects leave no class three members: never the usual 3-fold inner CV, and a note says so
        assert run["baseline_note"].startswith("intensity baseline: ")
        assert any(note.startswith(run["baseline_note"]) and str(run["seed"]) in note for note in results["notes"])


def test_reports_carry_the_constant_and_intensity_baselines_on_the_same_splits(tmp_path, tiny_cohort):
    results = finetune_encoder(tiny_recipe(tiny_cohort, seeds=[0, 1]), None, tmp_path / "out")
    baselines = results["baselines"]
    assert set(baselines) == {"constant", "intensity"}
    for split in ("internal_test", "external_test"):
        assert baselines["constant"][split]["roc_auc"]["mean"] == pytest.approx(0.5)  # one score for everyone
        assert 0.0 <= baselines["intensity"][split]["roc_auc"]["mean"] <= 1.0
    assert all(set(run["baselines"]["intensity"]) == {"internal_test", "external_test"} for run in results["runs"])
