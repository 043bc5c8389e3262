"""The random transforms of the batched views: per-sample parameters drawn from a ``torch.Generator``.

Every random transform follows TorchIO's split: ``sample`` draws the parameters of each
sample (a small dataclass of ``(B, ...)`` tensors, recorded and inspectable), ``apply`` is
deterministic given them (the functions of :mod:`medssl.data.batched_transforms`). For the
same recipe keys the parameters follow the distributions of the TorchIO path (the tests pin
them). They are drawn on the generator's device; :mod:`medssl.data.batched_views` chains the
transforms into a recipe's pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch

from medssl.data.batched_transforms import (
    affine,
    crop_resize,
    cutout,
    flip,
    gaussian_blur,
    gaussian_noise,
    per_sample,
)


# ----------------------------------------------------------------------------- drawing
def _rand(generator: torch.Generator, *size: int) -> torch.Tensor:
    """Uniform [0, 1) float64 numbers from ``generator``, on its device."""
    return torch.rand(size, generator=generator, device=generator.device, dtype=torch.float64)


def _uniform(generator: torch.Generator, low: float, high: float, *size: int) -> torch.Tensor:
    return low + (high - low) * _rand(generator, *size)


def _round_half_up(values: torch.Tensor) -> torch.Tensor:
    return torch.floor(values + 0.5).long()


def _random_start(generator: torch.Generator, shape: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Uniform integer in [0, L - size] per sample and axis, as ``torch.randint(0, L - size + 1)``."""
    free = shape - size + 1
    return torch.minimum(torch.floor(_rand(generator, *size.shape) * free).long(), free - 1)


def _as_shape(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.tensor([int(length) for length in shape], device=generator.device)


ParamsT = TypeVar("ParamsT", bound="Params")


@dataclass
class Params:
    """Per-sample parameters of a step: (B, ...) tensors."""

    def to(self: ParamsT, device: torch.device | str) -> ParamsT:
        """The same parameters on ``device``."""
        return replace(self, **{field.name: getattr(self, field.name).to(device) for field in fields(self)})


# ----------------------------------------------------------------------------- random transforms
@dataclass
class CropParams(Params):
    """Per-sample crop boxes: ``start`` and ``size`` (B, 3) voxels; not applied = the whole volume."""

    applied: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor


@dataclass
class FlipParams(Params):
    """``flipped`` (B, 3) bool: the spatial axes reversed in each sample."""

    flipped: torch.Tensor


@dataclass
class AffineParams(Params):
    """Per-sample ``scale`` (B,), ``degrees`` and ``translation`` (B, 3, voxels); not applied = identity."""

    applied: torch.Tensor
    scale: torch.Tensor
    degrees: torch.Tensor
    translation: torch.Tensor


@dataclass
class CutoutParams(Params):
    """Per-sample boxes set to 0: ``start``, ``size`` (B, 3) voxels; not applied = size 0."""

    applied: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor


@dataclass
class BlurParams(Params):
    """Per-sample ``std`` (B, 3) in voxels; not applied = 0."""

    applied: torch.Tensor
    std: torch.Tensor


@dataclass
class NoiseParams(Params):
    """Per-sample ``std`` (B,) (not applied = 0) and the ``seed`` (1,) of the batch's noise field."""

    applied: torch.Tensor
    std: torch.Tensor
    seed: torch.Tensor


def _applied(generator: torch.Generator, p: float, batch: int) -> torch.Tensor:
    """Per-sample draw of a transform's probability ``p`` (TorchIO: applied unless rand > p)."""
    return _rand(generator, batch) <= p if p < 1 else torch.ones(batch, dtype=torch.bool, device=generator.device)


class BatchedCropResize:
    """Random crop resized back, per sample (``views.RandomCropResize``).

    One edge fraction f ~ U(scale) per sample for all three axes; edge ``round(f * L)``
    (at least 1, at most L), a uniformly random position inside the volume.

    Args:
        scale: Range of the crop edge as a fraction of the axis length (``views.crop.scale``).
        p: Probability per sample.
        output_shape: Spatial shape of the output; None keeps the input's (smaller: local crops).
    """

    def __init__(
        self, scale: tuple[float, float] = (0.6, 1.0), p: float = 1.0, output_shape: Sequence[int] | None = None
    ):
        self.scale, self.p = (float(scale[0]), float(scale[1])), float(p)
        self.output_shape = None if output_shape is None else tuple(int(length) for length in output_shape)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> CropParams:
        applied = _applied(generator, self.p, batch)
        lengths = _as_shape(shape, generator)
        fraction = _uniform(generator, *self.scale, batch)
        size = torch.minimum(_round_half_up(fraction[:, None] * lengths).clamp(min=1), lengths)
        size = torch.where(applied[:, None], size, lengths)
        start = torch.where(applied[:, None], _random_start(generator, lengths, size), 0)
        return CropParams(applied, start, size)

    def apply(self, volumes: torch.Tensor, params: CropParams) -> torch.Tensor:
        return crop_resize(volumes, params.start, params.size, self.output_shape)

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))


