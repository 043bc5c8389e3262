"""The recipe: one YAML file per run, validated into a typed :class:`Recipe`.

A :class:`Recipe` holds the sections of :mod:`medssl.config` (data, views, model, train, eval,
finetune) and one method's section, picked by ``method.name`` from the table of methods
(:data:`medssl.methods.METHODS`): it is assembled here, above that table, so that each method's
section lives beside its builder. Recipes are read with a safe YAML loader that also refuses a key
written twice: nothing in them is evaluated as code, and no key silently replaces another.

:mod:`medssl.recipe.document` (the recipe, its scale profiles, the listing of its keys),
:mod:`medssl.recipe.loading` (YAML, overrides, error messages, the shipped recipes, ``--smoke``)
and :mod:`medssl.recipe.legacy_keys` (method keys of earlier medssl versions).

Example:
    >>> from medssl.recipe import load_recipe
    >>> recipe = load_recipe("recipes/yaware_age.yaml", overrides=["train.epochs=2"])
    >>> recipe.method.name
    'yaware'
"""

from __future__ import annotations

from medssl.recipe.document import (
    BUILTIN_PROFILES,
    EMBEDDED_PROFILE,
    LEGACY_BUDGET_SECTIONS,
    LINKED_KEYS,
    Recipe,
    check_profile_keys,
    chosen_profile,
    field_docs,
    merge_layers,
    move_legacy_budget,
    move_legacy_method_keys,
    profile_layer,
    yaml_value,
)
from medssl.recipe.legacy_keys import (
    FLAT_METHOD_SECTION_KEYS,
    FLAT_METHOD_SECTION_MARKERS,
    RENAMED_METHOD_KEYS,
    method_name_of,
    other_name,
    rename_method_keys,
    renamed_keys,
    trim_flat_method_section,
)
from medssl.recipe.loading import (
    RECIPES_DIR,
    SWITCH_VALUES,
    RecipeLoader,
    apply_overrides,
    dump_recipe,
    flatten_keys,
    list_recipe_names,
    load_recipe,
    parse_override,
    read_yaml,
    recipe_from_dict,
    resolve_recipe_path,
    shipped_recipes,
    shipped_recipes_dir,
    smoke_recipe,
    smoke_shape,
    with_overrides,
    with_source_normalization,
    yaml_problem,
)

__all__ = [
    "BUILTIN_PROFILES",
    "EMBEDDED_PROFILE",
    "LEGACY_BUDGET_SECTIONS",
    "LINKED_KEYS",
    "Recipe",
    "check_profile_keys",
    "chosen_profile",
    "field_docs",
    "merge_layers",
    "move_legacy_budget",
    "move_legacy_method_keys",
    "profile_layer",
    "yaml_value",
    "FLAT_METHOD_SECTION_KEYS",
    "FLAT_METHOD_SECTION_MARKERS",
    "RENAMED_METHOD_KEYS",
    "method_name_of",
    "other_name",
    "rename_method_keys",
    "renamed_keys",
    "trim_flat_method_section",
    "RECIPES_DIR",
    "SWITCH_VALUES",
    "RecipeLoader",
    "apply_overrides",
    "dump_recipe",
    "flatten_keys",
    "list_recipe_names",
    "load_recipe",
    "parse_override",
    "read_yaml",
    "recipe_from_dict",
    "resolve_recipe_path",
    "shipped_recipes",
    "shipped_recipes_dir",
    "smoke_recipe",
    "smoke_shape",
    "with_overrides",
    "with_source_normalization",
    "yaml_problem",
]
