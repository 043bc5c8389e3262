"""Published 3D brain-MRI encoders and their checkpoint files, re-implemented for the weight-import tests.

Each network below is our own compact code, written from a reading of the source repository named here; it keeps the
source's module and attribute names, so its ``state_dict`` keys are the source's keys, and it computes the feature
vector the source defines. The ``save_*`` functions write a checkpoint with the container each source's training code
writes. Together they let a test import weights into medssl and compare its features with an independent forward pass.

Sources (GitHub repository, commit followed):

- yAware: ``Duplums/yAwareContrastiveLearning`` at 7f6b3c604419d10f5f6628938e1506c85d42fbe3,
  ``models/densenet.py`` (``densenet121(mode="encoder")``) and ``yAwareContrastiveLearning.py`` (``torch.save``
  of ``{"epoch", "model", "optimizer"}``; the model is always wrapped in ``DataParallel`` there, hence ``module.``).
- OpenBHB challenge kit: ``ramp-kits/brain_age_with_site_removal`` at 0e79d8b400b08afc2d25ff299f92c994aa775cf7,
  ``submissions/starting_kit/estimator.py`` (``DenseNet(32, (6, 12, 24, 16), 64, out_block="block4")``, weights read
  from ``state["model"]``, and the ``Crop``/``Pad``/``Normalize`` preprocessing).
- EIDOSLAB: ``EIDOSLAB/contrastive-brain-age-prediction`` at 2fe9e7b81dd53d8f43dfeb34e41250f5450c1094,
  ``src/models/resnet3d.py`` (``SupConResNet``) and ``src/util.py`` (``save_model``).
- MedicalNet: ``Tencent/MedicalNet`` at 20f76aaab5cac8056eaf50b79ed97c09dbfbd3bd, ``models/resnet.py``, ``model.py``
  (``DataParallel`` on GPU) and ``train.py`` (``torch.save`` of ``{"ecpoch", "batch_id", "state_dict", "optimizer"}``,
  the misspelt ``ecpoch`` included).

This module holds no tests; pytest does not collect it (its name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SOURCE_COMMITS = {
    "Duplums/yAwareContrastiveLearning": "7f6b3c604419d10f5f6628938e1506c85d42fbe3",
    "ramp-kits/brain_age_with_site_removal": "0e79d8b400b08afc2d25ff299f92c994aa775cf7",
    "EIDOSLAB/contrastive-brain-age-prediction": "2fe9e7b81dd53d8f43dfeb34e41250f5450c1094",
    "Tencent/MedicalNet": "20f76aaab5cac8056eaf50b79ed97c09dbfbd3bd",
}

LAYOUTS = (
    "yaware-densenet121",
    "openbhb-kit-densenet121",
    "eidoslab-resnet18",
    "medicalnet-resnet10",
    "medicalnet-resnet18",
    "medicalnet-resnet34",
    "medicalnet-resnet50",
)


# --------------------------------------------------------------------------------------------------------------------
# DenseNet-121 (yAware and the OpenBHB kit share the trunk; they differ after it)
# --------------------------------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to ``bn_size * growth`` channels, then BN-ReLU-3x3 conv to ``growth`` channels."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int):
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm3d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm3d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(width, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, previous: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(previous, dim=1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.Module):
    """``denselayer1..n``; each layer sees the block input and every earlier layer's output, concatenated."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int):
        super().__init__()
        for index in range(num_layers):
            self.add_module(
                f"denselayer{index + 1}", _DenseLayer(in_channels + index * growth_rate, growth_rate, bn_size)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for layer in self.children():
            outputs.append(layer(outputs))
        return torch.cat(outputs, dim=1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm3d(in_channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False),
            pool=nn.AvgPool3d(kernel_size=2, stride=2),
        )
    )


