import json
from functools import partial

import numpy as np
import pandas as pd
import pytest

from medssl.eval import evaluate_representation, leave_site_out_folds, site_stratified_folds
from medssl.eval.folds import challenge_folds, score_challenge_folds
from medssl.eval.probes import challenge_protocol
from medssl.eval.score import EvaluationError


def participants(counts: dict[str, int]) -> pd.DataFrame:
    sites = [site for site, count in counts.items() for _ in range(count)]
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(len(sites))],
            "site": sites,
            "age": rng.uniform(20, 80, len(sites)),
            "sex": rng.choice(["F", "M"], len(sites)),
        }
    )


def assert_test_parts_partition_the_rows(folds, n_rows):
    test_rows = np.concatenate([test for _, test in folds])
    assert len(test_rows) == n_rows  # no subject in two test folds ...
    assert set(test_rows) == set(range(n_rows))  # ... and every subject in one
    for train, test in folds:
        assert not set(train) & set(test)
        assert len(train) + len(test) == n_rows


def test_site_stratified_folds_hold_every_site_in_every_train_and_test_part():
    table = participants({"A": 15, "B": 10, "C": 7, "D": 5})
    folds = site_stratified_folds(table, n_folds=5, seed=0)
    assert len(folds) == 5
    assert_test_parts_partition_the_rows(folds, len(table))
    for train, test in folds:
        assert set(table["site"].iloc[train]) == {"A", "B", "C", "D"}
        assert set(table["site"].iloc[test]) == {"A", "B", "C", "D"}


def test_site_stratified_folds_keep_each_site_share_within_one_subject():
    table = participants({"A": 20, "B": 10})
    for _, test in site_stratified_folds(table, n_folds=5, seed=3):
        counts = table["site"].iloc[test].value_counts()
        assert counts["A"] == 4 and counts["B"] == 2


def test_sites_smaller_than_the_fold_count_are_pooled_without_error():
    table = participants({"A": 15, "B": 15, "tiny1": 2, "tiny2": 1})
    folds = site_stratified_folds(table, n_folds=5, seed=0)
    assert_test_parts_partition_the_rows(folds, len(table))
    tiny_rows = set(np.flatnonzero(table["site"].str.startswith("tiny")))
    tiny_per_fold = [len(tiny_rows & set(test)) for _, test in folds]
    assert max(tiny_per_fold) == 1  # the 3 small-site subjects are spread, not lumped
    for _, test in folds:
        assert {"A", "B"} <= set(table["site"].iloc[test])


def test_site_stratified_folds_depend_on_the_seed_only():
    table = participants({"A": 12, "B": 12})
    first = site_stratified_folds(table, n_folds=3, seed=1)
    again = site_stratified_folds(table, n_folds=3, seed=1)
    other = site_stratified_folds(table, n_folds=3, seed=2)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_site_stratified_folds_can_stratify_on_another_column_or_none():
    table = participants({"A": 12, "B": 12})
    for _, test in site_stratified_folds(table, n_folds=3, stratify="sex"):
        assert set(table["sex"].iloc[test]) == {"F", "M"}
    assert_test_parts_partition_the_rows(site_stratified_folds(table, n_folds=4, stratify=None), len(table))


@pytest.mark.parametrize("n_folds", [1, 25, 2.5, True])
def test_site_stratified_folds_refuse_impossible_fold_counts(n_folds):
    with pytest.raises(EvaluationError, match="n_folds"):
        site_stratified_folds(participants({"A": 12, "B": 12}), n_folds=n_folds)


def test_folds_name_a_missing_or_incomplete_site_column():
    table = participants({"A": 6, "B": 6})
    with pytest.raises(EvaluationError, match="missing column 'scanner'"):
        site_stratified_folds(table, stratify="scanner")
    table.loc[4, "site"] = None
    with pytest.raises(EvaluationError, match="'site' has a missing value at data row 5"):
        leave_site_out_folds(table)


def test_leave_site_out_folds_never_share_a_site_between_train_and_test():
    table = participants({"A": 8, "B": 5, "C": 3, "D": 6})
    folds = leave_site_out_folds(table)
    assert len(folds) == 4  # one fold per site
    assert_test_parts_partition_the_rows(folds, len(table))
    held_out = []
    for train, test in folds:
        test_sites = set(table["site"].iloc[test])
        assert len(test_sites) == 1
        assert not test_sites & set(table["site"].iloc[train])
        held_out += test_sites
    assert sorted(held_out) == ["A", "B", "C", "D"]


def test_leave_site_out_folds_group_sites_into_the_requested_fold_count():
    table = participants({"A": 8, "B": 5, "C": 3, "D": 6, "E": 4})
    folds = leave_site_out_folds(table, n_folds=2)
    assert len(folds) == 2
    assert_test_parts_partition_the_rows(folds, len(table))
    for train, test in folds:
        assert not set(table["site"].iloc[test]) & set(table["site"].iloc[train])


def test_leave_site_out_folds_need_two_sites_and_at_most_one_fold_per_site():
    with pytest.raises(EvaluationError, match="at least 2"):
        leave_site_out_folds(participants({"A": 10}))
    with pytest.raises(EvaluationError, match="number of sites"):
        leave_site_out_folds(participants({"A": 10, "B": 10}), n_folds=3)


