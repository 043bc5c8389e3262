"""The cohort data layer: validation on load, with one clear error per kind of bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medssl.data.cohort import load_cohort
from medssl.errors import CohortError


@pytest.fixture()
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, target)
    return target


def edit_table(root: Path, edit) -> None:
    path = root / "participants.tsv"
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "site": str})
    table = edit(table)
    table.to_csv(path, sep="\t", index=False)


def test_valid_cohort_loads_with_absolute_paths_and_splits(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    assert len(cohort) == 16
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in cohort.table["path"])
    assert set(cohort.table["split"]) <= {"train", "internal_test", "external_test"}
    assert len(cohort.subset("train")) + len(cohort.subset("internal_test", "external_test")) == 16


def test_subjects_are_lazy_torchio_subjects_with_metadata(tiny_cohort):
    subjects = load_cohort(tiny_cohort).subjects()
    first = subjects[0]
    assert not first["image"]._loaded
    assert {"participant_id", "age", "sex", "site", "split"} <= set(first.keys())
    assert first["image"].data.ndim == 4  # loading works on demand


def test_head_keeps_every_site(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    subset = cohort.head(4)
    assert len(subset) == 4
    assert set(subset.table["site"]) == set(cohort.table["site"])


def test_missing_column_names_the_column(cohort_copy):
    edit_table(cohort_copy, lambda t: t.drop(columns=["site"]))
    with pytest.raises(CohortError, match=r"missing column 'site'"):
        load_cohort(cohort_copy)


@pytest.mark.parametrize("bad_age", [float("nan"), -3.0, "old"])
def test_bad_age_names_the_participant_and_value(cohort_copy, bad_age):
    def edit(table):
        table["age"] = table["age"].astype(object)
        table.loc[2, "age"] = bad_age
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(
        CohortError, match=r"participant sub-\d+: age (is missing \(empty|.* is not a non-negative number)"
    ):
        load_cohort(cohort_copy)


def test_a_table_without_a_sex_column_loads_without_inventing_one(cohort_copy):
    edit_table(cohort_copy, lambda table: table.drop(columns="sex"))
    assert "sex" not in load_cohort(cohort_copy).table.columns


@pytest.mark.parametrize("column", ["site", "sex"])
def test_an_empty_cell_names_the_participant_and_the_line_of_the_table(cohort_copy, column):
    participant = {}

    def edit(table):
        table[column] = table[column].astype(object)
        table.loc[2, column] = None
        participant["id"] = table.loc[2, "participant_id"]
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(CohortError, match=rf"participant {participant['id']}: column '{column}' is empty \(line 4 "):
        load_cohort(cohort_copy)


def test_a_missing_age_names_the_line_of_the_table(cohort_copy):
    def edit(table):
        table["age"] = table["age"].astype(object)
        table.loc[4, "age"] = "n/a"
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(CohortError, match=r"participant sub-\d+: age is missing \(empty, n/a or NA; line 6 "):
        load_cohort(cohort_copy)


def test_one_site_written_two_ways_is_refused_naming_both_spellings(cohort_copy):
    # '1' and '01' would be two sites: one more class for the site probe, a site of one subject
    def edit(table):
        table["site"] = ["1"] * 8 + ["2"] * 8
        table.loc[3, "site"] = "01"
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(CohortError, match=r"column 'site' writes one site two ways, '01' \(line 5\) and '1'"):
        load_cohort(cohort_copy)


def test_two_participants_tables_are_refused_rather_than_one_picked(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    table.to_csv(cohort_copy / "participants.csv", index=False)
    with pytest.raises(CohortError, match="both participants.tsv and participants.csv"):
        load_cohort(cohort_copy)


def test_a_semicolon_separated_csv_gets_a_hint_about_the_separator(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    (cohort_copy / "participants.tsv").unlink()
    table.to_csv(cohort_copy / "participants.csv", sep=";", index=False)
    with pytest.raises(CohortError, match="missing column 'participant_id'.*separated by another character"):
        load_cohort(cohort_copy)


def test_duplicate_participant_id_is_rejected(cohort_copy):
    def edit(table):
        table.loc[1, "participant_id"] = table.loc[0, "participant_id"]
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(CohortError, match="duplicate participant_id"):
        load_cohort(cohort_copy)


def test_unknown_split_lists_the_allowed_values(cohort_copy):
    def edit(table):
        table.loc[0, "split"] = "validation"
        return table

    edit_table(cohort_copy, edit)
    with pytest.raises(CohortError, match=r"split 'validation' is not one of train, internal_test, external_test"):
        load_cohort(cohort_copy)


def test_missing_volume_file_names_the_file(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    (cohort_copy / table.loc[0, "path"]).unlink()
    with pytest.raises(CohortError, match=r"volume file .* does not exist"):
        load_cohort(cohort_copy)


def test_corrupt_nifti_is_reported_with_its_path(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    path = cohort_copy / table.loc[3, "path"]
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 4))
    with pytest.raises(CohortError, match=rf"{path.name}: unreadable or corrupt NIfTI"):
        load_cohort(cohort_copy)


def test_four_dimensional_volume_is_rejected(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    path = cohort_copy / table.loc[0, "path"]
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), dtype=np.float32), np.eye(4)), str(path))
    with pytest.raises(CohortError, match=r"expected a 3-D volume .* got shape \(8, 8, 8, 3\)"):
        load_cohort(cohort_copy)


def test_missing_table_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nowhere")
    with pytest.raises(CohortError, match="no participants table"):
        load_cohort(tmp_path)


def test_volumes_are_found_by_participant_id_without_a_path_column(cohort_copy):
    edit_table(cohort_copy, lambda t: t.drop(columns=["path"]))
    cohort = load_cohort(cohort_copy)
    assert all(Path(p).name.startswith(pid) for p, pid in zip(cohort.table["path"], cohort.table["participant_id"]))


def write_volume(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4)), path)


def test_participant_sub_1_is_not_given_the_volume_of_sub_10(tmp_path):
    # unpadded ids in one flat folder: sub-10_T1w.nii.gz sorts before sub-1_T1w.nii.gz
    for participant in ("sub-1", "sub-10"):
        write_volume(tmp_path / f"{participant}_T1w.nii.gz")
    rows = [["sub-1", 30, "F", "A"], ["sub-10", 40, "M", "A"]]
    pd.DataFrame(rows, columns=["participant_id", "age", "sex", "site"]).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False
    )
    names = [Path(path).name for path in load_cohort(tmp_path).table["path"]]
    assert names == ["sub-1_T1w.nii.gz", "sub-10_T1w.nii.gz"]


def test_a_t1w_volume_is_preferred_and_several_other_volumes_are_refused(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    for name in ("sub-01_FLAIR.nii.gz", "sub-01_T1w.nii.gz"):  # FLAIR sorts first
        write_volume(anat / name)
    pd.DataFrame([["sub-01", 30, "F", "A"]], columns=["participant_id", "age", "sex", "site"]).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False
    )
    assert Path(load_cohort(tmp_path).table["path"][0]).name == "sub-01_T1w.nii.gz"
    (anat / "sub-01_T1w.nii.gz").rename(anat / "sub-01_T2w.nii.gz")
    with pytest.raises(CohortError, match=r"participant sub-01: several volumes \(sub-01_FLAIR\.nii\.gz, sub-01_T2w"):
        load_cohort(tmp_path)


def test_a_bids_session_is_found_and_several_sessions_are_refused(tmp_path):
    write_volume(tmp_path / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")
    write_volume(tmp_path / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_FLAIR.nii.gz")
    pd.DataFrame([["sub-01", 30, "F", "A"]], columns=["participant_id", "age", "sex", "site"]).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False
    )
    assert Path(load_cohort(tmp_path).table["path"][0]).name == "sub-01_ses-1_T1w.nii.gz"
    write_volume(tmp_path / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz")
    with pytest.raises(CohortError) as error:
        load_cohort(tmp_path)
    assert (
        "participant sub-01: several volumes (ses-1/anat/sub-01_ses-1_T1w.nii.gz, ses-2/anat/sub-01_ses-2_T1w.nii.gz); "
        "name the one to use in a 'path' column" in str(error.value)
    )


def test_csv_table_is_accepted(cohort_copy):
    table = pd.read_csv(cohort_copy / "participants.tsv", sep="\t")
    (cohort_copy / "participants.tsv").unlink()
    table.to_csv(cohort_copy / "participants.csv", index=False)
    assert len(load_cohort(cohort_copy)) == len(table)


def test_a_cohort_root_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\n")
    with pytest.raises(CohortError, match=r"participants\.tsv: is a file, not a cohort folder"):
        load_cohort(tmp_path / "participants.tsv")
    with pytest.raises(CohortError, match="cohort folder does not exist"):
        load_cohort(tmp_path / "elsewhere")