class DenseNet(nn.Module):
    """3D DenseNet-BC trunk in ``features`` (conv0 ... denseblock4, no ``norm5``), single input channel.

    ``projection_head=True`` is yAware's ``mode="encoder"``: ``hidden_representation`` (1024 -> 512) and
    ``head_projection`` (512 -> 128) after ReLU + global average pooling. ``projection_head=False`` is the kit's
    ``out_block="block4"``: the forward is the global average pool of the trunk output, without a ReLU.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        projection_head: bool = False,
    ):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv3d(1, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm3d(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
            )
        )
        channels = num_init_features
        for index, num_layers in enumerate(block_config, start=1):
            self.features.add_module(f"denseblock{index}", _DenseBlock(num_layers, channels, growth_rate, bn_size))
            channels += num_layers * growth_rate
            if index < len(block_config):
                self.features.add_module(f"transition{index}", _transition(channels, channels // 2))
                channels //= 2
        self.num_features = channels
        self.projection_head = projection_head
        if projection_head:
            self.hidden_representation = nn.Linear(channels, 512)
            self.head_projection = nn.Linear(512, 128)

    def pooled(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        out = self.features(x)
        if relu:
            out = F.relu(out)
        return torch.flatten(F.adaptive_avg_pool3d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.projection_head:
            return self.pooled(x, relu=False)
        hidden = F.relu(self.hidden_representation(self.pooled(x, relu=True)))
        return self.head_projection(hidden)


def yaware_densenet121() -> DenseNet:
    """yAware's ``densenet121(mode="encoder", drop_rate=0.0)``: keys ``features.*``, ``hidden_representation.*``,
    ``head_projection.*``."""
    net = DenseNet(projection_head=True)
    net.layout = "yaware-densenet121"
    return net


def kit_densenet121() -> DenseNet:
    """The OpenBHB kit's ``DenseNet(32, (6, 12, 24, 16), 64, out_block="block4")``: keys ``features.*`` only."""
    net = DenseNet(projection_head=False)
    net.layout = "openbhb-kit-densenet121"
    return net


# --------------------------------------------------------------------------------------------------------------------
# 3D ResNets (EIDOSLAB: torchvision-style; MedicalNet: dilated layer3/layer4 and a segmentation head)
# --------------------------------------------------------------------------------------------------------------------


