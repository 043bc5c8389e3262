"""Batched views: each transform against its TorchIO counterpart for the same parameters, the
parameter distributions against TorchIO's draws, per-sample draws, reproducibility from the generator.

Tolerances (float32, intensities of unit scale): blur, normalisation 1e-5; affine 1e-4; crop-resize,
flip, cutout, noise exact; the fused crop + flip + affine resampling within 2 % of the volume's range
of TorchIO's two resamplings (on a smooth volume).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from medssl.config import ViewsConfig
from medssl.data.batched_random import (
    BatchedAffine,
    BatchedBlur,
    BatchedCropResize,
    BatchedCutout,
    BatchedFlip,
    BatchedNoise,
)
from medssl.data.batched_transforms import (
    affine,
    crop_resize,
    cutout,
    flip,
    gaussian_blur,
    gaussian_noise,
    normalize_intensity,
)
from medssl.data.batched_views import build_batched_views
from medssl.data.views import (
    CropResize,
    Cutout,
    RandomAffineVoxels,
    RandomBlurVoxels,
    RandomCropResize,
    RandomCutout,
    build_view_transform,
    normalization_transform,
)
from medssl.errors import RecipeError

SHAPE = (17, 20, 19)
ALL_STEPS = {
    "crop": {"p": 1.0, "scale": [0.6, 0.9]},
    "flip": {"p": 0.5, "axes": [0, 1, 2]},
    "affine": {"p": 1.0, "translation": 2.0},
    "cutout": {"p": 1.0},
    "blur": {"p": 1.0},
    "noise": {"p": 1.0},
}


def volumes(batch: int = 1, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, *shape, generator=torch.Generator().manual_seed(seed))


def smooth_volumes(batch: int) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return (torch.sin(3 * z) * torch.cos(2 * y) + x**2)[None, None].repeat(batch, 1, 1, 1, 1)


def image(volume: torch.Tensor, spacing=(1.0, 1.0, 1.0)) -> tio.ScalarImage:
    """A (C, D, H, W) volume as TorchIO sees a cached one: affine diag(spacing)."""
    return tio.ScalarImage(tensor=volume.clone(), affine=np.diag([*spacing, 1.0]))


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- same parameters, same output
def test_crop_resize_is_torchio_crop_resize_to_full_and_smaller_shapes():
    x = volumes(2)
    start, size = torch.tensor([[2, 3, 1], [0, 5, 4]]), torch.tensor([[9, 11, 10], [17, 7, 15]])
    for output_shape in (None, (8, 9, 7)):
        out = crop_resize(x, start, size, output_shape)
        for b in range(2):
            target = SHAPE if output_shape is None else output_shape
            assert torch.equal(out[b], CropResize(start[b].tolist(), size[b].tolist(), target)(image(x[b])).data)


def test_flip_equals_torchio_flip_per_sample():
    x = volumes(2)
    flipped = torch.tensor([[True, False, True], [False, True, False]])
    out = flip(x, flipped)
    assert torch.equal(out[0], tio.Flip(axes=(0, 2))(image(x[0])).data)
    assert torch.equal(out[1], tio.Flip(axes=(1,))(image(x[1])).data)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 2.0, 1.0)])
def test_affine_equals_torchio_affine_in_voxel_translation(spacing):
    x = volumes(3)
    scale = torch.tensor([1.07, 0.91, 1.0])
    degrees = torch.tensor([[7.0, -4.0, 9.0], [-12.0, 3.5, 0.0], [0.0, 0.0, 0.0]])  # the last: planes of fill
    translation = torch.tensor([[1.3, -0.7, 2.1], [0.0, 1.5, -2.5], [2.6, -3.2, 1.0]])  # voxels
    out = affine(x, scale, degrees, translation, spacing)
    for b in range(3):
        expected = tio.Affine(
            scales=(float(scale[b]),) * 3,
            degrees=tuple(degrees[b].tolist()),
            translation=tuple((translation[b] * torch.tensor(spacing)).tolist()),  # RandomAffineVoxels' mm
        )(image(x[b], spacing)).data
        torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-4)


def test_cutout_equals_torchio_cutout_and_size_zero_is_no_box():
    x = volumes(2)
    out = cutout(x, torch.tensor([[2, 3, 4], [0, 0, 0]]), torch.tensor([[5, 6, 7], [0, 0, 0]]))
    assert torch.equal(out[0], Cutout([2, 3, 4], [5, 6, 7])(image(x[0])).data)
    assert torch.equal(out[1], x[1])


def test_blur_equals_torchio_blur_with_a_zero_axis_and_a_kernel_wider_than_the_volume():
    x = volumes(2)
    std = torch.tensor([[0.7, 1.3, 0.0], [6.0, 0.2, 3.0]])  # 6 voxels: radius 24 > 17, reflected twice
    out = gaussian_blur(x, std)
    for b in range(2):
        expected = tio.Blur(std=tuple(std[b].tolist()))(image(x[b])).data
        torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-5)


def test_noise_equals_torchio_noise_of_the_same_seed():
    x = volumes(1)
    out = gaussian_noise(x, torch.tensor([0.3]), seed=1234)
    assert torch.equal(out[0], tio.Noise(mean=0.0, std=0.3, seed=1234)(image(x[0])).data)


@pytest.mark.parametrize("mode", ["zscore", "zscore_volume", "minmax", "none"])
def test_normalize_equals_torchio_normalization(mode):
    x = volumes(2) + 3
    x[:, :, :4] = 0  # a zero background that zscore leaves out of its statistics
    out = normalize_intensity(x, mode)
    transform = normalization_transform(mode)
    for b in range(2):
        expected = x[b] if transform is None else transform(image(x[b])).data
        torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-5)


def test_normalize_source_is_refused_as_by_the_torchio_path():
    with pytest.raises(RecipeError, match="source"):
        normalize_intensity(volumes(1), "source")


def torchio_replay(volume: torch.Tensor, params: dict, b: int) -> torch.Tensor:
    """TorchIO's deterministic transforms, in build_view_transform's order, with sample b's parameters."""
    subject = tio.Subject(image=image(volume))
    crop = params["crop"]
    subject = CropResize(crop.start[b].tolist(), crop.size[b].tolist(), SHAPE)(subject)
    axes = [axis for axis in range(3) if params["flip"].flipped[b, axis]]
    if axes:
        subject = tio.Flip(axes=axes)(subject)
    moved = params["affine"]
    subject = tio.Affine(
        scales=(float(moved.scale[b]),) * 3,
        degrees=tuple(moved.degrees[b].tolist()),
        translation=tuple((moved.translation[b].numpy() * np.array(subject.spacing)).tolist()),
    )(subject)
    box = params["cutout"]
    subject = Cutout(box.start[b].tolist(), box.size[b].tolist())(subject)
    # RandomBlurVoxels' mm: the resized crop's voxels are no longer 1 mm
    subject = tio.Blur(std=tuple((params["blur"].std[b].numpy() * np.array(subject.spacing)).tolist()))(subject)
    return subject["image"].data