def kit_cohort(n_per_site: int = 12) -> tuple[pd.DataFrame, np.ndarray]:
    """Five sites; test rows interleaved with the train rows; features that carry age and a site offset."""
    table = participants({site: n_per_site for site in ("A", "B", "C", "D", "E")})
    table["split"] = np.where(np.arange(len(table)) % 4 == 3, "internal_test", "train")
    rng = np.random.default_rng(1)
    site_offsets = pd.get_dummies(table["site"]).to_numpy(dtype=float)
    features = np.column_stack([table["age"] / 10, site_offsets, rng.normal(size=(len(table), 3))])
    return table, features


def write_folds(path, train_rows: int, n_folds: int = 3) -> dict:
    """Folds in the kit's layout over the train rows: one site (a fifth of the rows, in order) external per fold."""
    rows = np.arange(train_rows)
    folds = {}
    for fold in range(n_folds):
        external = rows[(rows * 5 // train_rows) == fold]
        rest = np.setdiff1d(rows, external)
        folds[f"fold{fold}"] = {
            "train": rest[rest % 5 != fold].tolist(),
            "internal_test": rest[rest % 5 == fold].tolist(),
            "external_test": external.tolist(),
        }
    path.write_text(json.dumps(folds))
    return folds


def test_challenge_folds_count_the_train_rows_of_the_table_in_order(tmp_path):
    table, _ = kit_cohort()
    train_positions = np.flatnonzero(table["split"] == "train")
    written = write_folds(tmp_path / "folds.json", len(train_positions))
    folds = challenge_folds(table, None, tmp_path / "folds.json")
    assert [fold.name for fold in folds] == list(written)
    for fold, rows in zip(folds, written.values()):
        for part in ("train", "internal_test", "external_test"):
            assert list(getattr(fold, part)) == list(train_positions[rows[part]])
    assert challenge_folds(table, tmp_path, "auto") == []  # not a challenge kit: no folds of its own


def test_each_challenge_fold_is_scored_by_the_challenge_protocol_on_its_own_parts(tmp_path):
    table, features = kit_cohort()
    write_folds(tmp_path / "folds.json", int((table["split"] == "train").sum()))
    folds = challenge_folds(table, None, tmp_path / "folds.json")
    summary = score_challenge_folds(features, table, folds, partial(challenge_protocol, seed=0))
    per_fold = summary.attrs["per_fold"]
    assert list(per_fold["fold"]) == ["fold0", "fold1", "fold2"]
    for fold, row in zip(folds, per_fold.itertuples()):
        parts = {"train": fold.train, "internal_test": fold.internal_test, "external_test": fold.external_test}
        fold_table = pd.concat([table.iloc[rows].assign(split=part) for part, rows in parts.items()], ignore_index=True)
        expected = challenge_protocol(features[np.concatenate(list(parts.values()))], fold_table, seed=0)
        assert row.mae_internal == pytest.approx(expected["mae_internal"])
        assert row.mae_external == pytest.approx(expected["mae_external"])
        assert row.bacc_site == pytest.approx(expected["bacc_site"])
        assert row.challenge_score == pytest.approx(expected["challenge_score"])
    assert row.mae_internal < 5  # age is in the features: the probe finds it
    for metric in ("mae_internal", "mae_external", "bacc_site", "challenge_score"):
        line = summary[summary["metric"] == metric].iloc[0]
        assert line["protocol"] == "kit_folds" and line["n_folds"] == 3
        assert line["mean"] == pytest.approx(per_fold[metric].mean())
        assert line["std"] == pytest.approx(per_fold[metric].std(ddof=0))


def test_the_report_carries_the_challenge_folds_next_to_the_other_protocols(tmp_path):
    table, features = kit_cohort()
    write_folds(tmp_path / "folds.json", int((table["split"] == "train").sum()))
    folds = challenge_folds(table, None, tmp_path / "folds.json")
    results = evaluate_representation(
        features,
        table,
        tmp_path / "eval",
        folds=2,
        targets=("age",),
        baseline_features=features[::-1].copy(),
        challenge_folds=folds,
    )
    for name in ("pretrained", "combat", "baseline"):
        assert results[name]["kit_folds"]["age"]["mae_external"]["n_folds"] == 3
    per_fold = pd.read_csv(tmp_path / "eval" / "kit_folds.csv")
    assert len(per_fold) == 9 and set(per_fold["representation"]) == {"pretrained", "combat", "baseline"}
    pretrained = per_fold[per_fold["representation"] == "pretrained"]
    assert results["pretrained"]["kit_folds"]["site"]["bacc_site"]["mean"] == pytest.approx(
        pretrained["bacc_site"].mean()
    )
    long = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert len(long[long["protocol"] == "kit_folds"]) == 12


def test_pretrain_refuses_a_bad_folds_file_before_training(tmp_path):
    from medssl.errors import CohortError
    from medssl.pipeline import pretrain
    from medssl.recipe import load_recipe, smoke_recipe

    folds_file = tmp_path / "folds.json"
    folds_file.write_text(json.dumps([{"train": [0, 1], "internal_test": [10**6], "external_test": []}]))
    recipe = smoke_recipe(load_recipe("simclr", [f"eval.folds_file={folds_file}"]))
    with pytest.raises(CohortError, match="folds.json"):
        pretrain(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
