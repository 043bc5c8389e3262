"""Recipes: YAML files validated into typed, documented configuration objects.

A recipe mirrors the data path: ``data`` -> ``views`` -> ``model`` -> ``method`` ->
``train`` -> ``eval``. Every field has a default and a one-line description (shown by
``medssl recipes --fields``). Recipes are read with a safe YAML loader that also refuses a key
written twice: nothing in them is evaluated as code, and no key silently replaces another.

Example:
    >>> from medssl.config import load_recipe
    >>> recipe = load_recipe("recipes/yaware_age.yaml", overrides=["train.epochs=2"])
    >>> recipe.method.name
    'yaware'
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from medssl.errors import RecipeError


def shipped_recipes_dir() -> Path:
    """Folder of the shipped recipes: inside the package once installed from a wheel, else the checkout's ``recipes/``."""
    package_dir = Path(__file__).resolve().parent
    # pyproject.toml maps the repository's recipes/ into the wheel as medssl/recipes.
    installed = package_dir / "recipes"
    return installed if installed.is_dir() else package_dir.parent / "recipes"


RECIPES_DIR = shipped_recipes_dir()


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


# ----------------------------------------------------------------------------- method
# One section per method, told apart by ``method.name``: a method has only the keys it reads.
# Knobs that several methods share are typed once here and given a default per method.
METHOD_NAME_FIELD = Field(description="The method; the other keys of the section are its own.")
Temperature = Annotated[float, Field(gt=0, description="Softmax temperature tau of the contrastive loss.")]
Sigma = Annotated[float, Field(gt=0, description="Bandwidth of the label kernel (label units, e.g. years).")]
Kernel = Annotated[
    Literal["gaussian", "rbf", "cauchy"],
    Field(description="Kernel on labels that weighs how much two subjects count as positives."),
]
ReferenceCode = Annotated[
    bool, Field(description="Compute what the authors' code computes instead of the paper's formula.")
]
Eps = Annotated[float, Field(description="Margin epsilon between positive and negative similarities.")]
ShuffleLabels = Annotated[
    bool,
    Field(
        description="Permute the labels within each batch. A deliberately broken control, to check that a benchmark can tell."
    ),
]
EmaMomentum = Annotated[
    float,
    Field(ge=0, le=1, description="Base EMA momentum of the target network, raised to 1 along a cosine over the run."),
]
PredictorHiddenDim = Annotated[
    int, Field(ge=1, description="Hidden width of the predictor on top of the projection head.")
]


class FairKLDebias(Section):
    """FairKL (Barbano et al., ICLR 2023): the similarities of bias-aligned and bias-conflicting pairs
    are pulled to one distribution (Gaussians matched by a KL divergence), positives and negatives apart.
    Positives are the views of one subject, so the paper's formula is computed (the authors' code
    needs class labels; see medssl.losses.FairKLLoss)."""

    name: Literal["fairkl"] = Field("fairkl", description="The debiasing term.")
    weight: float = Field(1.0, ge=0, description="Weight of the FairKL term next to the method's loss.")


class AdversarialDebias(Section):
    """A site classifier on the representation whose gradient is reversed into the encoder (Ganin et al.,
    JMLR 2016; the confound unlearning of Dinsdale et al., NeuroImage 2021)."""

    name: Literal["adversarial"] = Field("adversarial", description="The debiasing term.")
    weight: float = Field(1.0, ge=0, description="Weight lambda of the reversed gradient (at the end of the schedule).")
    schedule: Literal["ganin", "constant"] = Field(
        "ganin", description="ganin: lambda * (2 / (1 + exp(-10 p)) - 1) at training progress p; constant: lambda."
    )
    hidden_dim: int = Field(128, ge=0, description="Hidden width of the site classifier (0: a linear classifier).")


Debias = Annotated[FairKLDebias | AdversarialDebias, Field(discriminator="name")]
DEBIAS_NAMES = ("fairkl", "adversarial")

SectionT = TypeVar("SectionT", bound="MethodSection")


class MethodSection(Section):
    """Base of every method's section; ``smoke()`` is the section shrunk for ``--smoke``."""

    def smoke(self: SectionT) -> SectionT:
        return self.model_copy()

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["name"].default


class EmbeddingSection(MethodSection):
    """A method whose loss sees the (N, V, d) embeddings of every view: it may add a debiasing term
    (its ``debias`` key, the last of its section)."""


