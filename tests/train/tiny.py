"""Small BatchNorm-free methods and one-step recipes shared by the engine tests.

BatchNorm statistics depend on how a batch is split (per process, per micro-batch), so
exact comparisons of updates use these instead of the MONAI networks.
"""

from __future__ import annotations

import torch
from torch import nn

from medssl.recipe import Recipe


def tiny_encoder():
    from medssl.models import build_encoder

    encoder = build_encoder("alexnet")  # an Encoder (spec, save/load) around a smaller network
    encoder.network = nn.Sequential(
        nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten()
    )
    encoder.feature_dim = 4
    return encoder


def tiny_method(recipe: Recipe, encoder=None):
    """y-aware loss on a 1-conv encoder + 2-layer head (``build_method`` signature)."""
    from medssl.losses import YAwareLoss
    from medssl.methods import EmbeddingLossMethod
    from medssl.models import ProjectionHead

    return EmbeddingLossMethod(
        tiny_encoder(), ProjectionHead(4, 8, 8), YAwareLoss(sigma=10.0, temperature=0.5), uses_label=True
    )


class ViewDistanceLoss(nn.Module):
    """Mean over subjects of the squared distance between a subject's two views: no term
    couples two subjects, so micro-batches of b accumulate to exactly the batch of 2b."""

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return (z[:, 0] - z[:, 1]).pow(2).sum(dim=-1).mean()


def per_subject_method(recipe: Recipe, encoder=None):
    from medssl.methods import EmbeddingLossMethod
    from medssl.models import ProjectionHead

    return EmbeddingLossMethod(tiny_encoder(), ProjectionHead(4, 8, 8), ViewDistanceLoss(), uses_label=False)


def step_recipe(cohort: str, batch_size: int, subjects: int = 8, **train) -> Recipe:
    """One plain SGD step over ``subjects`` subjects (Adam's first step is lr * sign(grad) and
    would hide a factor of 2); the large lr lifts this small model's small gradients well
    above rounding. Views are augmented (flip, noise): they are seeded per subject and epoch."""
    settings = {
        "epochs": 1,
        "batch_size": batch_size,
        "optimizer": "sgd",
        "lr": 100.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "device": "cpu",
        **train,
    }
    return Recipe(
        name="step",
        data={"root": cohort, "max_subjects": subjects, "label": "age"},
        views={"flip": {"p": 0.5}, "noise": {"p": 0.5, "std": [0.0, 0.2]}},
        method={"name": "yaware"},
        train=settings,
        eval={"after_pretrain": False},
    )


def initial_state(build=tiny_method) -> dict[str, torch.Tensor]:
    """The weights the engine starts from (it seeds torch with train.seed = 0 before building)."""
    torch.manual_seed(0)
    return build(Recipe()).state_dict()


def updates(state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: state[key].float() - value.float() for key, value in initial.items()}


def assert_same_updates(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal to float32 rounding. Some entries (the last bias: a sum over the batch of
    gradients that nearly cancel) are tiny differences of large terms, so the absolute
    tolerance is relative to the largest update; a wrong factor (2 with 2 processes or 2
    micro-batches) would differ by the size of the update itself, 1,000 times more."""
    scale = max(value.abs().max().item() for value in expected.values())
    assert scale > 1e-3  # a real step
    for key, value in expected.items():
        torch.testing.assert_close(
            actual[key], value, rtol=1e-3, atol=1e-3 * scale, msg=lambda text, key=key: f"{key}: {text}"
        )
