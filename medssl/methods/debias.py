"""Debiasing terms an embedding method can add (``method.debias``): they remove ``data.bias`` (the
acquisition site) from the representation, which the OpenBHB challenge scores with the site's
balanced accuracy.

- ``fairkl``: :class:`~medssl.losses.FairKLLoss` on the projected embeddings of every view.
- ``adversarial``: a site classifier on the encoder's features behind a gradient reversal.
  The classifier learns the site; the encoder receives its gradient times ``-lambda`` and
  so learns to hide it. The classifier lives in the method (checkpointed with it) and is
  never part of ``encoder.pt``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medssl.config import MethodSection, Section
from medssl.losses.fairkl import FairKLLoss


# ----------------------------------------------------------------------------- recipe sections
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


class EmbeddingSection(MethodSection):
    """A method whose loss sees the (N, V, d) embeddings of every view: it may add a debiasing term
    (its ``debias`` key, the last of its section)."""


DebiasKey = Annotated[
    Debias | None,
    Field(description="A term that removes data.bias (the site) from the representation: fairkl or adversarial."),
]


# ----------------------------------------------------------------------------- the terms
class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward (Ganin et al., "Domain-Adversarial
    Training of Neural Networks", JMLR 2016)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    return GradientReversal.apply(x, weight)


def ganin_schedule(progress: float) -> float:
    """2 / (1 + exp(-10 p)) - 1: 0 at the start of training, close to 1 at its end (Ganin et al., 2016)."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class AdversarialSiteHead(nn.Module):
    """A site classifier on the representation behind a gradient reversal (the confound unlearning
    set-up of Dinsdale et al., NeuroImage 2021, with Ganin's reversal in place of their alternating
    optimisers): ``loss = cross_entropy(classifier(reverse(features)), site)``.

    The reversal weight follows ``schedule`` over the training progress kept in the buffer
    ``progress`` (set by :meth:`set_progress` after each step, checkpointed with the method, so
    a resumed run continues the schedule exactly).
    """

    def __init__(self, config: AdversarialDebias, feature_dim: int, n_sites: int):
        super().__init__()
        self.weight, self.schedule = config.weight, config.schedule
        hidden = config.hidden_dim
        layers: list[nn.Module] = (
            [nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_sites)]
            if hidden
            else [nn.Linear(feature_dim, n_sites)]
        )
        self.classifier = nn.Sequential(*layers)
        self.progress: torch.Tensor
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    def reversal_weight(self) -> float:
        scale = ganin_schedule(float(self.progress)) if self.schedule == "ganin" else 1.0
        return self.weight * scale

    def set_progress(self, step: int, total_steps: int) -> None:
        self.progress.fill_(step / max(total_steps, 1))

    def forward(self, features: torch.Tensor, sites: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.reversal_weight()
        logits = self.classifier(reverse_gradient(features.float(), weight))
        loss = F.cross_entropy(logits, sites)
        accuracy = (logits.argmax(1) == sites).float().mean()
        return loss, {"site_loss": loss.item(), "site_accuracy": accuracy.item(), "reversal_weight": weight}


class FairKLTerm(nn.Module):
    """``weight * FairKL(z, site)`` on the (N, V, d) embeddings, in the paper's form, with the views of
    one subject as its positives (the method's label may be continuous, as age is; see
    :class:`~medssl.losses.FairKLLoss` for why, and why the authors' code would not apply)."""

    def __init__(self, config: FairKLDebias):
        super().__init__()
        self.weight = config.weight
        self.loss = FairKLLoss(reference_code=False)

    def forward(self, z: torch.Tensor, sites: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        value = self.loss(z, None, sites)
        return self.weight * value, {"fairkl": value.item()}


def build_debias(config: FairKLDebias | AdversarialDebias, feature_dim: int, n_sites: int, seed: int) -> nn.Module:
    """The debiasing term of ``method.debias``; a classifier's initial weights come from ``seed``
    alone, so adding one leaves every other random draw of the run as it was."""
    if isinstance(config, FairKLDebias):
        return FairKLTerm(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AdversarialSiteHead(config, feature_dim, n_sites)