DebiasKey = Annotated[
    Debias | None,
    Field(description="A term that removes data.bias (the site) from the representation: fairkl or adversarial."),
]


class YAwareConfig(EmbeddingSection):
    """y-aware InfoNCE (Dufumier et al., MICCAI 2021): positives weighted by a kernel on the label."""

    name: Annotated[Literal["yaware"], METHOD_NAME_FIELD] = "yaware"
    temperature: Temperature = 0.1
    sigma: Sigma = 5.0
    kernel: Kernel = "rbf"
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class ThresholdConfig(EmbeddingSection):
    """Threshold loss L^thr (Barbano et al., ISBI 2023): negatives farther in label than the positive repel."""

    name: Annotated[Literal["threshold"], METHOD_NAME_FIELD] = "threshold"
    temperature: Temperature = 0.1
    sigma: Sigma = 5.0
    kernel: Kernel = "rbf"
    reference_code: ReferenceCode = False
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class ExponentialConfig(EmbeddingSection):
    """Exponential loss L^exp (Barbano et al., ISBI 2023): negatives repel in proportion to label distance."""

    name: Annotated[Literal["exponential"], METHOD_NAME_FIELD] = "exponential"
    temperature: Temperature = 0.1
    sigma: Sigma = 5.0
    kernel: Kernel = "rbf"
    reference_code: ReferenceCode = False
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class SimCLRConfig(EmbeddingSection):
    """SimCLR's NT-Xent (Chen et al., ICML 2020): the other view of the same subject is the positive."""

    name: Annotated[Literal["simclr"], METHOD_NAME_FIELD] = "simclr"
    temperature: Temperature = 0.1
    debias: DebiasKey = None


class DecoupledConfig(EmbeddingSection):
    """Decoupled contrastive learning (Yeh et al., ECCV 2022): NT-Xent without the positive in the denominator."""

    name: Annotated[Literal["decoupled"], METHOD_NAME_FIELD] = "decoupled"
    temperature: Temperature = 0.1
    debias: DebiasKey = None


class SupConConfig(EmbeddingSection):
    """SupCon (Khosla et al., NeurIPS 2020): subjects of the same class are positives."""

    name: Annotated[Literal["supcon"], METHOD_NAME_FIELD] = "supcon"
    temperature: Temperature = 0.1
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class EpsSupInfoNCEConfig(EmbeddingSection):
    """eps-SupInfoNCE (Barbano et al., ICLR 2023): each positive beats every negative by a margin eps."""

    name: Annotated[Literal["eps_supinfonce"], METHOD_NAME_FIELD] = "eps_supinfonce"
    temperature: Temperature = 0.1
    eps: Eps = 0.0
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class EpsSupConConfig(EmbeddingSection):
    """eps-SupCon (Barbano et al., ICLR 2023): SupCon with a margin eps on the negatives."""

    name: Annotated[Literal["eps_supcon"], METHOD_NAME_FIELD] = "eps_supcon"
    temperature: Temperature = 0.1
    eps: Eps = 0.0
    shuffle_labels: ShuffleLabels = False
    debias: DebiasKey = None


class BarlowTwinsConfig(EmbeddingSection):
    """Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of the two views driven to the identity."""

    name: Annotated[Literal["barlow_twins"], METHOD_NAME_FIELD] = "barlow_twins"
    lambd: float = Field(5e-3, ge=0, description="Weight of the off-diagonal (redundancy reduction) term.")
    debias: DebiasKey = None


class VICRegConfig(EmbeddingSection):
    """VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance terms."""

    name: Annotated[Literal["vicreg"], METHOD_NAME_FIELD] = "vicreg"
    sim_weight: float = Field(25.0, ge=0, description="Invariance weight (lambda).")
    var_weight: float = Field(25.0, ge=0, description="Variance weight (mu).")
    cov_weight: float = Field(1.0, ge=0, description="Covariance weight (nu).")
    vicreg_form: Literal["authors", "paper_sum"] = Field(
        "authors",
        description="'authors' (facebookresearch/vicreg: mean squared error, variance terms averaged) or 'paper_sum' (invariance summed over D, variance terms added).",
    )
    debias: DebiasKey = None


class BYOLConfig(MethodSection):
    """BYOL (Grill et al., NeurIPS 2020): a predictor regresses an EMA target network's projection."""

    name: Annotated[Literal["byol"], METHOD_NAME_FIELD] = "byol"
    momentum: EmaMomentum = 0.996
    predictor_hidden_dim: PredictorHiddenDim = 512