class BatchedFlip:
    """Random flips (``tio.RandomFlip``): each axis of ``axes`` reversed with probability ``p``, independently."""

    def __init__(self, axes: Sequence[int] = (0,), p: float = 0.5):
        self.axes, self.p = tuple(int(axis) for axis in axes), float(p)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> FlipParams:
        allowed = torch.tensor([axis in self.axes for axis in range(3)], device=generator.device)
        return FlipParams((_rand(generator, batch, 3) < self.p) & allowed)

    def apply(self, volumes: torch.Tensor, params: FlipParams) -> torch.Tensor:
        return flip(volumes, params.flipped)

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))


class BatchedAffine:
    """Random isotropic scaling, rotation and translation (``views.RandomAffineVoxels``, isotropic).

    Per sample: s ~ U(scale), each angle ~ U(-degrees, degrees), each translation
    ~ U(-translation, translation) voxels.

    Args:
        scale: Range of the scaling factor (``views.affine.scale``).
        degrees: Largest rotation about each axis.
        translation: Largest translation in voxels.
        p: Probability per sample.
    """

    def __init__(
        self, scale: tuple[float, float] = (0.9, 1.1), degrees: float = 10.0, translation: float = 0.0, p: float = 1.0
    ):
        self.scale, self.degrees = (float(scale[0]), float(scale[1])), float(degrees)
        self.translation, self.p = float(translation), float(p)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> AffineParams:
        applied = _applied(generator, self.p, batch)
        scale = torch.where(applied, _uniform(generator, *self.scale, batch), 1.0)
        degrees = torch.where(applied[:, None], _uniform(generator, -self.degrees, self.degrees, batch, 3), 0.0)
        translation = _uniform(generator, -self.translation, self.translation, batch, 3)
        return AffineParams(applied, scale, degrees, torch.where(applied[:, None], translation, 0.0))

    def apply(
        self, volumes: torch.Tensor, params: AffineParams, spacing: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0)
    ) -> torch.Tensor:
        moved = affine(volumes, params.scale, params.degrees, params.translation, spacing)
        return torch.where(per_sample(params.applied.to(volumes.device)), moved, volumes)

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))


class BatchedCutout:
    """Random box set to 0 (``views.RandomCutout``): edge ``round(f * L)``, f ~ U(size) per axis.

    Args:
        size: Range of the box edge as a fraction of the axis length (``views.cutout.size``).
        p: Probability per sample.
    """

    def __init__(self, size: tuple[float, float] = (0.25, 0.25), p: float = 1.0):
        self.size, self.p = (float(size[0]), float(size[1])), float(p)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> CutoutParams:
        applied = _applied(generator, self.p, batch)
        lengths = _as_shape(shape, generator)
        size = torch.minimum(_round_half_up(_uniform(generator, *self.size, batch, 3) * lengths), lengths)
        start = _random_start(generator, lengths, size)
        return CutoutParams(applied, start, torch.where(applied[:, None], size, 0))

    def apply(self, volumes: torch.Tensor, params: CutoutParams) -> torch.Tensor:
        return cutout(volumes, params.start, params.size)

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))


class BatchedBlur:
    """Random Gaussian blur (``views.RandomBlurVoxels``): std ~ U(std) voxels per axis, independently."""

    def __init__(self, std: tuple[float, float] = (0.1, 1.0), p: float = 1.0):
        self.std, self.p = (float(std[0]), float(std[1])), float(p)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> BlurParams:
        applied = _applied(generator, self.p, batch)
        return BlurParams(applied, torch.where(applied[:, None], _uniform(generator, *self.std, batch, 3), 0.0))

    def apply(self, volumes: torch.Tensor, params: BlurParams) -> torch.Tensor:
        return gaussian_blur(volumes, params.std, max_std=self.std[1])

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))


class BatchedNoise:
    """Random additive Gaussian noise (``tio.RandomNoise(mean=0, std=std)``): std ~ U(std) per sample.

    The seed of the noise field is drawn from the generator too (a CPU read when the
    generator is on a GPU), so the parameters determine the view, as ``tio.Noise``'s seed.
    """

    def __init__(self, std: tuple[float, float] = (0.0, 0.1), p: float = 1.0):
        self.std, self.p = (float(std[0]), float(std[1])), float(p)

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> NoiseParams:
        applied = _applied(generator, self.p, batch)
        std = torch.where(applied, _uniform(generator, *self.std, batch), 0.0)
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        return NoiseParams(applied, std, seed)

    def apply(self, volumes: torch.Tensor, params: NoiseParams) -> torch.Tensor:
        return gaussian_noise(volumes, params.std, int(params.seed))

    def __call__(self, volumes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(volumes, self.sample(volumes.shape[0], volumes.shape[2:], generator))