class _ZeroPadShortcut(nn.Module):
    """MedicalNet's shortcut 'A': ``avg_pool3d(kernel_size=1, stride)`` (strided subsampling), then zero channels
    appended up to ``planes``. No parameters, so no state_dict keys."""

    def __init__(self, planes: int, stride: int):
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        zeros = out.new_zeros(out.shape[0], self.planes - out.shape[1], *out.shape[2:])
        return torch.cat([out, zeros], dim=1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, dilated) - 1x1 to ``4 * planes``; the stride sits on the 3x3 conv in both sources."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem ``conv1`` (7^3, stride 2) - ``bn1`` - ``relu`` - ``maxpool`` (3^3, stride 2), then ``layer1..layer4``.

    A stage's first block takes the stage's stride and dilation (later blocks: stride 1, same dilation) and gets a
    ``downsample`` when the stride is not 1 or the channel count changes: shortcut 'B' is ``Sequential(1x1 conv without
    bias, BatchNorm)``, shortcut 'A' the parameter-free zero padding. With ``seg_classes`` None the network ends in
    ``avgpool`` (EIDOSLAB's encoder: forward = flattened global average pool); otherwise in MedicalNet's ``conv_seg``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        strides: tuple[int, ...] = (1, 2, 2, 2),
        dilations: tuple[int, ...] = (1, 1, 1, 1),
        shortcut_type: str = "B",
        seg_classes: int | None = None,
    ):
        super().__init__()
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', not {shortcut_type!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        for index, (planes, blocks, stride, dilation) in enumerate(
            zip((64, 128, 256, 512), layers, strides, dilations)
        ):
            self.add_module(f"layer{index + 1}", self._stage(block, planes, blocks, stride, dilation, shortcut_type))
        self.feature_dim = 512 * block.expansion
        if seg_classes is None:
            self.avgpool = nn.AdaptiveAvgPool3d(1)
        else:
            self.conv_seg = nn.Sequential(
                nn.ConvTranspose3d(self.feature_dim, 32, 2, stride=2),
                nn.BatchNorm3d(32),
                nn.ReLU(inplace=True),
                nn.Conv3d(32, 32, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(32),
                nn.ReLU(inplace=True),
                nn.Conv3d(32, seg_classes, kernel_size=1, bias=False),
            )

    def _stage(self, block, planes: int, blocks: int, stride: int, dilation: int, shortcut_type: str) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            if shortcut_type == "A":
                downsample = _ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(out_planes),
                )
        stage = [block(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
        self.inplanes = out_planes
        stage += [block(out_planes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The layer4 output (before ``avgpool`` or ``conv_seg``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        if hasattr(self, "conv_seg"):
            return self.conv_seg(x)
        return torch.flatten(self.avgpool(x), 1)


_EIDOSLAB_RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}

_MEDICALNET_RESNETS = {
    10: (BasicBlock, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
    200: (Bottleneck, [3, 24, 36, 3]),
}

# The shortcut of each released MedicalNet model (its README: resnet_18 and resnet_34 'A', the others 'B').
MEDICALNET_SHORTCUTS = {10: "B", 18: "A", 34: "A", 50: "B", 101: "B", 152: "B", 200: "B"}


class SupConResNet(nn.Module):
    """EIDOSLAB's ``SupConResNet(name, head="mlp", feat_dim=128)``: ``encoder`` and ``head`` (Linear-ReLU-Linear);
    forward = L2-normalised head output."""

    def __init__(self, name: str = "resnet18", feat_dim: int = 128):
        super().__init__()
        block, layers = _EIDOSLAB_RESNETS[name]
        self.encoder = ResNet(block, layers)
        dim_in = self.encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, feat_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(x)), dim=1)


def eidoslab_supcon_resnet(name: str = "resnet18") -> SupConResNet:
    """EIDOSLAB's contrastive model as ``main_infonce.py`` builds it (``--model resnet18`` is its default):
    keys ``encoder.*`` and ``head.0.*``, ``head.2.*``."""
    if name not in _EIDOSLAB_RESNETS:
        raise ValueError(f"unknown EIDOSLAB model {name!r}; known: {sorted(_EIDOSLAB_RESNETS)}")
    net = SupConResNet(name)
    net.layout = f"eidoslab-{name}"
    return net


def medicalnet_resnet(depth: int, shortcut_type: str, seg_classes: int = 2) -> ResNet:
    """MedicalNet's ``resnet{depth}(shortcut_type=...)``: layer3 stride 1 dilation 2, layer4 stride 1 dilation 4, and
    the ``conv_seg`` head (``n_seg_classes`` defaults to 2 in its ``setting.py``)."""
    if depth not in _MEDICALNET_RESNETS:
        raise ValueError(f"unknown MedicalNet depth {depth}; known: {sorted(_MEDICALNET_RESNETS)}")
    block, layers = _MEDICALNET_RESNETS[depth]
    net = ResNet(
        block,
        layers,
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        shortcut_type=shortcut_type,
        seg_classes=seg_classes,
    )
    net.layout = f"medicalnet-resnet{depth}"
    return net


# --------------------------------------------------------------------------------------------------------------------
# Representations, randomised weights, preprocessing
# --------------------------------------------------------------------------------------------------------------------


def representation(layout: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature vector each source defines for a batch ``x`` of shape (N, 1, D, H, W); call with ``net.eval()``.

    - ``yaware-densenet121``: features -> ReLU -> global average pool -> flatten (1024), before the projection layers.
    - ``openbhb-kit-densenet121``: the kit model's output, the global average pool of features without ReLU (1024).
    - ``eidoslab-resnet18`` (and other ``eidoslab-<name>``): ``net.encoder(x)``, avgpool of layer4 (512; 2048 for 50).
    - ``medicalnet-resnet<depth>``: global average pool of the layer4 output, ``conv_seg`` skipped (512; 2048 for 50).
    """
    built_for = getattr(net, "layout", None)
    if built_for is not None and built_for != layout:
        raise ValueError(f"network built for layout {built_for!r}, asked for {layout!r}")
    if layout == "yaware-densenet121":
        return net.pooled(x, relu=True)
    if layout == "openbhb-kit-densenet121":
        return net.pooled(x, relu=False)
    if layout.startswith("eidoslab-"):
        return net.encoder(x)
    if layout.startswith("medicalnet-resnet"):
        return torch.flatten(F.adaptive_avg_pool3d(net.trunk(x), 1), 1)
    raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")


@torch.no_grad()
def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Seeded, non-trivial values for every parameter and BatchNorm buffer (in place; returns ``net``).

    Convolution and linear weights are He-scaled normals (features keep a usable range through the deep trunks), biases
    small normals; BatchNorm weights lie in [0.5, 1.5], biases and running means are normals, running variances lie in
    [0.5, 2.0], so a swapped key, a dropped running statistic or a missing/extra norm changes the features.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor: torch.Tensor, std: float, mean: float = 0.0) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std + mean)

    def uniform(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.1)
            normal(module.running_mean, 0.1)
            uniform(module.running_var, 0.5, 2.0)
            module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
        elif isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            fan_in = module.weight[0].numel() if not isinstance(module, nn.ConvTranspose3d) else module.weight.shape[0]
            normal(module.weight, (1.0 / fan_in) ** 0.5)
            if module.bias is not None:
                normal(module.bias, 0.05)
    known = (nn.modules.batchnorm._BatchNorm, nn.Conv3d, nn.ConvTranspose3d, nn.Linear)
    unknown = [
        name for name, m in net.named_modules() if list(m.parameters(recurse=False)) and not isinstance(m, known)
    ]
    if unknown:
        raise TypeError(f"randomize does not know the modules {unknown}")
    return net


def kit_preprocess(volume: np.ndarray) -> np.ndarray:
    """The OpenBHB kit's ``Standardizer([Crop((1, 121, 128, 121)), Pad([1, 128, 128, 128], mode="constant"),
    Normalize()])`` on one VBM volume (121, 145, 121); returns (128, 128, 128), in the input's floating dtype.

    The kit applies it to arrays with a leading channel axis (1, 121, 145, 121), as here. ``Crop``: centred, start
    ``int((size_in - size_out) / 2.0)`` per axis (a requested size larger than the axis keeps the axis). ``Pad``: zeros,
    ``d // 2`` before and the rest (one more when ``d`` is odd) after. ``Normalize()``: ``(X - X.mean()) / (X.std() +
    1e-8)`` over the whole padded array (population std), written with the kit's ``std * ... + mean`` (1 and 0).
    The kit then feeds ``torch.from_numpy(out).float()`` with a batch and channel axis to the network.
    """
    x = np.asarray(volume)
    if x.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {x.shape}")
    x = x[np.newaxis]
    crop = [1, 121, 128, 121]
    crop = [n if m > n or m < 0 else m for n, m in zip(x.shape, crop)]
    starts = [int((n - m) / 2.0) for n, m in zip(x.shape, crop)]
    x = x[tuple(slice(start, start + m) for start, m in zip(starts, crop))]
    widths = [((t - n) // 2, (t - n) - (t - n) // 2) for n, t in zip(x.shape, (1, 128, 128, 128))]
    x = np.pad(x, widths, mode="constant")
    mean, std, eps = 0.0, 1.0, 1e-8
    x = std * (x - np.mean(x)) / (np.std(x) + eps) + mean
    return x[0]


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint writers, one container per source's training code
# --------------------------------------------------------------------------------------------------------------------


def data_parallel_state_dict(net: nn.Module) -> OrderedDict:
    """``nn.DataParallel(net).state_dict()`` without building one: on a machine with one GPU, ``DataParallel`` would
    move ``net`` there. Keys gain ``module.``; the version metadata is prefixed the same way."""
    plain = net.state_dict()
    state = OrderedDict((f"module.{key}", value) for key, value in plain.items())
    metadata = OrderedDict([("", {"version": nn.DataParallel._version})])
    for key, value in getattr(plain, "_metadata", {}).items():
        metadata[f"module.{key}" if key else "module"] = value
    state._metadata = metadata
    return state


def _save(obj: dict, path: str | Path, legacy_serialization: bool) -> Path:
    path = Path(path)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_serialization)
    return path


def save_yaware(
    net: nn.Module, path: str | Path, data_parallel: bool = False, *, legacy_serialization: bool = False
) -> Path:
    """``{"epoch", "model", "optimizer"}`` as ``yAwareCLModel.pretraining`` saves it (Adam, lr 1e-4, wd 5e-5).

    yAware's training code wraps the model in ``DataParallel`` unconditionally, so its own checkpoints carry
    ``module.`` keys; ``data_parallel=True`` reproduces that, ``False`` gives the bare keys.
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-5)
    model_state = data_parallel_state_dict(net) if data_parallel else net.state_dict()
    state = {"epoch": 99, "model": model_state, "optimizer": optimizer.state_dict()}
    return _save(state, path, legacy_serialization)