class SimSiamConfig(MethodSection):
    """SimSiam (Chen & He, CVPR 2021): BYOL without the EMA target, a stop-gradient instead."""

    name: Annotated[Literal["simsiam"], METHOD_NAME_FIELD] = "simsiam"
    predictor_hidden_dim: PredictorHiddenDim = 512


class DINOConfig(MethodSection):
    """DINO (Caron et al., ICCV 2021): a student matches an EMA teacher's centred, sharpened outputs across crops."""

    name: Annotated[Literal["dino"], METHOD_NAME_FIELD] = "dino"
    temperature: float = Field(0.1, gt=0, description="Student softmax temperature.")
    teacher_temperature: float = Field(
        0.04, gt=0, description="Teacher temperature (sharpening), reached after the warm-up."
    )
    warmup_teacher_temperature: float = Field(
        0.04, gt=0, description="Teacher temperature of the first epoch, raised linearly to teacher_temperature."
    )
    warmup_teacher_temperature_epochs: int = Field(
        0, ge=0, description="Epochs of the teacher-temperature warm-up (at most train.epochs; DINO's ViT recipes: 30)."
    )
    center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the teacher centre.")
    momentum: EmaMomentum = 0.996
    out_dim: int = Field(4096, ge=2, description="Prototypes (output dimension of the DINO head).")
    local_crops: int = Field(4, ge=0, description="Local crops per subject, cut from the 2 global views.")
    local_crop_scale: tuple[float, float] = Field(
        (0.3, 0.5), description="Local crop edge as a fraction of the volume edge."
    )

    def smoke(self) -> DINOConfig:
        return self.model_copy(update={"out_dim": min(self.out_dim, 64), "local_crops": min(self.local_crops, 2)})


class DeepClusterConfig(MethodSection):
    """DeepCluster (Caron et al., ECCV 2018): k-means pseudo-labels of the features, re-clustered every epoch."""

    name: Annotated[Literal["deepcluster"], METHOD_NAME_FIELD] = "deepcluster"
    clusters: int = Field(100, ge=2, description="k of k-means.")
    pca_dim: int = Field(256, ge=2, description="PCA dimension (whitened) before k-means.")
    kmeans_iters: int = Field(20, ge=1, description="k-means iterations.")

    def smoke(self) -> DeepClusterConfig:
        return self.model_copy(update={"clusters": min(self.clusters, 3), "pca_dim": min(self.pca_dim, 8)})


class SupervisedConfig(MethodSection):
    """Supervised baseline: the encoder trained end-to-end on data.label (Dufumier et al., NeuroImage 2022)."""

    name: Annotated[Literal["supervised"], METHOD_NAME_FIELD] = "supervised"
    task: Literal["regression", "classification"] = Field(
        "regression", description="L1 regression of data.label, or cross-entropy classification."
    )
    classes: int = Field(2, ge=2, description="Classification: number of classes of data.label.")


DEFAULT_METHOD = "yaware"


def _default_method_name(raw: Any) -> Any:
    """A method section without ``name`` is the default method's."""
    return {"name": DEFAULT_METHOD, **raw} if isinstance(raw, dict) and "name" not in raw else raw


# Spelled out (not built from a tuple) so that type checkers see every member; typing.Union, not `|`,
# because field_docs recognises the union by get_origin(...) is Union.
MethodConfig = Annotated[
    Union[  # noqa: UP007
        YAwareConfig,
        SimCLRConfig,
        ThresholdConfig,
        ExponentialConfig,
        SupConConfig,
        EpsSupInfoNCEConfig,
        EpsSupConConfig,
        DecoupledConfig,
        BYOLConfig,
        SimSiamConfig,
        BarlowTwinsConfig,
        VICRegConfig,
        DINOConfig,
        DeepClusterConfig,
        SupervisedConfig,
    ],
    Field(discriminator="name"),
    BeforeValidator(_default_method_name),
]
METHOD_SECTIONS: dict[str, type[MethodSection]] = {
    section.method_name(): section for section in get_args(get_args(MethodConfig)[0])
}
METHOD_NAMES = tuple(METHOD_SECTIONS)


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


