"""What fine-tuning predicts: a participants column (``finetune.target``), its task and classes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from medssl.config import FinetuneConfig
from medssl.errors import CohortError, RecipeError
from medssl.eval.probes import is_continuous
from medssl.eval.score import as_labels

MISSING_TEXT = {"", "nan", "none", "n/a", "na"}  # how a missing label looks once the cohort loader made it text


@dataclass
class Target:
    """What is predicted: a participants column, its task and, for classification, its classes."""

    column: str
    task: str
    classes: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def values(self, table: pd.DataFrame) -> np.ndarray:
        """Class labels (strings) or floats of the column, row by row."""
        column = table[self.column]
        if self.task == "classification":
            return as_labels(column).to_numpy(dtype=object)
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)

    def encode(self, table: pd.DataFrame) -> torch.Tensor:
        """Class indices (int64) or raw values (float32) for the loss."""
        values = self.values(table)
        if self.task == "classification":
            index = {label: position for position, label in enumerate(self.classes)}
            return torch.tensor([index[value] for value in values], dtype=torch.long)
        return torch.tensor(values, dtype=torch.float32)


def known_rows(table: pd.DataFrame, column: str) -> np.ndarray:
    """Rows whose ``column`` holds a value (NaN, and "nan" written by the cohort loader, are missing)."""
    values = table[column]
    missing = values.isna().to_numpy() | values.astype(str).str.strip().str.lower().isin(MISSING_TEXT).to_numpy()
    return ~missing


def resolve_target(table: pd.DataFrame, config: FinetuneConfig) -> Target:
    """Check ``finetune.target`` against the train rows and pick the task and the classes.

    ``task: auto`` means regression for a numeric column named ``age``, with fractional values or
    more than 10 distinct values (the rule of ``medssl evaluate``'s probes), classification
    otherwise (text, or a few integer codes). Classes
    are sorted; the positive one (``finetune.positive_class``, else the last) comes last.
    """
    column = config.target
    if column not in table.columns:
        raise RecipeError(
            f"finetune.target = {column!r}: no such column in the participants table "
            f"(columns: {', '.join(map(str, table.columns))})"
        )
    train = table[table["split"] == "train"]
    train = train[known_rows(train, column)]
    if train.empty:
        raise CohortError(f"finetune.target = {column!r}: no train subject has a value")
    numbers = pd.to_numeric(train[column], errors="coerce")
    task = config.task
    if task == "auto":
        fractional = bool(numbers.notna().all() and (numbers % 1 != 0).any())
        task = "regression" if numbers.notna().all() and (is_continuous(numbers) or fractional) else "classification"
    if task == "regression":
        if numbers.isna().any():
            bad = train[column][numbers.isna()].iloc[0]
            raise RecipeError(f"finetune.task = 'regression': column {column!r} holds {bad!r}, not a number")
        return Target(column, "regression")
    classes = sorted(as_labels(train[column]).unique())
    if len(classes) < 2:
        raise CohortError(
            f"finetune.target = {column!r}: the train split has a single class ({classes[0]!r}); two are needed"
        )
    if config.positive_class is not None:
        if config.positive_class not in classes:
            raise RecipeError(
                f"finetune.positive_class = {config.positive_class!r}: not a class of {column!r} "
                f"(classes: {', '.join(classes)})"
            )
        classes = [label for label in classes if label != config.positive_class] + [config.positive_class]
    return Target(column, "classification", classes)
