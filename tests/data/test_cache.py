"""`medssl data cache`: a cohort preprocessed once into a memory-mapped .npy, read back by the same reader."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medssl.cli import app
from medssl.config import Recipe
from medssl.data.arrays import open_array
from medssl.data.cache import cache_cohort
from medssl.data.cohort import load_cohort
from medssl.data.views import resize_transform
from medssl.errors import CohortError


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