class Recipe(Section):
    name: str = Field("recipe", description="Recipe name (used for the run folder).")
    description: str = Field("", description="One line shown by `medssl recipes`.")
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(
        default_factory=YAwareConfig, description="Training objective: method.name and that method's own keys."
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Fine-tuning on a labelled cohort (`medssl finetune`)."
    )
    profile: str = Field(
        "auto",
        description="Scale profile merged under the recipe's own keys; auto: 'embedded' without data.root, 'paper' with it.",
    )
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named partial recipes for the settings that depend on the data's size (encoder, batch, epochs or steps, lr, warm-up, precision); merged over medssl's own 'embedded' and 'paper' profiles.",
    )
    _notes: list[str] = PrivateAttr(default_factory=list)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _merge_scale_profile(cls, data: Any, handler: Any) -> Recipe:
        """Layers, each winning over the one before: the chosen profile, then the recipe's own keys."""
        if not isinstance(data, dict):
            return handler(data)
        data, notes = move_legacy_budget(data)
        check_profile_keys(data.get("profiles") or {})
        name = chosen_profile(data)
        merged = merge_layers(profile_layer(data, name), {**data, "profile": name})
        recipe = handler(merged)
        recipe._notes = notes
        return recipe

    def __eq__(self, other: object) -> bool:
        """The same settings, whichever layers they came from."""
        return type(other) is type(self) and self.__dict__ == other.__dict__

    @property
    def uses_embedded_cohort(self) -> bool:
        return self.data.root is None

    @property
    def notes(self) -> list[str]:
        """What loading the recipe has to say (old keys read under their new names)."""
        return list(self._notes)


# ----------------------------------------------------------------------------- scale profiles
# The embedded cohort's budget: one small encoder and enough optimiser steps for every method to
# converge on a laptop CPU, in fp32 (its 32^3 volumes reach the depth-2 convolutions that bf16
# gets wrong on CPU). A recipe's own profiles.embedded is merged over it.
EMBEDDED_PROFILE: dict[str, Any] = {
    "model": {"encoder": "resnet18", "widths": list(NARROW_RESNET_WIDTHS)},
    "train": {"steps": 500, "batch_size": 32, "precision": "fp32", "channels_last": False},
    "finetune": {"epochs": 30, "batch_size": 16},
}
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {"embedded": EMBEDDED_PROFILE, "paper": {}}
# A layer that sets the first key and not the second drops the second of the layers below it:
# another encoder has its own widths, a number of epochs replaces a number of steps.
LINKED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("model", "encoder"): ("model", "widths"),
    ("train", "epochs"): ("train", "steps"),
}
# Where the keys of the former train.embedded / finetune.embedded sections live now.
LEGACY_BUDGET_SECTIONS = {"train": {"encoder": "model", "widths": "model"}, "finetune": {}}


def chosen_profile(raw: dict) -> str:
    """The profile a raw recipe asks for: ``auto`` is ``embedded`` without ``data.root``, else ``paper``."""
    name = raw.get("profile", "auto")
    if name not in (None, "auto"):
        return str(name)
    data = raw.get("data")
    root = data.get("root") if isinstance(data, dict) else getattr(data, "root", None)
    return "embedded" if root is None else "paper"


def profile_layer(raw: dict, name: str) -> dict:
    """medssl's own profile ``name`` with the recipe's ``profiles.<name>`` merged over it."""
    own = raw.get("profiles") or {}
    if name not in BUILTIN_PROFILES and name not in own:
        known = sorted({*BUILTIN_PROFILES, *own})
        raise ValueError(f"profile = {name!r}: no such profile (auto, {', '.join(known)})")
    return merge_layers(BUILTIN_PROFILES.get(name, {}), own.get(name) or {})


def merge_layers(lower: dict, upper: dict) -> dict:
    """``upper`` merged over a copy of ``lower``, section by section (see :data:`LINKED_KEYS`)."""
    lower = copy.deepcopy(lower)
    for first, second in LINKED_KEYS.items():
        if _sets(upper, first) and not _sets(upper, second) and isinstance(lower.get(second[0]), dict):
            lower[second[0]][second[1]] = None
    return _merged(lower, upper)


def _merged(lower: Any, upper: Any) -> Any:
    if isinstance(upper, BaseModel) and isinstance(lower, dict):
        upper = _set_fields(upper)
    if not (isinstance(lower, dict) and isinstance(upper, dict)):
        return copy.deepcopy(upper)
    merged = dict(lower)
    for key, value in upper.items():
        merged[key] = _merged(lower[key], value) if key in lower else value
    return merged