def pipeline_without_noise(fuse: bool):
    steps = {name: value for name, value in ALL_STEPS.items() if name != "noise"}
    return build_batched_views(ViewsConfig(normalize="none", **steps), fuse_spatial=fuse)


def test_unfused_pipeline_equals_torchio_steps_in_order():
    views, x = pipeline_without_noise(fuse=False), smooth_volumes(4)
    params = views.sample(4, SHAPE, generator(1))
    out = views.apply(x, params)
    for b in range(4):
        torch.testing.assert_close(out[b], torchio_replay(x[b], params, b), rtol=0, atol=1e-4)


def test_fused_pipeline_is_within_one_interpolation_of_torchio_steps():
    views, x = pipeline_without_noise(fuse=True), smooth_volumes(4)
    params = views.sample(4, SHAPE, generator(1))
    out = views.apply(x, params)
    for b in range(4):
        expected = torchio_replay(x[b], params, b)
        span = float(expected.max() - expected.min())
        error = (out[b] - expected).abs()
        assert float(error.max()) < 0.02 * span
        assert float(error.mean()) < 0.003 * span


# ----------------------------------------------------------------------------- parameter distributions
DRAWS = 3000


def torchio_draws(draw) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.tensor([draw() for _ in range(DRAWS)], dtype=torch.float64)


