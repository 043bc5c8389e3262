"""Reading recipes: safe YAML, command-line overrides, validation errors that name the key and
who wrote it, the resolved ``recipe.yaml`` of a run, the shipped recipes and ``--smoke``.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from medssl.config import SyntheticCohortConfig
from medssl.errors import RecipeError
from medssl.methods import DEBIAS_NAMES, METHOD_NAMES, METHOD_SECTIONS, EmbeddingSection
from medssl.recipe.document import (
    LINKED_KEYS,
    Recipe,
    field_docs,
    move_legacy_budget,
    move_legacy_method_keys,
    profile_layer,
)
from medssl.recipe.legacy_keys import method_name_of, other_name, renamed_keys, trim_flat_method_section

if TYPE_CHECKING:
    from medssl.models.encoders import EncoderSpec


def shipped_recipes_dir() -> Path:
    """Folder of the shipped recipes: inside the package once installed from a wheel, else the checkout's ``recipes/``."""
    package_dir = Path(__file__).resolve().parents[1]  # medssl/, above this package
    # pyproject.toml maps the repository's recipes/ into the wheel as medssl/recipes.
    installed = package_dir / "recipes"
    return installed if installed.is_dir() else package_dir.parent / "recipes"


RECIPES_DIR = shipped_recipes_dir()


# ----------------------------------------------------------------------------- loading
def _format_validation_error(source: str, error: ValidationError, overrides: list[str] | None = None) -> str:
    problems, keys = [], []
    unknown_method_keys: dict[str, list[str]] = {}
    for item in error.errors():
        loc, method = _without_union_tag(item["loc"])
        if item["type"] == "bool_for_number":  # raised for the section: the key is in the context
            loc = (*loc, item["ctx"]["key"])
        key = ".".join(str(part) for part in loc) or "<root>"
        if item["type"] == "union_tag_invalid":  # pydantic names the section; the user wrote its name
            key, written = f"{key}.name", item["input"].get("name")
            choices = item["ctx"]["expected_tags"] if key != "method.name" else ", ".join(map(repr, METHOD_NAMES))
            problems.append(f"'{key}' = {written!r}: expected one of {choices}")
        elif item["type"] == "union_tag_not_found":
            problems.append(f"'{key}' needs a name: {key}.name = fairkl or adversarial")
        elif item["type"] == "extra_forbidden" and key == "method.debias" and method is not None:
            takes = ", ".join(
                name for name, section in METHOD_SECTIONS.items() if issubclass(section, EmbeddingSection)
            )
            problems.append(
                f"'method.debias': method '{method}' cannot take a debiasing term (it needs a loss on embeddings: {takes})"
            )
        elif item["type"] == "extra_forbidden" and method is not None:
            unknown_method_keys.setdefault(method, []).append(key)
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'" + _did_you_mean(_written_key(key, overrides or []), method))
        elif item["type"] == "bool_for_number":
            problems.append(
                f"'{key}' = {item['ctx']['value']!r}: Input should be {item['ctx']['expected']}, not a boolean"
            )
        elif item["type"] == "value_error" and isinstance(item.get("input"), dict):
            # a section's own check (model.widths against model.encoder...): its message names the keys
            problems.append(str(item["ctx"]["error"]))
        else:
            value = item.get("input")
            problems.append(f"'{key}' = {value!r}: {item['msg']}")
        keys.append(key)
    for method, unknown in unknown_method_keys.items():
        listed = ", ".join(f"'{key}'" for key in unknown)
        own = ", ".join(METHOD_SECTIONS[method].model_fields)
        hint = _method_switch_hint(unknown, overrides or [])
        problems.append(
            f"unknown key{'s' if len(unknown) > 1 else ''} {listed} for method '{method}' (its keys: {own})"
            + (hint or _did_you_mean(unknown[0], method))
        )
        if hint:  # the recipe's keys are fine for its own method: the switch on the command line is at fault
            keys = ["method.name" if key in unknown else key for key in keys]
    return f"{_blame(source, keys, overrides or [])}: " + "; ".join(problems)


