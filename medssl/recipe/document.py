"""The :class:`Recipe` and its scale profiles: the settings that depend on the data's size come
from a named profile, merged under the recipe's own keys (see :data:`LINKED_KEYS`).

Also :func:`field_docs`, the listing of every recipe key with its default and description.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from medssl.config import (
    NARROW_RESNET_WIDTHS,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    Section,
    TrainConfig,
    ViewsConfig,
)
from medssl.methods import MethodConfig, YAwareConfig
from medssl.recipe.legacy_keys import method_name_of, rename_method_keys


class Recipe(Section):
    """A whole recipe, one section per step of the data path. Validating one merges its scale
    profile under its own keys (``profile``, ``profiles``), reads keys of earlier medssl versions
    under their new names (``notes`` says which) and, from :func:`~medssl.recipe.load_recipe`,
    remembers the layer each value came from (``recipe.yaml`` writes it beside the value)."""

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
        data, method_notes = move_legacy_method_keys(data)
        notes += method_notes
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
        raw["name"] = getattr(section, "name")  # noqa: B009 (a BaseModel has no name for mypy)
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


def move_legacy_method_keys(raw: dict) -> tuple[dict, list[str]]:
    """``method.local_crops`` (medssl before the method keys took their constructor's names) read as
    ``method.n_local_crops``, with a note; in the method section of each profile too. A key written
    under both names raises ValueError (see :data:`~medssl.recipe.legacy_keys.RENAMED_METHOD_KEYS`)."""
    raw = dict(raw)
    notes: list[str] = []
    method = raw.get("method")
    if isinstance(method, dict):
        raw["method"], notes = rename_method_keys(method)
    profiles = raw.get("profiles")
    if isinstance(profiles, dict):
        # a profile's method section without a name is merged under the recipe's method
        fallback = method_name_of(method) if isinstance(method, dict) else getattr(method, "name", None)
        moved = dict(profiles)
        for name, profile in profiles.items():
            if isinstance(profile, dict) and isinstance(profile.get("method"), dict):
                section, profile_notes = rename_method_keys(profile["method"], f"profiles.{name}.method", fallback)
                if profile_notes:
                    moved[name] = {**profile, "method": section}
                    notes += profile_notes
        raw["profiles"] = moved
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


# ----------------------------------------------------------------------------- field listing
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
