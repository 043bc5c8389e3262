"""Published brain-MRI encoders imported as medssl encoders (``medssl weights import``).

Each :class:`Layout` says how one source saved its weights (the dict around the state dict,
the prefixes, the key names) and which network computes what the source computed: a MONAI
network with the :class:`~medssl.models.encoders.ArchitectureOptions` that make it the
source's. An import is strict: every key of the source's encoder is used, every key of the
network is filled, shapes are equal, or nothing is written. Checkpoints are read with
``torch.load(weights_only=True)``; the only class allowed besides tensors is
``argparse.Namespace`` (EIDOSLAB's training code saves its options as one).

Example:
    >>> encoder = import_weights("DenseNet121_BHB-10K_yAwareContrastive.pth", "yaware-densenet121", "enc/yaware")
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from medssl.config import RecipeSections, ViewsConfig
from medssl.data.openbhb import is_openbhb_folder
from medssl.errors import CheckpointError, OutputError, RecipeError
from medssl.models.encoders import (
    ENCODER_NAMES,
    ArchitectureOptions,
    Encoder,
    EncoderSpec,
    encoder_spec,
    save_encoder,
)

VBM = "T1w grey-matter density (CAT12 VBM) in MNI152 space"
DENSENET_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(?!layers\.)")


def densenet_keys(key: str) -> str:
    """torchvision-style dense layers (``denselayerM.norm1``) to MONAI's (``denselayerM.layers.norm1``)."""
    return DENSENET_LAYER.sub(r"\1.layers.", key)


@dataclass(frozen=True)
class Layout:
    """How a source saved an encoder, and the medssl network that computes the source's features."""

    name: str
    repository: str
    commit: str
    architecture: str  # the file of the source that defines the network
    encoder: str
    options: ArchitectureOptions
    representation: str
    input: dict
    licence: str
    checkpoint: str  # what the source's training code saves
    state_keys: tuple[str, ...] = ("state_dict", "model")  # where the state dict may sit
    prefixes: tuple[str, ...] = ("module.",)  # stripped from the front, repeatedly
    head_prefixes: tuple[str, ...] = ()  # the source's head: dropped
    head_required: bool = False  # the source always saves its head (tells y-aware from the kit's DenseNet)
    rename: Callable[[str], str] = field(default=lambda key: key)

    def spec(self, in_channels: int = 1) -> EncoderSpec:
        return encoder_spec(self.encoder, in_channels=in_channels, options=self.options)


YAWARE_INPUT = {
    "modality": VBM,
    "shape": [121, 145, 121],
    "spacing_mm": 1.5,
    "normalize": "zscore_volume",
    "note": "each image z-scored over all its voxels (mean and std of the whole volume)",
}
KIT_INPUT = {
    "modality": VBM,
    "shape": [128, 128, 128],
    "spacing_mm": 1.5,
    "normalize": "zscore_volume",
    "note": "121x145x121 centre-cropped to 121x128x121, zero-padded to 128^3, then z-scored over the padded volume",
}
EIDOSLAB_INPUT = {
    "modality": VBM,
    "shape": [121, 145, 121],
    "spacing_mm": 1.5,
    "normalize": "none",
    "note": "VBM values as OpenBHB ships them (the training code's Normalize(mean=0, std=1) is the identity); "
    "trained on random 121x128x121 crops padded to 128^3, tested on whole volumes",
}
MEDICALNET_INPUT = {
    "modality": "CT and MRI of 23 public 3D segmentation datasets (several organs and pathologies)",
    "shape": [56, 448, 448],
    "spacing_mm": None,
    "normalize": "zscore",
    "note": "each volume resized to the input size (nearest neighbour) and z-scored over its non-zero voxels; "
    "zero voxels were replaced by N(0, 1) noise in training",
}