def _without_union_tag(loc: tuple) -> tuple[tuple, str | None]:
    """pydantic puts the method's name into the location (``method.simclr.sigma``): the key is ``method.sigma``."""
    if len(loc) >= 2 and loc[0] == "method" and loc[1] in METHOD_SECTIONS:
        inner = loc[2:]
        if len(inner) >= 2 and inner[0] == "debias" and inner[1] in DEBIAS_NAMES:  # the debias term's tag too
            inner = (inner[0], *inner[2:])
        return (loc[0], *inner), loc[1]
    return tuple(loc), None


def _written_key(key: str, overrides: list[str]) -> str:
    """The key as the command line wrote it: ``trian.epochs`` where pydantic names the unknown section ``trian``."""
    for text in overrides:
        written = text.split("=", 1)[0].strip()
        if written.startswith(f"{key}."):
            return written
    return key


def _did_you_mean(written: str, method: str | None) -> str:
    """``; did you mean train.epochs?``: the key path with each unknown part replaced by its closest
    sibling (difflib, as click suggests a command), among the method's own keys in the method
    section; '' when a part has no close sibling or the result is no key."""
    if method is not None and written.startswith("method."):
        keys = {"method", *(f"method.{name}" for name in METHOD_SECTIONS[method].model_fields)}
    else:
        leaves = [key for key, _, _ in field_docs() if not key.startswith("method (")]
        keys = {
            ".".join(key.split(".")[:end]) for key in [*leaves, "method.name"] for end in range(1, key.count(".") + 2)
        }
    parts = written.split(".")
    for depth, part in enumerate(parts):
        parent = parts[:depth]
        if ".".join([*parent, part]) in keys:
            continue
        siblings = [key.split(".")[-1] for key in keys if key.split(".")[:-1] == parent]
        close = difflib.get_close_matches(part, siblings, n=1)
        if not close:
            return ""
        parts[depth] = close[0]
    suggestion = ".".join(parts)
    return f"; did you mean {suggestion}?" if suggestion in keys and suggestion != written else ""


def _method_switch_hint(unknown: list[str], overrides: list[str]) -> str:
    """``method.name=X`` on the command line keeps the recipe's other method keys, which X may not have."""
    switch = next((text for text in overrides if text.split("=", 1)[0].strip() == "method.name"), None)
    if switch is None or any(text.split("=", 1)[0].strip() in unknown for text in overrides):
        return ""
    name = switch.split("=", 1)[1].strip()
    return f"; to change the method on the command line, replace its whole section: 'method={{name: {name}}}'"


def _blame(source: str, keys: list[str], overrides: list[str]) -> str:
    """The command line when every bad key was set there (the recipe file is not at fault), else ``source``."""
    by_key: dict[str, str] = {}
    for text in overrides:
        path = [part for part in text.split("=", 1)[0].strip().split(".") if part]
        by_key.setdefault(".".join(path), text)
    # A bad key inside an overridden section (data={...}) is that override's fault too.
    culprits = {
        next((text for key_path, text in by_key.items() if _within(key, key_path) or _within(key_path, key)), None)
        for key in keys
    }
    if None in culprits or not culprits:
        return source
    return "command-line override " + ", ".join(sorted(text for text in culprits if text is not None))


def _within(key: str, section: str) -> bool:
    """Whether ``key`` is ``section`` or inside it (an override of ``trian.epochs`` makes the unknown section ``trian``)."""
    return key == section or key.startswith(section + ".")


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    return where + " ".join(str(problem).split())


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping: PyYAML keeps the last
    one silently, so a second ``train:`` section would drop the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            # A merge key (<<) may be overridden in place, and is resolved by the SafeLoader.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in first_lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key_node.value}' appears twice (first at line {first_lines[key]}); write each key once",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse recipe YAML: safe (no code), and a key written twice is a :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: tags that build Python objects are refused