def save_kit(net: nn.Module, path: str | Path, *, legacy_serialization: bool = False) -> Path:
    """``{"model": state_dict}``: the kit's ``RegressionModel.fit`` reads ``state["model"]`` from ``weights.pth``."""
    return _save({"model": net.state_dict()}, path, legacy_serialization)


def eidoslab_opts(name: str = "resnet18") -> argparse.Namespace:
    """An ``opts`` namespace like ``main_infonce.py``'s (``src/exp/supcon_adam_kernel.yaml`` run, derived fields)."""
    return argparse.Namespace(
        device="cuda",
        print_freq=10,
        trial=0,
        save_dir="/scratch/output/brain-age-mri",
        save_freq=50,
        data_dir="/scratch/data-registry/medical/openbhb",
        amp=False,
        clip_grad=False,
        model=name,
        epochs=300,
        batch_size=32,
        lr=1e-4,
        lr_decay="step",
        lr_decay_rate=0.9,
        lr_decay_epochs=list(range(10, 300, 10)),
        lr_decay_step=10,
        warm=False,
        optimizer="adam",
        momentum=0.9,
        weight_decay=5e-5,
        train_all=True,
        tf="none",
        method="yaware",
        kernel="gaussian",
        delta_reduction="sum",
        temp=0.1,
        alpha=1.0,
        sigma=1.0,
        n_views=2,
        label="cont",
        model_class="SupConResNet",
        criterion="KernelizedSupCon",
        optimizer_class="Adam",
    )


