"""The recipe's sections other than the method's: ``data`` -> ``views`` -> ``model``, then ``train``,
``eval`` and ``finetune`` (each method's section lives beside its builder in :mod:`medssl.methods`).

Every section is a :class:`Section`: unknown keys are errors, assignments are validated, and
numbers are finite and never booleans.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from medssl.errors import RecipeError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated, and
    numbers are finite and never booleans (``lr: .inf`` would fail mid-run, ``epochs: true``
    would run 1 epoch)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, raw: Any) -> Any:
        # A model validator, not a field one: pydantic allows no before-validator on the method's name.
        for key, value in raw.items() if isinstance(raw, dict) else ():
            field = cls.model_fields.get(key)
            items = value if isinstance(value, (list, tuple)) else [value]
            if field is None or not any(isinstance(item, bool) for item in items):
                continue
            leaves = _leaf_types(field.annotation)
            if bool not in leaves and (int in leaves or float in leaves):
                raise PydanticCustomError(
                    "bool_for_number",
                    "'{key}': Input should be {expected}, not a boolean",
                    {"key": key, "value": value, "expected": "an integer" if int in leaves else "a number"},
                )
        return raw


def _leaf_types(annotation: Any) -> set[Any]:
    """The types a field annotation is built from: ``list[int] | None`` -> {int, NoneType}."""
    if get_origin(annotation) is Literal:
        return {type(value) for value in get_args(annotation)}
    members = get_args(annotation)
    if not members:
        return {annotation}
    return set().union(*(_leaf_types(member) for member in members))


# ----------------------------------------------------------------------------- data
class SyntheticCohortConfig(Section):
    subjects: int = Field(640, ge=4, description="Number of synthetic subjects.")
    sites: int = Field(24, ge=2, description="Number of acquisition sites (scanners).")
    external_sites: int = Field(4, ge=0, description="Sites held out entirely as the external test set.")
    shape: int = Field(32, ge=8, le=256, description="Edge length of the cubic synthetic volumes (voxels).")
    diagnosis: bool = Field(
        False, description="Add a binary diagnosis: patients differ from controls as diagnosis_model says."
    )
    diagnosis_model: Literal["focal", "ageing", "ad-like"] = Field(
        "focal",
        description="What sets patients apart (with diagnosis: true): focal (hippocampal grey-matter loss), ageing (a brain-age gap of 6.7-10 years, Alzheimer's BrainAGE studies) or ad-like (both).",
    )
    seed: int = Field(0, description="Seed of the generator; the same seed gives the same cohort.")

    @model_validator(mode="after")
    def _a_disorder_model_needs_a_diagnosis(self) -> SyntheticCohortConfig:
        if self.diagnosis_model != "focal" and not self.diagnosis:
            raise ValueError(
                f"data.synthetic.diagnosis_model = {self.diagnosis_model!r} needs data.synthetic.diagnosis: true (without it there are no patients)"
            )
        return self


class DataConfig(Section):
    root: Path | None = Field(
        None,
        description="Cohort folder: NIfTI volumes + participants table, an OpenBHB download or challenge kit, or a `medssl data cache` folder; null uses the embedded synthetic cohort.",
    )
    label: str | None = Field(
        "age", description="Participants column used as the label y of label-aware losses (null: none)."
    )
    bias: str = Field(
        "site", description="Participants column of the bias a debiasing term removes (method.debias), e.g. site."
    )
    volume_shape: list[int] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="Resize every volume to this (D, H, W) before augmentation; null keeps the stored shape.",
    )
    max_subjects: int | None = Field(None, ge=2, description="Use at most this many training subjects (null: all).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="Stored type of a `medssl data cache` cohort (written by data cache, a cache of the other type refused): float32, or float16 for half the disk and page cache, cast to float32 on the device (views.device: batch) or in the workers.",
    )
    openbhb_modality: Literal["quasiraw", "vbm"] = Field(
        "quasiraw",
        description="OpenBHB downloads: volumes to read, quasiraw (1x182x218x182, 1 mm) or vbm (CAT12 grey matter, 1x121x145x121, 1.5 mm).",
    )
    openbhb_masks: Path | None = Field(
        None,
        description="OpenBHB challenge kit: folder of its two mask images (cat12vbm_space-MNI152_desc-gm_TPM.nii.gz, quasiraw_space-MNI152_desc-brain_T1w.nii.gz) that unmask its rows; null: data.root.",
    )
    synthetic: SyntheticCohortConfig = Field(
        default_factory=SyntheticCohortConfig, description="Embedded synthetic cohort used when root is null."
    )


# the recipe keys `medssl data cache` reads: the rest would be accepted and do nothing
CACHE_READS = ("data.volume_shape", "data.openbhb_modality", "data.openbhb_masks", "data.cache_dtype")


def refuse_unread_cache_overrides(overrides: list[str]) -> None:
    """A command-line override `medssl data cache` would accept and never read is refused (a mistyped
    key with the key it reads of the closest name)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" in item and key not in CACHE_READS:
            leaves = [read.removeprefix("data.") for read in CACHE_READS]
            close = difflib.get_close_matches(key.removeprefix("data."), leaves, n=1) if key.startswith("data.") else []
            instead = f"did you mean data.{close[0]}?" if close else f"it reads {', '.join(CACHE_READS)}"
            raise RecipeError(f"command-line override {item}: data cache does not read {key}; {instead}")