def assert_same_moments(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Column means within 5 standard errors, variances within 15 %."""
    ours, theirs = ours.double().reshape(DRAWS, -1), theirs.double().reshape(DRAWS, -1)
    error = ((ours.var(dim=0) + theirs.var(dim=0)) / DRAWS).sqrt()
    assert ((ours.mean(dim=0) - theirs.mean(dim=0)).abs() <= 5 * error + 1e-9).all(), (ours.mean(0), theirs.mean(0))
    torch.testing.assert_close(ours.var(dim=0), theirs.var(dim=0), rtol=0.15, atol=1e-9)


def test_crop_parameters_follow_torchio_distribution():
    shape = (24, 20, 16)
    torchio = RandomCropResize(scale=(0.5, 1.0))
    theirs = torchio_draws(lambda: [value for pair in torchio.get_params(shape) for value in pair])
    params = BatchedCropResize(scale=(0.5, 1.0)).sample(DRAWS, shape, generator())
    assert_same_moments(torch.cat([params.start, params.size], dim=1), theirs)


def test_cutout_parameters_follow_torchio_distribution():
    shape = (24, 20, 16)
    torchio = RandomCutout(size=(0.1, 0.4))
    theirs = torchio_draws(lambda: [value for pair in torchio.get_params(shape) for value in pair])
    params = BatchedCutout(size=(0.1, 0.4)).sample(DRAWS, shape, generator())
    assert_same_moments(torch.cat([params.start, params.size], dim=1), theirs)


def test_flip_parameters_follow_torchio_distribution():
    theirs = torchio_draws(lambda: tio.RandomFlip.get_params(0.3))
    theirs[:, 1] = 0  # axis 1 is not in the axes below: RandomFlip leaves it
    params = BatchedFlip(axes=(0, 2), p=0.3).sample(DRAWS, SHAPE, generator())
    assert_same_moments(params.flipped, theirs)


def test_affine_parameters_follow_torchio_distribution():
    torchio = RandomAffineVoxels(scales=(0.8, 1.2), degrees=15, translation=3, isotropic=True)

    def draw():
        scale, degrees, translation = torchio.get_params(
            torchio.scales, torchio.degrees, torchio.translation, torchio.isotropic
        )
        return [float(scale[0]), *degrees.tolist(), *translation.tolist()]

    params = BatchedAffine(scale=(0.8, 1.2), degrees=15, translation=3).sample(DRAWS, SHAPE, generator())
    ours = torch.cat([params.scale[:, None], params.degrees, params.translation], dim=1)
    assert_same_moments(ours, torchio_draws(draw))


def test_blur_parameters_follow_torchio_distribution():
    torchio = RandomBlurVoxels(std=(0.2, 1.5))
    params = BatchedBlur(std=(0.2, 1.5)).sample(DRAWS, SHAPE, generator())
    assert_same_moments(params.std, torchio_draws(lambda: torchio.get_params(torchio.std_ranges)))


def test_noise_parameters_follow_torchio_distribution():
    torchio = tio.RandomNoise(mean=0.0, std=(0.0, 0.2))
    theirs = torchio_draws(lambda: torchio.get_params(torchio.mean_range, torchio.std_range)[:2])
    params = BatchedNoise(std=(0.0, 0.2)).sample(DRAWS, SHAPE, generator())
    assert_same_moments(torch.stack([torch.zeros(DRAWS), params.std], dim=1), theirs)


@pytest.mark.parametrize("step", [BatchedCropResize, BatchedAffine, BatchedCutout, BatchedBlur, BatchedNoise])
def test_each_sample_is_transformed_with_probability_p(step):
    params = step(p=0.3).sample(DRAWS, SHAPE, generator())
    fraction = float(params.applied.double().mean())
    assert abs(fraction - 0.3) < 5 * (0.3 * 0.7 / DRAWS) ** 0.5


# ----------------------------------------------------------------------------- pipeline
TORCHIO_STEP = {
    "crop": "RandomCropResize",
    "flip": "RandomFlip",
    "affine": "RandomAffineVoxels",
    "cutout": "RandomCutout",
    "blur": "RandomBlurVoxels",
    "noise": "RandomNoise",
}


def test_pipeline_has_the_torchio_steps_in_order_and_gives_batch_by_views():
    config = ViewsConfig(n_views=3, **ALL_STEPS)
    views = build_batched_views(config)
    torchio_steps = [step.name for step in build_view_transform(config).transforms]
    assert ["ZNormalization", *(TORCHIO_STEP[name] for name in views.steps)] == torchio_steps
    out = views(volumes(2).half(), generator())
    assert out.shape == (2, 3, 1, *SHAPE) and out.dtype == torch.float32 and bool(out.isfinite().all())


def test_pipeline_refuses_the_recipes_the_torchio_path_refuses():
    with pytest.raises(RecipeError, match="views.crop.scale"):
        build_batched_views(ViewsConfig(crop={"p": 1.0, "scale": [0.9, 0.5]}))
    with pytest.raises(RecipeError, match="source"):
        build_batched_views(ViewsConfig(normalize="source"))


def test_views_differ_across_samples_and_across_views_of_a_subject():
    views = build_batched_views(ViewsConfig(**ALL_STEPS))
    params = views.sample(8, SHAPE, generator())
    for values in (params["crop"].start, params["affine"].degrees, params["cutout"].start, params["blur"].std):
        assert len({tuple(row.tolist()) for row in values}) == 8
    out = views(volumes(1).repeat(4, 1, 1, 1, 1), generator())  # four copies of one subject, two views each
    flat = out.reshape(8, -1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i))


def test_same_generator_state_gives_the_same_views():
    views, x = build_batched_views(ViewsConfig(**ALL_STEPS)), volumes(3)
    first = generator(7)
    state = first.get_state()
    expected = views(x, first)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(views(x, resumed), expected)
    assert not torch.equal(views(x, first), expected)  # the generator moved on