def _set_fields(section: BaseModel) -> dict:
    """The keys a section object was given (its method's name too: it picks the section)."""
    raw = section.model_dump(exclude_unset=True)
    if "name" in type(section).model_fields:
        raw["name"] = getattr(section, "name")
    return raw


def _sets(raw: dict, path: tuple[str, str]) -> bool:
    section = raw.get(path[0])
    if isinstance(section, BaseModel):
        return path[1] in section.model_fields_set
    return isinstance(section, dict) and path[1] in section


def move_legacy_budget(raw: dict) -> tuple[dict, list[str]]:
    """``train.embedded.lr`` (medssl before profiles) read as ``profiles.embedded.train.lr``, with a note."""
    raw, notes = dict(raw), []
    for section, homes in LEGACY_BUDGET_SECTIONS.items():
        old = raw.get(section)
        if not isinstance(old, dict) or not isinstance(old.get("embedded"), dict):
            continue
        old = dict(old)
        budget = old.pop("embedded")
        raw[section] = old
        profiles = copy.deepcopy(raw.get("profiles") or {})
        embedded = profiles.setdefault("embedded", {})
        for key, value in budget.items():
            # null kept the recipe's own value, except the widths of a named encoder: that network's own
            if value is None and not (key == "widths" and budget.get("encoder") is not None):
                continue
            home = homes.get(key, section)
            embedded.setdefault(home, {}).setdefault(key, value)
            notes.append(f"{section}.embedded.{key} is now profiles.embedded.{home}.{key}: read as that")
        raw["profiles"] = profiles
    return raw, notes


def check_profile_keys(profiles: Any) -> None:
    """Every key of every profile names a recipe key: a typo in a profile the run does not use
    would otherwise wait for the run that does."""
    if not isinstance(profiles, dict):
        raise ValueError(f"profiles: expected a mapping of profile name -> partial recipe, got {profiles!r}")
    for name, profile in profiles.items():
        if not isinstance(profile, dict):
            raise ValueError(f"profiles.{name}: expected a partial recipe (a mapping of sections), got {profile!r}")
        for section, keys in profile.items():
            field = Recipe.model_fields.get(section)
            if field is None or section in ("profile", "profiles"):
                raise ValueError(f"profiles.{name}.{section}: not a recipe section")
            models = _section_models(field.annotation)
            if len(models) != 1 or not isinstance(keys, dict):
                continue
            for key in keys:
                if key not in models[0].model_fields:
                    close = difflib.get_close_matches(key, list(models[0].model_fields), n=1)
                    hint = f"; did you mean {section}.{close[0]}?" if close else ""
                    raise ValueError(f"profiles.{name}.{section}.{key}: unknown key{hint}")


# ----------------------------------------------------------------------------- loading
def _format_validation_error(source: str, error: ValidationError, overrides: list[str] | None = None) -> str:
    problems, keys = [], []
    unknown_method_keys: dict[str, list[str]] = {}
    for item in error.errors():
        loc, method = _without_union_tag(item["loc"])
        if item["type"] == "bool_for_number":  # raised for the section: the key is in the context
            loc = (*loc, item["ctx"]["key"])
        key = ".".join(str(part) for part in loc) or "<root>"
        if item["type"] == "union_tag_invalid":  # pydantic names the section; the user wrote its name
            key, written = f"{key}.name", item["input"].get("name")
            choices = item["ctx"]["expected_tags"] if key != "method.name" else ", ".join(map(repr, METHOD_NAMES))
            problems.append(f"'{key}' = {written!r}: expected one of {choices}")
        elif item["type"] == "union_tag_not_found":
            problems.append(f"'{key}' needs a name: {key}.name = fairkl or adversarial")
        elif item["type"] == "extra_forbidden" and key == "method.debias" and method is not None:
            takes = ", ".join(
                name for name, section in METHOD_SECTIONS.items() if issubclass(section, EmbeddingSection)
            )
            problems.append(
                f"'method.debias': method '{method}' cannot take a debiasing term (it needs a loss on embeddings: {takes})"
            )
        elif item["type"] == "extra_forbidden" and method is not None:
            unknown_method_keys.setdefault(method, []).append(key)
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'" + _did_you_mean(_written_key(key, overrides or []), method))
        elif item["type"] == "bool_for_number":
            problems.append(
                f"'{key}' = {item['ctx']['value']!r}: Input should be {item['ctx']['expected']}, not a boolean"
            )
        elif item["type"] == "value_error" and isinstance(item.get("input"), dict):
            # a section's own check (model.widths against model.encoder...): its message names the keys
            problems.append(str(item["ctx"]["error"]))
        else:
            value = item.get("input")
            problems.append(f"'{key}' = {value!r}: {item['msg']}")
        keys.append(key)
    for method, unknown in unknown_method_keys.items():
        listed = ", ".join(f"'{key}'" for key in unknown)
        own = ", ".join(METHOD_SECTIONS[method].model_fields)
        hint = _method_switch_hint(unknown, overrides or [])
        problems.append(
            f"unknown key{'s' if len(unknown) > 1 else ''} {listed} for method '{method}' (its keys: {own})"
            + (hint or _did_you_mean(unknown[0], method))
        )
        if hint:  # the recipe's keys are fine for its own method: the switch on the command line is at fault
            keys = ["method.name" if key in unknown else key for key in keys]
    return f"{_blame(source, keys, overrides or [])}: " + "; ".join(problems)


