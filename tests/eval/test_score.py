import warnings

import numpy as np
import pandas as pd
import pytest

from medssl.errors import MedsslError
from medssl.eval import challenge_score, ramp_combined, read_predictions, score_predictions
from medssl.eval.score import EvaluationError, balanced_accuracy, r2


def predictions_table(**overrides) -> pd.DataFrame:
    """Two training sites A and B; internal test on A and B; external test on site C."""
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:02d}" for i in range(7)],
            "split": [
                "train",
                "train",
                "internal_test",
                "internal_test",
                "internal_test",
                "external_test",
                "external_test",
            ],
            "site": ["A", "B", "A", "B", "B", "C", "C"],
            "age": [25.0, 35.0, 20.0, 30.0, 40.0, 50.0, 70.0],
        }
    )
    table["age_pred"] = table["age"]
    table["site_pred"] = table["site"]
    for column, values in overrides.items():
        table[column] = values
    return table


def test_challenge_score_reproduces_the_published_rows():
    assert round(challenge_score(mae_ext=3.76, bacc=0.051), 2) == 1.54
    # the published inputs are rounded (BAcc to 3 decimals), so L_c is only known to about 0.01
    assert challenge_score(mae_ext=4.10, bacc=0.066) == pytest.approx(1.82, abs=0.01)


def test_challenge_score_is_mae_ext_when_site_is_perfectly_predicted_and_zero_without_age_error():
    assert challenge_score(mae_ext=4.0, bacc=1.0) == 4.0
    assert challenge_score(mae_ext=0.0, bacc=1.0) == 0.0
    assert challenge_score(mae_ext=5.0, bacc=0.0) == 0.0


def test_ramp_combined_by_hand():
    # 4.0 * 0.5 + 3.2 / 64 = 2 + 0.05
    assert ramp_combined(mae_ext=4.0, bacc=0.5, mae_int=3.2, n_sites=64) == pytest.approx(2.05)
    # 3.0 * 0.25 + 2.0 / 4 = 0.75 + 0.5
    assert ramp_combined(mae_ext=3.0, bacc=0.25, mae_int=2.0, n_sites=4) == pytest.approx(1.25)


@pytest.mark.parametrize(
    "call",
    [
        lambda: challenge_score(mae_ext=3.0, bacc=1.5),
        lambda: challenge_score(mae_ext=-1.0, bacc=0.5),
        lambda: challenge_score(mae_ext=float("nan"), bacc=0.5),
        lambda: ramp_combined(mae_ext=3.0, bacc=0.5, mae_int=2.0, n_sites=0),
        lambda: ramp_combined(mae_ext=3.0, bacc=0.5, mae_int=2.0, n_sites=2.5),
    ],
)
def test_score_functions_reject_out_of_range_inputs(call):
    with pytest.raises(EvaluationError):
        call()


def test_perfect_predictions_score_zero():
    scores = score_predictions(predictions_table())
    assert scores["mae_internal"] == 0.0
    assert scores["mae_external"] == 0.0
    assert scores["bacc_site"] == 1.0
    assert scores["challenge_score"] == 0.0
    assert scores["ramp_combined"] == 0.0
    assert scores["r2_internal"] == 1.0 and scores["r2_external"] == 1.0
    assert (scores["n_sites"], scores["n_internal"], scores["n_external"]) == (2, 3, 2)
    assert scores["chance_bacc"] == 0.5


