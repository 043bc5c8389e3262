"""Training batches: views seeded by (seed, epoch, subject), one persistent DataLoader for every epoch."""

from __future__ import annotations

import torch

from medssl.methods import method_needs
from medssl.recipe import Recipe
from medssl.train.distributed import DistributedContext
from medssl.train.loading import EpochLoader, EpochSampler, EpochSeededDataset
from medssl.train.pretraining import Notes, TrainingData, pretraining_data


def data_for(cohort, workers: int) -> TrainingData:
    recipe = Recipe(
        data={"root": str(cohort), "max_subjects": 8, "num_workers": workers, "label": None},
        views={"crop": {"p": 1.0}, "noise": {"p": 1.0}, "flip": {"p": 0.5}},
        method={"name": "simclr"},
        train={"batch_size": 4, "device": "cpu"},
    )
    return pretraining_data(
        recipe, method_needs(recipe), DistributedContext(), torch.device("cpu"), Notes(None, True), None
    )


def views_by_subject(loader: EpochLoader, epoch: int) -> dict[int, torch.Tensor]:
    return {int(index): views for batch in loader.epoch(epoch) for index, views in zip(batch["index"], batch["views"])}


def test_views_depend_on_seed_epoch_and_subject_not_on_the_number_of_workers(tiny_cohort, tmp_path):
    serial, parallel = data_for(tiny_cohort, 0).loader, data_for(tiny_cohort, 2).loader
    for epoch in (0, 1):
        expected, got = views_by_subject(serial, epoch), views_by_subject(parallel, epoch)
        assert expected.keys() == got.keys() and len(expected) == 8
        assert all(torch.equal(expected[index], got[index]) for index in expected)
    first, second = views_by_subject(serial, 0), views_by_subject(serial, 1)
    assert not any(torch.equal(first[index], second[index]) for index in first)  # new views every epoch


def test_one_loader_with_persistent_workers_serves_every_epoch(tiny_cohort, tmp_path):
    loader = data_for(tiny_cohort, 2).loader
    first = loader.epoch(0)
    assert first.persistent_workers and loader.epoch(1) is first
    assert data_for(tiny_cohort, 0).loader.epoch(0).pin_memory is False  # pinned only for CUDA
    loader.close()


def test_a_subject_drawn_twice_in_an_epoch_gets_new_views(tiny_cohort, tmp_path):
    dataset = EpochSeededDataset(data_for(tiny_cohort, 0).dataset, seed=0)
    keys = EpochSampler()
    keys.set_epoch(0, [3, 3])
    first, second = (dataset[key]["views"] for key in keys)
    assert not torch.equal(first, second)
    assert torch.equal(dataset[(0, 3, 0)]["views"], first)  # and the same draw is reproducible