def _without_union_tag(loc: tuple) -> tuple[tuple, str | None]:
    """pydantic puts the method's name into the location (``method.simclr.sigma``): the key is ``method.sigma``."""
    if len(loc) >= 2 and loc[0] == "method" and loc[1] in METHOD_SECTIONS:
        inner = loc[2:]
        if len(inner) >= 2 and inner[0] == "debias" and inner[1] in DEBIAS_NAMES:  # the debias term's tag too
            inner = (inner[0], *inner[2:])
        return (loc[0], *inner), loc[1]
    return tuple(loc), None


def _written_key(key: str, overrides: list[str]) -> str:
    """The key as the command line wrote it: ``trian.epochs`` where pydantic names the unknown section ``trian``."""
    for text in overrides:
        written = text.split("=", 1)[0].strip()
        if written.startswith(f"{key}."):
            return written
    return key


def _did_you_mean(written: str, method: str | None) -> str:
    """``; did you mean train.epochs?``: the key path with each unknown part replaced by its closest
    sibling (difflib, as click suggests a command), among the method's own keys in the method
    section; '' when a part has no close sibling or the result is no key."""
    if method is not None and written.startswith("method."):
        keys = {"method", *(f"method.{name}" for name in METHOD_SECTIONS[method].model_fields)}
    else:
        leaves = [key for key, _, _ in field_docs() if not key.startswith("method (")]
        keys = {
            ".".join(key.split(".")[:end]) for key in [*leaves, "method.name"] for end in range(1, key.count(".") + 2)
        }
    parts = written.split(".")
    for depth, part in enumerate(parts):
        parent = parts[:depth]
        if ".".join([*parent, part]) in keys:
            continue
        siblings = [key.split(".")[-1] for key in keys if key.split(".")[:-1] == parent]
        close = difflib.get_close_matches(part, siblings, n=1)
        if not close:
            return ""
        parts[depth] = close[0]
    suggestion = ".".join(parts)
    return f"; did you mean {suggestion}?" if suggestion in keys and suggestion != written else ""


def _method_switch_hint(unknown: list[str], overrides: list[str]) -> str:
    """``method.name=X`` on the command line keeps the recipe's other method keys, which X may not have."""
    switch = next((text for text in overrides if text.split("=", 1)[0].strip() == "method.name"), None)
    if switch is None or any(text.split("=", 1)[0].strip() in unknown for text in overrides):
        return ""
    name = switch.split("=", 1)[1].strip()
    return f"; to change the method on the command line, replace its whole section: 'method={{name: {name}}}'"


def _blame(source: str, keys: list[str], overrides: list[str]) -> str:
    """The command line when every bad key was set there (the recipe file is not at fault), else ``source``."""
    by_key: dict[str, str] = {}
    for text in overrides:
        path = [part for part in text.split("=", 1)[0].strip().split(".") if part]
        by_key.setdefault(".".join(path), text)
    # A bad key inside an overridden section (data={...}) is that override's fault too.
    culprits = {
        next((text for key_path, text in by_key.items() if _within(key, key_path) or _within(key_path, key)), None)
        for key in keys
    }
    if None in culprits or not culprits:
        return source
    return "command-line override " + ", ".join(sorted(text for text in culprits if text is not None))