def test_constant_predictions_give_the_hand_computed_scores():
    table = predictions_table(age_pred=30.0, site_pred="A")
    scores = score_predictions(table)
    # internal ages 20, 30, 40 -> |errors| 10, 0, 10; external ages 50, 70 -> 20, 40
    assert scores["mae_internal"] == pytest.approx(20 / 3)
    assert scores["mae_external"] == pytest.approx(30.0)
    # internal sites A, B, B all predicted A: recall 1 on A, 0 on B
    assert scores["bacc_site"] == pytest.approx(0.5)
    assert scores["challenge_score"] == pytest.approx(24.367572, abs=1e-5)  # 0.5 ** 0.3 = 0.8122524
    assert scores["ramp_combined"] == pytest.approx(15.0 + 10 / 3)  # 30 * 0.5 + (20/3) / 2
    # predicting the internal mean age explains none of the variance: R^2 = 1 - 200 / 200
    assert scores["r2_internal"] == pytest.approx(0.0)


def test_chance_level_site_prediction_with_64_sites_gives_bacc_one_over_64():
    sites = [f"site{s:02d}" for s in range(64)]
    rows = [{"split": "train", "site": site, "age": 30.0, "age_pred": 30.0, "site_pred": site} for site in sites]
    # subject k of site s is predicted as site (s + k) mod 64: every site is right exactly once in 64
    for s, site in enumerate(sites):
        for k in range(64):
            rows.append(
                {
                    "split": "internal_test",
                    "site": site,
                    "age": 40.0,
                    "age_pred": 41.0,
                    "site_pred": sites[(s + k) % 64],
                }
            )
    rows.append({"split": "external_test", "site": "new", "age": 50.0, "age_pred": 53.0, "site_pred": sites[0]})
    scores = score_predictions(pd.DataFrame(rows))
    assert scores["n_sites"] == 64
    assert scores["bacc_site"] == pytest.approx(1 / 64)
    assert scores["chance_bacc"] == pytest.approx(1 / 64)
    assert scores["challenge_score"] == pytest.approx((1 / 64) ** 0.3 * 3.0)
    assert scores["ramp_combined"] == pytest.approx(3.0 / 64 + 1.0 / 64)


def test_balanced_accuracy_averages_recall_over_true_classes_without_warning_on_extra_predicted_ones():
    y_true = np.array(["a", "a", "a", "b"])
    y_pred = np.array(["a", "a", "z", "z"])  # "z" is no true class: it only counts as an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 0) / 2)


def test_balanced_accuracy_and_r2_are_nan_when_undefined():
    assert np.isnan(balanced_accuracy(np.array([]), np.array([])))
    assert np.isnan(r2(np.array([3.0, 3.0, 3.0]), np.array([3.0, 3.0, 3.0])))  # constant truth
    assert np.isnan(r2(np.array([3.0]), np.array([2.0])))
    assert np.isnan(r2(np.array([1.0, 2.0]), np.array([1.0, np.nan])))


def test_r2_on_a_hand_worked_case():
    # total sum of squares 2, residual 0.5: 1 - 0.5 / 2
    assert r2(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.5])) == pytest.approx(0.75)


def test_train_rows_are_not_scored():
    table = predictions_table()
    table.loc[table["split"] == "train", "age_pred"] = [np.nan, 1000.0]
    table.loc[table["split"] == "train", "site_pred"] = ["B", None]
    assert score_predictions(table)["challenge_score"] == 0.0


def test_given_n_sites_overrides_the_count_of_training_sites():
    table = predictions_table(age_pred=30.0)
    scores = score_predictions(table, n_sites=64)
    assert scores["n_sites"] == 64
    assert scores["ramp_combined"] == pytest.approx(30.0 * 1.0 + (20 / 3) / 64)


@pytest.mark.parametrize("prefix", ["site_prob_", "prob_"])
def test_site_probability_columns_replace_site_pred_by_their_argmax(prefix):
    table = predictions_table().drop(columns="site_pred")
    # internal rows: A, B, B; predicted A, A, B by the largest probability
    table[f"{prefix}A"] = [0.9, 0.1, 0.6, 0.7, 0.2, 0.5, 0.5]
    table[f"{prefix}B"] = [0.1, 0.9, 0.4, 0.3, 0.8, 0.5, 0.5]
    scores = score_predictions(table)
    assert scores["bacc_site"] == pytest.approx((1.0 + 0.5) / 2)


