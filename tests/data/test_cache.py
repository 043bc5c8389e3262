"""`medssl data cache`: a cohort preprocessed once into a memory-mapped .npy, read back by the same reader."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medssl.cli import app
from medssl.data.arrays import open_array
from medssl.data.cache import cache_cohort, check_cache_dtype, recorded_dtype
from medssl.data.cohort import load_cohort
from medssl.data.views import resize_transform
from medssl.errors import CohortError
from medssl.recipe import Recipe


def test_cache_holds_the_volumes_resampled_exactly_as_training_would(tiny_cohort, tmp_path):
    source = load_cohort(tiny_cohort)
    out = cache_cohort(source, tmp_path / "cache", volume_shape=[8, 10, 12])
    cached = load_cohort(out)
    assert list(cached.table["participant_id"]) == list(source.table["participant_id"])
    assert list(cached.table["array_row"]) == list(range(len(source)))
    assert isinstance(open_array(cached.table["path"][0]), np.memmap)
    assert open_array(cached.table["path"][0]).shape == (len(source), 1, 8, 10, 12)
    for row in (0, 5):
        expected = resize_transform([8, 10, 12])(copy.deepcopy(source.subjects()[row]))["image"]
        image = cached.subjects()[row]["image"]
        assert torch.allclose(image.data, expected.data.float())
        assert np.allclose(image.spacing, expected.spacing)  # the grid's spacing travels in volumes.json
    assert cached.stored_shape() == (8, 10, 12)


def test_cache_without_shape_keeps_the_stored_grid_in_float16(tiny_cohort, tmp_path):
    source = load_cohort(tiny_cohort)
    out = cache_cohort(source, tmp_path / "cache", dtype="float16")
    info = json.loads((out / "volumes.json").read_text())
    assert info["shape"] == [1, 16, 16, 16] and info["dtype"] == "float16"
    image = load_cohort(out).subjects()[3]["image"]
    assert image.data.dtype == torch.float32
    assert torch.allclose(image.data, source.subjects()[3]["image"].data.float(), rtol=1e-3, atol=1e-3)


def test_cached_row_out_of_range_names_the_array_and_the_valid_rows(tiny_cohort, tmp_path):
    out = cache_cohort(load_cohort(tiny_cohort), tmp_path / "cache", volume_shape=[8, 8, 8])
    table = pd.read_csv(out / "participants.tsv", sep="\t")
    table.loc[2, "array_row"] = 40
    table.to_csv(out / "participants.tsv", sep="\t", index=False)
    with pytest.raises(
        CohortError,
        match=r"volumes\.npy: participant \S+: array_row 40 is out of range \(the array holds 16 volumes, rows 0\.\.15\)",
    ):
        load_cohort(out)


def test_engine_reads_a_cache_at_the_recipe_shape_without_resampling(tiny_cohort, tmp_path):
    import torch

    from medssl.methods import method_needs
    from medssl.train.distributed import DistributedContext
    from medssl.train.pretraining import Notes, pretraining_data

    out = cache_cohort(load_cohort(tiny_cohort), tmp_path / "cache", volume_shape=[12, 12, 12])
    recipe = Recipe(data={"root": str(out), "volume_shape": [12, 12, 12]}, method={"name": "simclr"})
    data = pretraining_data(
        recipe, method_needs(recipe), DistributedContext(), torch.device("cpu"), Notes(None, True), None
    )
    assert data.dataset.preprocess is None
    assert data.dataset[0]["views"].shape == (2, 1, 12, 12, 12)


def test_data_cache_command_writes_a_cohort_with_the_given_shape(tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["data", "cache", str(tiny_cohort), str(tmp_path / "cache"), "--shape", "8"])
    assert result.exit_code == 0, result.output
    assert load_cohort(tmp_path / "cache").stored_shape() == (8, 8, 8)


# float16 rounds to the nearest of 11 significant bits: |x16 - x| <= 2^-11 |x| for normal x,
# and <= 2^-25 (half the spacing of float16's subnormals) near zero.
FLOAT16_RTOL, FLOAT16_ATOL = 2.0**-11, 2.0**-25


def test_float16_cache_holds_the_float32_volumes_to_float16_precision_and_records_its_dtype(tiny_cohort, tmp_path):
    source = load_cohort(tiny_cohort)
    full = np.asarray(open_array(cache_cohort(source, tmp_path / "f32", volume_shape=[8, 10, 12]) / "volumes.npy"))
    out = cache_cohort(source, tmp_path / "f16", volume_shape=[8, 10, 12], dtype="float16")
    assert json.loads((out / "volumes.json").read_text())["dtype"] == "float16"
    half = open_array(out / "volumes.npy")
    assert half.dtype == np.float16 and half.nbytes * 2 == full.nbytes
    assert recorded_dtype(out / "volumes.npy") == "float16"
    assert recorded_dtype(tmp_path / "f32" / "volumes.npy") == "float32"
    assert np.allclose(half.astype(np.float32), full, rtol=FLOAT16_RTOL, atol=FLOAT16_ATOL)
    assert not np.array_equal(half.astype(np.float32), full)  # it did round
    cached = load_cohort(out)
    for row in range(len(cached)):
        as_read = cached.subjects()[row]["image"].data  # the loader path: float32 in the worker
        kept = cached.subjects(keep_float16=True)[row]["image"].data  # the batch path: cast on the device
        assert as_read.dtype == torch.float32 and kept.dtype == torch.float16
        assert torch.equal(kept.float(), as_read) and torch.equal(kept, torch.from_numpy(np.array(half[row])))
    # a float32 array is read as float32 whatever keep_float16 says
    assert load_cohort(tmp_path / "f32").subjects(keep_float16=True)[0]["image"].data.dtype == torch.float32


def test_a_cache_of_another_dtype_than_the_recipe_is_refused_naming_the_file_and_both_dtypes(tiny_cohort, tmp_path):
    from medssl.methods import method_needs
    from medssl.train.distributed import DistributedContext
    from medssl.train.pretraining import Notes, pretraining_data

    out = cache_cohort(load_cohort(tiny_cohort), tmp_path / "cache", dtype="float16")
    check_cache_dtype(load_cohort(out), "float16")
    check_cache_dtype(load_cohort(tiny_cohort), "float16")  # NIfTI: no cache, nothing to compare
    recipe = Recipe(data={"root": str(out)}, method={"name": "simclr"})  # data.cache_dtype: float32 by default
    message = (
        rf"^{out / 'volumes.npy'}: the cache holds float16 volumes, the recipe asks for data.cache_dtype = float32; "
        r"set data.cache_dtype: float16, or rebuild the cache with medssl data cache --dtype float32$"
    )
    with pytest.raises(CohortError, match=message):
        pretraining_data(
            recipe, method_needs(recipe), DistributedContext(), torch.device("cpu"), Notes(None, True), None
        )


def test_pretrain_on_a_cache_of_another_dtype_fails_in_one_line(tiny_cohort, tmp_path, monkeypatch, capsys):
    from medssl import cli

    out = cache_cohort(load_cohort(tiny_cohort), tmp_path / "cache")
    arguments = ["pretrain", "simclr", "--out", str(tmp_path / "run"), f"data.root={out}", "data.cache_dtype=float16"]
    monkeypatch.setattr(sys, "argv", ["medssl", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.strip().count("\n") == 0, error
    assert "the cache holds float32 volumes, the recipe asks for data.cache_dtype = float16" in error


def test_float16_cache_refuses_intensities_beyond_float16_range(tiny_cohort, tmp_path):
    out = cache_cohort(load_cohort(tiny_cohort), tmp_path / "f32")
    volumes = np.load(out / "volumes.npy", mmap_mode="r+")
    volumes[3] *= 1e5  # raw scanner units beyond 65,504
    volumes.flush()
    del volumes
    bright = load_cohort(out).table["participant_id"][3]
    with pytest.raises(
        CohortError, match=rf"participant {bright}: intensities up to \S+ exceed float16's largest value"
    ):
        cache_cohort(load_cohort(out), tmp_path / "f16", dtype="float16")
    assert not (tmp_path / "f16" / "participants.tsv").exists()


def test_data_cache_command_takes_the_dtype_from_the_recipe_key(tiny_cohort, tmp_path):
    arguments = ["data", "cache", str(tiny_cohort), str(tmp_path / "cache"), "data.cache_dtype=float16"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "float16" in result.output
    assert open_array(tmp_path / "cache" / "volumes.npy").dtype == np.float16
