"""Method sections of earlier medssl versions, read as today's: keys renamed since
(:data:`RENAMED_METHOD_KEYS`, :func:`rename_method_keys`), and the flat method section that held
every method's keys (:func:`trim_flat_method_section`).
"""

from __future__ import annotations

from typing import Any

from medssl.methods import DEFAULT_METHOD, METHOD_SECTIONS

# ----------------------------------------------------------------------------- renamed keys
# Keys of a method's section renamed to the keyword of the constructor that receives them, per
# method: old name -> new name, from each section's ``renamed_keys`` (beside the section, in its
# method's module). A recipe (or a run's recipe.yaml) with the old name still loads, with a note.
RENAMED_METHOD_KEYS: dict[str, dict[str, str]] = {
    name: section.renamed_keys for name, section in METHOD_SECTIONS.items() if section.renamed_keys
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