def test_site_pred_col_can_name_a_custom_probability_prefix():
    table = predictions_table().drop(columns="site_pred")
    table["proba_A"] = [0.9, 0.1, 0.6, 0.7, 0.2, 0.5, 0.5]
    table["proba_B"] = [0.1, 0.9, 0.4, 0.3, 0.8, 0.5, 0.5]
    assert score_predictions(table, site_pred_col="proba_")["bacc_site"] == pytest.approx(0.75)
    with pytest.raises(EvaluationError, match="no site probability columns"):
        score_predictions(table)


def test_a_site_pred_column_that_is_no_probability_is_not_taken_for_one():
    table = predictions_table().drop(columns="site_pred")
    table["site_pred_confidence"] = 0.9  # written by the predictor next to its probabilities
    table["site_prob_A"] = [0.9, 0.1, 0.6, 0.7, 0.2, 0.5, 0.5]
    table["site_prob_B"] = [0.1, 0.9, 0.4, 0.3, 0.8, 0.5, 0.5]
    assert score_predictions(table)["bacc_site"] == pytest.approx(0.75)


def test_predicted_sites_spelled_unlike_the_true_ones_are_refused_not_scored_as_wrong():
    # pandas reads a site column "1, 2, 3" as numbers while the probability columns say "01", "02"
    table = predictions_table(site=[1, 2, 1, 2, 2, 3, 3]).drop(columns="site_pred")
    table["site_prob_01"] = [0.9, 0.1, 0.9, 0.1, 0.1, 0.5, 0.5]
    table["site_prob_02"] = [0.1, 0.9, 0.1, 0.9, 0.9, 0.5, 0.5]
    with pytest.raises(EvaluationError, match=r"no predicted site \('01', '02'\) is a site of column 'site'"):
        score_predictions(table)
    table["site_prob_1"], table["site_prob_2"] = table.pop("site_prob_01"), table.pop("site_prob_02")
    assert score_predictions(table)["bacc_site"] == pytest.approx(1.0)


@pytest.mark.parametrize("column", ["site_pred", "site_prob_A"])
def test_external_rows_may_leave_the_site_prediction_empty_internal_ones_may_not(column):
    # the site BAcc is scored on the internal test only: an unseen site has no right answer
    table = predictions_table()
    if column != "site_pred":
        table = table.drop(columns="site_pred")
        table["site_prob_A"] = [0.9, 0.1, 0.6, 0.7, 0.2, np.nan, np.nan]
        table["site_prob_B"] = [0.1, 0.9, 0.4, 0.3, 0.8, np.nan, np.nan]
    else:
        table.loc[5:, column] = np.nan
    expected = 1.0 if column == "site_pred" else 0.75
    assert score_predictions(table)["bacc_site"] == pytest.approx(expected)
    table.loc[3, column] = np.nan
    with pytest.raises(EvaluationError, match=f"column '{column}' has a missing value for participant sub-03"):
        score_predictions(table)


def test_read_predictions_reads_csv_and_tsv_and_keeps_site_codes_as_text(tmp_path):
    table = predictions_table(site=["01", "02", "01", "02", "02", "03", "03"]).drop(columns="site_pred")
    table["site_prob_01"] = [1, 0, 1, 0, 1, 0, 0]
    table["site_prob_02"] = [0, 1, 0, 1, 0, 1, 1]
    table["age_pred"] = table["age"] + 2.0
    table.to_csv(tmp_path / "predictions.csv", index=False)
    table.to_csv(tmp_path / "predictions.tsv", sep="\t", index=False)
    expected = score_predictions(table)
    for name in ("predictions.csv", "predictions.tsv"):
        loaded = read_predictions(tmp_path / name)
        assert loaded["site"].iloc[0] == "01"
        scores = score_predictions(loaded)
        assert scores == pytest.approx(expected)
        assert scores["bacc_site"] == pytest.approx((1.0 + 0.5) / 2)
        assert scores["mae_external"] == pytest.approx(2.0)