# ----------------------------------------------------------------------------- views
class CropConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of a random crop resized back to full size.")
    scale: tuple[float, float] = Field(
        (0.6, 1.0), description="Range of the crop edge as a fraction of the volume edge."
    )


class CutoutConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of zeroing a random box (cutout).")
    size: tuple[float, float] = Field(
        (0.25, 0.25), description="Range of the box edge as a fraction of the volume edge."
    )


class FlipConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of a flip along each spatial axis.")
    axes: list[int] = Field(
        default_factory=lambda: [0], description="Spatial axes that may be flipped (0 = left-right for RAS volumes)."
    )


class BlurConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of a Gaussian blur.")
    std: tuple[float, float] = Field((0.1, 1.0), description="Range of the blur standard deviation in voxels.")


class NoiseConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of additive Gaussian noise.")
    std: tuple[float, float] = Field(
        (0.0, 0.1), description="Range of the noise standard deviation (normalised intensities)."
    )


class AffineConfig(Section):
    p: float = Field(0.0, ge=0, le=1, description="Probability of a random affine transform.")
    degrees: float = Field(10.0, ge=0, description="Maximum rotation in degrees around each axis.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Range of the isotropic scaling factor.")
    translation: float = Field(0.0, ge=0, description="Maximum translation in voxels.")


class ViewsConfig(Section):
    n_views: int = Field(2, ge=1, description="Augmented views drawn per subject.")
    normalize: Literal["zscore", "zscore_volume", "minmax", "none", "source"] = Field(
        "zscore",
        description="Intensity normalisation before augmentation: zscore over the non-zero voxels, zscore_volume over all voxels, minmax to [0, 1], none, or source: the one an imported encoder was trained with (finetune, evaluate).",
    )
    device: Literal["loader", "batch"] = Field(
        "loader",
        description="Where views are drawn: loader (TorchIO, one volume at a time in DataLoader workers) or batch (medssl.data.batched_views on the training device, in the training step).",
    )
    crop: CropConfig = Field(default_factory=CropConfig, description="Random crop then resize back.")
    cutout: CutoutConfig = Field(default_factory=CutoutConfig, description="Zero a random box.")
    flip: FlipConfig = Field(default_factory=FlipConfig, description="Random flips.")
    blur: BlurConfig = Field(default_factory=BlurConfig, description="Gaussian blur.")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Additive Gaussian noise.")
    affine: AffineConfig = Field(default_factory=AffineConfig, description="Rotation, scaling, translation.")


# ----------------------------------------------------------------------------- model
class HeadConfig(Section):
    hidden_dim: int = Field(512, ge=1, description="Width of the projection head's hidden layer.")
    out_dim: int = Field(128, ge=1, description="Dimension of the projected embedding the loss sees.")
    layers: int = Field(2, ge=1, le=4, description="Linear layers in the head (1 = linear projection).")
    batch_norm: bool = Field(False, description="BatchNorm after hidden layers (BYOL/SimSiam/VICReg heads use it).")