def _within(key: str, section: str) -> bool:
    """Whether ``key`` is ``section`` or inside it (an override of ``trian.epochs`` makes the unknown section ``trian``)."""
    return key == section or key.startswith(section + ".")


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    return where + " ".join(str(problem).split())


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping: PyYAML keeps the last
    one silently, so a second ``train:`` section would drop the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            # A merge key (<<) may be overridden in place, and is resolved by the SafeLoader.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in first_lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key_node.value}' appears twice (first at line {first_lines[key]}); write each key once",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse recipe YAML: safe (no code), and a key written twice is a :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: tags that build Python objects are refused


SWITCH_VALUES = ("true", "false", "yes", "no", "on", "off", "1", "0")  # typed after a flag, read as an override


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        switch = " (switches such as --smoke or --resume take no value)" if text.lower() in SWITCH_VALUES else ""
        raise RecipeError(f"override '{text}': expected KEY.PATH=VALUE, e.g. train.epochs=2{switch}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise RecipeError(f"override '{text}': empty key")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override '{text}': value is not valid YAML ({yaml_problem(exc)})") from None
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return ``raw`` with ``KEY.PATH=VALUE`` overrides set (nested dicts are created).

    The command line is the top layer of a recipe (see :data:`LINKED_KEYS`): ``model.encoder=alexnet``
    means that encoder at its own widths, ``train.epochs=2`` two epochs rather than the profile's steps,
    exactly as the same keys written in the recipe file.
    """
    parsed = [(text, *parse_override(text)) for text in overrides]
    explicit = [tuple(path) for _, path, _ in parsed]
    for first, second in LINKED_KEYS.items():
        if first in explicit and second not in explicit:
            parsed.append((".".join(first), list(second), None))
    for text, path, value in parsed:
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """Accept a path to a YAML file or the name of a shipped recipe (``yaware_age``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(f"recipe '{name_or_path}' is a folder: give a recipe YAML file or a shipped recipe's name")
    for candidate in (RECIPES_DIR / f"{name_or_path}.yaml", RECIPES_DIR / path.name):
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe '{name_or_path}' not found (a YAML path, or one of: {', '.join(list_recipe_names())})")


def recipe_from_dict(raw: dict, source: str = "recipe", overrides: list[str] | None = None) -> Recipe:
    """Validate ``raw``; errors name ``source``, or the command-line ``overrides`` that caused them."""
    try:
        return Recipe.model_validate(trim_flat_method_section(raw))
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(source, exc, overrides)) from None


# The single method section of medssl's earlier versions held every method's keys, and the
# recipe.yaml of each run dumped them all. These keys were in it from the start ...
FLAT_METHOD_SECTION_MARKERS = frozenset(
    {
        "name",
        "temperature",
        "sigma",
        "kernel",
        "reference_code",
        "eps",
        "lambd",
        "sim_weight",
        "var_weight",
        "cov_weight",
        "momentum",
        "predictor_hidden_dim",
        "teacher_temperature",
        "center_momentum",
        "out_dim",
        "local_crops",
        "local_crop_scale",
        "clusters",
        "pca_dim",
        "kmeans_iters",
    }
)
# ... and these were added later.
FLAT_METHOD_SECTION_KEYS = FLAT_METHOD_SECTION_MARKERS | {
    "vicreg_form",
    "warmup_teacher_temperature",
    "warmup_teacher_temperature_epochs",
    "task",
    "classes",
    "shuffle_labels",
}


def trim_flat_method_section(raw: dict) -> dict:
    """``raw`` with a flat method section (a run's recipe.yaml written before each method had its
    own section) cut down to the keys of the method it names: the others did nothing in that run.

    A method section is flat when it holds every key the flat section always had; a recipe
    written by hand never does, so its unknown keys are still refused.
    """
    method = raw.get("method")
    if not isinstance(method, dict) or not FLAT_METHOD_SECTION_MARKERS <= method.keys():
        return raw
    section = METHOD_SECTIONS.get(method.get("name") or DEFAULT_METHOD)
    if section is None:
        return raw
    kept = {
        key: value
        for key, value in method.items()
        if key in section.model_fields or key not in FLAT_METHOD_SECTION_KEYS
    }
    return {**raw, "method": kept}


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises :class:`RecipeError` with the key path."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if raw is None:  # an empty file would run every default under the file's name, surely not what was meant
        raise RecipeError(f"{path}: the recipe is empty; start from a shipped one (medssl recipes)")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: expected a mapping of sections (data, views, model, method, train, eval), got {type(raw).__name__}"
        )
    raw.setdefault("name", path.stem)
    written = flatten_keys(move_legacy_budget(raw)[0])
    raw = apply_overrides(raw, overrides or [])
    recipe = recipe_from_dict(raw, source=str(path), overrides=overrides)
    command_line = [text.split("=", 1)[0].strip() for text in overrides or []]
    profile = flatten_keys(profile_layer(move_legacy_budget(raw)[0], recipe.profile))
    for key in flatten_keys(recipe.model_dump(mode="json")):
        if any(_within(key, written_key) for written_key in command_line):
            recipe._sources[key] = "command line"
        elif key in written and not key.startswith("profiles.") and key != "profile":
            recipe._sources[key] = "recipe"
        elif key in profile:
            recipe._sources[key] = f"profile {recipe.profile}"
    return recipe