def _medicalnet(depth: int, shortcut: str) -> Layout:
    return Layout(
        name=f"medicalnet-resnet{depth}",
        repository="Tencent/MedicalNet",
        commit="20f76aaab5cac8056eaf50b79ed97c09dbfbd3bd",
        architecture="models/resnet.py",
        encoder=f"resnet{depth}",
        options=ArchitectureOptions(bias_downsample=False, shortcut_type=shortcut, stage_dilations=(1, 1, 2, 4)),
        representation="global average pool of layer4 (layer3 and layer4 dilated 2 and 4, stride 1)",
        input=MEDICALNET_INPUT,
        licence="MIT",
        checkpoint=f"resnet_{depth}_23dataset.pth: {{'state_dict'}} with DataParallel's 'module.'; conv_seg.* dropped",
        state_keys=("state_dict",),
        head_prefixes=("conv_seg.",),
    )


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="yaware-densenet121",
        repository="Duplums/yAwareContrastiveLearning",
        commit="7f6b3c604419d10f5f6628938e1506c85d42fbe3",
        architecture="models/densenet.py",
        encoder="densenet121",
        options=ArchitectureOptions(final_norm=False),
        representation="ReLU, then global average pool of the last dense block (1024-d); no norm5",
        input=YAWARE_INPUT,
        licence="none stated in the repository",
        checkpoint="DenseNet121_BHB-10K_yAwareContrastive.pth: {'epoch', 'model', 'optimizer'}, "
        "'model' with or without DataParallel's 'module.'; hidden_representation.* and head_projection.* dropped",
        state_keys=("model",),
        head_prefixes=("hidden_representation.", "head_projection."),
        head_required=True,
        rename=densenet_keys,
    ),
    Layout(
        name="openbhb-kit-densenet121",
        repository="ramp-kits/brain_age_with_site_removal",
        commit="0e79d8b400b08afc2d25ff299f92c994aa775cf7",
        architecture="submissions/starting_kit/estimator.py",
        encoder="densenet121",
        options=ArchitectureOptions(final_norm=False, final_relu=False),
        representation="global average pool of the last dense block, without ReLU (1024-d); no norm5",
        input=KIT_INPUT,
        licence="CeCILL-B",
        checkpoint="submissions/starting_kit/weights.pth: {'model'}",
        state_keys=("model",),
        rename=densenet_keys,
    ),
    Layout(
        name="eidoslab-resnet18",
        repository="EIDOSLAB/contrastive-brain-age-prediction",
        commit="2fe9e7b81dd53d8f43dfeb34e41250f5450c1094",
        architecture="src/models/resnet3d.py",
        encoder="resnet18",
        options=ArchitectureOptions(bias_downsample=False),
        representation="global average pool of layer4 (512-d), the output of SupConResNet.encoder",
        input=EIDOSLAB_INPUT,
        licence="MIT",
        checkpoint="save_model: {'opts' (argparse.Namespace), 'model', 'optimizer', 'epoch', 'run_id'}, "
        "keys encoder.* (kept) and head.* (dropped)",
        state_keys=("model",),
        prefixes=("module.", "encoder."),
        head_prefixes=("head.",),
    ),
    *(_medicalnet(depth, shortcut) for depth, shortcut in ((10, "B"), (18, "A"), (34, "A"), (50, "B"))),
)
# The generic layout: any state dict of a network medssl builds, named with --encoder and model overrides.
STATE_DICT = "state-dict"
GENERIC_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "network.")
LAYOUT_NAMES = (*(layout.name for layout in LAYOUTS), STATE_DICT)


def generic_layout(spec: EncoderSpec, ignore: tuple[str, ...] = ()) -> Layout:
    """The ``state-dict`` layout for a network medssl builds (``spec``), dropping keys that start with ``ignore``."""
    return Layout(
        name=STATE_DICT,
        repository="",
        commit="",
        architecture="",
        encoder=spec.name,
        options=ArchitectureOptions(),
        representation="the encoder's own (global average pool of its last stage)",
        input={},
        licence="",
        checkpoint="a state dict, plain or under 'state_dict' / 'model'; prefixes " + ", ".join(GENERIC_PREFIXES),
        prefixes=GENERIC_PREFIXES,
        head_prefixes=ignore,
    )


def find_layout(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise CheckpointError(f"--layout {name!r}: expected one of {', '.join(LAYOUT_NAMES)} (medssl weights layouts)")


# ----------------------------------------------------------------------------- reading
def read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)``, allowing ``argparse.Namespace``; refusals in one line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: holds Python objects ({found.group(1).rstrip('.,')}), not only tensors; medssl never "
                "unpickles code: load it with its own project and save its state_dict()"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(exc))
        detail = f" (the safe reader stopped at: {reason.group(1)})" if reason else ""
        raise CheckpointError(f"{path}: not a PyTorch checkpoint{detail}") from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:120]
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (truncated, or another format such as .npy): {type(exc).__name__}: {detail}"
        ) from None


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def find_state(raw: Any, layout: Layout) -> Mapping[str, torch.Tensor]:
    """The state dict inside what the source saved: ``raw`` itself or under one of ``layout.state_keys``."""
    if _is_state(raw):
        return raw
    if isinstance(raw, Mapping):
        for key in layout.state_keys:
            if _is_state(raw.get(key)):
                return raw[key]
        found = ", ".join(repr(key) for key in list(raw)[:6])
        where = " or ".join(repr(key) for key in layout.state_keys)
        raise CheckpointError(f"layout {layout.name}: no state dict at {where} (the file has {found})")
    raise CheckpointError(f"layout {layout.name}: the file holds a {type(raw).__name__}, not a dict of tensors")


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any of ``prefixes`` at its front, repeatedly (as prefixes: ``str.lstrip`` would eat characters)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def source_key(key: str, layout: Layout) -> str | None:
    """The network's key for a source key, or None for a key of the source's head."""
    key = strip_prefixes(key, layout.prefixes)
    return None if key.startswith(layout.head_prefixes) else layout.rename(key)


