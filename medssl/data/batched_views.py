"""Augmented views drawn for a whole batch at once, on the device the batch is on.

The TorchIO path (:mod:`medssl.data.views`) draws a view of one volume at a time in the
DataLoader workers; on a GPU that loader, not the network, limits 3D pre-training. Here the
same augmentations take a ``(B, C, D, H, W)`` tensor on any device, with parameters drawn per
sample from a ``torch.Generator`` passed in, so a run that seeds the generator and saves its
state (``generator.get_state()``) resumes drawing the same views.

Every random transform follows TorchIO's split: ``sample`` draws the parameters of each
sample (a small dataclass of ``(B, ...)`` tensors, recorded and inspectable), ``apply`` is
deterministic given them. For the same recipe keys the parameters follow the distributions of
the TorchIO path, and for the same parameters the deterministic functions give TorchIO's
output (the tests pin both):

=============  ============================================  =========================================
recipe key     TorchIO transform (views.py)                  here, for the same parameters
=============  ============================================  =========================================
normalize      ``tio.ZNormalization`` / ``RescaleIntensity``  :func:`normalize_intensity`, within 1e-5
crop           ``RandomCropResize`` -> ``CropResize``         :func:`crop_resize`, exact (same kernel)
flip           ``tio.RandomFlip`` -> ``tio.Flip``             :func:`flip`, exact
affine         ``RandomAffineVoxels`` -> ``tio.Affine``       :func:`affine`, within 1e-4: float32
                                                               ``grid_sample`` coordinates in place of
                                                               SimpleITK's float64 linear resampler
cutout         ``RandomCutout`` -> ``Cutout``                 :func:`cutout`, exact
blur           ``RandomBlurVoxels`` -> ``tio.Blur``           :func:`gaussian_blur`, within 1e-5
                                                               (scipy's kernel, truncation, border)
noise          ``tio.RandomNoise`` -> ``tio.Noise``           :func:`gaussian_noise`, exact for one
                                                               volume on the CPU (same seed)
=============  ============================================  =========================================

Tolerances are absolute, for float32 intensities of unit scale, and pinned by
``tests/data/test_batched_views.py``; "within" comes from the same float32 operations in
another order (normalisation, blur) or from the coordinates' precision (affine).

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

Geometry: the volumes are taken in voxel coordinates of an axis-aligned grid with voxel size
``spacing`` (1 mm unless given), as the TorchIO path sees an image whose affine is
``diag(spacing)``. Translations are in voxels (as ``views.affine.translation``), rotations are
in world space (a rotation of an anisotropic grid is not one of its voxel grid), as TorchIO's.

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
from dataclasses import dataclass, fields, replace
from typing import Protocol, TypeVar, cast

import torch
import torch.nn.functional as F

from medssl.config import ViewsConfig
from medssl.data.views import build_view_transform, normalization_transform

NORMALIZE_MODES = ("zscore", "zscore_volume", "minmax", "none")
BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, which tio.Blur calls


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


ParamsT = TypeVar("ParamsT", bound="_Params")


@dataclass
class _Params:
    """Per-sample parameters of a step: (B, ...) tensors."""

    def to(self: ParamsT, device: torch.device | str) -> ParamsT:
        """The same parameters on ``device``."""
        return replace(self, **{field.name: getattr(self, field.name).to(device) for field in fields(self)})


# ----------------------------------------------------------------------------- normalisation
def normalize_intensity(volumes: torch.Tensor, mode: str) -> torch.Tensor:
    """``views.normalize`` of each volume, with statistics over all its channels (as TorchIO).

    ``zscore``: mean and (unbiased) standard deviation of the non-zero voxels, all voxels if
    none is (``views.nonzero_foreground``); ``zscore_volume``: of all voxels; ``minmax``:
    rescaled to [0, 1]; ``none``: unchanged. A constant volume, which ``tio.ZNormalization``
    refuses, is only centred here (a batch cannot raise for one sample without a device sync),
    and is left unchanged by ``minmax`` as by ``tio.RescaleIntensity``.

    Args:
        volumes: (B, C, D, H, W) float.
        mode: One of zscore, zscore_volume, minmax, none.

    Returns:
        (B, C, D, H, W), the dtype of ``volumes``.
    """
    if mode not in NORMALIZE_MODES:
        normalization_transform(mode)  # raises the recipe error of the TorchIO path
        raise ValueError(f"normalize mode {mode!r}: expected one of {', '.join(NORMALIZE_MODES)}")
    if mode == "none":
        return volumes
    batch = volumes.shape[0]
    flat = volumes.reshape(batch, -1)
    if mode == "minmax":
        low, high = flat.aminmax(dim=1)
        span = high - low
        rescaled = (volumes - _per_sample(low)) / _per_sample(torch.where(span == 0, 1.0, span))
        return torch.where(_per_sample(span == 0), volumes, rescaled)
    voxels = flat.shape[1]
    count = torch.full((batch,), float(voxels), device=volumes.device)
    if mode == "zscore":
        nonzero = torch.linalg.vector_norm(flat, ord=0, dim=1)
        count = torch.where(nonzero > 0, nonzero, count)
    # Sums over all voxels: the zero background adds nothing to the sum and mean^2 per voxel to
    # the centred squares, taken off again. float32 sums as TorchIO's; no boolean mask is built.
    mean = flat.sum(dim=1) / count
    squares = torch.linalg.vector_norm(flat - mean[:, None], dim=1).double().square()
    squares = (squares - (voxels - count).double() * mean.double().square()).clamp(min=0)
    std = (squares / (count.double() - 1).clamp(min=1)).sqrt().to(volumes.dtype)
    centred = volumes - _per_sample(mean)
    return centred.div_(_per_sample(torch.where(std == 0, 1.0, std)))


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, C) -> broadcastable against (B, C, D, H, W)."""
    return values.reshape(*values.shape, *([1] * (5 - values.dim())))


