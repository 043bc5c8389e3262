"""OpenBHB as downloaded: participants table + .npy volumes, read memory-mapped (tiny fake copies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medssl.config import ViewsConfig
from medssl.data.arrays import open_array
from medssl.data.cohort import load_cohort
from medssl.data.views import MultiViewDataset, VolumeDataset, build_view_transform
from medssl.errors import CohortError
from medssl.recipe import Recipe

SHAPE = (16, 16, 16)
SUFFIX = {"quasiraw": "preproc-quasiraw_T1w.npy", "vbm": "preproc-cat12vbm_desc-gm_T1w.npy"}


def participants(n_train: int = 6, n_val: int = 4) -> pd.DataFrame:
    """OpenBHB-like table: integer ids, site and siteXacq, official splits (val: 2 internal, 2 external)."""
    ids = [100 + i for i in range(n_train + n_val)]
    split = ["train"] * n_train + ["internal_test", "external_test"] * (n_val // 2)
    site_x_acq = [i % 3 for i in range(n_train)] + [0, 7] * (n_val // 2)
    return pd.DataFrame(
        {
            "participant_id": ids,
            "age": np.linspace(8, 80, len(ids)),
            "sex": ["female", "male"] * (len(ids) // 2),
            "site": [s // 2 for s in site_x_acq],
            "siteXacq": site_x_acq,
            "split": split,
        }
    )


def volume(pid: int) -> np.ndarray:
    return np.random.default_rng(pid).random((1, 1, *SHAPE), dtype=np.float32)


def huggingface_layout(root: Path, table: pd.DataFrame, modality: str = "quasiraw") -> Path:
    """participants.tsv + {train,val}/derivatives/sub-<id>/ses-1/sub-<id>_<suffix>, arrays (1, 1, D, H, W)."""
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    for pid, split in zip(table["participant_id"], table["split"]):
        part = "train" if split == "train" else "val"
        folder = root / part / "derivatives" / f"sub-{pid}" / "ses-1"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"sub-{pid}_{SUFFIX[modality]}", volume(pid))
    return root


def test_huggingface_layout_loads_with_challenge_sites_and_splits(tmp_path):
    table = participants()
    cohort = load_cohort(huggingface_layout(tmp_path / "openbhb", table))
    assert len(cohort) == len(table)
    assert list(cohort.table["participant_id"]) == [str(pid) for pid in table["participant_id"]]
    assert list(cohort.table["site"]) == [str(s) for s in table["siteXacq"]]  # siteXacq is the challenge's site
    assert "site_name" in cohort.table.columns
    assert list(cohort.table["split"]) == list(table["split"])
    assert all(Path(path).is_absolute() and path.endswith(SUFFIX["quasiraw"]) for path in cohort.table["path"])


def test_volumes_are_lazy_and_read_memory_mapped(tmp_path):
    table = participants()
    cohort = load_cohort(huggingface_layout(tmp_path / "openbhb", table))
    subjects = cohort.subjects()
    assert not any(subject["image"]._loaded for subject in subjects)
    assert isinstance(open_array(cohort.table["path"][0]), np.memmap)
    third = subjects[2]["image"]
    assert third.data.shape == (1, *SHAPE)
    assert torch.equal(third.data, torch.from_numpy(volume(102)[0]))
    assert not subjects[3]["image"]._loaded


def test_datasets_and_feature_extraction_consume_an_openbhb_cohort(tmp_path):
    from medssl.eval.features import extract_features

    cohort = load_cohort(huggingface_layout(tmp_path / "openbhb", participants()))
    train = cohort.subset("train")
    views = MultiViewDataset(
        train.subjects(), build_view_transform(ViewsConfig(flip={"p": 0.5})), n_views=2, label_key="age"
    )
    assert views[0]["views"].shape == (2, 1, *SHAPE)
    assert VolumeDataset(train.subjects())[1]["volume"].shape == (1, *SHAPE)
    encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    recipe = Recipe(eval={"batch_size": 4})
    assert extract_features(encoder, cohort, recipe).shape == (len(cohort), 3)


def test_vbm_volumes_are_chosen_by_openbhb_modality(tmp_path):
    table = participants()
    root = huggingface_layout(tmp_path / "openbhb", table, modality="vbm")
    cohort = load_cohort(root, openbhb_modality="vbm")
    assert all(path.endswith(SUFFIX["vbm"]) for path in cohort.table["path"])
    with pytest.raises(CohortError, match=r"no quasiraw volume found.*sub-<id>_preproc-quasiraw_T1w\.npy"):
        load_cohort(root, openbhb_modality="quasiraw")


def test_ieee_dataport_layout_without_split_infers_internal_and_external_sites(tmp_path):
    table = participants()
    root = tmp_path / "openbhb"
    for part, rows in (("train", table[table["split"] == "train"]), ("val", table[table["split"] != "train"])):
        (root / part / f"{part}_labels").mkdir(parents=True)
        rows.drop(columns=["split"]).to_csv(root / part / f"{part}_labels" / "participants.tsv", sep="\t", index=False)
        (root / part / f"{part}_quasiraw").mkdir()
        for pid in rows["participant_id"]:
            np.save(root / part / f"{part}_quasiraw" / f"sub-{pid}_{SUFFIX['quasiraw']}", volume(pid))
    cohort = load_cohort(root)
    # val rows whose siteXacq occurs in training are internal_test, the others external_test
    assert list(cohort.table["split"]) == list(table["split"])


def test_missing_val_part_is_left_out_with_a_warning(tmp_path):
    table = participants()
    root = huggingface_layout(tmp_path / "openbhb", table)
    for path in (root / "val").rglob("*.npy"):
        path.unlink()
    with pytest.warns(UserWarning, match=r"val part .* 4 participants are left out"):
        cohort = load_cohort(root)
    assert set(cohort.table["split"]) == {"train"}


def test_missing_volume_names_the_participant_and_the_expected_file(tmp_path):
    table = participants()
    root = huggingface_layout(tmp_path / "openbhb", table)
    next((root / "train").rglob("sub-103_*.npy")).unlink()
    with pytest.raises(
        CohortError, match=r"no quasiraw volume for participant 103 .*sub-103_preproc-quasiraw_T1w\.npy"
    ):
        load_cohort(root)


def test_volume_of_another_shape_names_the_file_and_the_expected_shape(tmp_path):
    table = participants()
    root = huggingface_layout(tmp_path / "openbhb", table)
    odd = next((root / "train").rglob("sub-104_*.npy"))
    np.save(odd, np.zeros((1, 1, 16, 16, 12), dtype=np.float32))
    with pytest.raises(
        CohortError,
        match=r"sub-104_preproc-quasiraw_T1w\.npy: participant 104: volume of shape \(1, 16, 16, 12\).*expected \(1, 16, 16, 16\)",
    ):
        load_cohort(root)


def stacked_layout(root: Path, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """participants.tsv + train_quasiraw/train_quasiraw.npy and val_quasiraw.npy, rows in table order."""
    root.mkdir(parents=True)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    arrays = {}
    for group, rows in (("train", table[table["split"] == "train"]), ("val", table[table["split"] != "train"])):
        arrays[group] = np.concatenate([volume(pid) for pid in rows["participant_id"]])  # (N, 1, D, H, W)
        folder = root / f"{group}_quasiraw" if group == "train" else root
        folder.mkdir(exist_ok=True)
        np.save(folder / f"{group}_quasiraw.npy", arrays[group])
    return arrays


def test_stacked_arrays_per_split_map_rows_in_table_order(tmp_path):
    table = participants()
    arrays = stacked_layout(tmp_path / "openbhb", table)
    cohort = load_cohort(tmp_path / "openbhb")
    assert list(cohort.table["array_row"]) == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    subjects = cohort.subjects()
    assert torch.equal(subjects[7]["image"].data, torch.from_numpy(arrays["val"][1]))
    assert torch.equal(subjects[5]["image"].data, torch.from_numpy(arrays["train"][5]))


def test_stacked_array_with_other_row_count_names_file_and_expected_count(tmp_path):
    table = participants()
    root = tmp_path / "openbhb"
    stacked_layout(root, table)
    np.save(root / "val_quasiraw.npy", np.zeros((3, 1, *SHAPE), dtype=np.float32))
    with pytest.raises(
        CohortError,
        match=r"val_quasiraw\.npy: holds 3 volumes .* lists 4 participants with split internal_test or external_test",
    ):
        load_cohort(root)


def test_a_cohort_whose_table_names_its_volumes_is_never_read_as_openbhb(tiny_cohort, tmp_path):
    import shutil

    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root)
    (root / "train").mkdir()  # an OpenBHB marker, but participants.tsv has a path column
    cohort = load_cohort(root)
    assert len(cohort) == 16 and all(path.endswith(".nii.gz") for path in cohort.table["path"])
