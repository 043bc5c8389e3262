"""Redundancy-reduction methods: the embeddings of two views are decorrelated across
dimensions rather than contrasted across subjects. Each one's recipe section and table entry;
they run on :class:`~medssl.methods.contrastive.EmbeddingLossMethod`, as the contrastive losses do.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from medssl.config import METHOD_NAME_FIELD
from medssl.losses import BarlowTwinsLoss, VICRegLoss
from medssl.methods.contrastive import embedding_loss
from medssl.methods.debias import DebiasKey, EmbeddingSection


class BarlowTwinsConfig(EmbeddingSection):
    """Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of the two views driven to the identity."""

    name: Annotated[Literal["barlow_twins"], METHOD_NAME_FIELD] = "barlow_twins"
    lambd: float = Field(5e-3, ge=0, description="Weight of the off-diagonal (redundancy reduction) term.")
    debias: DebiasKey = None


class VICRegConfig(EmbeddingSection):
    """VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance terms."""

    name: Annotated[Literal["vicreg"], METHOD_NAME_FIELD] = "vicreg"
    renamed_keys: ClassVar[dict[str, str]] = {"vicreg_form": "form"}
    sim_weight: float = Field(25.0, ge=0, description="Invariance weight (lambda).")
    var_weight: float = Field(25.0, ge=0, description="Variance weight (mu).")
    cov_weight: float = Field(1.0, ge=0, description="Covariance weight (nu).")
    form: Literal["authors", "paper_sum"] = Field(
        "authors",
        description="'authors' (facebookresearch/vicreg: mean squared error, variance terms averaged) or 'paper_sum' (invariance summed over D, variance terms added).",
    )
    debias: DebiasKey = None


REDUNDANCY_METHODS = (
    embedding_loss(BarlowTwinsConfig, lambda m: BarlowTwinsLoss(lambd=m.lambd), monitors_collapse=True),
    embedding_loss(
        VICRegConfig,
        lambda m: VICRegLoss(sim_weight=m.sim_weight, var_weight=m.var_weight, cov_weight=m.cov_weight, form=m.form),
        monitors_collapse=True,
    ),
)