# ----------------------------------------------------------------------------- crop, flip
def _box_slices(first: Sequence[int], edge: Sequence[int]) -> tuple[slice, slice, slice]:
    depth, height, width = (slice(a, a + n) for a, n in zip(first, edge))
    return depth, height, width


def crop_resize(
    volumes: torch.Tensor,
    start: torch.Tensor,
    size: torch.Tensor,
    output_shape: Sequence[int] | None = None,
    flipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop a box of each volume and resize it trilinearly (``views.CropResize``), optionally flipped.

    Each sample is one ``F.interpolate`` of its box (a view, not a copy) into the batch's output,
    the kernel ``CropResize`` calls: one launch per sample, as the boxes differ in size. A batched
    alternative, trilinear interpolation as three separable gathers, ran 6x slower on the CPU.

    Args:
        volumes: (B, C, D, H, W).
        start: (B, 3) first voxel of each box.
        size: (B, 3) box edge in voxels.
        output_shape: Spatial shape of the output; None keeps the input's.
        flipped: (B, 3) bool, the output axes to reverse afterwards (as :func:`flip`).

    Returns:
        (B, C, *output_shape).
    """
    shape = tuple(volumes.shape[2:]) if output_shape is None else tuple(int(length) for length in output_shape)
    out = volumes.new_empty(*volumes.shape[:2], *shape)
    flips = [[False] * 3] * volumes.shape[0] if flipped is None else flipped.tolist()
    for sample, (first, edge, flip_axes) in enumerate(zip(start.tolist(), size.tolist(), flips)):
        depth, height, width = _box_slices(first, edge)
        box = volumes[sample : sample + 1, :, depth, height, width]
        resized = F.interpolate(box, size=shape, mode="trilinear", align_corners=False)[0]
        dims = [axis + 1 for axis in range(3) if flip_axes[axis]]
        out[sample] = resized.flip(dims) if dims else resized
    return out


def flip(volumes: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Reverse each volume along the spatial axes marked in ``flipped`` (B, 3) bool (``tio.Flip``)."""
    out = torch.empty_like(volumes)
    for sample, flip_axes in enumerate(flipped.tolist()):
        dims = [axis + 1 for axis in range(3) if flip_axes[axis]]
        if len(dims) == 1:  # the common case (left-right) in one pass, without a temporary
            length = volumes.shape[dims[0] + 1]
            reverse = torch.arange(length - 1, -1, -1, device=volumes.device)
            torch.index_select(volumes[sample], dims[0], reverse, out=out[sample])
        else:
            out[sample] = volumes[sample].flip(dims) if dims else volumes[sample]
    return out


# ----------------------------------------------------------------------------- affine
def _rotation_lps(degrees: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation of ``tio.Affine``: SimpleITK's Euler3DTransform (R = Rz Rx Ry) of the
    RAS angles turned to LPS (the first two negated)."""
    radians = torch.deg2rad(degrees.double()) * torch.tensor([-1.0, -1.0, 1.0], device=degrees.device)
    cos, sin = radians.cos(), radians.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(*rows) -> torch.Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    cx, cy, cz, sx, sy, sz = cos[:, 0], cos[:, 1], cos[:, 2], sin[:, 0], sin[:, 1], sin[:, 2]
    rx = matrix((one, zero, zero), (zero, cx, -sx), (zero, sx, cx))
    ry = matrix((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    rz = matrix((cz, -sz, zero), (sz, cz, zero), (zero, zero, one))
    return rz @ rx @ ry


def affine_voxel_map(
    scale: torch.Tensor,
    degrees: torch.Tensor,
    translation: torch.Tensor,
    shape: Sequence[int],
    spacing: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``tio.Affine`` samples each output voxel: ``u_in = A @ u_out + b`` in voxel indices.

    ``tio.Affine`` scales and rotates about the image centre c in world (LPS) space, forward
    y = c + s (R (x - c) + t); SimpleITK resamples with the inverse. On a grid with voxel size
    ``spacing`` (affine ``diag(spacing)``) that is, in voxels, ``u_in = c + N ((u_out - c) / s - t)``
    with ``N = diag(1 / spacing) P R^T P diag(spacing)``, ``P = diag(-1, -1, 1)`` (RAS <-> LPS)
    and t the translation in voxels (``RandomAffineVoxels`` multiplies it by the spacing).

    Args:
        scale: (B,) isotropic scaling factor.
        degrees: (B, 3) rotation about each axis (RAS), in degrees.
        translation: (B, 3) in voxels.
        shape: Spatial shape of the transformed volume.
        spacing: (3,) or (B, 3) voxel size.

    Returns:
        A (B, 3, 3) and b (B, 3), float64.
    """
    device = degrees.device
    spacing = torch.as_tensor(spacing, dtype=torch.float64, device=device).expand(degrees.shape[0], 3)
    flip_lps = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64, device=device)
    rotation = _rotation_lps(degrees).transpose(1, 2)
    linear = (flip_lps[:, None] * rotation * flip_lps) * spacing[:, None, :] / spacing[:, :, None]
    centre = (torch.tensor([float(length) for length in shape], dtype=torch.float64, device=device) - 1) / 2
    matrix = linear / scale.double()[:, None, None]
    offset = centre - matrix @ centre - (linear @ translation.double()[:, :, None])[:, :, 0]
    return matrix, offset


def _grid_resample(
    volumes: torch.Tensor,
    output_shape: Sequence[int],
    matrix: torch.Tensor,
    offset: torch.Tensor,
    start: torch.Tensor,
    size: torch.Tensor,
    flipped: torch.Tensor,
    fill: torch.Tensor,
) -> torch.Tensor:
    """One ``grid_sample``: affine map into a (flipped) crop resized to ``output_shape``, then the crop.

    Output voxel u is mapped to v = matrix @ u + offset in the coordinates of the crop-resized
    volume; v outside [-1/2, L - 1/2) on any axis gets ``fill`` (B, C), as SimpleITK's
    resampler outside the image, and v within is clamped to [0, L - 1] (SimpleITK's linear
    interpolator at the border). The crop-resize's coordinate map (``F.interpolate``,
    ``align_corners=False``: output voxel j samples the crop at (j + 1/2) * size / L - 1/2,
    clamped to the crop) is linear then clamped, so it is applied to v per axis before the
    single interpolation.
    """
    batch, channels = volumes.shape[:2]
    shape = [int(length) for length in output_shape]
    device, dtype = volumes.device, volumes.dtype
    matrix, offset = matrix.to(device, torch.float64), offset.to(device, torch.float64)
    start, size, flipped = start.to(device).double(), size.to(device).double(), flipped.to(device)
    depth, height, width = (torch.arange(length, device=device, dtype=torch.float64) for length in shape)
    # v_k = plane_k (B, D, H, 1) + slope_k (B,) * w: along a row of constant (d, h), v is linear
    # in w, so "inside" is an interval of w per row, found on these small tensors.
    first = torch.zeros(batch, shape[0], shape[1], 1, device=device, dtype=torch.float64)
    last = torch.full_like(first, float(shape[2]))
    grid = torch.empty(batch, *shape, 3, device=device, dtype=dtype)
    lowest, highest = (
        torch.empty(batch, 3, device=device, dtype=dtype),
        torch.empty(batch, 3, device=device, dtype=dtype),
    )
    for axis in range(3):
        row = matrix[:, axis].view(batch, 3, 1, 1, 1)
        plane = (row[:, 0] * depth.view(1, -1, 1, 1) + row[:, 1] * height.view(1, 1, -1, 1)) + offset[:, axis].view(
            batch, 1, 1, 1
        )
        slope = row[:, 2]
        length, source_length = shape[axis], volumes.shape[axis + 2]
        # -1/2 <= plane + slope * w < L - 1/2, for integer w
        low_end, high_end = (-0.5 - plane) / slope, (length - 0.5 - plane) / slope
        rising, falling = slope > 0, slope < 0
        first = torch.maximum(
            first, torch.where(rising, low_end.ceil(), torch.where(falling, high_end.floor() + 1, 0.0))
        )
        last = torch.minimum(
            last, torch.where(rising, high_end.ceil(), torch.where(falling, low_end.floor() + 1, last))
        )
        flat = ~(rising | falling) & ((plane < -0.5) | (plane >= length - 0.5))
        last = torch.where(flat, 0.0, last)
        # The crop coordinate of v clamped to [0, L - 1] (flipped first) is step * v + intercept
        # clamped to the crop: one clamp of the unclamped v to the intersection of both ranges.
        step = size[:, axis] / length
        step = torch.where(flipped[:, axis], -step, step)
        intercept = size[:, axis] / length * (torch.where(flipped[:, axis], length - 1.0, 0.0) + 0.5) - 0.5
        ends = torch.stack([intercept, step * (length - 1) + intercept])
        low = ends.amin(dim=0).clamp(min=0)
        high = torch.minimum(ends.amax(dim=0), size[:, axis] - 1)
        norm = 2.0 / max(source_length - 1, 1)  # voxel -> grid_sample's [-1, 1] (align_corners=True)
        to_grid = (step * norm).view(batch, 1, 1, 1)
        shift = ((intercept + start[:, axis]) * norm - 1).view(batch, 1, 1, 1)
        lowest[:, 2 - axis] = (low + start[:, axis]) * norm - 1
        highest[:, 2 - axis] = (high + start[:, axis]) * norm - 1
        torch.add(
            (plane * to_grid + shift).to(dtype),
            (slope * to_grid * width.view(1, 1, 1, -1)).to(dtype),
            out=grid[..., 2 - axis],
        )
    grid.clamp_(min=lowest.view(batch, 1, 1, 1, 3), max=highest.view(batch, 1, 1, 1, 3))
    sampled = F.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=True)
    index = torch.arange(shape[2], device=device).view(1, 1, 1, -1)
    inside = (index >= first) & (index < last)
    return torch.where(inside[:, None], sampled, fill.to(device, dtype).view(batch, channels, 1, 1, 1))