EncoderName = Literal["resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "alexnet"]
NARROW_RESNET_WIDTHS = [16, 32, 64, 128]


class ModelConfig(Section):
    encoder: EncoderName = Field(
        "resnet18", description="3D backbone (MONAI networks; alexnet is medssl's 3D AlexNet)."
    )
    widths: list[int] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="ResNet stage widths (MONAI's block_inplanes; null: 64, 128, 256, 512).",
    )
    in_channels: int = Field(1, ge=1, description="Input channels of the volumes.")
    conv1_stride: int = Field(
        2, ge=1, le=2, description="Stride of the ResNet stem convolution (MONAI's default 1 costs 8x the compute)."
    )
    bias_downsample: bool = Field(
        True,
        description="Bias in a ResNet's 1x1 shortcut convolutions (MONAI's default; false in EIDOSLAB's and MedicalNet's).",
    )
    shortcut_type: Literal["A", "B"] = Field(
        "B",
        description="ResNet shortcut where channels change: B a 1x1 convolution, A a strided pool and zero channels (MedicalNet's ResNet-18/34).",
    )
    stage_dilations: list[int] = Field(
        default_factory=lambda: [1, 1, 1, 1],
        min_length=4,
        max_length=4,
        description="Dilation of each ResNet stage; a stage with d > 1 keeps its input resolution (MedicalNet: [1, 1, 2, 4]).",
    )
    final_norm: bool = Field(
        True, description="DenseNet121's last BatchNorm (norm5); false for the y-aware and OpenBHB-kit DenseNets."
    )
    final_relu: bool = Field(
        True, description="DenseNet121's ReLU before the global pooling; false for the OpenBHB kit's DenseNet."
    )
    head: HeadConfig = Field(default_factory=HeadConfig, description="Projection head on top of the encoder features.")
    activation_checkpointing: bool = Field(
        False,
        description="Recompute the encoder's stage activations in backward instead of storing them (ResNets, DenseNet121): less memory per volume (DenseNet121 at 32^3: 0.72x), more time per step (1.3-1.4x on CPU).",
    )

    @model_validator(mode="after")
    def _widths_need_a_resnet(self) -> ModelConfig:
        if self.widths is not None and not self.encoder.startswith("resnet"):
            raise ValueError(
                f"model.widths is set but model.encoder = {self.encoder!r}: only ResNets take stage widths"
            )
        if self.conv1_stride != 2 and not self.encoder.startswith("resnet"):
            raise ValueError(
                f"model.conv1_stride = {self.conv1_stride} but model.encoder = {self.encoder!r}: only ResNets take a stem stride"
            )
        resnet_switches = {"bias_downsample": True, "shortcut_type": "B", "stage_dilations": [1, 1, 1, 1]}
        densenet_switches = {"final_norm": True, "final_relu": True}
        for switches, family in ((resnet_switches, "resnet"), (densenet_switches, "densenet")):
            for key, default in switches.items():
                if getattr(self, key) != default and not self.encoder.startswith(family):
                    raise ValueError(
                        f"model.{key} = {getattr(self, key)!r} but model.encoder = {self.encoder!r}: only {'ResNets' if family == 'resnet' else 'DenseNet121'} take it"
                    )
        if any(dilation < 1 for dilation in self.stage_dilations):
            raise ValueError(f"model.stage_dilations = {self.stage_dilations}: dilations are positive")
        # AlexNet3D's single Sequential of layers has no stages to checkpoint; silently doing nothing would mislead.
        if self.activation_checkpointing and self.encoder == "alexnet":
            raise ValueError(
                "model.activation_checkpointing is set but model.encoder = 'alexnet': only ResNets and DenseNet121 support it"
            )
        return self


# ----------------------------------------------------------------------------- train
class TrainConfig(Section):
    epochs: int = Field(50, ge=1, description="Passes over the training cohort.")
    steps: int | None = Field(
        None,
        ge=1,
        description="Optimiser steps instead of epochs, rounded up to whole epochs; warmup_epochs keeps its share of train.epochs (null: train.epochs).",
    )
    batch_size: int = Field(64, ge=2, description="Subjects per step (each seen in views.n_views views).")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Stop an epoch after this many steps (null: the whole cohort)."
    )
    optimizer: Literal["adam", "adamw", "sgd", "lars"] = Field(
        "adam",
        description="Optimiser; lars: SGD with a layer-wise trust ratio, biases and norms excluded (medssl.train.lars).",
    )
    lr: float = Field(1e-4, gt=0, description="Base learning rate.")
    weight_decay: float = Field(5e-5, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, le=1, description="SGD momentum.")
    scheduler: Literal["none", "cosine", "step"] = Field(
        "none", description="Learning-rate schedule over the steps of the run."
    )
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs before the schedule.")
    step_gamma: float = Field(0.9, gt=0, le=1, description="Decay factor per epoch of the step schedule.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value (null: no clipping).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision of forward passes.")
    channels_last: bool = Field(False, description="Use the channels-last-3d memory format.")
    compile: bool = Field(False, description="Wrap the model with torch.compile.")
    accumulate: int = Field(1, ge=1, description="Gradient accumulation steps per optimiser step.")
    seed: int = Field(0, description="Seed of every random number generator.")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu' or 'cuda[:k]'.")
    checkpoint_every: int = Field(1, ge=1, description="Write checkpoints/last.pt every this many epochs.")


# ----------------------------------------------------------------------------- eval
class OnlineProbeConfig(Section):
    every: int | None = Field(
        None,
        ge=1,
        description="During pre-training, probe age every this many epochs (kNN and ridge, metrics.csv and TensorBoard: online_knn_age_mae, online_ridge_age_mae); null: never.",
    )
    holdout: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the training split's subjects the online probe tests on (site-stratified); it fits on the others, and no test split is read.",
    )