def test_read_predictions_accepts_other_column_names(tmp_path):
    table = predictions_table().rename(columns={"age_pred": "brain_age", "site": "scanner"})
    table.to_csv(tmp_path / "p.csv", index=False)
    loaded = read_predictions(tmp_path / "p.csv", age_pred_col="brain_age", site_col="scanner")
    assert score_predictions(loaded, age_pred_col="brain_age", site_col="scanner")["bacc_site"] == 1.0


def test_missing_column_error_names_the_file_and_the_column(tmp_path):
    predictions_table().drop(columns="age_pred").to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(
        EvaluationError, match=r"p\.csv: missing column 'age_pred'.*give age_pred_col \(command line: --age-pred-col\)"
    ):
        read_predictions(tmp_path / "p.csv")


def test_missing_site_prediction_error_mentions_the_probability_convention():
    with pytest.raises(EvaluationError, match="site_prob_<site>"):
        score_predictions(predictions_table().drop(columns="site_pred"))


def test_nan_error_names_the_column_and_the_participant(tmp_path):
    table = predictions_table()
    table.loc[5, "age_pred"] = np.nan
    table.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(EvaluationError, match=r"p\.csv: column 'age_pred' has a missing value for participant sub-05"):
        score_predictions(read_predictions(tmp_path / "p.csv"))


def test_non_numeric_age_error_names_the_value():
    table = predictions_table(age_pred=["1", "2", "3", "forty", "5", "6", "7"])
    with pytest.raises(EvaluationError, match="'age_pred' has 'forty' for participant sub-03"):
        score_predictions(table)


def test_a_repeated_row_is_refused_naming_the_file_the_participant_and_both_rows(tmp_path):
    table = predictions_table()
    pd.concat([table, table.iloc[[6]]]).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(
        EvaluationError,
        match=r"p\.csv: duplicate participant_id 'sub-06' \(data rows 7, 8\); expected one row per participant",
    ):
        score_predictions(read_predictions(tmp_path / "p.csv"))


