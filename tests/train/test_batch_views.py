"""``views.device: batch``: views drawn on the training device in the training step, every method, resume, ranks."""

from __future__ import annotations

import pytest
import torch

from medssl.config import ViewsConfig, apply_overrides, load_recipe, recipe_from_dict, smoke_recipe
from medssl.data.batched_views import build_batched_views
from medssl.pipeline import pretrain
from medssl.train.loading import BatchViewsLoader


def quick(name: str, *overrides: str):
    smoke = smoke_recipe(load_recipe(name)).model_dump(mode="json")
    fast = ["model.encoder=alexnet", "eval.after_pretrain=false", "views.device=batch"]
    return recipe_from_dict(apply_overrides(smoke, [*fast, *overrides]))


@pytest.mark.parametrize("name", ["yaware_age", "simclr", "byol", "dino", "deepcluster", "supervised_age"])
def test_every_kind_of_method_trains_with_views_drawn_on_the_device(tmp_path, name):
    result = pretrain(quick(name), tmp_path / "run")
    assert result.epochs_done == 1 and torch.isfinite(torch.tensor(result.last_loss))


def test_a_run_with_views_drawn_on_the_device_resumes_to_the_weights_of_a_straight_run(tmp_path):
    class Interrupted(Exception):
        pass

    def stop(epoch: int) -> None:
        if epoch == 0:
            raise Interrupted

    recipe = quick("simclr", "train.epochs=2")
    pretrain(recipe, tmp_path / "straight")
    with pytest.raises(Interrupted):
        pretrain(recipe, tmp_path / "resumed", on_epoch_end=stop)
    pretrain(recipe, tmp_path / "resumed", resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class FixedBatches:
    """An EpochLoader stand-in: the same two batches of one view per subject every epoch."""

    dataset, batch_size, drop_last = None, 2, True

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