class EvalConfig(Section):
    after_pretrain: bool = Field(True, description="Run the evaluation at the end of `medssl pretrain`.")
    folds: int = Field(5, ge=2, description="Folds of the site-stratified cross-validation.")
    baseline: bool = Field(
        True,
        description="Also evaluate the baselines: a randomly initialised encoder of the same architecture, "
        "the intensity-statistics probe and the training-mean predictor.",
    )
    batch_size: int = Field(16, ge=1, description="Volumes per batch during feature extraction.")
    targets: list[str] = Field(
        default_factory=lambda: ["age", "sex"], description="Participants columns probed by the cross-validation."
    )
    folds_file: str | None = Field(
        "auto",
        description="Challenge folds scored with the challenge protocol, in the OpenBHB challenge kit's cv_splits_indices.json layout (fold -> train / internal_test / external_test row numbers of the cohort's train rows); auto: the kit's own file when data.root is a challenge kit that ships one; null: none.",
    )
    online: OnlineProbeConfig = Field(
        default_factory=OnlineProbeConfig, description="A probe of the representation while it trains."
    )


# the train.* keys `medssl evaluate` reads: the probes' folds and where features are computed
EVALUATE_READS_OF_TRAIN = ("train.seed", "train.device")


def refuse_unread_evaluate_overrides(overrides: list[str]) -> None:
    """An override evaluation would accept and never read (the encoder is trained already) is refused."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if section in ("method", "model", "finetune") or (section == "train" and key not in EVALUATE_READS_OF_TRAIN):
            raise RecipeError(
                f"command-line override {item}: evaluation does not read {key} (the encoder is trained already); "
                f"it reads data.*, views.*, eval.* and {', '.join(EVALUATE_READS_OF_TRAIN)}"
            )


# ----------------------------------------------------------------------------- finetune
class FinetuneConfig(Section):
    """``medssl finetune``: a classification or regression head on a pre-trained encoder.

    Optimiser, weight decay, gradient clipping, precision and device come from ``train:``.
    """

    target: str = Field("diagnosis", description="Participants column to predict (e.g. diagnosis, age).")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="auto: regression for a numeric column with fractional values or more than 10 distinct values, else classification.",
    )
    positive_class: str | None = Field(
        None,
        description="Class counted as positive by binary ROC AUC and ROC curves (null: the last class in sorted order).",
    )
    mode: Literal["linear", "full", "lower_lr"] = Field(
        "full",
        description="linear: frozen encoder (probe); full: everything at finetune.lr; lower_lr: encoder at lr x encoder_lr_factor.",
    )
    encoder_lr_factor: float = Field(
        0.1, gt=0, le=1, description="Encoder learning rate as a fraction of finetune.lr in mode lower_lr."
    )
    epochs: int = Field(50, ge=1, description="Maximum passes over the training part.")
    patience: int = Field(
        10,
        ge=1,
        description="Stop after this many epochs without a lower validation loss; the best epoch's weights are kept.",
    )
    lr: float = Field(1e-4, gt=0, description="Learning rate of the head (and of the encoder in mode full).")
    batch_size: int = Field(16, ge=2, description="Subjects per step.")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Stop an epoch after this many steps (null: the whole training part)."
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="One run per seed (head init, validation split, batch order); results are mean +- std over them.",
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of the train split held out, site-stratified, for early stopping."
    )
    train_size: int | None = Field(
        None,
        ge=4,
        description="Labelled training subjects used (validation part included), drawn per seed, stratified by site and class (null: all).",
    )
    class_weighting: bool = Field(
        True, description="Weight the cross-entropy by inverse class frequency of the training part."
    )
    augment: bool = Field(
        False,
        description="Train on random views from the recipe's views section (false: the non-augmented eval transform).",
    )


# train.* keys `medssl finetune` does not read, and the finetune.* key that does the job (None: none does)
FINETUNE_COUNTERPARTS = {
    "train.epochs": "finetune.epochs",
    "train.batch_size": "finetune.batch_size",
    "train.max_steps_per_epoch": "finetune.max_steps_per_epoch",
    "train.lr": "finetune.lr",
    "train.seed": "finetune.seeds",
    "train.steps": "finetune.epochs",
    "train.embedded.": "profiles.embedded.finetune.*",
    "train.scheduler": None,
    "train.warmup_epochs": None,
    "train.step_gamma": None,
    "train.accumulate": None,
    "train.compile": None,
    "train.channels_last": None,
}


def refuse_unread_finetune_overrides(overrides: list[str]) -> None:
    """A command-line override fine-tuning would accept and never read is refused, naming what does the job."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("method."):
            raise RecipeError(
                f"command-line override {item}: fine-tuning reads no method.* key "
                "(the encoder comes from --encoder); its settings are finetune.*"
            )
        for unread, counterpart in FINETUNE_COUNTERPARTS.items():
            if key == unread or (unread.endswith(".") and key.startswith(unread)):
                instead = f"; use {counterpart}" if counterpart else ""
                raise RecipeError(f"command-line override {item}: fine-tuning does not read {key}{instead}")
