"""finetune.splits: fit and validation parts without leaks, stratified, and finetune.train_size subjects."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.data.cohort import load_cohort
from medssl.errors import CohortError, RecipeError
from medssl.finetune.splits import check_no_leakage, split_cohort, validation_split
from medssl.finetune.target import resolve_target

from .helpers import clinical_table, tiny_recipe


def test_validation_split_keeps_every_session_of_a_subject_in_one_part():
    table = clinical_table()
    for seed in range(5):
        fit_idx, val_idx = validation_split(table, 0.25, seed=seed, stratify=("site", "diagnosis"))
        fit_ids, val_ids = set(table["participant_id"].iloc[fit_idx]), set(table["participant_id"].iloc[val_idx])
        assert not fit_ids & val_ids
        assert sorted(np.concatenate([fit_idx, val_idx])) == list(range(len(table)))
        assert len(val_ids) == round(0.25 * table["participant_id"].nunique())


def test_validation_split_is_stratified_on_site_and_class():
    table = clinical_table()
    firsts = table.drop_duplicates("participant_id")
    fit_idx, val_idx = validation_split(firsts, 0.25, seed=3, stratify=("site", "diagnosis"))
    validation = firsts.iloc[val_idx]
    counts = validation.groupby(["site", "diagnosis"]).size()
    # 15 of 60 subjects over 10 strata of 6: every stratum gets 1 or 2
    assert len(counts) == 10 and counts.min() >= 1 and counts.max() <= 2
    assert validation_split(firsts, 0.25, seed=4, stratify=("site",))[1].tolist() != val_idx.tolist()


def test_validation_split_rejects_a_fraction_outside_zero_one():
    with pytest.raises(RecipeError, match="val_fraction"):
        validation_split(clinical_table(), 1.0)


def test_split_cohort_leaks_no_subject_and_no_external_site(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    target = resolve_target(cohort.table, tiny_recipe(tiny_cohort).finetune)
    train_ids = set(cohort.subset("train").table["participant_id"])
    for seed in range(4):
        parts = split_cohort(cohort, target, 0.25, seed).as_dict()
        ids = {name: set(part.table["participant_id"]) for name, part in parts.items()}
        names = list(ids)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                assert not ids[first] & ids[second], (first, second)
        assert ids["fit"] | ids["validation"] == train_ids
        assert ids["validation"] and ids["fit"]
        external_sites = set(parts["external_test"].table["site"])
        assert external_sites
        for name in ("fit", "validation", "internal_test"):
            assert not external_sites & set(parts[name].table["site"])


def test_check_no_leakage_names_a_shared_subject_and_a_trained_external_site():
    table = clinical_table().drop_duplicates("participant_id")
    fit_part, val_part, external = table.iloc[:20], table.iloc[20:30], table[table["site"] == "E"]
    with pytest.raises(CohortError, match="in both fit and external_test"):
        check_no_leakage({"fit": fit_part, "validation": val_part, "external_test": table.iloc[:1]})
    with pytest.raises(CohortError, match="site 'E' is in external_test and in fit"):
        check_no_leakage({"fit": table[table["site"] != "D"].iloc[:5].assign(site="E"), "external_test": external})
    check_no_leakage({"fit": fit_part, "validation": val_part})  # disjoint parts pass


def test_train_size_keeps_that_many_training_subjects_a_new_draw_per_seed(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    target = resolve_target(cohort.table, tiny_recipe(tiny_cohort).finetune)
    kept = []
    for seed in range(3):
        parts = split_cohort(cohort, target, 0.25, seed, train_size=6)
        ids = set(parts.fit.table["participant_id"]) | set(parts.validation.table["participant_id"])
        assert len(ids) == 6 and ids <= set(cohort.subset("train").table["participant_id"])
        assert set(parts.fit.table["diagnosis"]) == {"patient", "control"}  # stratified on class
        assert len(parts.internal_test) == len(cohort.subset("internal_test"))  # tests are never shrunk
        kept.append(ids)
    assert len({frozenset(ids) for ids in kept}) > 1
