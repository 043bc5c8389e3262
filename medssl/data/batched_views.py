"""Augmented views drawn for a whole batch at once, on the device the batch is on.

The TorchIO path (:mod:`medssl.data.views`) draws a view of one volume at a time in the
DataLoader workers; on a GPU that loader, not the network, limits 3D pre-training. Here the
same augmentations take a ``(B, C, D, H, W)`` tensor on any device, with parameters drawn per
sample from a ``torch.Generator`` passed in, so a run that seeds the generator and saves its
state (``generator.get_state()``) resumes drawing the same views.

Its steps are the random transforms of :mod:`medssl.data.batched_random`: ``sample`` draws
the parameters of each sample, ``apply`` is deterministic given them, with the functions of
:mod:`medssl.data.batched_transforms`, which give TorchIO's output for the same parameters
(their tolerances are listed there, with the geometry of the volumes and of ``spacing``).

:func:`build_batched_views` applies a recipe's whole ``views:`` pipeline in the order of
:func:`medssl.data.views.build_view_transform` (normalisation, crop, flip, affine, cutout,
blur, noise). With ``fuse_spatial`` (the default) crop, flip and affine are one resampling of
the input instead of two (crop, then affine) as in TorchIO: each voxel is then interpolated
once, so the view differs from TorchIO's by the second interpolation's smoothing (tested on a
smooth volume, below 2 % of its range) and costs one ``grid_sample``. Without an affine step,
crop and flip are TorchIO's own operations either way.

Crop, flip and the fused resampling's fill value slice each sample's box, so they read the
parameters on the host (``.tolist()``): with a generator on a GPU that is one device sync per
call. A CPU generator avoids it: the parameters are a few numbers per sample, and the noise
field is drawn on the batch's device from a seed drawn with them.

Example:
    >>> from medssl.config import ViewsConfig
    >>> views = build_batched_views(ViewsConfig(crop={"p": 1.0}, cutout={"p": 1.0}))
    >>> generator = torch.Generator().manual_seed(0)   # CPU: parameters; the views on the volumes' device
    >>> volumes = torch.rand(8, 1, 32, 32, 32)          # e.g. .cuda(non_blocking=True)
    >>> views(volumes, generator).shape       # (B, V, C, D, H, W), as MultiViewDataset's batches
    torch.Size([8, 2, 1, 32, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import torch

from medssl.config import ViewsConfig
from medssl.data.batched_random import (
    AffineParams,
    BatchedAffine,
    BatchedBlur,
    BatchedCropResize,
    BatchedCutout,
    BatchedFlip,
    BatchedNoise,
    BlurParams,
    CropParams,
    CutoutParams,
    FlipParams,
    NoiseParams,
    Params,
)
from medssl.data.batched_transforms import (
    NORMALIZE_MODES,
    affine_voxel_map,
    box_slices,
    crop_resize,
    flip,
    grid_resample,
    normalize_intensity,
    per_sample,
)
from medssl.data.views import build_view_transform, normalization_transform


# ----------------------------------------------------------------------------- pipeline
class _Step(Protocol):
    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> Params: ...


class BatchedViews:
    """A recipe's view pipeline on batches: ``views(volumes, generator) -> (B, V, C, D, H, W)``.

    Each subject's volume is normalised once, repeated ``n_views`` times and every copy gets
    its own parameters (view v of subject b is sample ``b * n_views + v`` of :meth:`sample`).
    Steps run in the order of ``build_view_transform``: crop, flip, affine, cutout, blur,
    noise; a step given as None is left out. The output is float32 (a float16 cache is cast
    on the device).

    Args:
        normalize: ``views.normalize`` mode, or None to skip normalisation.
        crop, flip, affine, cutout, blur, noise: The random transforms, or None.
        n_views: Views per subject.
        fuse_spatial: Crop, flip and affine as one resampling (see the module docstring).
    """

    ORDER = ("crop", "flip", "affine", "cutout", "blur", "noise")

    def __init__(
        self,
        normalize: str | None = "zscore",
        crop: BatchedCropResize | None = None,
        flip: BatchedFlip | None = None,
        affine: BatchedAffine | None = None,
        cutout: BatchedCutout | None = None,
        blur: BatchedBlur | None = None,
        noise: BatchedNoise | None = None,
        n_views: int = 2,
        fuse_spatial: bool = True,
    ):
        if normalize is not None and normalize not in NORMALIZE_MODES:
            normalization_transform(normalize)  # the TorchIO path's recipe error
        self.normalize = normalize
        self.crop, self.flip, self.affine = crop, flip, affine
        self.cutout, self.blur, self.noise = cutout, blur, noise
        self.n_views = int(n_views)
        self.fuse_spatial = fuse_spatial

    @property
    def steps(self) -> dict[str, _Step]:
        """The steps present, by section name, in the order they run."""
        present = {name: getattr(self, name) for name in self.ORDER}
        return {name: step for name, step in present.items() if step is not None}

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> dict[str, Params]:
        """Parameters of every step for ``batch`` samples of spatial ``shape``, drawn in pipeline order."""
        params: dict[str, Params] = {}
        for name, step in self.steps.items():
            params[name] = step.sample(batch, shape, generator)
            if self.crop is not None and step is self.crop and self.crop.output_shape is not None:
                shape = self.crop.output_shape
        return params

    def apply(
        self,
        volumes: torch.Tensor,
        params: dict[str, Params],
        spacing: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    ) -> torch.Tensor:
        """The views of (already normalised) ``volumes`` (N, C, D, H, W) for drawn ``params``."""
        out = self._spatial(volumes, params, spacing)
        if self.cutout is not None:
            out = self.cutout.apply(out, cast(CutoutParams, params["cutout"]))
        if self.blur is not None:
            out = self.blur.apply(out, cast(BlurParams, params["blur"]))
        if self.noise is not None:
            out = self.noise.apply(out, cast(NoiseParams, params["noise"]))
        return out

    def _spatial(
        self, volumes: torch.Tensor, params: dict[str, Params], spacing: torch.Tensor | Sequence[float]
    ) -> torch.Tensor:
        # Parameters stay where they were drawn: the per-sample slicing reads them on the host.
        batch, _, *shape = volumes.shape
        device = volumes.device
        full = torch.tensor(shape).expand(batch, 3)
        crop = cast(CropParams, params["crop"]) if self.crop is not None else None
        start = crop.start if crop is not None else torch.zeros_like(full)
        size = crop.size if crop is not None else full
        flipped = cast(FlipParams, params["flip"]).flipped if self.flip is not None else None
        output_shape = shape
        if self.crop is not None and self.crop.output_shape is not None:
            output_shape = list(self.crop.output_shape)
        # CropResize rewrites the image affine: the resized crop's voxels are size / L times the
        # input's, and TorchIO's affine (rotation in world space, translation x spacing) sees that.
        spacing = torch.as_tensor(spacing, dtype=torch.float64, device=device).expand(batch, 3)
        spacing = spacing * size.to(device) / torch.tensor(output_shape, dtype=torch.float64, device=device)
        if self.affine is not None and self.fuse_spatial:
            moved = cast(AffineParams, params["affine"]).to(device)
            matrix, offset = affine_voxel_map(moved.scale, moved.degrees, moved.translation, output_shape, spacing)
            # SimpleITK fills with the minimum of the resized crop; its box's minimum is that one
            # wherever the minimum is a background shared by neighbouring voxels.
            boxes = [box_slices(first, edge) for first, edge in zip(start.tolist(), size.tolist())]
            fill = torch.stack(
                [volumes[sample, :, d, h, w].amin(dim=(1, 2, 3)) for sample, (d, h, w) in enumerate(boxes)]
            )
            flips = flipped if flipped is not None else torch.zeros(batch, 3, dtype=torch.bool)
            out = grid_resample(volumes, output_shape, matrix, offset, start, size, flips, fill)
            if list(output_shape) != list(shape):
                return out
            moved_any = moved.applied | flips.to(device).any(dim=1)
            if crop is not None:
                moved_any |= crop.applied.to(device)
            return torch.where(per_sample(moved_any), out, volumes)  # exactly the input where nothing moved
        out = volumes
        if crop is not None:
            out = crop_resize(out, crop.start, crop.size, output_shape, flipped)
        elif flipped is not None:
            out = flip(out, flipped)
        if self.affine is not None:
            out = self.affine.apply(out, cast(AffineParams, params["affine"]), spacing)
        return out

    def __call__(
        self,
        volumes: torch.Tensor,
        generator: torch.Generator,
        spacing: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0),
    ) -> torch.Tensor:
        """(B, C, D, H, W) volumes -> (B, n_views, C, D', H', W') float32 views.

        Args:
            volumes: Un-augmented volumes on any device, any float dtype.
            generator: Source of every random draw; a CPU one needs no device sync (module docstring).
            spacing: (3,) or (B, 3) voxel size of the volumes (rotations are in world space).
        """
        batch = volumes.shape[0]
        volumes = volumes.float()
        if self.normalize is not None:
            volumes = normalize_intensity(volumes, self.normalize)
        repeated = volumes if self.n_views == 1 else volumes.repeat_interleave(self.n_views, dim=0)
        spacing = torch.as_tensor(spacing, dtype=torch.float64, device=volumes.device)
        if spacing.dim() == 2:
            spacing = spacing.repeat_interleave(self.n_views, dim=0)
        params = self.sample(repeated.shape[0], repeated.shape[2:], generator)
        views = self.apply(repeated, params, spacing)
        return views.view(batch, self.n_views, *views.shape[1:])


def build_batched_views(
    config: ViewsConfig, include_normalization: bool = True, fuse_spatial: bool = True
) -> BatchedViews:
    """The batched twin of :func:`medssl.data.views.build_view_transform` for a recipe's ``views:``.

    Same steps, order, parameter distributions and recipe checks; a step whose ``p`` is 0 is
    left out.

    Args:
        config: The recipe's ``views`` section.
        include_normalization: False when the volumes are already normalised.
        fuse_spatial: Crop, flip and affine in one resampling (False: TorchIO's two).

    Example:
        >>> views = build_batched_views(load_recipe("simclr").views)
        >>> generator = torch.Generator().manual_seed(seed)   # saved with the run: generator.get_state()
        >>> batch_views = views(volumes.cuda(non_blocking=True), generator)   # (B, 2, 1, D, H, W) on the GPU
    """
    build_view_transform(config, include_normalization)  # the TorchIO path's recipe checks, kept in one place
    crop, flip, affine, cutout = config.crop, config.flip, config.affine, config.cutout
    return BatchedViews(
        normalize=config.normalize if include_normalization else None,
        crop=BatchedCropResize(scale=crop.scale, p=crop.p) if crop.p > 0 else None,
        flip=BatchedFlip(axes=flip.axes, p=flip.p) if flip.p > 0 and flip.axes else None,
        affine=(
            BatchedAffine(scale=affine.scale, degrees=affine.degrees, translation=affine.translation, p=affine.p)
            if affine.p > 0
            else None
        ),
        cutout=BatchedCutout(size=cutout.size, p=cutout.p) if cutout.p > 0 else None,
        blur=BatchedBlur(std=config.blur.std, p=config.blur.p) if config.blur.p > 0 else None,
        noise=BatchedNoise(std=config.noise.std, p=config.noise.p) if config.noise.p > 0 else None,
        n_views=config.n_views,
        fuse_spatial=fuse_spatial,
    )
