"""3D encoders: MONAI networks used as they are, returning a flat feature vector.

The saved ``encoder.pt`` is a plain state dict of the MONAI network (with its classifier
replaced by ``nn.Identity`` where it has one) and ``encoder.json`` says how to rebuild it,
so a pre-trained ResNet or DenseNet121 is usable without medssl:

    import json, torch, monai.networks.nets as nets
    spec = json.load(open("encoder.json"))
    net = getattr(nets, spec["network"])(**spec["kwargs"])
    for name in spec["identity_modules"]:          # e.g. ["class_layers.out"]
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, torch.nn.Identity())
    net.load_state_dict(torch.load("encoder.pt", weights_only=True))

Two kinds of encoder need :func:`load_encoder` instead: AlexNet-3D (medssl's own network)
and a ResNet with ``stage_dilations`` (MedicalNet's, whose dilated stages MONAI cannot build).

Example:
    >>> encoder = build_encoder("resnet18")
    >>> encoder(torch.zeros(2, 1, 32, 32, 32)).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medssl.errors import CheckpointError, RecipeError
from medssl.files import atomic_torch_save, atomic_write_text

ENCODER_NAMES = ("resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "alexnet")


class AlexNet3D(nn.Module):
    """3D AlexNet of Abrol et al. (Nature Communications, 2021), as used as a baseline by
    Dufumier et al. (MICCAI 2021): five conv-BN-ReLU blocks (64-128-192-192-128 channels)
    with max pooling, then global average pooling to a 128-d feature vector.

    Paddings are chosen so that volumes as small as 16^3 pass through.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (64, 128, 192, 192, 128)):
        super().__init__()

        def block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm3d(c_out),
                nn.ReLU(inplace=True),
            ]

        w1, w2, w3, w4, w5 = widths
        self.features = nn.Sequential(
            *block(in_channels, w1, 5, stride=2),
            nn.MaxPool3d(3, stride=2, padding=1),
            *block(w1, w2, 3),
            nn.MaxPool3d(3, stride=2, padding=1),
            *block(w2, w3, 3),
            *block(w3, w4, 3),
            *block(w4, w5, 3),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.out_features = w5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder: written next to its weights as ``encoder.json``.

    ``stage_dilations`` (four ints, empty for none) makes a ResNet stage with dilation d > 1
    keep its resolution, as MedicalNet's do (see :func:`dilate_stages`); ``input`` says what
    the weights expect (modality, shape, spacing, ``normalize``) and ``source`` where they came
    from, for an imported encoder.
    """

    name: str
    network: str
    kwargs: dict
    feature_dim: int
    identity_modules: list[str] = field(default_factory=list)
    library: str = "monai.networks.nets"
    stage_dilations: list[int] = field(default_factory=list)
    input: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)


RESNET_LAYERS = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


@dataclass(frozen=True)
class ArchitectureOptions:
    """Architecture switches the published encoders need (recipe keys of the same names).

    ``bias_downsample`` and ``shortcut_type`` are MONAI ResNet arguments; ``stage_dilations``
    replaces the stride of ResNet stages by dilation (MedicalNet); ``final_norm`` and
    ``final_relu`` keep DenseNet121's last BatchNorm (``norm5``) and the ReLU before its
    pooling (the y-aware DenseNet has no ``norm5``; the OpenBHB kit's has neither).
    """

    bias_downsample: bool = True
    shortcut_type: str = "B"
    stage_dilations: tuple[int, ...] = ()
    final_norm: bool = True
    final_relu: bool = True


def encoder_spec(
    name: str,
    in_channels: int = 1,
    conv1_stride: int = 2,
    widths: list[int] | None = None,
    options: ArchitectureOptions = ArchitectureOptions(),
) -> EncoderSpec:
    """The network class, its keyword arguments and its feature size for an encoder name.

    ``widths`` sets the channels of a ResNet's four stages (MONAI's ``block_inplanes``,
    64-128-256-512 by default): ``[16, 32, 64, 128]`` is the narrow ResNet of the embedded
    budget, 16 times fewer weights and about 10 times faster on a CPU.
    """
    if name in RESNET_LAYERS:
        return _resnet_spec(name, in_channels, conv1_stride, widths, options)
    if widths is not None:
        raise RecipeError(f"model.widths = {widths}: only ResNet encoders take stage widths, not '{name}'")
    if conv1_stride != 2:
        raise RecipeError(f"model.conv1_stride = {conv1_stride}: only ResNet encoders take a stem stride, not '{name}'")
    _refuse_resnet_options(name, options)
    if name == "densenet121":
        kwargs = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": 1}
        identities = ["features.norm5"] * (not options.final_norm) + ["class_layers.relu"] * (not options.final_relu)
        return EncoderSpec(name, "DenseNet121", kwargs, 1024, identity_modules=[*identities, "class_layers.out"])
    if not (options.final_norm and options.final_relu):
        raise RecipeError(f"model.final_norm / model.final_relu are DenseNet121 switches, not for '{name}'")
    if name == "alexnet":
        return EncoderSpec(name, "AlexNet3D", {"in_channels": in_channels}, 128, library="medssl.models.encoders")
    raise RecipeError(f"model.encoder = '{name}': expected one of {', '.join(ENCODER_NAMES)}")


def _resnet_spec(
    name: str, in_channels: int, conv1_stride: int, widths: list[int] | None, options: ArchitectureOptions
) -> EncoderSpec:
    if not (options.final_norm and options.final_relu):
        raise RecipeError(f"model.final_norm / model.final_relu are DenseNet121 switches, not for '{name}'")
    kwargs: dict[str, Any] = {
        "spatial_dims": 3,
        "n_input_channels": in_channels,
        "conv1_t_stride": conv1_stride,
        "feed_forward": False,
    }
    # MONAI's defaults are left out of kwargs, so encoder.json of a plain ResNet stays as it was.
    if not options.bias_downsample:
        kwargs["bias_downsample"] = False
    if options.shortcut_type != "B":
        if options.shortcut_type != "A":
            raise RecipeError(f"model.shortcut_type = {options.shortcut_type!r}: expected 'A' or 'B'")
        kwargs["shortcut_type"] = "A"
    dilations = list(options.stage_dilations)
    if dilations and (len(dilations) != 4 or any(not isinstance(d, int) or d < 1 for d in dilations)):
        raise RecipeError(f"model.stage_dilations = {dilations}: expected 4 positive ints, e.g. [1, 1, 2, 4]")
    dilations = [] if all(d == 1 for d in dilations) else dilations
    block, layers = RESNET_LAYERS[name]
    expansion = 4 if block == "bottleneck" else 1
    if widths is None:
        return EncoderSpec(name, name, kwargs, 512 * expansion, stage_dilations=dilations)
    if len(widths) != len(layers) or not all(isinstance(width, int) and width > 0 for width in widths):
        raise RecipeError(
            f"model.widths = {list(widths)}: expected {len(layers)} positive stage widths, e.g. [16, 32, 64, 128]"
        )
    kwargs = {"block": block, "layers": layers, "block_inplanes": list(widths), **kwargs}
    return EncoderSpec(name, "ResNet", kwargs, widths[-1] * expansion, stage_dilations=dilations)


def _refuse_resnet_options(name: str, options: ArchitectureOptions) -> None:
    defaults = ArchitectureOptions()
    for key in ("bias_downsample", "shortcut_type", "stage_dilations"):
        value = getattr(options, key)
        if value != getattr(defaults, key) and not (key == "stage_dilations" and all(d == 1 for d in value)):
            raise RecipeError(f"model.{key} = {value!r}: only ResNet encoders take it, not '{name}'")


def dilate_stages(network: nn.Module, dilations: list[int]) -> None:
    """Give each ResNet stage with dilation d > 1 stride 1 and dilation d in its 3x3x3 convolutions.

    This is the network of MedicalNet (Chen, Ma and Zheng, "Med3D: Transfer Learning for 3D
    Medical Image Analysis", arXiv 2019; Tencent/MedicalNet ``models/resnet.py``): its layer3
    and layer4 keep layer2's resolution, with dilation 2 and 4 (padding equal to the dilation)
    in every block, the first one included, and stride 1 in their shortcuts. MONAI's ResNet
    has stride 2 there, so it is changed after MONAI builds the network; weights are the same
    shapes, only the function differs.
    """
    for index, dilation in enumerate(dilations):
        if dilation == 1:
            continue
        for block in getattr(network, f"layer{index + 1}"):
            block.stride = 1
            for conv in block.modules():
                if isinstance(conv, nn.Conv3d):
                    conv.stride = (1, 1, 1)
                    if conv.kernel_size == (3, 3, 3):
                        conv.dilation = conv.padding = (dilation,) * 3
            if isinstance(block.downsample, partial):  # shortcut A: a strided average pool, then zero channels
                block.downsample = partial(block.downsample.func, **{**block.downsample.keywords, "stride": 1})


def build_network(spec: EncoderSpec) -> nn.Module:
    """Instantiate the spec's network, classifier layers replaced by identities."""
    if spec.library == "medssl.models.encoders":
        network = AlexNet3D(**spec.kwargs)
    else:
        network = getattr(monai_networks(), spec.network)(**spec.kwargs)
    for module_name in spec.identity_modules:
        parent, _, child = module_name.rpartition(".")
        setattr(network.get_submodule(parent), child, nn.Identity())
    if spec.stage_dilations:
        dilate_stages(network, spec.stage_dilations)
    return network


def monai_networks() -> Any:
    """MONAI's ``networks.nets``, imported on first use: reading a recipe (which imports the methods
    and so this module) then costs no MONAI import, about 3 s on a 2-core machine."""
    from monai.networks import nets

    return nets


def checkpoint_units(network: nn.Module) -> list[nn.Module]:
    """The stages whose activations activation checkpointing drops and recomputes: a ResNet's
    four stages, DenseNet's dense blocks and transitions (where nearly all activation memory
    is); none for other networks. The stem stays stored: recomputing it would cost a pass
    at full resolution for the memory of one layer."""
    nets = monai_networks()
    if isinstance(network, nets.ResNet):
        return [network.layer1, network.layer2, network.layer3, network.layer4]
    if isinstance(network, nets.DenseNet):
        return [
            module
            for name, module in network.features.named_children()
            if name.startswith(("denseblock", "transition"))
        ]
    return []


@contextmanager
def _frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics as they are across the block.

    The recomputation in backward runs BatchNorm in training mode a second time, which would
    move the running statistics twice per step; an update with checkpointing must equal one
    without.
    """
    saved = [
        (buffer, buffer.clone())
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm)
        for buffer in norm.buffers(recurse=False)
    ]
    try:
        yield
    finally:
        for buffer, value in saved:
            buffer.copy_(value)


def _checkpointed_forward(unit: nn.Module, forward, *args: torch.Tensor) -> torch.Tensor:
    return checkpoint(
        forward, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), _frozen_norm_statistics(unit))
    )


@contextmanager
def activations_recomputed(units: list[nn.Module]) -> Iterator[None]:
    """Within the block, each unit's forward runs under ``torch.utils.checkpoint`` (non-reentrant).

    The units' own ``forward`` is shadowed for the block only, so the MONAI network, its
    state-dict keys and ``encoder.pt`` stay exactly as without checkpointing.
    """
    for unit in units:
        unit.forward = partial(_checkpointed_forward, unit, type(unit).forward.__get__(unit))
    try:
        yield
    finally:
        for unit in units:
            unit.__dict__.pop("forward", None)


class Encoder(nn.Module):
    """A 3D backbone mapping (B, C, D, H, W) volumes to (B, feature_dim) features.

    With ``activation_checkpointing``, training forwards (module in training mode, gradients
    enabled) keep only the inputs of each stage (:func:`checkpoint_units`) and recompute the
    rest in backward: less memory per volume for about one more forward pass of time.
    """

    def __init__(self, spec: EncoderSpec, activation_checkpointing: bool = False):
        super().__init__()
        self.spec = spec
        self.feature_dim = spec.feature_dim
        self.network = build_network(spec)
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            with activations_recomputed(checkpoint_units(self.network)):
                return self.network(x).flatten(1)
        return self.network(x).flatten(1)


def build_encoder(
    name: str = "resnet18",
    in_channels: int = 1,
    conv1_stride: int = 2,
    widths: list[int] | None = None,
    activation_checkpointing: bool = False,
    options: ArchitectureOptions = ArchitectureOptions(),
) -> Encoder:
    """Build an encoder by name (see :data:`ENCODER_NAMES`), optionally a narrow ResNet (``widths``)
    and with activation checkpointing in training (see :class:`Encoder`). ``conv1_stride`` (the
    stride of a ResNet's first convolution) is not read by DenseNet121 and AlexNet-3D;
    ``options`` are the switches of :class:`ArchitectureOptions`."""
    spec = encoder_spec(name, in_channels=in_channels, conv1_stride=conv1_stride, widths=widths, options=options)
    return Encoder(spec, activation_checkpointing=activation_checkpointing)


def save_encoder(encoder: Encoder, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (plain network state dict) and ``path`` with ``.json`` (how to rebuild it).
    ``path`` ends in ``.pt``, the name :func:`load_encoder` takes for an encoder's weights."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"{path}: an encoder is saved to a .pt file (e.g. encoder.pt)")
    state = {key: value.detach().cpu() for key, value in encoder.network.state_dict().items()}
    atomic_torch_save(state, path)
    spec_path = path.with_suffix(".json")
    atomic_write_text(spec_path, json.dumps(asdict(encoder.spec), indent=2))
    return path, spec_path


def model_overrides(spec: EncoderSpec) -> list[str]:
    """The recipe overrides that build ``spec``'s architecture (``model.encoder=resnet18`` ...)."""
    overrides = [f"model.encoder={spec.name}"]
    channels = spec.kwargs.get("n_input_channels", spec.kwargs.get("in_channels", 1))
    overrides.append(f"model.in_channels={channels}")
    if spec.name in RESNET_LAYERS:
        overrides.append(f"model.conv1_stride={spec.kwargs.get('conv1_t_stride', 2)}")
        widths = spec.kwargs.get("block_inplanes")
        overrides.append("model.widths=" + ("null" if widths is None else f"[{','.join(map(str, widths))}]"))
        overrides.append(f"model.bias_downsample={str(spec.kwargs.get('bias_downsample', True)).lower()}")
        overrides.append(f"model.shortcut_type={spec.kwargs.get('shortcut_type', 'B')}")
        overrides.append(f"model.stage_dilations=[{','.join(map(str, spec.stage_dilations or [1, 1, 1, 1]))}]")
    if spec.name == "densenet121":
        overrides.append(f"model.final_norm={str('features.norm5' not in spec.identity_modules).lower()}")
        overrides.append(f"model.final_relu={str('class_layers.relu' not in spec.identity_modules).lower()}")
    return overrides


ARCHITECTURE_FIELDS = ("name", "kwargs", "feature_dim", "identity_modules", "stage_dilations")


def same_architecture(spec: EncoderSpec, other: EncoderSpec) -> bool:
    """Whether two specs build the same network (where the weights came from does not count)."""
    return all(getattr(spec, key) == getattr(other, key) for key in ARCHITECTURE_FIELDS)


def check_same_architecture(spec: EncoderSpec, expected: EncoderSpec, path: Path) -> None:
    """Refuse an encoder file of another architecture than the recipe builds, naming the overrides
    that would build the file's (or, if none would, every field that differs)."""
    if same_architecture(spec, expected):
        return
    recipe = model_overrides(expected)
    needed = [override for override in model_overrides(spec) if override not in recipe]
    if needed:
        had = [override for override in recipe if override.split("=")[0] in {n.split("=")[0] for n in needed}]
        raise CheckpointError(
            f"{path}: encoder does not match the recipe: it was built with {' '.join(needed)} "
            f"(the recipe has {' '.join(had)})"
        )
    differences = [
        f"{key}: file has {getattr(spec, key)!r}, expected {getattr(expected, key)!r}"
        for key in ARCHITECTURE_FIELDS
        if getattr(spec, key) != getattr(expected, key)
    ]
    raise CheckpointError(f"{path}: encoder does not match the recipe ({'; '.join(differences)})")


def load_encoder(path: str | Path, expected: EncoderSpec | None = None) -> Encoder:
    """Rebuild an encoder from ``encoder.pt`` + ``encoder.json`` (or a run folder holding them).

    With ``expected``, raise a :class:`CheckpointError` naming every field that differs. The
    encoder comes back in training mode, as a built one: call ``.eval()`` before extracting
    features (BatchNorm would otherwise use, and update, batch statistics).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.pt"
    spec_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights not found")
    if path.suffix != ".pt":
        raise CheckpointError(f"{path}: not an encoder; expected the encoder.pt of a run, or the run folder")
    if not spec_path.is_file():
        raise CheckpointError(f"{spec_path}: encoder description not found (it is written next to the weights)")
    try:
        spec = EncoderSpec(**json.loads(spec_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{spec_path}: not a medssl encoder description ({exc})") from None
    if expected is not None:
        check_same_architecture(spec, expected, path)
    encoder = Encoder(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's messages span several lines; the CLI prints errors in one
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise CheckpointError(
            f"{path}: cannot be read as a state dict, corrupt or not written by torch.save "
            f"({type(exc).__name__}: {detail})"
        ) from None
    try:
        encoder.network.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise CheckpointError(f"{path}: weights do not fit {spec.name} ({detail})") from None
    return encoder
