"""The OpenBHB challenge kit's layout: data/{train,test}.{tsv,npy} rows of six blocks, volumes unmasked on the fly.

A tiny kit is written by the kit's rule with tiny masks: the volume blocks' sizes come from the
masks, the surface and ROI blocks keep their real sizes (about 5 MB per row, written sparsely).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medssl.data.arrays import open_array
from medssl.data.cache import cache_cohort
from medssl.data.cohort import load_cohort
from medssl.data.openbhb_kit import FEATURE_BLOCK_SIZES, KIT_COLUMNS, KIT_FOLDS_FILE, KIT_MASKS, kit_masks
from medssl.errors import CohortError
from medssl.eval.folds import challenge_folds
from medssl.recipe import Recipe

VBM_SHAPE, QUASIRAW_SHAPE = (5, 6, 4), (6, 4, 5)
N_TRAIN, N_TEST = 4, 4


def mask_image(shape: tuple[int, int, int], seed: int, threshold: float) -> np.ndarray:
    """Float64 mask values; a few exactly at the threshold (dropped: the rule is strictly greater)."""
    values = np.random.default_rng(seed).random(shape)
    values[values < 0.3] = 0.0
    values.flat[::7] = threshold
    return values


def kept_in_c_order(values: np.ndarray, threshold: float) -> list[tuple[int, int, int]]:
    """Kept voxel indices, enumerated in C order (last axis fastest), as the kit's masking stores them."""
    return [index for index in np.ndindex(values.shape) if values[index] > threshold]


def volume(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) + 3


def write_kit(root: Path, extra_columns: int = 0, masks_folder: Path | None = None) -> dict:
    """A kit with masks, train (4 rows) and test (2 internal, 2 external) parts; returns what it holds."""
    masks_folder = masks_folder or root
    masks_folder.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(parents=True, exist_ok=True)
    mask_values = {"vbm": mask_image(VBM_SHAPE, 0, 0.05), "quasiraw": mask_image(QUASIRAW_SHAPE, 1, 0.0)}
    kept = {}
    for block, values in mask_values.items():
        nib.save(nib.Nifti1Image(values, np.eye(4)), masks_folder / KIT_MASKS[block].file)
        kept[block] = kept_in_c_order(values, KIT_MASKS[block].threshold)
    row_length = len(kept["vbm"]) + len(kept["quasiraw"]) + sum(FEATURE_BLOCK_SIZES.values()) + extra_columns
    volumes = {}
    for part, n_rows in (("train", N_TRAIN), ("test", N_TEST)):
        table = pd.DataFrame(
            {
                "age": np.linspace(10, 70, n_rows),
                "site": [1, 2, np.nan, np.nan] if part == "test" else [1, 2, 1, 2],
                "split": ["internal_test"] * 2 + ["external_test"] * 2 if part == "test" else ["train"] * n_rows,
            }
        )
        table.to_csv(root / "data" / f"{part}.tsv", sep="\t", index=False)
        array = np.lib.format.open_memmap(
            root / "data" / f"{part}.npy", mode="w+", dtype=np.float32, shape=(n_rows, row_length)
        )
        for row in range(n_rows):
            seed = 100 * (part == "test") + row
            vbm, quasiraw = volume(seed, VBM_SHAPE), volume(seed + 50, QUASIRAW_SHAPE)
            values = [vbm[index] for index in kept["vbm"]] + [quasiraw[index] for index in kept["quasiraw"]]
            array[row, : len(values)] = values
            array[row, len(values) :] = np.nan  # surface and ROI blocks: never part of a volume
            volumes[part, row] = {"vbm": vbm, "quasiraw": quasiraw}
        array.flush()
        del array
    return {"kept": kept, "volumes": volumes, "row_length": row_length}


def unmasked(original: np.ndarray, kept: list[tuple[int, int, int]]) -> np.ndarray:
    expected = np.zeros_like(original)
    for index in kept:
        expected[index] = original[index]
    return expected


@pytest.mark.parametrize("modality", ["vbm", "quasiraw"])
def test_each_row_is_unmasked_into_the_volume_of_the_chosen_block(tmp_path, modality):
    kit = write_kit(tmp_path / "kit")
    cohort = load_cohort(tmp_path / "kit", openbhb_modality=modality)
    assert len(cohort) == N_TRAIN + N_TEST
    subjects = cohort.subjects()
    for position, (part, row) in enumerate(
        [("train", r) for r in range(N_TRAIN)] + [("test", r) for r in range(N_TEST)]
    ):
        expected = unmasked(kit["volumes"][part, row][modality], kit["kept"][modality])
        assert torch.equal(subjects[position]["image"].data[0], torch.from_numpy(expected)), (part, row)
    assert cohort.stored_shape() == (VBM_SHAPE if modality == "vbm" else QUASIRAW_SHAPE)