def flatten_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists and empty sections are values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree} if prefix else {}
    return {
        key: value for name, child in tree.items() for key, value in flatten_keys(child, f"{prefix}{name}.").items()
    }


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a resolved recipe (every field, defaults included); a value that is not the
    default says the layer it came from (``# profile embedded``, ``# recipe``, ``# command line``)."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=float("inf"))
    if not recipe._sources:
        return text
    lines: list[str] = []
    path: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        key = line.strip().split(":", 1)[0]
        if line.strip().startswith("- ") or ":" not in line:
            lines.append(line)
            continue
        path = [*path[: indent // 2], key]
        source = recipe._sources.get(".".join(path))
        lines.append(f"{line}  # {source}" if source else line)
    return "\n".join(lines) + "\n"


def list_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def shipped_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe in ``recipes/``."""
    rows = []
    for name in list_recipe_names():
        raw = read_yaml((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
        rows.append((name, str(raw.get("description", ""))))
    return rows


def field_docs(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, description) of every leaf field, for ``--help`` style listings.

    The keys of a section that depends on its ``name`` (the method) carry that name:
    ``method (simclr).temperature``.
    """
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sections = _section_models(field.annotation)
        if len(sections) == 1:
            rows.extend(field_docs(sections[0], prefix=f"{key}."))
        elif sections:
            for section in sections:
                rows.extend(field_docs(section, prefix=f"{key} ({section.model_fields['name'].default})."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((key, yaml_value(default), field.description or ""))
    return rows


def _section_models(annotation: Any) -> list[type[BaseModel]]:
    """The section model(s) of a field: one for a plain section, several for a union on ``name``, none for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    members = get_args(annotation) if get_origin(annotation) is Union else ()
    if members and all(isinstance(member, type) and issubclass(member, BaseModel) for member in members):
        return list(members)
    return []


def yaml_value(value: Any) -> str:
    """``value`` as a recipe would write it: ``null``, ``[0.6, 1.0]``, ``true`` (not Python's None, tuples, True)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def smoke_recipe(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` shrunk to run end-to-end in seconds (``--smoke``)."""
    smoke = recipe.model_copy(deep=True)
    # DenseNet121 downsamples 32-fold: 32^3 is the smallest volume it accepts.
    shape = 32 if recipe.model.encoder == "densenet121" else 16
    smoke.data.synthetic = SyntheticCohortConfig(
        subjects=16,
        sites=4,
        external_sites=1,
        shape=shape,
        diagnosis=recipe.data.synthetic.diagnosis,
        diagnosis_model=recipe.data.synthetic.diagnosis_model,
        seed=recipe.data.synthetic.seed,
    )
    if smoke.data.root is not None:
        smoke.data.volume_shape = [shape] * 3
    smoke.data.num_workers = 0
    smoke.data.max_subjects = 8
    smoke.train.epochs = 1
    smoke.train.batch_size = 4
    smoke.train.max_steps_per_epoch = 2
    smoke.train.steps = None
    smoke.eval.folds = 2
    smoke.eval.batch_size = 4
    smoke.finetune.epochs = 1
    smoke.finetune.batch_size = 4
    smoke.finetune.max_steps_per_epoch = 2
    smoke.finetune.seeds = smoke.finetune.seeds[:2]
    smoke.method = smoke.method.smoke()
    smoke.model.head.hidden_dim = min(smoke.model.head.hidden_dim, 64)
    smoke.model.head.out_dim = min(smoke.model.head.out_dim, 32)
    return smoke