def affine(
    volumes: torch.Tensor,
    scale: torch.Tensor,
    degrees: torch.Tensor,
    translation: torch.Tensor,
    spacing: torch.Tensor | Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Scale, rotate and translate each volume about its centre, trilinearly (``tio.Affine``).

    Voxels mapped from outside the volume take each channel's minimum (``tio.Affine``'s
    ``default_pad_value='minimum'``). See :func:`affine_voxel_map` for the geometry.

    Args:
        volumes: (B, C, D, H, W).
        scale: (B,) isotropic scaling factor (1.5: the anatomy looks 1.5 times larger).
        degrees: (B, 3) rotation about each axis, in degrees.
        translation: (B, 3) in voxels.
        spacing: (3,) or (B, 3) voxel size.
    """
    batch, _, *shape = volumes.shape
    matrix, offset = affine_voxel_map(scale, degrees, translation, shape, spacing)
    full = torch.tensor(shape, device=volumes.device).expand(batch, 3)
    return _grid_resample(
        volumes,
        shape,
        matrix,
        offset,
        torch.zeros_like(full),
        full,
        torch.zeros(batch, 3, dtype=torch.bool, device=volumes.device),
        volumes.amin(dim=(2, 3, 4)),
    )


# ----------------------------------------------------------------------------- cutout, blur, noise
def cutout(volumes: torch.Tensor, start: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Set a box of every channel of each volume to 0 (``views.Cutout``); a box of size 0 is none.

    Args:
        volumes: (B, C, D, H, W).
        start: (B, 3) first voxel of each box.
        size: (B, 3) box edge in voxels.

    One copy of the batch and a write per box: a boolean mask of the batch (``masked_fill``)
    took twice as long on the CPU.
    """
    out = volumes.clone()
    for sample, (first, edge) in enumerate(zip(start.tolist(), size.tolist())):
        depth, height, width = _box_slices(first, edge)
        out[sample, :, depth, height, width] = 0
    return out