def test_kit_tables_become_cohort_splits_with_external_sites_named_external(tmp_path):
    write_kit(tmp_path / "kit")
    table = load_cohort(tmp_path / "kit").table
    assert list(table["split"]) == ["train"] * N_TRAIN + ["internal_test"] * 2 + ["external_test"] * 2
    assert list(table["site"]) == ["1", "2", "1", "2", "1", "2", "external", "external"]
    assert table["participant_id"].is_unique and table["participant_id"].iloc[N_TRAIN] == "test-0"
    assert list(table["array_row"]) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_rows_are_read_memory_mapped_and_only_when_used(tmp_path):
    write_kit(tmp_path / "kit")
    cohort = load_cohort(tmp_path / "kit", openbhb_modality="vbm")
    assert isinstance(open_array(cohort.table["path"][0]), np.memmap)
    subjects = cohort.subjects()
    assert not any(subject["image"]._loaded for subject in subjects)
    subjects[1]["image"].load()
    assert not subjects[2]["image"]._loaded


def test_mask_rule_keeps_vbm_above_0_05_and_quasiraw_above_0_strictly(tmp_path):
    kit = write_kit(tmp_path / "kit")
    masks = kit_masks(str(tmp_path / "kit"))
    for block, shape in (("vbm", VBM_SHAPE), ("quasiraw", QUASIRAW_SHAPE)):
        assert masks[block].shape == shape
        assert sorted(map(tuple, np.argwhere(masks[block]))) == kit["kept"][block]
        assert 0 < len(kit["kept"][block]) < np.prod(shape)


def test_a_wrong_row_length_is_one_error_naming_the_layout_and_its_blocks(tmp_path):
    kit = write_kit(tmp_path / "kit", extra_columns=1)
    with pytest.raises(CohortError) as error:
        load_cohort(tmp_path / "kit", openbhb_modality="vbm")
    message = str(error.value)
    assert "\n" not in message and "train.npy" in message
    assert f"expected ({N_TRAIN}, {kit['row_length'] - 1})" in message
    for block in ("vbm", "quasiraw", "xhemi 1,310,736", "vbm_roi 284", "desikan_roi 476", "destrieux_roi 1,036"):
        assert block in message
    assert KIT_MASKS["vbm"].file in message and "> 0.05" in message


def test_masks_are_found_where_data_openbhb_masks_says(tmp_path):
    from medssl.train.setup import open_cohort

    kit = write_kit(tmp_path / "kit", masks_folder=tmp_path / "masks")
    with pytest.raises(CohortError, match=r"vbm mask is missing.*data\.openbhb_masks"):
        open_cohort(Recipe(data={"root": tmp_path / "kit"}))
    recipe = Recipe(
        data={"root": tmp_path / "kit", "openbhb_masks": tmp_path / "masks", "openbhb_modality": "quasiraw"}
    )
    first = open_cohort(recipe).subjects()[0]["image"].data[0]
    assert torch.equal(
        first, torch.from_numpy(unmasked(kit["volumes"]["train", 0]["quasiraw"], kit["kept"]["quasiraw"]))
    )


def test_a_cache_of_a_kit_holds_the_unmasked_volumes_and_reads_back_without_the_kit(tmp_path):
    kit = write_kit(tmp_path / "kit")
    cache = cache_cohort(load_cohort(tmp_path / "kit", openbhb_modality="vbm"), tmp_path / "cache")
    cached = load_cohort(cache)
    assert not set(KIT_COLUMNS) & set(cached.table.columns)
    volume_of_row_5 = cached.subjects()[5]["image"].data[0]  # the test part's second row
    assert torch.equal(
        volume_of_row_5, torch.from_numpy(unmasked(kit["volumes"]["test", 1]["vbm"], kit["kept"]["vbm"]))
    )


