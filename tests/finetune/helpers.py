"""Shared by the fine-tuning tests: a clinical participants table and a tiny fine-tuning recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medssl.recipe import Recipe


def clinical_table(seed: int = 0) -> pd.DataFrame:
    """5 sites x 12 subjects, half patients, two sessions for every third subject."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in "ABCDE":
        for k in range(12):
            subject = f"{site}{k:02d}"
            for session in range(2 if k % 3 == 0 else 1):
                rows.append(
                    {
                        "participant_id": subject,
                        "session": session,
                        "site": site,
                        "diagnosis": "patient" if k % 2 else "control",
                        "age": float(rng.uniform(20, 80)),
                    }
                )
    return pd.DataFrame(rows)


def tiny_recipe(tiny_cohort, **finetune) -> Recipe:
    settings = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "seeds": [0], "lr": 1e-2, "patience": 1}
    settings.update(finetune)
    return Recipe.model_validate(
        {"data": {"root": str(tiny_cohort), "label": None}, "model": {"encoder": "resnet18"}, "finetune": settings}
    )
