"""The state a fine-tuning run keeps, shared by the modules its :class:`~medssl.finetune.protocol.FineTuner`
is made of, and how it says things (every note is kept for ``finetune.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from medssl.data.cohort import Cohort
from medssl.finetune.target import Target
from medssl.models import Encoder
from medssl.recipe import Recipe


class TunerState:
    """What a :class:`~medssl.finetune.protocol.FineTuner` holds, for the parts of it that live in
    other modules (:class:`~medssl.finetune.seeds.SeedTraining`,
    :class:`~medssl.finetune.results.ResultWriting`): set by ``__init__`` and ``prepare()``."""

    # set by __init__: what was asked for
    console: Console | None
    notes: list[str]
    encoder_source: Path | None
    recipe: Recipe
    pretrained: Encoder | None
    mode: str
    device: torch.device
    precision: str
    settings_yaml: str
    # set by prepare(): the cohort, the target, the rows of the subjects and their intensity statistics
    cohort: Cohort
    target: Target
    position_of: dict[str, int]
    intensity: np.ndarray
    # set by prepare(): the frozen encoder's features of the cohort (linear probe without augmentation),
    # and whether the encoder has been shown a volume of the cohort's size
    features: torch.Tensor | None
    input_checked: bool

    def say(self, message: str) -> None:
        self.notes.append(message)
        if self.console is not None:
            self.console.print(message)
