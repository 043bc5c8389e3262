"""What every method's section is made of: :class:`MethodSection`, and the knobs several
methods share, typed once (a temperature, a label kernel...).

Each method's own section lives in its module, beside its builder (``DINOConfig`` in
:mod:`medssl.methods.dino`), and :mod:`medssl.methods` assembles them into the union on
``method.name`` from its table of methods. A key has the name of the constructor's keyword that
receives it (``DINO(n_local_crops=...)``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import Field

from medssl.config.sections import Section

# Knobs that several methods share, typed once here and given a default by each method's section.
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


SectionT = TypeVar("SectionT", bound="MethodSection")


class MethodSection(Section):
    """Base of every method's section; ``smoke()`` is the section shrunk for ``--smoke``."""

    # Keys of this section renamed since earlier medssl versions: old name -> new name. A recipe
    # (or a run's recipe.yaml) with the old name still loads, with a note naming the new key.
    renamed_keys: ClassVar[dict[str, str]] = {}

    name: str = Field(description="The method; each method's section narrows it to its own name.")

    def smoke(self: SectionT) -> SectionT:
        return self.model_copy()

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["name"].default