def _meta_state(spec: EncoderSpec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Encoder(spec).network.state_dict()


@dataclass
class Matching:
    """The source's tensors under the network's names, and what did not match."""

    state: dict[str, torch.Tensor]
    dropped: list[str]
    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    @property
    def unmatched(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)


def match(raw: Any, layout: Layout, spec: EncoderSpec) -> Matching:
    """Map the file's keys onto ``spec``'s network. A missing ``num_batches_tracked`` (older
    PyTorch) is filled with 0: BatchNorm reads it only without a momentum, which no network here has."""
    target = _meta_state(spec)
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    for key, value in find_state(raw, layout).items():
        name = source_key(key, layout)
        if name is None:
            dropped.append(strip_prefixes(key, layout.prefixes))
        elif name not in target or name in state:
            unexpected.append(key)
        else:
            state[name] = value
    for name in target:
        if name not in state and name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
    missing = [name for name in target if name not in state]
    if layout.head_required:
        heads = [prefix for prefix in layout.head_prefixes if not any(key.startswith(prefix) for key in dropped)]
        missing += [f"{prefix}* (the source's head)" for prefix in heads]
    shapes = [
        f"{name} {tuple(state[name].shape)} in the file, {tuple(target[name].shape)} in the network"
        for name in target
        if name in state and state[name].shape != target[name].shape
    ]
    return Matching(state, dropped, missing, unexpected, shapes)


def closest_layout(raw: Any, tried: str) -> str:
    """The layout that fits the file best (every key, if one does), for the refusal message."""
    candidates = [(layout, layout.spec()) for layout in LAYOUTS if layout.name != tried]
    candidates += [(generic_layout(encoder_spec(name)), encoder_spec(name)) for name in ENCODER_NAMES]
    scored = []
    for layout, spec in candidates:
        try:
            scored.append((match(raw, layout, spec).unmatched, layout, spec))
        except CheckpointError:
            continue
    if not scored:
        return "no layout reads it"
    unmatched, layout, spec = min(scored, key=lambda item: item[0])
    name = layout.name if layout.name != STATE_DICT else f"{STATE_DICT} --encoder {spec.name}"
    return f"closest layout: {name} ({'matches every key' if unmatched == 0 else f'{unmatched} keys unmatched'})"


def check_matching(matching: Matching, layout: Layout, path: Path, raw: Any) -> None:
    if not matching.unmatched:
        return

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = []
    if matching.missing:
        problems.append(f"{len(matching.missing)} keys of the network not in the file ({first(matching.missing)})")
    if matching.unexpected:
        problems.append(
            f"{len(matching.unexpected)} keys of the file not in the network ({first(matching.unexpected)})"
        )
    if matching.shapes:
        problems.append(f"{len(matching.shapes)} shapes differ ({first(matching.shapes)})")
    if layout.name == STATE_DICT and not (matching.missing or matching.unexpected):
        # every key fits the network: its widths or options differ, not its kind
        hint = "every key fits this network at other sizes: set its model.widths (or other model.* overrides)"
    else:
        hint = closest_layout(raw, layout.name)
    raise CheckpointError(f"{path}: does not fit layout {layout.name}: {'; '.join(problems)}; {hint}")


# ----------------------------------------------------------------------------- writing
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_out_dir(out_dir: Path) -> None:
    """Refuse a folder that holds anything: an import never replaces files."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(f"{out_dir}: already exists and is not an empty folder; choose another --out")


def write_encoder(encoder: Encoder, out_dir: Path) -> None:
    """``encoder.pt`` + ``encoder.json`` written beside ``out_dir`` and moved in at once: a failed
    write leaves nothing of ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_encoder(encoder, staging / "encoder.pt")
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked before
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_weights(
    path: str | Path,
    layout_name: str,
    out_dir: str | Path,
    spec: EncoderSpec | None = None,
    ignore: tuple[str, ...] = (),
) -> Encoder:
    """Import a published checkpoint as ``out_dir/encoder.pt`` + ``encoder.json``.

    ``spec`` is the network of the ``state-dict`` layout (``--encoder`` and model overrides)
    and ``ignore`` the key prefixes it drops; the other layouts fix their network. Returns the
    encoder (training mode, as a built one).

    Raises:
        CheckpointError: not a checkpoint, or one that does not fit the layout (nothing written).
        OutputError: ``out_dir`` is not new or empty.
    """
    path, out_dir = Path(path), Path(out_dir)
    if path.is_file() and (path.parent / "encoder.json").is_file():
        raise CheckpointError(
            f"{path}: a medssl encoder already (encoder.json beside it): give it to --encoder as it is, no import needed"
        )
    check_out_dir(out_dir)
    if layout_name == STATE_DICT:
        if spec is None:
            raise CheckpointError("--layout state-dict needs --encoder NAME (and model overrides for its options)")
        layout = generic_layout(spec, ignore)
    else:
        layout = find_layout(layout_name)
        spec = layout.spec()
    raw = read_checkpoint(path)
    try:
        matching = match(raw, layout, spec)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}; {closest_layout(raw, layout.name)}") from None
    check_matching(matching, layout, path, raw)
    source = {"layout": layout.name, "file": path.name, "sha256": sha256(path)}
    if layout.repository:
        source |= {"repository": layout.repository, "commit": layout.commit, "licence": layout.licence}
    encoder = Encoder(replace(spec, input=dict(layout.input), source=source))
    target = encoder.network.state_dict()
    encoder.network.load_state_dict({name: value.to(target[name].dtype) for name, value in matching.state.items()})
    write_encoder(encoder, out_dir)
    return encoder