def _reflect_index(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy.ndimage's 'reflect' border (d c b a | a b c d | d c b a), any radius."""
    index = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def gaussian_blur(
    volumes: torch.Tensor, std: torch.Tensor, max_std: float | None = None, truncate: float = BLUR_TRUNCATE
) -> torch.Tensor:
    """Gaussian blur of each volume with its own standard deviation per axis, in voxels (``tio.Blur``).

    As ``scipy.ndimage.gaussian_filter`` (what ``tio.Blur`` calls): one 1D kernel per axis of
    radius ``int(truncate * std + 0.5)``, normalised over its taps, the 'reflect' border, and an
    axis of std 0 left as it is. The separable convolution is written as a weighted sum of
    shifted slices of the padded volume, each sample with its own weights: on the CPU this ran
    3-7x faster than the equivalent grouped ``conv3d`` (one group per sample), which oneDNN
    does not vectorise for 1D depthwise kernels.

    Args:
        volumes: (B, C, D, H, W).
        std: (B, 3) standard deviation along each axis, in voxels (0: no blur on that axis).
        max_std: Bound on ``std`` that sets the common kernel width (e.g. the recipe's upper
            ``views.blur.std``); None reads it from ``std`` (a device sync on a GPU).
        truncate: Kernel radius in standard deviations.
    """
    std = std.to(volumes.device, torch.float64)
    batch = volumes.shape[0]
    out = volumes
    for axis in range(3):
        sigma = std[:, axis]
        bound = float(sigma.max()) if max_std is None else float(max_std)
        radius = int(truncate * bound + 0.5)
        if radius == 0:
            continue
        taps = torch.arange(-radius, radius + 1, device=volumes.device, dtype=torch.float64)
        own_radius = torch.floor(truncate * sigma + 0.5)
        safe = torch.where(sigma > 0, sigma, 1.0)
        weights = torch.exp(-0.5 * taps.square() / safe[:, None].square())
        weights = torch.where(taps.abs() <= own_radius[:, None], weights, 0.0)
        weights = torch.where((sigma > 0)[:, None], weights, (taps == 0).double())
        weights = (weights / weights.sum(dim=1, keepdim=True)).to(volumes.dtype)
        dim = axis + 2
        length = volumes.shape[dim]
        padded = out.index_select(dim, _reflect_index(length, radius, volumes.device))
        blurred = padded.narrow(dim, 0, length) * weights[:, 0].view(batch, 1, 1, 1, 1)
        for tap in range(1, 2 * radius + 1):
            blurred.addcmul_(padded.narrow(dim, tap, length), weights[:, tap].view(batch, 1, 1, 1, 1))
        out = blurred
    return out


def gaussian_noise(volumes: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    """Add zero-mean Gaussian noise of standard deviation ``std`` (B,) to each volume (``tio.Noise``).

    The noise field is ``torch.randn`` of the batch's shape from a generator seeded with
    ``seed`` on the batch's device: for one volume on the CPU that is ``tio.Noise(mean=0,
    std=std, seed=seed)``'s noise exactly.
    """
    generator = torch.Generator(device=volumes.device).manual_seed(int(seed))
    noise = torch.randn(volumes.shape, generator=generator, device=volumes.device, dtype=volumes.dtype)
    return noise.mul_(_per_sample(std.to(volumes.device, volumes.dtype))).add_(volumes)


# ----------------------------------------------------------------------------- random transforms
@dataclass
class CropParams(_Params):
    """Per-sample crop boxes: ``start`` and ``size`` (B, 3) voxels; not applied = the whole volume."""

    applied: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor


@dataclass
class FlipParams(_Params):
    """``flipped`` (B, 3) bool: the spatial axes reversed in each sample."""

    flipped: torch.Tensor


@dataclass
class AffineParams(_Params):
    """Per-sample ``scale`` (B,), ``degrees`` and ``translation`` (B, 3, voxels); not applied = identity."""

    applied: torch.Tensor
    scale: torch.Tensor
    degrees: torch.Tensor
    translation: torch.Tensor


@dataclass
class CutoutParams(_Params):
    """Per-sample boxes set to 0: ``start``, ``size`` (B, 3) voxels; not applied = size 0."""

    applied: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor


@dataclass
class BlurParams(_Params):
    """Per-sample ``std`` (B, 3) in voxels; not applied = 0."""

    applied: torch.Tensor
    std: torch.Tensor


@dataclass
class NoiseParams(_Params):
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
        return torch.where(_per_sample(params.applied.to(volumes.device)), moved, volumes)

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


# ----------------------------------------------------------------------------- pipeline
class _Step(Protocol):
    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> _Params: ...


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

    def sample(self, batch: int, shape: Sequence[int], generator: torch.Generator) -> dict[str, _Params]:
        """Parameters of every step for ``batch`` samples of spatial ``shape``, drawn in pipeline order."""
        params: dict[str, _Params] = {}
        for name, step in self.steps.items():
            params[name] = step.sample(batch, shape, generator)
            if self.crop is not None and step is self.crop and self.crop.output_shape is not None:
                shape = self.crop.output_shape
        return params

    def apply(
        self,
        volumes: torch.Tensor,
        params: dict[str, _Params],
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
        self, volumes: torch.Tensor, params: dict[str, _Params], spacing: torch.Tensor | Sequence[float]
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
            boxes = [_box_slices(first, edge) for first, edge in zip(start.tolist(), size.tolist())]
            fill = torch.stack(
                [volumes[sample, :, d, h, w].amin(dim=(1, 2, 3)) for sample, (d, h, w) in enumerate(boxes)]
            )
            flips = flipped if flipped is not None else torch.zeros(batch, 3, dtype=torch.bool)
            out = _grid_resample(volumes, output_shape, matrix, offset, start, size, flips, fill)
            if list(output_shape) != list(shape):
                return out
            moved_any = moved.applied | flips.to(device).any(dim=1)
            if crop is not None:
                moved_any |= crop.applied.to(device)
            return torch.where(_per_sample(moved_any), out, volumes)  # exactly the input where nothing moved
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
