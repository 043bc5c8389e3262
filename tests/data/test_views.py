"""Augmented views: medssl's cutout and crop-resize, the recipe pipelines and the datasets."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio
from torch.utils.data import DataLoader

from medssl.config import ViewsConfig
from medssl.data.views import (
    CropResize,
    Cutout,
    MultiViewDataset,
    RandomAffineVoxels,
    RandomBlurVoxels,
    RandomCropResize,
    RandomCutout,
    VolumeDataset,
    build_eval_transform,
    build_view_transform,
    resize_transform,
    seed_worker,
)
from medssl.errors import CohortError, RecipeError

ALL_AUGMENTATIONS = {
    "crop": {"p": 1.0},
    "cutout": {"p": 1.0},
    "flip": {"p": 0.5, "axes": [0, 1, 2]},
    "blur": {"p": 1.0},
    "noise": {"p": 1.0},
    "affine": {"p": 1.0, "translation": 2.0},
}


def brain_like(shape=(16, 16, 16), channels=1, seed=0) -> torch.Tensor:
    """Positive random intensities inside a box, 0 outside (a skull-stripped scan)."""
    generator = torch.Generator().manual_seed(seed)
    volume = torch.zeros(channels, *shape)
    inner = tuple(slice(2, edge - 2) for edge in shape)
    volume[(slice(None), *inner)] = 1 + torch.rand(channels, *(edge - 4 for edge in shape), generator=generator)
    return volume


def tensor_subject(volume: torch.Tensor, **metadata) -> tio.Subject:
    return tio.Subject(image=tio.ScalarImage(tensor=volume), **metadata)


@pytest.fixture
def disk_subjects(tmp_path):
    """Three subjects stored as NIfTI files, loaded lazily from their paths."""
    rows = [("sub-01", 31.0, "F"), ("sub-02", 54.5, "M"), ("sub-03", 72.0, "F")]
    subjects = []
    for number, (participant_id, age, sex) in enumerate(rows):
        path = tmp_path / f"{participant_id}.nii.gz"
        nib.save(nib.Nifti1Image(brain_like(seed=number)[0].numpy(), np.eye(4)), path)
        subjects.append(tio.Subject(image=tio.ScalarImage(path), participant_id=participant_id, age=age, sex=sex))
    return subjects


# ----------------------------------------------------------------------------- cutout
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutout_zeroes_exactly_one_box_whose_edges_are_the_configured_fractions(seed):
    torch.manual_seed(seed)
    shape = (16, 20, 24)
    image = RandomCutout(size=(0.25, 0.25))(tio.ScalarImage(tensor=torch.ones(1, *shape)))
    zeros = image.data[0] == 0
    assert int(zeros.sum()) == 4 * 5 * 6
    corner_low = [int(indices.min()) for indices in zeros.nonzero(as_tuple=True)]
    corner_high = [int(indices.max()) for indices in zeros.nonzero(as_tuple=True)]
    assert [high - low + 1 for low, high in zip(corner_low, corner_high)] == [4, 5, 6]


def test_cutout_edges_vary_per_axis_within_the_size_range():
    torch.manual_seed(0)
    cutout = RandomCutout(size=(0.25, 0.5))
    edges = set()
    for _ in range(20):
        _, size = cutout.get_params((16, 16, 16))
        assert all(4 <= edge <= 8 for edge in size)
        edges.update(size)
    assert len(edges) > 1


def test_cutout_leaves_label_maps_untouched():
    torch.manual_seed(0)
    labels = torch.ones(1, 16, 16, 16, dtype=torch.int64)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.ones(1, 16, 16, 16)), mask=tio.LabelMap(tensor=labels))
    cut = RandomCutout(size=(0.5, 0.5))(subject)
    assert int((cut["image"].data == 0).sum()) == 8**3
    assert torch.equal(cut["mask"].data, labels)


def test_cutout_with_zero_probability_returns_the_volume_unchanged():
    volume = torch.rand(1, 16, 16, 16) + 1
    assert torch.equal(RandomCutout(p=0.0)(tio.ScalarImage(tensor=volume)).data, volume)


# ----------------------------------------------------------------------------- crop-resize
def test_crop_resize_keeps_an_anisotropic_input_shape():
    torch.manual_seed(0)
    for _ in range(5):
        image = RandomCropResize(scale=(0.5, 0.9))(tio.ScalarImage(tensor=torch.rand(2, 16, 20, 24)))
        assert image.shape == (2, 16, 20, 24)


def test_crop_resize_uses_one_edge_fraction_for_all_axes():
    torch.manual_seed(0)
    start, size = RandomCropResize(scale=(0.5, 0.5)).get_params((16, 20, 24))
    assert size == (8, 10, 12)
    assert all(0 <= first <= length - edge for first, edge, length in zip(start, size, (16, 20, 24)))


def test_crop_resize_of_the_whole_volume_is_the_identity():
    volume = torch.rand(1, 16, 16, 16)
    image = RandomCropResize(scale=(1.0, 1.0))(tio.ScalarImage(tensor=volume))
    assert torch.allclose(image.data, volume, atol=1e-6)
    assert np.allclose(image.affine, np.eye(4))


def test_crop_resize_affine_maps_each_output_voxel_to_the_world_position_it_samples():
    # Intensity = world x coordinate: trilinear interpolation of a linear ramp is exact.
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.0]
    x_world = affine[0, 0] * torch.arange(24.0) + affine[0, 3]
    volume = x_world.view(1, 24, 1, 1).expand(1, 24, 8, 8).clone()
    cropped = CropResize(start=(6, 0, 0), size=(12, 8, 8), target_shape=(24, 8, 8))(
        tio.ScalarImage(tensor=volume, affine=affine)
    )
    expected = cropped.affine[0, 0] * torch.arange(24.0) + cropped.affine[0, 3]
    interior = slice(1, -1)  # the outermost samples fall half a voxel outside the box and are clamped
    assert torch.allclose(cropped.data[0, interior, 3, 3], expected[interior].float(), atol=1e-4)
    assert cropped.affine[0, 0] == pytest.approx(1.0)


def test_crop_resize_resizes_label_maps_with_nearest_neighbours():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 16, 16, 16))
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 16, 16, 16)), mask=tio.LabelMap(tensor=labels))
    out = RandomCropResize(scale=(0.5, 0.7))(subject)
    assert out["mask"].shape == (1, 16, 16, 16)
    assert set(out["mask"].data.unique().tolist()) <= {0, 1, 2}
    assert out["mask"].data.dtype == labels.dtype


def test_crop_resize_output_shape_gives_smaller_local_crops():
    image = RandomCropResize(scale=(0.3, 0.5), output_shape=(8, 8, 8))(
        tio.ScalarImage(tensor=torch.rand(1, 24, 24, 24))
    )
    assert image.shape == (1, 8, 8, 8)


# ----------------------------------------------------------------------------- voxel units
def test_blur_standard_deviation_is_given_in_voxels_and_recorded_in_mm():
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 16, 16, 16), affine=np.diag([2.0, 2.0, 3.0, 1.0])))
    blurred = RandomBlurVoxels(std=(1.0, 1.0))(subject)
    (blur,) = blurred.history
    assert blur.name == "Blur"
    assert blur.std["image"] == pytest.approx((2.0, 2.0, 3.0))


def test_affine_translation_is_given_in_voxels():
    volume = torch.rand(1, 12, 12, 12)
    subject = tio.Subject(image=tio.ScalarImage(tensor=volume, affine=np.diag([2.0, 2.0, 2.0, 1.0])))
    moved = RandomAffineVoxels(scales=(1, 1), degrees=0, translation=(2, 2, 0, 0, 0, 0), default_pad_value=0)(subject)
    assert moved.history[0].translation == pytest.approx((4.0, 0.0, 0.0))
    assert torch.allclose(moved["image"].data[:, 2:], volume[:, :-2], atol=1e-5)


# ----------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize(
    ("views", "channels"),
    [
        ({"n_views": 1}, 1),
        ({"n_views": 2, "normalize": "minmax", "crop": {"p": 1.0}}, 1),
        ({"n_views": 3, **ALL_AUGMENTATIONS}, 1),
        ({"n_views": 2, "normalize": "none", **ALL_AUGMENTATIONS}, 2),
    ],
)
def test_views_have_shape_v_c_d_h_w_and_float32(views, channels):
    config = ViewsConfig(**views)
    subjects = [tensor_subject(brain_like((16, 20, 24), channels=channels, seed=i), age=40.0 + i) for i in range(2)]
    dataset = MultiViewDataset(subjects, build_view_transform(config), n_views=config.n_views, label_key="age")
    item = dataset[1]
    assert item["views"].shape == (config.n_views, channels, 16, 20, 24)
    assert item["views"].dtype == torch.float32
    assert item["label"].dtype == torch.float32 and item["label"].shape == ()
    assert item["label"].item() == 41.0 and item["index"] == 1


def test_transforms_with_zero_probability_are_left_out_of_the_composition():
    config = ViewsConfig(
        crop={"p": 0.7}, cutout={"p": 0.0}, flip={"p": 0.0}, blur={"p": 0.2}, noise={"p": 0.0}, affine={"p": 0.0}
    )
    transform = build_view_transform(config)
    assert [step.name for step in transform.transforms] == ["ZNormalization", "RandomCropResize", "RandomBlurVoxels"]
    assert transform["crop"].probability == 0.7 and transform["blur"].probability == 0.2


def test_all_augmentations_are_composed_in_pipeline_order():
    transform = build_view_transform(ViewsConfig(**ALL_AUGMENTATIONS))
    names = [step.name for step in transform.transforms]
    assert names == [
        "ZNormalization",
        "RandomCropResize",
        "RandomFlip",
        "RandomAffineVoxels",
        "RandomCutout",
        "RandomBlurVoxels",
        "RandomNoise",
    ]
    assert transform["flip"].flip_probability == 0.5 and transform["flip"].axes == (0, 1, 2)


def test_eval_transform_only_normalises():
    assert [step.name for step in build_eval_transform(ViewsConfig(**ALL_AUGMENTATIONS)).transforms] == [
        "ZNormalization"
    ]
    assert [step.name for step in build_eval_transform(ViewsConfig(normalize="minmax")).transforms] == [
        "RescaleIntensity"
    ]
    assert len(build_eval_transform(ViewsConfig(normalize="none"))) == 0


def test_view_transform_can_leave_normalisation_to_the_preprocessing():
    transform = build_view_transform(ViewsConfig(crop={"p": 1.0}), include_normalization=False)
    assert [step.name for step in transform.transforms] == ["RandomCropResize"]


def test_zscore_standardises_the_nonzero_foreground_of_skull_stripped_scans():
    volume = brain_like((16, 16, 16))
    normalised = build_eval_transform(ViewsConfig(normalize="zscore"))(tensor_subject(volume))["image"].data
    brain = normalised[volume != 0]
    assert brain.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert brain.std().item() == pytest.approx(1.0, abs=1e-5)
    assert normalised[volume == 0].max() < brain.min()


def test_minmax_rescales_to_the_unit_interval():
    normalised = build_eval_transform(ViewsConfig(normalize="minmax"))(tensor_subject(brain_like()))["image"].data
    assert normalised.min().item() == pytest.approx(0.0) and normalised.max().item() == pytest.approx(1.0)


def test_every_step_records_itself_and_the_history_reproduces_the_view():
    torch.manual_seed(3)
    subject = tensor_subject(brain_like((16, 16, 16)))
    config = ViewsConfig(**{**ALL_AUGMENTATIONS, "flip": {"p": 1.0, "axes": [0]}})
    view = build_view_transform(config)(subject)
    names = [transform.name for transform in view.history]
    assert names == ["ZNormalization", "CropResize", "Flip", "Affine", "Cutout", "Blur", "Noise"]
    replayed = view.get_composed_history()(subject)
    assert torch.equal(replayed["image"].data, view["image"].data)


@pytest.mark.parametrize(
    ("views", "key"),
    [
        ({"cutout": {"p": 1.0, "size": (0.2, 1.5)}}, "views.cutout.size"),
        ({"crop": {"p": 1.0, "scale": (0.9, 0.6)}}, "views.crop.scale"),
        ({"blur": {"p": 1.0, "std": (-1.0, 1.0)}}, "views.blur.std"),
        ({"flip": {"p": 1.0, "axes": [0, 3]}}, "views.flip.axes"),
        ({"affine": {"p": 1.0, "scale": (0.0, 1.0)}}, "views.affine.scale"),
    ],
)
def test_out_of_range_view_settings_raise_a_recipe_error_naming_the_key(views, key):
    with pytest.raises(RecipeError, match=key):
        build_view_transform(ViewsConfig(**views))


def test_resize_transform_brings_every_volume_to_the_volume_shape():
    resized = resize_transform([8, 10, 12])(tensor_subject(brain_like((16, 20, 24))))
    assert resized["image"].shape == (1, 8, 10, 12)
    with pytest.raises(RecipeError, match="data.volume_shape"):
        resize_transform([8, 0, 12])


# ----------------------------------------------------------------------------- datasets
def test_same_torch_seed_gives_identical_views_and_another_seed_different_ones(disk_subjects):
    dataset = MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig(**ALL_AUGMENTATIONS)), n_views=2)
    torch.manual_seed(7)
    first = dataset[0]["views"]
    torch.manual_seed(7)
    again = dataset[0]["views"]
    torch.manual_seed(8)
    other = dataset[0]["views"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_views_of_one_item_differ_when_augmentations_are_on(disk_subjects):
    torch.manual_seed(0)
    dataset = MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig(**ALL_AUGMENTATIONS)), n_views=2)
    views = dataset[0]["views"]
    assert (views[0] - views[1]).abs().max() > 0.1


def test_the_views_of_one_item_are_equal_without_augmentation(disk_subjects):
    dataset = MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig()), n_views=2)
    views = dataset[0]["views"]
    assert torch.equal(views[0], views[1])


def test_dataset_reads_the_volume_from_disk_at_each_item_and_never_caches_it(disk_subjects):
    dataset = MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig(normalize="none")), n_views=1)
    path = disk_subjects[0]["image"].path
    for value in (3.0, 5.0):
        nib.save(nib.Nifti1Image(np.full((16, 16, 16), value, dtype=np.float32), np.eye(4)), path)
        assert torch.all(dataset[0]["views"] == value)
    assert not disk_subjects[0]["image"]._loaded


def test_preprocess_runs_before_the_views(disk_subjects):
    dataset = MultiViewDataset(
        disk_subjects,
        build_view_transform(ViewsConfig(crop={"p": 1.0})),
        n_views=2,
        preprocess=resize_transform([8, 8, 8]),
    )
    assert dataset[2]["views"].shape == (2, 1, 8, 8, 8)


def test_text_labels_are_encoded_with_the_label_encoder(disk_subjects):
    dataset = MultiViewDataset(
        disk_subjects, build_view_transform(ViewsConfig()), label_key="sex", label_encoder={"F": 0, "M": 1}
    )
    assert dataset.labels.tolist() == [0.0, 1.0, 0.0]
    assert dataset[1]["label"].item() == 1.0


def test_text_labels_without_or_outside_the_encoder_are_refused_at_construction(disk_subjects):
    with pytest.raises(CohortError, match="sub-01.*'sex'.*label_encoder"):
        MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig()), label_key="sex")
    with pytest.raises(CohortError, match="'M' is not in label_encoder"):
        MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig()), label_key="sex", label_encoder={"F": 0})
    with pytest.raises(CohortError, match="no label 'diagnosis'"):
        MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig()), label_key="diagnosis")


def test_label_is_nan_without_a_label_key(disk_subjects):
    item = MultiViewDataset(disk_subjects, build_view_transform(ViewsConfig()), n_views=2)[0]
    assert torch.isnan(item["label"]) and item["label"].dtype == torch.float32


def test_volume_dataset_gives_one_deterministic_normalised_volume(disk_subjects):
    dataset = VolumeDataset(
        disk_subjects, build_eval_transform(ViewsConfig()), preprocess=resize_transform([12, 12, 12])
    )
    first, again = dataset[1], dataset[1]
    assert first["volume"].shape == (1, 12, 12, 12) and first["volume"].dtype == torch.float32
    assert torch.equal(first["volume"], again["volume"]) and first["index"] == 1
    assert VolumeDataset(disk_subjects)[0]["volume"].shape == (1, 16, 16, 16)


def test_seed_worker_seeds_numpy_and_random_from_the_torch_seed():
    import random

    torch.manual_seed(1234)
    seed_worker(0)
    drawn = (np.random.rand(), random.random())
    np.random.seed(1234)
    random.seed(1234)
    assert drawn == (np.random.rand(), random.random())


def test_loader_batches_are_reproducible_across_worker_processes(disk_subjects):
    dataset = MultiViewDataset(
        disk_subjects, build_view_transform(ViewsConfig(**ALL_AUGMENTATIONS)), n_views=2, label_key="age"
    )
    pickle.loads(pickle.dumps(dataset))  # workers started with spawn receive a pickled copy

    def batches(seed):
        loader = DataLoader(
            dataset,
            batch_size=3,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )
        return next(iter(loader))

    first, again, other = batches(0), batches(0), batches(1)
    assert first["views"].shape == (3, 2, 1, 16, 16, 16)
    assert torch.equal(first["views"], again["views"])
    assert not torch.equal(first["views"], other["views"])
    assert first["label"].tolist() == [31.0, 54.5, 72.0]


def test_deterministic_transforms_replay_from_their_recorded_arguments():
    volume = torch.ones(1, 16, 16, 16)
    subject = tensor_subject(volume)
    out = Cutout(start=(1, 2, 3), size=(2, 3, 4))(subject)
    assert int((out["image"].data == 0).sum()) == 24
    assert torch.equal(out.get_composed_history()(subject)["image"].data, out["image"].data)