def layout_rows() -> list[dict[str, str]]:
    """One row per layout for ``medssl weights layouts`` and docs/weights.md."""
    rows = []
    for layout in LAYOUTS:
        shape = "x".join(map(str, layout.input["shape"]))
        spacing = layout.input["spacing_mm"]
        rows.append(
            {
                "layout": layout.name,
                "source": f"{layout.repository} @ {layout.commit[:7]} ({layout.architecture})",
                "network": " ".join([f"model.encoder={layout.encoder}", *_option_overrides(layout.options)]),
                "representation": layout.representation,
                "input": f"{layout.input['modality']}; {shape}"
                + (f", {spacing} mm" if spacing else "")
                + f"; normalize {layout.input['normalize']}: {layout.input['note']}",
                "licence": layout.licence,
                "checkpoint": layout.checkpoint,
            }
        )
    rows.append(
        {
            "layout": STATE_DICT,
            "source": "any network medssl builds (--encoder NAME and model.* overrides)",
            "network": "as given",
            "representation": "the encoder's own",
            "input": "as trained",
            "licence": "",
            "checkpoint": generic_layout(encoder_spec("resnet18")).checkpoint + "; --ignore PREFIX drops a head",
        }
    )
    return rows


def _option_overrides(options: ArchitectureOptions) -> list[str]:
    defaults = ArchitectureOptions()
    overrides = []
    for key in ("bias_downsample", "shortcut_type", "stage_dilations", "final_norm", "final_relu"):
        value = getattr(options, key)
        if value != getattr(defaults, key):
            text = str(value).lower() if isinstance(value, bool) else value
            text = f"[{','.join(map(str, value))}]" if isinstance(value, tuple) else text
            overrides.append(f"model.{key}={text}")
    return overrides


# ----------------------------------------------------------------------------- using an imported encoder
def resolve_normalization(views: ViewsConfig, spec: EncoderSpec, pretraining: ViewsConfig | None = None) -> ViewsConfig:
    """``views.normalize: source`` made the encoder's own: the imported source's (``encoder.json``),
    else that of the run that trained it (the views section of its ``recipe.yaml``, ``pretraining``)."""
    if views.normalize != "source":
        return views
    mode = spec.input.get("normalize") or (pretraining.normalize if pretraining is not None else None)
    if mode is None:
        raise RecipeError(
            "views.normalize = 'source': the encoder records no normalisation (not imported, and no recipe.yaml "
            "beside it); name one: zscore, zscore_volume, minmax or none"
        )
    return views.model_copy(update={"normalize": mode})


def input_note(spec: EncoderSpec, shape: tuple[int, ...], recipe: RecipeSections) -> str | None:
    """One note when the cohort is not what an imported encoder expects (shape, modality,
    normalisation): not an error, users resample."""
    expects = spec.input
    if not expects:
        return None
    differences = []
    if list(shape) != list(expects["shape"]):
        differences.append(f"volumes are {'x'.join(map(str, shape))}")
    if recipe.data.root is None:
        differences.append("the cohort is the embedded synthetic one")
    elif (
        "VBM" in expects["modality"]
        and recipe.data.openbhb_modality == "quasiraw"
        and is_openbhb_folder(recipe.data.root)
    ):
        differences.append("the cohort is OpenBHB quasi-raw (data.openbhb_modality=vbm reads its VBM)")
    if recipe.views.normalize != expects["normalize"]:
        differences.append(f"views.normalize is {recipe.views.normalize} (views.normalize=source uses the source's)")
    if not differences:
        return None
    wanted = f"{expects['modality']}, {'x'.join(map(str, expects['shape']))}, normalize {expects['normalize']}"
    return f"note: {spec.source.get('layout', spec.name)} expects {wanted}; here {', '.join(differences)}."