def save_eidoslab(net: nn.Module, path: str | Path, *, legacy_serialization: bool = False) -> Path:
    """``{"opts": argparse.Namespace, "model", "optimizer", "epoch", "run_id"}`` as ``util.save_model`` writes it.

    ``save_model`` stores ``model.module.state_dict()`` when several GPUs wrapped it, so the keys never carry
    ``module.``. The pickled ``argparse.Namespace`` makes ``torch.load(weights_only=True)`` refuse the file unless
    that class is allowed.
    """
    name = getattr(net, "layout", "eidoslab-resnet18").removeprefix("eidoslab-")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-5)
    state = {
        "opts": eidoslab_opts(name),
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 300,
        "run_id": "2x7kq9ld",
    }
    return _save(state, path, legacy_serialization)


def save_medicalnet(net: nn.Module, path: str | Path, *, legacy_serialization: bool = False) -> Path:
    """``{"ecpoch", "batch_id", "state_dict", "optimizer"}`` as ``train.py`` writes it (``ecpoch`` sic).

    ``model.py`` wraps the network in ``nn.DataParallel`` whenever it trains on GPU, hence ``module.`` keys (the
    same keys and metadata as ``nn.DataParallel(net).state_dict()``). The optimizer is train.py's SGD (momentum 0.9,
    wd 1e-3) with two groups: the pretrained layers at lr 1e-3 and the new ``conv_seg`` layers at 100 times that.
    Checkpoints are written only at a batch_id of 0. Released MedicalNet weights date from torch < 1.6:
    ``legacy_serialization=True`` writes that pre-zipfile format.
    """
    new = [p for name, p in net.named_parameters() if "conv_seg" in name]
    base = [p for name, p in net.named_parameters() if "conv_seg" not in name]
    params = [{"params": base, "lr": 1e-3}, {"params": new, "lr": 1e-3 * 100}]
    optimizer = torch.optim.SGD(params, momentum=0.9, weight_decay=1e-3)
    state = {
        "ecpoch": 20,
        "batch_id": 0,
        "state_dict": data_parallel_state_dict(net),
        "optimizer": optimizer.state_dict(),
    }
    return _save(state, path, legacy_serialization)
