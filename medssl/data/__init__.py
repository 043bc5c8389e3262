"""Cohorts and their volumes: participants tables checked on opening, NIfTI / memory-mapped /
OpenBHB volumes read lazily, the embedded synthetic cohort, and TorchIO views.

Names are imported on first use, so importing one submodule does not load the others.

Example:
    >>> from medssl.data import MultiViewDataset, build_view_transform, embedded_cohort, load_cohort
    >>> from medssl.recipe import load_recipe
    >>> recipe = load_recipe("simclr")
    >>> cohort = load_cohort(embedded_cohort(recipe.data.synthetic))
    >>> views = MultiViewDataset(cohort.subjects(), build_view_transform(recipe.views), n_views=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medssl.lazy import lazy_exports

_MODULE_OF = {
    "Cohort": "cohort",
    "load_cohort": "cohort",
    "synthesize_cohort": "synthetic",
    "embedded_cohort": "synthetic",
    "cache_cohort": "cache",
    "MultiViewDataset": "views",
    "VolumeDataset": "views",
    "build_view_transform": "views",
    "build_eval_transform": "views",
    "openbhb_table": "openbhb",
}

__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from medssl.data.cache import cache_cohort
    from medssl.data.cohort import Cohort, load_cohort
    from medssl.data.openbhb import openbhb_table
    from medssl.data.synthetic import embedded_cohort, synthesize_cohort
    from medssl.data.views import MultiViewDataset, VolumeDataset, build_eval_transform, build_view_transform


__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF, globals())
