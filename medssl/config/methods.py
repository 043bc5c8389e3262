"""The method section: one section model per method, told apart by ``method.name``, and the
debiasing terms a method with a loss on embeddings may add (``method.debias``). A key has the
name of the constructor's keyword that receives it (``DINO(n_local_crops=...)``).

Also the reading of medssl's earlier method sections: keys renamed since
(:data:`RENAMED_METHOD_KEYS`, :func:`rename_method_keys`), and the flat method section that
held every method's keys (:func:`trim_flat_method_section`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union, get_args

from pydantic import BeforeValidator, Field

from medssl.config.sections import Section

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
    form: Literal["authors", "paper_sum"] = Field(
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
    student_temperature: float = Field(0.1, gt=0, description="Student softmax temperature.")
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
    n_local_crops: int = Field(4, ge=0, description="Local crops per subject, cut from the 2 global views.")
    local_crop_scale: tuple[float, float] = Field(
        (0.3, 0.5), description="Local crop edge as a fraction of the volume edge."
    )

    def smoke(self) -> DINOConfig:
        return self.model_copy(update={"out_dim": min(self.out_dim, 64), "n_local_crops": min(self.n_local_crops, 2)})


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


# ----------------------------------------------------------------------------- renamed keys
# Keys of a method's section renamed to the keyword of the constructor that receives them, per
# method: old name -> new name. A recipe (or a run's recipe.yaml) with the old name still loads,
# with a note naming the new key.
RENAMED_METHOD_KEYS: dict[str, dict[str, str]] = {
    "dino": {"temperature": "student_temperature", "local_crops": "n_local_crops"},
    "vicreg": {"vicreg_form": "form"},
}


def renamed_keys(method: Any) -> dict[str, str]:
    """Old name -> new name of the renamed keys of ``method`` (a method's name; {} for anything else)."""
    return RENAMED_METHOD_KEYS.get(method, {}) if isinstance(method, str) else {}


def method_name_of(section: dict, fallback: Any = None) -> Any:
    """The method a raw method section is for: its ``name``, else ``fallback``, else the default method."""
    return section.get("name") or fallback or DEFAULT_METHOD


def other_name(method: Any, key: str) -> str | None:
    """The other name of a renamed key of ``method`` (the new name of an old one, the old name of a new one)."""
    renamed = renamed_keys(method)
    return renamed.get(key) or next((old for old, new in renamed.items() if new == key), None)


def rename_method_keys(section: dict, where: str = "method", method: Any = None) -> tuple[dict, list[str]]:
    """``section``, a raw method section at key path ``where``, with every old key of its method (its
    ``name``, else ``method``, else the default method) under its new name, and a note for each.

    Raises ValueError for a key written under both names: which one was meant is unknowable.
    """
    renamed = renamed_keys(method_name_of(section, method))
    notes = []
    for old, new in renamed.items():
        if old in section and new in section:
            raise ValueError(
                f"{where}.{old} and {where}.{new} are one key, under its old and its new name: write {where}.{new} only"
            )
        if old in section:
            notes.append(f"{where}.{old} is now {where}.{new}: read as that")
    if not notes:
        return section, notes
    return {renamed.get(key, key): value for key, value in section.items()}, notes


# ----------------------------------------------------------------------------- flat method section
# The single method section of medssl's earlier versions held every method's keys, and the
# recipe.yaml of each run dumped them all, under the names of that time (local_crops, not today's
# n_local_crops: see RENAMED_METHOD_KEYS). These keys were in it from the start ...
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
    # The keys of the method under the names of that version (DINO's local_crops) are its own:
    # validation reads them under their new names (rename_method_keys).
    own = {*section.model_fields, *renamed_keys(section.method_name())}
    kept = {key: value for key, value in method.items() if key in own or key not in FLAT_METHOD_SECTION_KEYS}
    return {**raw, "method": kept}