SWITCH_VALUES = ("true", "false", "yes", "no", "on", "off", "1", "0")  # typed after a flag, read as an override


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        switch = " (switches such as --smoke or --resume take no value)" if text.lower() in SWITCH_VALUES else ""
        raise RecipeError(f"override '{text}': expected KEY.PATH=VALUE, e.g. train.epochs=2{switch}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise RecipeError(f"override '{text}': empty key")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override '{text}': value is not valid YAML ({yaml_problem(exc)})") from None
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return ``raw`` with ``KEY.PATH=VALUE`` overrides set (nested dicts are created).

    The command line is the top layer of a recipe (see :data:`LINKED_KEYS`): ``model.encoder=alexnet``
    means that encoder at its own widths, ``train.epochs=2`` two epochs rather than the profile's steps,
    exactly as the same keys written in the recipe file. A method key renamed since replaces the
    recipe's key under its other name (``method.local_crops=2`` over a recipe's ``n_local_crops``).
    """
    parsed = [(text, *parse_override(text)) for text in overrides]
    explicit = [tuple(path) for _, path, _ in parsed]
    for first, second in LINKED_KEYS.items():
        if first in explicit and second not in explicit:
            parsed.append((".".join(first), list(second), None))
    for text, path, value in parsed:
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    for text, path, _ in parsed:
        if _is_method_key(path):
            section = _section_at(raw, path[:-1])
            twin = other_name(method_name_of(section, _section_at(raw, ["method"]).get("name")), path[-1])
            if twin is None:
                continue
            both = next((other for other, key, _ in parsed if key == [*path[:-1], twin]), None)
            if both is not None:
                raise RecipeError(
                    f"overrides '{text}' and '{both}' set one key, under its old and its new name: give one"
                )
            section.pop(twin, None)
    return raw


def _is_method_key(path: list[str]) -> bool:
    """``method.KEY`` or ``profiles.NAME.method.KEY``."""
    return (len(path) == 2 and path[0] == "method") or (
        len(path) == 4 and path[0] == "profiles" and path[2] == "method"
    )


def _section_at(raw: dict, path: list[str]) -> dict:
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """Accept a path to a YAML file or the name of a shipped recipe (``yaware_age``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise RecipeError(f"recipe '{name_or_path}' is a folder: give a recipe YAML file or a shipped recipe's name")
    for candidate in (RECIPES_DIR / f"{name_or_path}.yaml", RECIPES_DIR / path.name):
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe '{name_or_path}' not found (a YAML path, or one of: {', '.join(list_recipe_names())})")


def recipe_from_dict(raw: dict, source: str = "recipe", overrides: list[str] | None = None) -> Recipe:
    """Validate ``raw``; errors name ``source``, or the command-line ``overrides`` that caused them."""
    try:
        return Recipe.model_validate(trim_flat_method_section(raw))
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(source, exc, overrides)) from None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises :class:`RecipeError` with the key path."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if raw is None:  # an empty file would run every default under the file's name, surely not what was meant
        raise RecipeError(f"{path}: the recipe is empty; start from a shipped one (medssl recipes)")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: expected a mapping of sections (data, views, model, method, train, eval), got {type(raw).__name__}"
        )
    raw.setdefault("name", path.stem)
    written = copy.deepcopy(raw)
    raw = apply_overrides(raw, overrides or [])
    recipe = recipe_from_dict(raw, source=str(path), overrides=overrides)
    written = flatten_keys(_current_names(written))
    renamed = renamed_keys(recipe.method.name)
    command_line = [_current_key(text.split("=", 1)[0].strip(), renamed) for text in overrides or []]
    profile = flatten_keys(profile_layer(_current_names(raw), recipe.profile))
    for key in flatten_keys(recipe.model_dump(mode="json")):
        if any(_within(key, written_key) for written_key in command_line):
            recipe._sources[key] = "command line"
        elif key in written and not key.startswith("profiles.") and key != "profile":
            recipe._sources[key] = "recipe"
        elif key in profile:
            recipe._sources[key] = f"profile {recipe.profile}"
    return recipe


def _current_names(raw: dict) -> dict:
    """``raw`` with the keys of medssl's earlier versions where they live now (to tell where a value came from)."""
    raw = move_legacy_budget(raw)[0]
    try:
        return move_legacy_method_keys(raw)[0]
    except ValueError:  # a method key under both names, one of them replaced on the command line
        return raw