def test_two_different_rows_of_one_participant_are_refused():
    table = predictions_table(participant_id=["a", "b", "c", "d", "e", "f", "b"], age_pred=[1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(EvaluationError, match=r"duplicate participant_id 'b' \(data rows 2, 7\)"):
        score_predictions(table)


def test_an_empty_participant_id_is_refused_naming_the_row():
    table = predictions_table()
    table.loc[4, "participant_id"] = np.nan
    with pytest.raises(EvaluationError, match="column 'participant_id' is empty in data row 5"):
        score_predictions(table)


def test_an_id_column_given_by_name_must_exist_but_participant_id_is_optional(tmp_path):
    predictions_table().to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(EvaluationError, match=r"p\.csv: missing column 'pid'.*--id-col"):
        read_predictions(tmp_path / "p.csv", id_col="pid")
    with pytest.raises(EvaluationError, match="missing column 'pid'"):
        score_predictions(predictions_table(), id_col="pid")
    without_ids = predictions_table().drop(columns="participant_id")
    assert score_predictions(without_ids)["n_external"] == 2
    renamed = predictions_table().rename(columns={"participant_id": "pid"})
    with pytest.raises(EvaluationError, match="duplicate pid 'sub-00'"):
        score_predictions(pd.concat([renamed, renamed.iloc[[0]]]), id_col="pid")


def test_a_non_numeric_age_on_a_train_row_is_refused_like_on_a_test_row(tmp_path):
    table = predictions_table()
    table["age"] = table["age"].astype(object)
    table.loc[1, "age"] = "abc"
    table.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(EvaluationError, match=r"p\.csv: column 'age' has 'abc' for participant sub-01 \(data row 2\)"):
        score_predictions(read_predictions(tmp_path / "p.csv"))
    with pytest.raises(EvaluationError, match="'age_pred' has 'n.a.' for participant sub-00"):
        score_predictions(predictions_table(age_pred=["n.a.", 35, 20, 30, 40, 50, 70]))
    with pytest.raises(EvaluationError, match="'age' has -25 for participant sub-00"):
        score_predictions(predictions_table(age=[-25.0, 35, 20, 30, 40, 50, 70]))


def test_train_rows_may_leave_their_ages_empty():
    table = predictions_table(age=[np.nan, 35, 20, 30, 40, 50, 70], age_pred=[np.nan, np.nan, 20, 30, 40, 50, 70])
    assert score_predictions(table)["mae_external"] == 0.0


def test_unknown_split_error_lists_the_allowed_values():
    table = predictions_table(
        split=["train", "train", "test", "internal_test", "internal_test", "external_test", "external_test"]
    )
    with pytest.raises(
        EvaluationError, match="unknown value 'test'; expected one of train, internal_test, external_test"
    ):
        score_predictions(table)


@pytest.mark.parametrize("missing_split", ["internal_test", "external_test"])
def test_a_table_without_internal_or_external_rows_is_refused(missing_split):
    table = predictions_table()
    table = table[table["split"] != missing_split]
    with pytest.raises(EvaluationError, match=f"no {missing_split} rows"):
        score_predictions(table)


def test_without_train_rows_n_sites_must_be_given():
    table = predictions_table()
    table = table[table["split"] != "train"]
    with pytest.raises(EvaluationError, match="pass n_sites"):
        score_predictions(table)
    assert score_predictions(table, n_sites=2)["bacc_site"] == 1.0


def test_read_predictions_refuses_unknown_formats_and_missing_files(tmp_path):
    with pytest.raises(EvaluationError, match="expected .csv or .tsv"):
        read_predictions(tmp_path / "p.xlsx")
    with pytest.raises(EvaluationError, match="no such predictions file"):
        read_predictions(tmp_path / "absent.csv")


def test_evaluation_errors_are_medssl_errors():
    assert issubclass(EvaluationError, MedsslError)


def test_internal_test_subjects_at_a_site_never_trained_on_are_warned_about(tmp_path):
    import warnings

    from medssl.eval.score import UnseenSiteWarning

    table = pd.DataFrame(
        {
            "participant_id": [f"s{i}" for i in range(6)],
            "split": ["train", "train", "internal_test", "internal_test", "external_test", "external_test"],
            "site": ["A", "A", "A", "Z", "E", "E"],
            "age": [20.0, 30.0, 40.0, 50.0, 60.0, 70.0],
            "age_pred": [20.0, 30.0, 41.0, 52.0, 60.0, 70.0],
            "site_pred": ["A", "A", "A", "A", "A", "A"],
        }
    )
    with pytest.warns(UnseenSiteWarning, match="1 internal_test subject.*Z"):
        score_predictions(table)
    seen = table.assign(site=["A", "Z", "A", "Z", "E", "E"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenSiteWarning)
        score_predictions(seen)


def test_the_scores_count_the_fewest_internal_test_subjects_of_a_site():
    from medssl.eval.score import too_few_per_site

    table = pd.DataFrame(
        {
            "split": ["train", "train"] + ["internal_test"] * 7 + ["external_test"] * 2,
            "site": ["A", "B"] + ["A"] * 5 + ["B"] * 2 + ["C", "C"],
            "age": np.linspace(20, 70, 11),
            "age_pred": np.linspace(21, 69, 11),
            "site_pred": ["A"] * 11,
        }
    )
    scores = score_predictions(table)
    assert scores["min_internal_per_site"] == 2 and too_few_per_site(scores) == 2
    table.loc[7:8, "site"] = "A"  # every internal-test subject at site A: 7 of them
    assert too_few_per_site(score_predictions(table)) is None
