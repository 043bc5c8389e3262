"""Augmented views of 3D volumes, and the datasets that serve them.

A *view* is one random augmentation of a subject's volume. Contrastive methods see each
subject in ``n_views`` independent views per step. The pipeline built from a recipe's
``views:`` section is, in order: intensity normalisation, random crop resized back to full
size, flips, affine, cutout, blur, noise -- the augmentations of Dufumier et al. (MICCAI
2021) for brain MRI, with crop-resize as in SimCLR (Chen et al., ICML 2020).

medssl's own augmentations follow TorchIO's pattern: a ``RandomTransform`` samples its
parameters once per call, then applies a deterministic transform (``Cutout``,
``CropResize``) that records itself in ``subject.history``, so a view can be inspected and
reproduced with ``subject.get_composed_history()``.

Randomness comes only from torch's global generator (TorchIO samples from it too): the
views of item ``i`` are a function of torch's RNG state, which ``DataLoader`` seeds in
every worker; ``seed_worker`` extends that seed to ``numpy`` and ``random``.

Example:
    >>> from medssl.config import ViewsConfig
    >>> views = ViewsConfig(crop={"p": 1.0}, cutout={"p": 0.5}, flip={"p": 0.5})
    >>> dataset = MultiViewDataset(cohort.subjects(), build_view_transform(views),
    ...                            n_views=views.n_views, preprocess=resize_transform([64, 64, 64]),
    ...                            label_key="age")
    >>> item = dataset[0]
    >>> item["views"].shape                  # (V, C, D, H, W)
    torch.Size([2, 1, 64, 64, 64])
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from torch.utils.data import Dataset
from torchio.transforms.augmentation.random_transform import RandomTransform
from torchio.transforms.intensity_transform import IntensityTransform
from torchio.transforms.spatial_transform import SpatialTransform

from medssl.config import ViewsConfig
from medssl.errors import CohortError, RecipeError

IMAGE_KEY = "image"


# ----------------------------------------------------------------------------- cutout
class Cutout(IntensityTransform):
    """Set a fixed box of every intensity image to 0.

    Args:
        start: First voxel index of the box along each spatial axis.
        size: Edge of the box in voxels along each spatial axis.
        **kwargs: See ``torchio.transforms.Transform``.
    """

    def __init__(self, start: Sequence[int], size: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.start = tuple(int(value) for value in start)
        self.size = tuple(int(value) for value in size)
        self.args_names = ["start", "size"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        box = (slice(None), *(slice(first, first + edge) for first, edge in zip(self.start, self.size)))
        for image in self.get_images(subject):
            data = image.data.clone()
            data[box] = 0
            image.set_data(data)
        return subject


class RandomCutout(RandomTransform, IntensityTransform):
    """Zero a random box of the volume (cutout; DeVries & Taylor, arXiv 2017).

    Along each spatial axis the box edge is ``round(f * L)`` voxels, with ``f`` drawn
    uniformly from ``size`` independently per axis and ``L`` the axis length; the box lies
    at a uniformly random position fully inside the volume. Every intensity image of the
    subject is cut at the same place; label maps are left untouched.

    The box is set to 0, as in the y-aware code (Dufumier et al., MICCAI 2021): after
    z-scoring, 0 is the mean brain intensity; after min-max scaling, it is the background.
    The applied box is recorded as a ``Cutout`` in ``subject.history``; it cannot be
    inverted (the voxels are lost).

    Args:
        size: Range ``(a, b)`` in [0, 1] of the box edge as a fraction of the axis length.
        p: Probability of applying the transform.
        **kwargs: See ``torchio.transforms.Transform``.

    Example:
        >>> cutout = RandomCutout(size=(0.25, 0.25))
        >>> image = cutout(tio.ScalarImage(tensor=torch.ones(1, 16, 16, 16)))
        >>> int((image.data == 0).sum())     # a 4 x 4 x 4 box
        64
    """

    def __init__(self, size: tuple[float, float] = (0.25, 0.25), p: float = 1.0, **kwargs):
        super().__init__(p=p, **kwargs)
        self.size_range = self._parse_range(size, "size", min_constraint=0, max_constraint=1)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if not self.get_images(subject):
            return subject
        start, size = self.get_params(subject.spatial_shape)
        cutout = Cutout(start=start, size=size, **self._get_base_args())
        return cutout(subject)

    def get_params(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        fractions = torch.empty(3).uniform_(*self.size_range).tolist()
        size = tuple(min(length, _round_half_up(fraction * length)) for fraction, length in zip(fractions, shape))
        return _random_start(shape, size), size


# ----------------------------------------------------------------------------- crop-resize
class CropResize(SpatialTransform):
    """Crop a fixed box and resize it to ``target_shape``.

    Intensity images are resampled trilinearly, label maps with nearest neighbours
    (``torch.nn.functional.interpolate``, ``align_corners=False``). The affine is updated so
    that every output voxel keeps its position in world coordinates.

    Args:
        start: First voxel index of the box along each spatial axis.
        size: Edge of the box in voxels along each spatial axis.
        target_shape: Spatial shape of the output.
        **kwargs: See ``torchio.transforms.Transform``.
    """

    def __init__(self, start: Sequence[int], size: Sequence[int], target_shape: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.start = tuple(int(value) for value in start)
        self.size = tuple(int(value) for value in size)
        self.target_shape = tuple(int(value) for value in target_shape)
        self.args_names = ["start", "size", "target_shape"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        box = (slice(None), *(slice(first, first + edge) for first, edge in zip(self.start, self.size)))
        for image in self.get_images(subject):
            patch = image.data[box]
            if isinstance(image, tio.LabelMap):
                resized = F.interpolate(patch[None].float(), size=self.target_shape, mode="nearest")
            else:
                resized = F.interpolate(
                    patch[None].float(), size=self.target_shape, mode="trilinear", align_corners=False
                )
            image.set_data(resized[0].to(patch.dtype))
            image.affine = self._crop_resize_affine(image.affine)
        return subject

    def _crop_resize_affine(self, affine: np.ndarray) -> np.ndarray:
        # Output voxel j samples the input at start + (j + 1/2) * step - 1/2 (align_corners=False).
        step = np.asarray(self.size, dtype=float) / np.asarray(self.target_shape, dtype=float)
        voxel_map = np.eye(4)
        voxel_map[:3, :3] = np.diag(step)
        voxel_map[:3, 3] = np.asarray(self.start, dtype=float) + 0.5 * step - 0.5
        return affine @ voxel_map


class RandomCropResize(RandomTransform, SpatialTransform):
    """Crop a random box and resize it back to the input shape (SimCLR's random resized crop).

    One edge fraction ``f`` is drawn uniformly from ``scale`` and used for all three axes,
    so the crop keeps the volume's aspect ratio and the anatomy is zoomed, not distorted;
    the box edge along an axis of length ``L`` is ``round(f * L)`` voxels (at least 1) and
    the box lies at a uniformly random position fully inside the volume. The applied crop
    is recorded as a ``CropResize`` in ``subject.history``.

    Args:
        scale: Range ``(a, b)`` in [0, 1] of the crop edge as a fraction of the axis length.
        output_shape: Spatial shape of the output; ``None`` keeps the input shape (smaller
            shapes give the local crops of multi-crop methods).
        p: Probability of applying the transform.
        **kwargs: See ``torchio.transforms.Transform``.

    Example:
        >>> crop = RandomCropResize(scale=(0.6, 1.0))
        >>> crop(tio.ScalarImage(tensor=torch.rand(1, 24, 24, 24))).shape
        (1, 24, 24, 24)
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.6, 1.0),
        output_shape: Sequence[int] | None = None,
        p: float = 1.0,
        **kwargs,
    ):
        super().__init__(p=p, **kwargs)
        self.scale_range = self._parse_range(scale, "scale", min_constraint=0, max_constraint=1)
        self.output_shape = None if output_shape is None else tuple(int(value) for value in output_shape)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        shape = subject.spatial_shape
        start, size = self.get_params(shape)
        target_shape = shape if self.output_shape is None else self.output_shape
        crop_resize = CropResize(start=start, size=size, target_shape=target_shape, **self._get_base_args())
        return crop_resize(subject)

    def get_params(self, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        fraction = self.sample_uniform(*self.scale_range)
        size = tuple(min(length, max(1, _round_half_up(fraction * length))) for length in shape)
        return _random_start(shape, size), size


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _random_start(shape: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(torch.randint(0, length - edge + 1, (1,))) for length, edge in zip(shape, size))


# ----------------------------------------------------------------------------- voxel units
class RandomBlurVoxels(tio.RandomBlur):
    """``tio.RandomBlur`` with the standard deviation in voxels instead of mm.

    Recipes give the blur in voxels so that it means the same after a resize; the sampled
    standard deviation is converted with the image spacing and applied (and recorded) as a
    ``tio.Blur`` in mm.

    Example:
        >>> blur = RandomBlurVoxels(std=(0.5, 1.0))
        >>> blurred = blur(tio.ScalarImage(tensor=torch.rand(1, 16, 16, 16)))
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        images = self.get_images_dict(subject)
        if not images:
            return subject
        std_mm = {}
        for name, image in images.items():  # one draw per image, in the subject's order
            std_i, std_j, std_k = self.get_params(self.std_ranges)
            spacing_i, spacing_j, spacing_k = image.spacing
            std_mm[name] = (std_i * spacing_i, std_j * spacing_j, std_k * spacing_k)
        return tio.Blur(std=std_mm, **self._get_base_args())(subject)


class RandomAffineVoxels(tio.RandomAffine):
    """``tio.RandomAffine`` with the translation in voxels instead of mm.

    The translation drawn along each axis is multiplied by the voxel spacing and the whole
    transform is applied (and recorded) as a ``tio.Affine``; rotations and scalings are
    unit-free and sampled exactly as ``tio.RandomAffine`` does.

    Example:
        >>> affine = RandomAffineVoxels(scales=(0.9, 1.1), degrees=10, translation=2, isotropic=True)
        >>> moved = affine(tio.ScalarImage(tensor=torch.rand(1, 16, 16, 16)))
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        scales, degrees, translation = self.get_params(self.scales, self.degrees, self.translation, self.isotropic)
        translation_mm = translation.numpy() * np.asarray(subject.spacing, dtype=float)
        affine = tio.Affine(
            scales=tuple(scales.tolist()),
            degrees=tuple(degrees.tolist()),
            translation=tuple(translation_mm.tolist()),
            center=self.center,
            default_pad_value=self.default_pad_value,
            default_pad_label=self.default_pad_label,
            image_interpolation=self.image_interpolation,
            label_interpolation=self.label_interpolation,
            check_shape=self.check_shape,
            **self._get_base_args(),
        )
        return affine(subject)


# ----------------------------------------------------------------------------- pipelines
def nonzero_foreground(tensor: torch.Tensor) -> torch.Tensor:
    """Mask of the non-zero voxels (the brain of a skull-stripped scan; all voxels if none is)."""
    mask = tensor != 0
    return mask if bool(mask.any()) else torch.ones_like(mask)


def normalization_transform(mode: str) -> tio.Transform | None:
    """The intensity normalisation named by ``views.normalize``.

    ``zscore`` standardises with the mean and standard deviation of the non-zero voxels, so
    the zero background of skull-stripped scans does not dilute the statistics (the
    background becomes the volume minimum); ``zscore_volume`` with those of every voxel (as
    the y-aware and OpenBHB-kit encoders were trained); ``minmax`` rescales to [0, 1];
    ``none`` gives ``None``. ``source`` is resolved against an imported encoder before.
    """
    if mode == "zscore":
        return tio.ZNormalization(masking_method=nonzero_foreground)
    if mode == "zscore_volume":
        return tio.ZNormalization()
    if mode == "source":
        raise RecipeError(
            "views.normalize = 'source' is the normalisation of an imported encoder: only medssl finetune "
            "and evaluate of such an encoder read it; use zscore, zscore_volume, minmax or none"
        )
    if mode == "minmax":
        return tio.RescaleIntensity(out_min_max=(0.0, 1.0))
    if mode == "none":
        return None
    raise RecipeError(f"views.normalize = {mode!r}: expected one of zscore, zscore_volume, minmax, none")


def resize_transform(shape: Sequence[int]) -> tio.Resize:
    """Deterministic trilinear resize of every volume to ``shape`` = (D, H, W) (``data.volume_shape``).

    The field of view is kept, so the voxel spacing changes; augmentations given in voxels
    (blur, translation) follow the new grid.
    """
    values = list(shape)
    if len(values) != 3 or not all(isinstance(value, (int, np.integer)) and value > 0 for value in values):
        raise RecipeError(f"data.volume_shape = {values!r}: expected three positive integers (D, H, W)")
    depth, height, width = (int(value) for value in values)
    return tio.Resize((depth, height, width), image_interpolation="linear")


def build_view_transform(config: ViewsConfig, include_normalization: bool = True) -> tio.Compose:
    """The random view pipeline of a recipe's ``views:`` section.

    Order: normalisation, crop-resize, flip, affine, cutout, blur, noise. A transform whose
    probability ``p`` is 0 is left out. Flips are drawn independently per axis of
    ``flip.axes``, each with probability ``flip.p``. The composition is keyed by section
    name (``transform["cutout"]``).

    Args:
        config: The recipe's ``views`` section.
        include_normalization: Set to False when normalisation already runs once per subject
            in the dataset's ``preprocess`` (see :func:`normalization_transform`).

    Example:
        >>> transform = build_view_transform(ViewsConfig(cutout={"p": 1.0}))
        >>> [step.name for step in transform.transforms]
        ['ZNormalization', 'RandomCutout']
        >>> view = transform(tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 32, 32, 32))))
    """
    _check_views(config)
    steps: dict[str, tio.Transform] = {}
    normalization = normalization_transform(config.normalize) if include_normalization else None
    if normalization is not None:
        steps["normalize"] = normalization
    if config.crop.p > 0:
        steps["crop"] = RandomCropResize(scale=config.crop.scale, p=config.crop.p)
    if config.flip.p > 0 and config.flip.axes:
        steps["flip"] = tio.RandomFlip(axes=tuple(config.flip.axes), flip_probability=config.flip.p)
    if config.affine.p > 0:
        steps["affine"] = RandomAffineVoxels(
            scales=config.affine.scale,
            degrees=config.affine.degrees,
            translation=config.affine.translation,
            isotropic=True,
            p=config.affine.p,
        )
    if config.cutout.p > 0:
        steps["cutout"] = RandomCutout(size=config.cutout.size, p=config.cutout.p)
    if config.blur.p > 0:
        steps["blur"] = RandomBlurVoxels(std=config.blur.std, p=config.blur.p)
    if config.noise.p > 0:
        steps["noise"] = tio.RandomNoise(mean=0.0, std=config.noise.std, p=config.noise.p)
    return tio.Compose(steps)


def build_eval_transform(config: ViewsConfig) -> tio.Compose:
    """Normalisation only, no augmentation: the deterministic view used for feature extraction."""
    normalization = normalization_transform(config.normalize)
    return tio.Compose({} if normalization is None else {"normalize": normalization})


def _check_views(config: ViewsConfig) -> None:
    ranges = {
        "views.crop.scale": (config.crop.scale, 0.0, 1.0),
        "views.cutout.size": (config.cutout.size, 0.0, 1.0),
        "views.blur.std": (config.blur.std, 0.0, math.inf),
        "views.noise.std": (config.noise.std, 0.0, math.inf),
        "views.affine.scale": (config.affine.scale, 0.0, math.inf),
    }
    for key, ((low, high), minimum, maximum) in ranges.items():
        if not minimum <= low <= high <= maximum:
            raise RecipeError(f"{key} = [{low}, {high}]: expected {minimum} <= low <= high <= {maximum}")
    if config.affine.scale[0] == 0:
        raise RecipeError(f"views.affine.scale = {list(config.affine.scale)}: expected a positive lower bound")
    bad_axes = [axis for axis in config.flip.axes if axis not in (0, 1, 2)]
    if bad_axes:
        raise RecipeError(f"views.flip.axes = {config.flip.axes}: axis {bad_axes[0]} is not a spatial axis (0, 1 or 2)")


# ----------------------------------------------------------------------------- datasets
def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed ``numpy`` and ``random`` from the worker's torch seed.

    Each worker's torch generator is already seeded by ``DataLoader`` (base seed + worker id);
    this carries that seed over to the other generators a transform might use.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _load_subject(subject: tio.Subject, preprocess: Callable | None) -> tio.Subject:
    # Work on a copy so the cohort's subject stays unloaded: memory holds one volume per item.
    loaded = copy.deepcopy(subject)
    loaded.load()
    return loaded if preprocess is None else preprocess(loaded)


def _encode_label(subject: tio.Subject, index: int, key: str, encoder: Mapping[str, int] | None) -> float:
    who = subject.get("participant_id", f"item {index}")
    if key not in subject:
        raise CohortError(f"participant {who}: no label '{key}' (subject keys: {', '.join(map(str, subject.keys()))})")
    value: Any = subject[key]  # a table cell: text or a number
    if isinstance(value, str):
        if encoder is None:
            raise CohortError(
                f"participant {who}: label '{key}' = {value!r} is text; pass label_encoder, e.g. {{{value!r}: 0}}"
            )
        if value not in encoder:
            raise CohortError(
                f"participant {who}: label '{key}' = {value!r} is not in label_encoder (known: {', '.join(map(str, encoder))})"
            )
        return float(encoder[value])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CohortError(f"participant {who}: label '{key}' = {value!r} is not a number") from None


def _bias_class(subject: tio.Subject, index: int, key: str, classes: Mapping[str, int]) -> int:
    """The class of a subject's bias value (written as text: site 1 and '1' are one site)."""
    who = subject.get("participant_id", f"item {index}")
    value = str(subject.get(key, ""))
    if value not in classes:
        raise CohortError(f"participant {who}: data.bias '{key}' = {value!r} is not one of the training classes")
    return classes[value]


class ViewsItem(TypedDict):
    """An item of :class:`MultiViewDataset`."""

    views: torch.Tensor  # (V, C, D, H, W) float32
    label: torch.Tensor  # () float32, NaN without a label column
    bias: torch.Tensor  # () int64 class of the bias column (the site), -1 without one
    index: int


class VolumeItem(TypedDict):
    """An item of :class:`VolumeDataset`."""

    volume: torch.Tensor  # (C, D, H, W) float32
    index: int


class MultiViewDataset(Dataset):
    """Each item is one subject seen in ``n_views`` independent random views.

    Volumes are read from disk when an item is requested, never cached: the subjects
    passed in stay unloaded. Per item, ``preprocess`` (e.g. resize) runs once, then
    ``transform`` draws each view.

    Labels are read from the subject's metadata under ``label_key`` and validated once, at
    construction. Numbers become float32; text labels (sex "F"/"M", a diagnosis) are
    mapped to integers through ``label_encoder`` (e.g. ``{"F": 0, "M": 1}``) and a text
    label without an entry there is an error. Without ``label_key`` the label is NaN.

    Args:
        subjects: ``torchio.Subject`` list, the volume under ``image_key`` (a lazily loaded
            ``tio.ScalarImage(path)``) plus metadata such as ``participant_id``, ``age``.
        transform: Random view transform, e.g. :func:`build_view_transform`.
        n_views: Views per subject.
        preprocess: Deterministic transform applied once per item before the views.
        label_key: Metadata key of the label, or None.
        label_encoder: Mapping from text labels to integer classes.
        image_key: Key of the volume in each subject.
        bias_key: Metadata key of the bias a debiasing term removes (the site), or None.
        bias_classes: Its values (as text) to integer classes.
        keep_float16: Leave float16 volumes (subjects read with ``Cohort.subjects(keep_float16=True)``)
            float16, for ``views.device: batch``, which casts them on the device.

    Returns per item a dict: ``views`` float32 (V, C, D, H, W) (float16 volumes stay float16 with
    ``keep_float16``), ``label`` float32 scalar, ``bias`` int64 scalar (-1 without ``bias_key``),
    ``index`` int.

    Example:
        >>> dataset = MultiViewDataset(subjects, build_view_transform(ViewsConfig()), n_views=2,
        ...                            label_key="sex", label_encoder={"F": 0, "M": 1})
        >>> loader = DataLoader(dataset, batch_size=8, num_workers=4, worker_init_fn=seed_worker)
    """

    def __init__(
        self,
        subjects: Sequence[tio.Subject],
        transform: Callable,
        n_views: int = 2,
        preprocess: Callable | None = None,
        label_key: str | None = None,
        label_encoder: Mapping[str, int] | None = None,
        image_key: str = IMAGE_KEY,
        bias_key: str | None = None,
        bias_classes: Mapping[str, int] | None = None,
        keep_float16: bool = False,
    ):
        if n_views < 1:
            raise ValueError(f"n_views = {n_views}: expected at least 1")
        self.subjects = list(subjects)
        self.transform = transform
        self.n_views = n_views
        self.preprocess = preprocess
        self.label_key = label_key
        self.label_encoder = dict(label_encoder) if label_encoder is not None else None
        self.image_key = image_key
        self.keep_float16 = keep_float16
        if label_key is None:
            self.labels = torch.full((len(self.subjects),), math.nan)
        else:
            encoded = [
                _encode_label(subject, i, label_key, self.label_encoder) for i, subject in enumerate(self.subjects)
            ]
            self.labels = torch.tensor(encoded, dtype=torch.float32)
        self.biases = torch.full((len(self.subjects),), -1, dtype=torch.long)
        if bias_key is not None:
            classes = bias_classes or {}
            self.biases = torch.tensor(
                [_bias_class(subject, i, bias_key, classes) for i, subject in enumerate(self.subjects)]
            )

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> ViewsItem:
        subject = _load_subject(self.subjects[index], self.preprocess)
        views = torch.stack([self.transform(subject)[self.image_key].data for _ in range(self.n_views)])
        return {
            "views": views if self.keep_float16 and views.dtype == torch.float16 else views.float(),
            "label": self.labels[index].clone(),
            "bias": self.biases[index].clone(),
            "index": int(index),
        }


class VolumeDataset(Dataset):
    """Each item is one subject's volume under a deterministic transform, for feature extraction.

    Args:
        subjects: ``torchio.Subject`` list (see :class:`MultiViewDataset`).
        transform: Deterministic transform, e.g. :func:`build_eval_transform`; None: as stored.
        preprocess: Deterministic transform applied before ``transform`` (e.g. resize).
        image_key: Key of the volume in each subject.

    Returns per item a dict: ``volume`` float32 (C, D, H, W) and ``index`` int.

    Example:
        >>> dataset = VolumeDataset(subjects, build_eval_transform(ViewsConfig()),
        ...                         preprocess=resize_transform([64, 64, 64]))
        >>> dataset[0]["volume"].shape
        torch.Size([1, 64, 64, 64])
    """

    def __init__(
        self,
        subjects: Sequence[tio.Subject],
        transform: Callable | None = None,
        preprocess: Callable | None = None,
        image_key: str = IMAGE_KEY,
    ):
        self.subjects = list(subjects)
        self.transform = transform
        self.preprocess = preprocess
        self.image_key = image_key

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> VolumeItem:
        subject = _load_subject(self.subjects[index], self.preprocess)
        if self.transform is not None:
            subject = self.transform(subject)
        image = cast(tio.Image, subject[self.image_key])
        return {"volume": image.data.float(), "index": int(index)}