def _current_key(key: str, renamed: dict[str, str]) -> str:
    """``method.local_crops`` -> ``method.n_local_crops``: a key written on the command line under its former name."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "method":
        return f"method.{renamed.get(parts[1], parts[1])}"
    return key


def flatten_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists and empty sections are values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree} if prefix else {}
    return {
        key: value for name, child in tree.items() for key, value in flatten_keys(child, f"{prefix}{name}.").items()
    }


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a resolved recipe (every field, defaults included); a value that is not the
    default says the layer it came from (``# profile embedded``, ``# recipe``, ``# command line``)."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=float("inf"))
    if not recipe._sources:
        return text
    lines: list[str] = []
    path: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        key = line.strip().split(":", 1)[0]
        if line.strip().startswith("- ") or ":" not in line:
            lines.append(line)
            continue
        path = [*path[: indent // 2], key]
        source = recipe._sources.get(".".join(path))
        lines.append(f"{line}  # {source}" if source else line)
    return "\n".join(lines) + "\n"


def list_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def shipped_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe in ``recipes/``."""
    rows = []
    for name in list_recipe_names():
        raw = read_yaml((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
        rows.append((name, str(raw.get("description", ""))))
    return rows


def smoke_shape(encoder: str) -> int:
    """The edge of ``--smoke`` volumes for ``encoder``: DenseNet121 downsamples 32-fold, so 32^3 is
    the smallest volume it accepts; 16^3 for the others."""
    return 32 if encoder == "densenet121" else 16


def smoke_recipe(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` shrunk to run end-to-end in seconds (``--smoke``)."""
    smoke = recipe.model_copy(deep=True)
    shape = smoke_shape(recipe.model.encoder)
    smoke.data.synthetic = SyntheticCohortConfig(
        subjects=16,
        sites=4,
        external_sites=1,
        shape=shape,
        diagnosis=recipe.data.synthetic.diagnosis,
        diagnosis_model=recipe.data.synthetic.diagnosis_model,
        seed=recipe.data.synthetic.seed,
    )
    if smoke.data.root is not None:
        smoke.data.volume_shape = [shape] * 3
    smoke.data.num_workers = 0
    smoke.data.max_subjects = 8
    smoke.train.epochs = 1
    smoke.train.batch_size = 4
    smoke.train.max_steps_per_epoch = 2
    smoke.train.steps = None
    smoke.eval.folds = 2
    smoke.eval.batch_size = 4
    smoke.finetune.epochs = 1
    smoke.finetune.batch_size = 4
    smoke.finetune.max_steps_per_epoch = 2
    smoke.finetune.seeds = smoke.finetune.seeds[:2]
    smoke.method = smoke.method.smoke()
    smoke.model.head.hidden_dim = min(smoke.model.head.hidden_dim, 64)
    smoke.model.head.out_dim = min(smoke.model.head.out_dim, 32)
    before = flatten_keys(recipe.model_dump(mode="json"))
    for key, value in flatten_keys(smoke.model_dump(mode="json")).items():
        if value != before.get(key):
            smoke._sources[key] = "--smoke"
    return smoke


def with_overrides(recipe: Recipe, overrides: list[str], source: str, layer: str = "command line") -> Recipe:
    """``recipe`` with ``overrides`` set (the command line's again over ``--smoke``'s changes, or an
    encoder's network), keeping the layer each value came from; the overridden keys came from ``layer``."""
    again = recipe_from_dict(
        apply_overrides(recipe.model_dump(mode="json"), overrides), source=source, overrides=overrides
    )
    renamed = renamed_keys(again.method.name)
    keys = [_current_key(text.split("=", 1)[0].strip(), renamed) for text in overrides]
    again._sources = dict(recipe._sources)
    again._notes = [*recipe._notes, *(note for note in again._notes if note not in recipe._notes)]
    before = flatten_keys(recipe.model_dump(mode="json"))
    for key, value in flatten_keys(again.model_dump(mode="json")).items():
        # a key set, or changed by one set (another encoder drops the widths below it: LINKED_KEYS)
        if any(_within(key, written) for written in keys) or before.get(key) != value:
            again._sources[key] = layer
    return again


def with_source_normalization(recipe: Recipe, spec: EncoderSpec, pretraining: Recipe | None = None) -> Recipe:
    """``recipe`` with ``views.normalize: source`` made the encoder's own (see
    :func:`~medssl.models.weights.resolve_normalization`); ``pretraining`` is the recipe of the run that trained it."""
    from medssl.models.weights import resolve_normalization  # its readers (OpenBHB's, pandas) only here

    views = resolve_normalization(recipe.views, spec, pretraining.views if pretraining is not None else None)
    if views is recipe.views:
        return recipe
    resolved = recipe.model_copy(deep=True)
    resolved.views = views
    resolved._sources = {**recipe._sources, "views.normalize": "the encoder's (views.normalize: source)"}
    return resolved
