"""``views.device: batch``: views drawn on the training device in the training step, every method, resume, ranks."""

from __future__ import annotations

import pytest
import torch

from medssl.config import ViewsConfig
from medssl.data.batched_views import build_batched_views
from medssl.pipeline import pretrain
from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, smoke_recipe
from medssl.train.loading import BatchViewsLoader


def quick(name: str, *overrides: str):
    smoke = smoke_recipe(load_recipe(name)).model_dump(mode="json")
    fast = ["model.encoder=alexnet", "eval.after_pretrain=false", "views.device=batch"]
    return recipe_from_dict(apply_overrides(smoke, [*fast, *overrides]))


@pytest.mark.parametrize("name", ["yaware_age", "simclr", "byol", "dino", "deepcluster", "supervised_age"])
def test_every_kind_of_method_trains_with_views_drawn_on_the_device(tmp_path, name):
    result = pretrain(quick(name), tmp_path / "run")
    assert result.epochs_done == 1 and torch.isfinite(torch.tensor(result.last_loss))


def test_a_run_with_views_drawn_on_the_device_resumes_to_the_weights_of_a_straight_run(tmp_path, straight_and_resumed):
    a, b = straight_and_resumed(quick("simclr", "train.epochs=2"), tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class FixedBatches:
    """An EpochLoader stand-in: the same two batches of one view per subject every epoch."""

    dataset, batch_size, drop_last = None, 2, True
    pin_memory, prefetch_factor = False, None  # set by BatchViewsLoader

    def __len__(self) -> int:
        return 2

    def epoch(self, epoch, sampler=None):
        generator = torch.Generator().manual_seed(7)
        return [{"views": torch.rand(2, 1, 1, 12, 12, 12, generator=generator)} for _ in range(2)]

    def close(self) -> None:
        pass


def views_of(rank: int, seed: int = 0, epoch: int = 0) -> list[torch.Tensor]:
    views = build_batched_views(ViewsConfig(crop={"p": 1.0}, cutout={"p": 1.0}))
    loader = BatchViewsLoader(FixedBatches(), views, torch.device("cpu"), seed=seed, rank=rank)  # type: ignore[arg-type]
    return [batch["views"] for batch in loader.epoch(epoch)]


def test_batch_views_follow_seed_epoch_batch_and_rank():
    first, again = views_of(rank=0), views_of(rank=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # a resume draws what the first run drew
    assert first[0].shape == (2, 2, 1, 12, 12, 12)  # two views of each subject
    assert not torch.equal(first[0][:, 0], first[0][:, 1])
    assert not torch.equal(first[0], first[1])  # batches of an epoch differ
    assert not torch.equal(views_of(rank=1)[0], first[0])  # DDP processes draw different views
    assert not torch.equal(views_of(rank=0, epoch=1)[0], first[0])
    assert not torch.equal(views_of(rank=0, seed=1)[0], first[0])


@pytest.fixture(scope="module")
def float16_cache(tiny_cohort, tmp_path_factory):
    from medssl.data.cache import cache_cohort
    from medssl.data.cohort import load_cohort

    return cache_cohort(load_cohort(tiny_cohort), tmp_path_factory.mktemp("cache") / "f16", dtype="float16")


def training_data(recipe):
    from medssl.methods import method_needs
    from medssl.train.distributed import DistributedContext
    from medssl.train.pretraining import Notes, pretraining_data

    return pretraining_data(
        recipe, method_needs(recipe), DistributedContext(), torch.device("cpu"), Notes(None, True), None
    )


def test_a_float16_cache_reaches_the_device_step_in_float16_and_the_views_in_float32(float16_cache):
    data = training_data(quick("simclr", f"data.root={float16_cache}", "data.cache_dtype=float16"))
    assert isinstance(data.loader, BatchViewsLoader)
    loaded = next(iter(data.loader.loader.epoch(0)))["views"]  # what the workers hand the device step
    assert loaded.dtype == torch.float16 and loaded.shape[1] == 1
    seen, draw = [], data.loader.views

    def views_seeing(volumes, generator):
        seen.append((volumes.dtype, volumes.device))
        return draw(volumes, generator)

    data.loader.views = views_seeing
    views = next(iter(data.loader.epoch(0)))["views"]
    assert seen[0] == (torch.float32, torch.device("cpu"))  # cast on the device, before the views
    assert views.dtype == torch.float32 and views.shape[:2] == (loaded.shape[0], 2)
    assert torch.equal(data.loader.to_device(loaded), loaded.float())


def test_the_loader_path_casts_a_float16_cache_in_the_workers(float16_cache):
    data = training_data(
        quick("simclr", f"data.root={float16_cache}", "data.cache_dtype=float16", "views.device=loader")
    )
    assert data.dataset[0]["views"].dtype == torch.float32


def test_the_batch_path_reads_ahead_and_pins_only_for_cuda():
    from medssl.train.loading import BATCH_PREFETCH, EpochLoader

    epochs = EpochLoader(list(range(8)), batch_size=2, num_workers=1, pin_memory=True)  # type: ignore[arg-type]
    BatchViewsLoader(epochs, lambda volumes, generator: volumes, torch.device("cpu"), seed=0)
    loader = epochs.epoch(0)
    assert loader.prefetch_factor == BATCH_PREFETCH and not loader.pin_memory
    assert EpochLoader(list(range(8)), batch_size=2).epoch(0).prefetch_factor is None  # type: ignore[arg-type]


def test_a_run_on_a_float16_cache_with_views_on_the_device_resumes_to_the_weights_of_a_straight_run(
    tmp_path, float16_cache, straight_and_resumed
):
    recipe = quick("simclr", "train.epochs=2", f"data.root={float16_cache}", "data.cache_dtype=float16")
    a, b = straight_and_resumed(recipe, tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