def test_cli_prints_a_wrong_row_length_in_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from medssl import cli

    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))  # a long line is not wrapped
    write_kit(tmp_path / "kit", extra_columns=-1)
    monkeypatch.setattr(sys, "argv", ["medssl", "data", "cache", str(tmp_path / "kit"), str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error: ") and error.strip().count("\n") == 0 and "destrieux_roi" in error
    assert not (tmp_path / "cache" / "participants.tsv").exists()


def test_cli_evaluate_on_a_kit_says_it_has_no_sex_column_not_that_sex_has_one_class(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from medssl import cli
    from medssl.models import build_encoder, save_encoder

    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))
    write_kit(tmp_path / "kit")
    save_encoder(build_encoder("resnet18", widths=[4, 8, 8, 8]), tmp_path / "run" / "encoder.pt")
    arguments = ["evaluate", tmp_path / "run", "--cohort", tmp_path / "kit", "eval.baseline=false"]
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    output = capsys.readouterr().out
    assert exit_info.value.code in (0, None), output
    assert "site_stratified: sex: no sex column in the participants table, target skipped" in output
    assert "fewer than two classes" not in output


def test_cli_data_inspect_of_a_kit_summarises_sklearn_warnings_in_one_note_and_says_1_site(tmp_path):
    # A real process: under pytest, warnings go to pytest's recorder rather than to stderr.
    import os
    import subprocess

    write_kit(tmp_path / "kit")
    result = subprocess.run(
        [sys.executable, "-m", "medssl", "data", "inspect", str(tmp_path / "kit")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    notes = [line for line in result.stdout.splitlines() if "scikit-learn warning" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "UndefinedMetricWarning" in notes[0], notes
    assert "external_test 2 (1 site)" in result.stdout and "1 sites" not in result.stdout


def write_kit_folds(root: Path, folds: dict) -> Path:
    path = root / KIT_FOLDS_FILE
    path.write_text(json.dumps(folds))
    return path


KIT_FOLDS = {
    "fold0": {"train": [0, 1], "internal_test": [3], "external_test": [2]},
    "fold1": {"train": [2, 3], "internal_test": [1], "external_test": [0]},
}


def test_the_kits_folds_file_gives_the_evaluation_folds_over_its_train_rows(tmp_path):
    write_kit(tmp_path / "kit")
    table = load_cohort(tmp_path / "kit").table
    assert challenge_folds(table, tmp_path / "kit", "auto") == []  # a kit without the file: no folds
    write_kit_folds(tmp_path / "kit", KIT_FOLDS)
    folds = challenge_folds(table, tmp_path / "kit", "auto")
    assert [fold.name for fold in folds] == ["fold0", "fold1"]
    for fold, rows in zip(folds, KIT_FOLDS.values()):
        for part in ("train", "internal_test", "external_test"):
            positions = getattr(fold, part)
            assert list(positions) == rows[part]  # the kit's train rows come first, in train.tsv order
            assert set(table["split"].iloc[positions]) == {"train"}
    assert challenge_folds(table, tmp_path / "kit", None) == []


def test_the_kits_folds_file_names_the_same_subjects_in_a_cache_of_the_kit(tmp_path):
    write_kit(tmp_path / "kit")
    folds_file = write_kit_folds(tmp_path / "kit", KIT_FOLDS)
    kit = load_cohort(tmp_path / "kit", openbhb_modality="vbm")
    cached = load_cohort(cache_cohort(kit, tmp_path / "cache"))
    assert challenge_folds(cached.table, cached.root, "auto") == []  # the cache is no kit: the file is named
    for in_kit, in_cache in zip(
        challenge_folds(kit.table, kit.root, "auto"), challenge_folds(cached.table, cached.root, folds_file)
    ):
        for part in ("train", "internal_test", "external_test"):
            ids = kit.table["participant_id"].iloc[getattr(in_kit, part)]
            assert list(cached.table["participant_id"].iloc[getattr(in_cache, part)]) == list(ids)


@pytest.mark.parametrize(
    "fold0, named",
    [
        ({"train": [0, 1], "internal_test": [3], "external_test": [4]}, "fold0.external_test holds 4"),
        ({"train": [0, 1], "internal_test": [3]}, "fold0.external_test is missing"),
        ({"train": [0, 1], "internal_test": [], "external_test": [2]}, "fold0.internal_test is empty"),
        ({"train": [0, 1], "internal_test": ["3"], "external_test": [2]}, 'fold0.internal_test holds "3"'),
        ({"train": [0, 1], "internal_test": [1], "external_test": [2]}, "row 1 is twice in fold0"),
    ],
)
def test_a_malformed_folds_file_is_one_error_naming_the_file_the_fold_and_the_layout(tmp_path, fold0, named):
    write_kit(tmp_path / "kit")
    path = write_kit_folds(tmp_path / "kit", {"fold0": fold0})
    table = load_cohort(tmp_path / "kit").table
    with pytest.raises(CohortError) as error:
        challenge_folds(table, tmp_path / "kit", "auto")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and named in message
    if "twice" not in named:
        assert '"internal_test": [...]' in message and f"0..{N_TRAIN - 1}" in message


def test_cli_evaluate_on_a_kit_with_a_malformed_folds_file_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from medssl import cli
    from medssl.models import build_encoder, save_encoder

    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))
    write_kit(tmp_path / "kit")
    write_kit_folds(tmp_path / "kit", {"fold0": {"train": [0, 1], "internal_test": [3], "external_test": [9]}})
    save_encoder(build_encoder("resnet18", widths=[4, 8, 8, 8]), tmp_path / "run" / "encoder.pt")
    monkeypatch.setattr(sys, "argv", ["medssl", "evaluate", str(tmp_path / "run"), "--cohort", str(tmp_path / "kit")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error: ") and error.strip().count("\n") == 0
    assert KIT_FOLDS_FILE in error and "fold0.external_test holds 9" in error
    assert not (tmp_path / "run" / "eval" / "metrics.json").exists()


def test_cli_data_cache_takes_the_modality_as_an_override_and_names_it_in_its_line(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from medssl import cli

    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))
    kit = write_kit(tmp_path / "kit")
    arguments = ["data", "cache", tmp_path / "kit", tmp_path / "cache", "data.openbhb_modality=vbm"]
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    output = capsys.readouterr().out
    assert exit_info.value.code in (0, None), output
    assert f"Cached 8 vbm volumes (stored shape, float32) in {tmp_path / 'cache'}" in output
    first = load_cohort(tmp_path / "cache").subjects()[0]["image"].data[0]
    assert torch.equal(first, torch.from_numpy(unmasked(kit["volumes"]["train", 0]["vbm"], kit["kept"]["vbm"])))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=3", "data cache does not read train.epochs"),
        ("data.openbhb_modalty=vbm", "did you mean data.openbhb_modality?"),
    ],
)
def test_cli_data_cache_refuses_an_override_it_would_not_read(tmp_path, monkeypatch, capsys, override, message):
    from medssl import cli

    write_kit(tmp_path / "kit")
    arguments = ["data", "cache", tmp_path / "kit", tmp_path / "cache", override]
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.strip().count("\n") == 0 and message in error, error
    assert not (tmp_path / "cache").exists()


def test_cli_evaluate_on_a_kit_at_80_columns_keeps_every_column_ranks_rows_and_prints_no_perfect_site_score(
    tmp_path, monkeypatch, capsys
):
    from rich.console import Console

    from medssl import cli
    from medssl.models import build_encoder, save_encoder

    monkeypatch.setattr(cli, "console", Console(width=80))  # a log or a pipe: 80 columns
    write_kit(tmp_path / "kit")  # one internal-test subject per site
    save_encoder(build_encoder("resnet18", widths=[4, 8, 8, 8]), tmp_path / "run" / "encoder.pt")
    arguments = ["evaluate", tmp_path / "run", "--cohort", tmp_path / "kit", "eval.folds=2"]
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    output = capsys.readouterr().out
    assert exit_info.value.code in (0, None), output
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert {"pretrained", "combat", "baseline", "intensity", "mean"} <= set(metrics)
    for name in ("pretrained", "combat", "baseline", "intensity", "mean"):  # no column dropped
        assert f"{metrics[name]['mae_internal']:.3f}" in output, name
    assert "training" in output and "intensity" in output and "…" not in output
    assert max(len(line) for line in output.splitlines()) <= 80
    assert "mae_external ↓" in output and "r2_external ↑" in output
    assert metrics["pretrained"]["challenge"]["min_internal_per_site"] == 1
    assert "n/a (too few subjects: 1 per site)" in output
    mae = {name: metrics[name]["mae_external"] for name in ("baseline", "intensity", "mean")}
    if min(mae.values()) < metrics["pretrained"]["mae_external"]:  # the untrained encoder loses to a baseline
        assert "a trivial baseline beats the trained encoder" in output and "challenge mae_external" in output
