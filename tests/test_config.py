"""Recipes: validation errors name the key path and the expected type; overrides; shipped recipes."""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from medssl.config import MethodSection
from medssl.errors import RecipeError
from medssl.methods import METHOD_NAMES, METHOD_SECTIONS, DINOConfig
from medssl.recipe import (
    RECIPES_DIR,
    Recipe,
    dump_recipe,
    field_docs,
    list_recipe_names,
    load_recipe,
    read_yaml,
    rename_method_keys,
    shipped_recipes,
    smoke_recipe,
    trim_flat_method_section,
)


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    path = write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key 'train.epochz'"):
        load_recipe(path)


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    path = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(RecipeError, match=r"'train.epochs' = 'many': Input should be a valid integer"):
        load_recipe(path)


def test_out_of_range_value_is_rejected(tmp_path):
    path = write(tmp_path, "method:\n  temperature: -0.1\n")
    with pytest.raises(RecipeError, match=r"'method.temperature' = -0.1: Input should be greater than 0"):
        load_recipe(path)


def test_unknown_method_lists_the_choices(tmp_path):
    path = write(tmp_path, "method:\n  name: mocov9\n")
    with pytest.raises(RecipeError, match=r"'method.name' = 'mocov9': expected one of ") as error:
        load_recipe(path)
    assert str(error.value).split("expected one of ")[1] == ", ".join(map(repr, METHOD_NAMES))


def test_a_method_section_without_a_name_is_the_default_method(tmp_path):
    recipe = load_recipe(write(tmp_path, "method:\n  sigma: 3.0\n"))
    assert recipe.method.name == "yaware" and recipe.method.sigma == 3.0
    assert Recipe().method.name == "yaware"


def test_overrides_set_nested_values_and_are_validated(tmp_path):
    path = write(tmp_path, "name: demo\n")
    recipe = load_recipe(path, ["train.epochs=2", "data.root=/data/openbhb", "views.cutout.size=[0.1, 0.2]"])
    assert recipe.train.epochs == 2
    assert str(recipe.data.root) == "/data/openbhb"
    assert recipe.views.cutout.size == (0.1, 0.2)
    with pytest.raises(RecipeError, match=r"'train.batch_size' = 'x'"):
        load_recipe(path, ["train.batch_size=x"])
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        load_recipe(path, ["train.epochs"])


def test_recipe_is_never_evaluated_as_code(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_an_empty_recipe_file_is_refused_not_run_with_every_default(tmp_path):
    for text in ("", "# only a comment\n"):
        path = write(tmp_path, text)
        with pytest.raises(RecipeError, match=r"the recipe is empty; start from a shipped one"):
            load_recipe(path)


def test_missing_recipe_lists_shipped_names():
    with pytest.raises(RecipeError, match="yaware_age"):
        load_recipe("no_such_recipe")


def test_every_shipped_recipe_validates_and_round_trips():
    names = list_recipe_names()
    assert {
        "yaware_age",
        "simclr",
        "threshold_age",
        "exp_age",
        "supcon_sex",
        "deepcluster",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "dino",
    } <= set(names)
    for name in names:
        recipe = load_recipe(name)
        again = Recipe.model_validate(yaml.safe_load(dump_recipe(recipe)))
        assert again == recipe, name


def test_shipped_recipes_have_one_line_descriptions():
    for name, description in shipped_recipes():
        assert description and "\n" not in description, name


def test_yaware_recipe_carries_the_paper_settings():
    recipe = load_recipe("yaware_age", ["data.root=/data/openbhb"])
    assert recipe.method.name == "yaware" and recipe.method.kernel == "rbf"
    assert recipe.method.sigma == 5.0 and recipe.method.temperature == 0.1
    assert recipe.model.encoder == "densenet121"
    assert recipe.train.batch_size == 64 and recipe.train.lr == 1e-4 and recipe.train.optimizer == "adam"


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 50
    undocumented = [
        key
        for key, _, description in rows
        if not description and key not in {"data", "views", "model", "method", "train", "eval"}
    ]
    assert undocumented == []


def test_smoke_recipe_is_tiny_and_keeps_the_method():
    recipe = load_recipe("dino")
    smoke = smoke_recipe(recipe)
    assert smoke.method.name == "dino"
    assert smoke.train.max_steps_per_epoch == 2 and (smoke.train.epochs, smoke.train.steps) == (1, None)
    assert smoke.data.synthetic.shape == 16 and smoke.data.synthetic.subjects <= 16
    assert smoke_recipe(load_recipe("yaware_age", ["profile=paper"])).data.synthetic.shape == 32  # DenseNet121: 32^3
    assert recipe.train.epochs == 300  # the original is untouched


# ----------------------------------------------------------------------------- scale profiles
SCALE_KEYS = [
    ("model", "encoder", "alexnet"),
    ("model", "widths", [8, 16, 32, 64]),
    ("train", "batch_size", 8),
    ("train", "epochs", 3),
    ("train", "steps", 7),
    ("train", "lr", 0.3),
    ("train", "warmup_epochs", 1),
    ("train", "precision", "bf16"),
    ("train", "channels_last", True),
    ("finetune", "epochs", 4),
    ("finetune", "batch_size", 8),
]


@pytest.mark.parametrize("root", [None, "/data/openbhb"], ids=["embedded", "data.root"])
@pytest.mark.parametrize(("section", "key", "value"), SCALE_KEYS, ids=[f"{s}.{k}" for s, k, _ in SCALE_KEYS])
def test_a_scale_key_written_in_a_recipe_file_acts_as_on_the_command_line(tmp_path, root, section, key, value):
    raw = read_yaml((RECIPES_DIR / "simclr.yaml").read_text())
    raw["data"] = {**raw.get("data", {}), "root": root}
    raw.setdefault(section, {})[key] = value
    written = tmp_path / "mine.yaml"
    written.write_text(yaml.safe_dump(raw))
    from_file = load_recipe(written)
    on_command_line = load_recipe(
        "simclr", [f"data.root={'null' if root is None else root}", f"{section}.{key}={json.dumps(value)}"]
    )
    assert getattr(getattr(from_file, section), key) == value
    assert from_file.model_dump(exclude={"name"}) == on_command_line.model_dump(exclude={"name"})


def test_profiles_sit_under_the_recipe_file_which_sits_under_the_command_line(tmp_path):
    recipe = load_recipe("yaware_age")  # no data.root: the embedded profile
    assert (recipe.profile, recipe.model.encoder, recipe.train.batch_size, recipe.train.steps) == (
        "embedded",
        "resnet18",
        32,
        500,
    )
    assert recipe.train.lr == 5e-4 and recipe.train.precision == "fp32"  # the recipe's own embedded profile
    paper = load_recipe("yaware_age", ["data.root=/data/openbhb"])
    assert (paper.profile, paper.model.encoder, paper.train.batch_size, paper.train.steps) == (
        "paper",
        "densenet121",
        64,
        None,
    )
    assert load_recipe("yaware_age", ["profile=paper"]).model.encoder == "densenet121"  # named, whatever the cohort
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        yaml.safe_dump({"train": {"batch_size": 8, "lr": 0.2}, "profiles": {"embedded": {"train": {"lr": 0.1}}}})
    )
    recipe = load_recipe(mine, ["train.lr=0.3"])
    assert (recipe.train.batch_size, recipe.train.lr, recipe.train.steps) == (8, 0.3, 500)
    recorded = dump_recipe(recipe)
    assert "  batch_size: 8  # recipe" in recorded and "  lr: 0.3  # command line" in recorded
    assert (
        "  steps: 500  # profile embedded" in recorded and "  optimizer: adam\n" in recorded
    )  # a default says nothing
    assert Recipe.model_validate(yaml.safe_load(recorded)) == recipe  # the comments are only comments


def test_another_encoder_or_a_number_of_epochs_drops_the_profile_widths_or_steps(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"model": {"encoder": "resnet50"}, "train": {"epochs": 3}}))
    recipe = load_recipe(mine)
    assert (recipe.model.encoder, recipe.model.widths, recipe.train.epochs, recipe.train.steps) == (
        "resnet50",
        None,
        3,
        None,
    )
    narrow = load_recipe("simclr", ["model.widths=[8,16,32,64]"])
    assert (narrow.model.encoder, narrow.model.widths) == ("resnet18", [8, 16, 32, 64])


def test_recipes_of_earlier_versions_load_their_embedded_budget_as_the_embedded_profile(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump(
            {
                "model": {"encoder": "densenet121"},
                "train": {
                    "batch_size": 64,
                    "embedded": {"batch_size": 16, "lr": 0.01, "encoder": "resnet34", "widths": None},
                },
                "finetune": {"embedded": {"epochs": 5}},
            }
        )
    )
    recipe = load_recipe(old, ["data.root=/data/openbhb"])
    assert recipe.profiles["embedded"] == {
        "train": {"batch_size": 16, "lr": 0.01},
        "model": {"encoder": "resnet34", "widths": None},
        "finetune": {"epochs": 5},
    }
    assert "train.embedded.lr is now profiles.embedded.train.lr: read as that" in recipe.notes
    embedded = load_recipe(old)
    # the recipe's plain keys win over its old budget, as the same keys on the command line did
    assert (embedded.model.encoder, embedded.train.batch_size, embedded.train.lr, embedded.finetune.epochs) == (
        "densenet121",
        64,
        0.01,
        5,
    )


def test_a_profile_key_is_checked_even_when_the_run_does_not_use_that_profile(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"profiles": {"paper": {"train": {"batch_sise": 8}}}}))
    with pytest.raises(
        RecipeError, match=r"profiles.paper.train.batch_sise: unknown key; did you mean train.batch_size\?"
    ):
        load_recipe(mine)
    with pytest.raises(RecipeError, match=r"profile = 'ukb': no such profile \(auto, embedded, paper\)"):
        load_recipe("simclr", ["profile=ukb"])
    mine.write_text(yaml.safe_dump({"profile": "ukb", "profiles": {"ukb": {"train": {"batch_size": 128}}}}))
    assert load_recipe(mine).train.batch_size == 128  # a profile of the user's own, named


def test_a_bad_override_value_is_reported_once():
    with pytest.raises(RecipeError, match=r"'train.epochs' = 'x'") as error:
        load_recipe("simclr", ["train.epochs=x"])
    assert str(error.value).count("'train.epochs'") == 1


def test_activation_checkpointing_is_off_by_default_and_refused_for_alexnet():
    assert load_recipe("yaware_age").model.activation_checkpointing is False
    assert load_recipe("yaware_age", ["model.activation_checkpointing=true"]).model.activation_checkpointing is True
    with pytest.raises(RecipeError, match="only ResNets and DenseNet121 support it"):
        load_recipe("yaware_age", ["model.encoder=alexnet", "model.activation_checkpointing=true"])


def test_a_stem_stride_is_refused_for_encoders_without_a_resnet_stem():
    assert load_recipe("yaware_age", ["model.encoder=resnet18", "model.conv1_stride=1"]).model.conv1_stride == 1
    with pytest.raises(RecipeError) as error:
        load_recipe("yaware_age", ["model.encoder=densenet121", "model.conv1_stride=1"])
    # the section's check speaks for itself, without the section's whole dict before it
    assert str(error.value).endswith(
        ": model.conv1_stride = 1 but model.encoder = 'densenet121': only ResNets take a stem stride"
    )
    assert "{" not in str(error.value)


def test_field_defaults_are_listed_as_yaml_a_recipe_accepts():
    from medssl.recipe import field_docs

    defaults = {key: default for key, default, _ in field_docs()}
    assert defaults["data.root"] == "null" and defaults["views.crop.scale"] == "[0.6, 1.0]"
    assert defaults["eval.after_pretrain"] == "true" and defaults["method (yaware).kernel"] == "rbf"


def test_a_bad_model_override_is_reported_once():
    with pytest.raises(RecipeError) as error:
        load_recipe("yaware_age", ["model.widths=[8,8]"])
    assert str(error.value).count("at least 4 items") == 1 and "'model.widths'" in str(error.value)


# ----------------------------------------------------------------------------- per-method sections
def test_a_key_the_method_does_not_have_is_refused_naming_it_and_the_method_keys(tmp_path):
    with pytest.raises(RecipeError) as error:
        load_recipe("simclr", ["method.sigma=3"])
    assert str(error.value) == (
        "command-line override method.sigma=3: unknown key 'method.sigma' for method 'simclr' "
        "(its keys: name, temperature, debias)"
    )
    path = write(tmp_path, "method: {name: dino, sigma: 3, kernel: rbf}\n")
    with pytest.raises(
        RecipeError,
        match=r"recipe.yaml: unknown keys 'method.sigma', 'method.kernel' for method 'dino' "
        r"\(its keys: name, student_temperature, teacher_temperature, ",
    ):
        load_recipe(path)


def test_the_cli_refuses_a_key_of_another_method_in_one_line_with_exit_code_2(monkeypatch, capsys):
    from medssl import cli

    monkeypatch.setattr(sys, "argv", ["medssl", "pretrain", "recipes/simclr.yaml", "method.sigma=3"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in error
    assert "unknown key 'method.sigma' for method 'simclr' (its keys: name, temperature, debias)" in error


def test_switching_method_on_the_command_line_says_how_when_the_recipe_keys_do_not_fit():
    with pytest.raises(
        RecipeError,
        match=r"^command-line override method.name=simclr: unknown keys 'method.kernel', 'method.sigma' for method 'simclr'.*"
        r"replace its whole section: 'method=\{name: simclr\}'",
    ):
        load_recipe("yaware_age", ["method.name=simclr"])
    assert load_recipe("yaware_age", ["method={name: simclr}"]).method.name == "simclr"


def changed_values(section: type[MethodSection]) -> dict:
    """A value other than the default for every key of ``section`` but its name."""
    values = {}
    for key, field in section.model_fields.items():
        default = field.default
        if key == "name":
            continue
        if key == "debias":  # a debiasing term instead of none
            values[key] = {"name": "adversarial", "weight": 0.5, "schedule": "constant", "hidden_dim": 7}
        elif isinstance(default, bool):
            values[key] = not default
        elif isinstance(default, int):
            values[key] = default + 1
        elif isinstance(default, float):
            values[key] = default / 2 if default else 0.5
        elif isinstance(default, tuple):
            values[key] = tuple(value / 2 for value in default)
        else:  # a choice: another one
            values[key] = next(choice for choice in get_args(field.annotation) if choice != default)
    return values


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_section_round_trips_through_dump_and_load(name, tmp_path):
    section = METHOD_SECTIONS[name]
    recipe = Recipe(method={"name": name, **changed_values(section)})
    dumped = yaml.safe_load(dump_recipe(recipe))["method"]
    assert list(dumped) == list(section.model_fields)  # its own keys, every one, and no other method's
    again = load_recipe(write(tmp_path, dump_recipe(recipe)))
    assert type(again.method) is section and again == recipe
    assert again.method != section()  # the changed values came back, not the defaults


def test_fields_lists_each_method_keys_in_its_own_block(monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from medssl import cli

    monkeypatch.setattr(cli, "console", Console(width=200))  # descriptions on one line each
    result = CliRunner().invoke(cli.app, ["recipes", "--fields"])
    assert result.exit_code == 0, result.output
    methods, debias = result.output.split("The debiasing term method.debias")
    for key in ("method.debias.name: fairkl", "method.debias.name: adversarial", "method.debias.schedule"):
        assert key in debias
    blocks = methods.split("method.name: ")[1:]
    named = {block.split()[0]: block for block in blocks}
    assert list(named) == list(METHOD_NAMES)
    for name, block in named.items():
        keys = {line.split("│")[1].strip() for line in block.splitlines()[1:] if line.count("│") >= 3}
        assert keys - {""} == set(METHOD_SECTIONS[name].model_fields) - {"name"}, name
    assert "Student softmax temperature." in named["dino"] and "sigma" not in named["simclr"]


def test_field_docs_name_the_method_of_each_method_key():
    rows = {key: default for key, default, _ in field_docs()}
    assert rows["method (dino).out_dim"] == "4096" and rows["method (deepcluster).clusters"] == "100"
    assert "method (simclr).sigma" not in rows and "method.sigma" not in rows
    assert all(f"method ({name}).name" in rows for name in METHOD_NAMES)


def test_smoke_recipe_names_no_method_and_lets_each_method_shrink_itself():
    source = inspect.getsource(smoke_recipe)
    assert [name for name in METHOD_NAMES if f'"{name}"' in source or f"'{name}'" in source] == []
    assert "method.name" not in source
    dino, deepcluster = smoke_recipe(load_recipe("dino")).method, smoke_recipe(load_recipe("deepcluster")).method
    assert (dino.out_dim, dino.n_local_crops) == (64, 2) and (deepcluster.clusters, deepcluster.pca_dim) == (3, 8)
    # shrunk, never grown
    assert smoke_recipe(load_recipe("dino", ["method.n_local_crops=0"])).method.n_local_crops == 0
    assert smoke_recipe(load_recipe("threshold_age")).method == load_recipe("threshold_age").method


# The method section of a simclr run's recipe.yaml written while medssl had one flat section.
FLAT_SIMCLR_SECTION = {
    "name": "simclr",
    "temperature": 0.2,
    "sigma": 5.0,
    "kernel": "rbf",
    "reference_code": False,
    "eps": 0.0,
    "lambd": 0.005,
    "sim_weight": 25.0,
    "var_weight": 25.0,
    "cov_weight": 1.0,
    "vicreg_form": "authors",
    "momentum": 0.996,
    "predictor_hidden_dim": 512,
    "teacher_temperature": 0.04,
    "warmup_teacher_temperature": 0.04,
    "warmup_teacher_temperature_epochs": 0,
    "center_momentum": 0.9,
    "out_dim": 4096,
    "local_crops": 4,
    "local_crop_scale": [0.3, 0.5],
    "clusters": 100,
    "pca_dim": 256,
    "kmeans_iters": 20,
    "task": "regression",
    "classes": 2,
    "shuffle_labels": False,
}


def test_a_run_recipe_with_the_former_flat_method_section_still_loads(tmp_path):
    raw = yaml.safe_load(dump_recipe(load_recipe("simclr")))
    path = write(tmp_path, yaml.safe_dump({**raw, "method": FLAT_SIMCLR_SECTION}))
    assert load_recipe(path) == load_recipe("simclr", ["method.temperature=0.2"])
    # Versions before vicreg_form, the DINO warm-up, supervised and the control dumped fewer keys.
    older = {
        key: value for key, value in FLAT_SIMCLR_SECTION.items() if key not in {"vicreg_form", "task", "shuffle_labels"}
    }
    assert trim_flat_method_section({"method": older}) == {"method": {"name": "simclr", "temperature": 0.2}}
    dino = trim_flat_method_section({"method": {**FLAT_SIMCLR_SECTION, "name": "dino", "out_dim": 64}})["method"]
    # DINO's keys under the names of that version (temperature, local_crops), which loading renames
    assert set(rename_method_keys(dino)[0]) == set(DINOConfig.model_fields)
    assert dino["out_dim"] == 64 and dino["temperature"] == 0.2


@pytest.mark.parametrize(
    "name, flat, current",
    [
        ("dino", {"temperature": 0.2, "local_crops": 3}, {"student_temperature": 0.2, "n_local_crops": 3}),
        ("vicreg", {"vicreg_form": "paper_sum"}, {"form": "paper_sum"}),
    ],
)
def test_a_run_folder_with_the_flat_method_section_under_the_old_key_names_still_loads(tmp_path, name, flat, current):
    raw = yaml.safe_load(dump_recipe(load_recipe(name)))
    path = write(tmp_path, yaml.safe_dump({**raw, "method": {**FLAT_SIMCLR_SECTION, "name": name, **flat}}))
    recipe = load_recipe(path)
    assert recipe == load_recipe(name, [f"method.{key}={value}" for key, value in current.items()])
    assert recipe.notes == [f"method.{old} is now method.{new}: read as that" for old, new in zip(flat, current)]


def test_a_hand_written_method_section_with_foreign_keys_is_still_refused(tmp_path):
    some = {key: FLAT_SIMCLR_SECTION[key] for key in ("name", "temperature", "sigma", "clusters", "out_dim")}
    assert trim_flat_method_section({"method": some}) == {"method": some}
    with pytest.raises(RecipeError, match="unknown keys 'method.sigma', 'method.clusters', 'method.out_dim'"):
        load_recipe(write(tmp_path, yaml.safe_dump({"method": some}, sort_keys=False)))


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("method.temperature=-.inf", "method.temperature"),
        ("views.cutout.size=[0.1, .inf]", "views.cutout.size.1"),
    ],
)
def test_a_non_finite_number_is_refused_naming_the_key(tmp_path, override, key):
    with pytest.raises(
        RecipeError, match=rf"^command-line override {re.escape(override)}: '{re.escape(key)}' = .*finite"
    ):
        load_recipe(write(tmp_path, "name: demo\n"), [override])
    with pytest.raises(RecipeError, match=r"'train.lr' = inf: Input should be a finite number"):
        load_recipe(write(tmp_path, "train:\n  lr: .inf\n"))


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.epochs=true", "train.epochs", "an integer"),
        ("train.max_steps_per_epoch=false", "train.max_steps_per_epoch", "an integer"),
        ("train.lr=true", "train.lr", "a number"),
        ("data.volume_shape=[true, 16, 16]", "data.volume_shape", "an integer"),
        ("views.cutout.size=[0.1, true]", "views.cutout.size", "a number"),
        ("method.temperature=true", "method.temperature", "a number"),
    ],
)
def test_a_boolean_is_refused_where_a_number_is_expected(tmp_path, override, key, expected):
    with pytest.raises(RecipeError, match=rf"'{re.escape(key)}' = .*: Input should be {expected}, not a boolean"):
        load_recipe(write(tmp_path, "name: demo\n"), [override])


def test_numbers_from_the_command_line_and_yaml_still_validate_and_booleans_stay_booleans(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: 0.01\n  compile: true\n")
    recipe = load_recipe(path, ["train.batch_size=8", "train.grad_clip=1", "model.activation_checkpointing=false"])
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.lr) == (3, 8, 0.01)
    assert recipe.train.grad_clip == 1.0 and recipe.train.compile is True
    assert load_recipe(write(tmp_path, "train:\n  epochs: '4'\n")).train.epochs == 4
    with pytest.raises(ValidationError, match=r"'epochs': Input should be an integer, not a boolean"):
        recipe.train.epochs = True


@pytest.mark.parametrize(
    "text, key, where, first",
    [
        ("train:\n  epochs: 3\nmodel:\n  encoder: alexnet\ntrain:\n  lr: 0.1\n", "train", "line 5, column 1", 1),
        ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", "epochs", "line 4, column 3", 2),
    ],
)
def test_a_key_written_twice_in_a_recipe_is_refused_naming_the_file_key_and_lines(tmp_path, text, key, where, first):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as refusal:
        load_recipe(path)
    message = str(refusal.value)
    assert message.startswith(f"{path}: not valid YAML ({where}: ")
    assert f"key '{key}' appears twice (first at line {first})" in message and "\n" not in message


def test_a_key_written_twice_in_an_override_value_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"override 'train=\{epochs: 2, epochs: 3\}'.*key 'epochs' appears twice"):
        load_recipe(write(tmp_path, "name: demo\n"), ["train={epochs: 2, epochs: 3}"])


def test_yaml_merge_keys_may_still_be_overridden_in_place(tmp_path):
    text = "train:\n  <<: {epochs: 3, lr: 0.1}\n  epochs: 5\n"
    recipe = load_recipe(write(tmp_path, text))
    assert (recipe.train.epochs, recipe.train.lr) == (5, 0.1)


# ----------------------------------------------------------------------------- renamed method keys
# (method, old name, new name, a value other than the default): a method's key has the name of the
# constructor keyword that receives it; recipes written before the rename still load.
RENAMED = [
    ("dino", "local_crops", "n_local_crops", 2),
    ("dino", "temperature", "student_temperature", 0.2),
    ("vicreg", "vicreg_form", "form", "paper_sum"),
]


@pytest.mark.parametrize("method, old, new, value", RENAMED)
def test_a_renamed_method_key_validates_under_its_new_name_without_a_note(tmp_path, method, old, new, value):
    recipe = load_recipe(write(tmp_path, yaml.safe_dump({"method": {"name": method, new: value}})))
    assert getattr(recipe.method, new) == value and recipe.notes == []
    assert old not in type(recipe.method).model_fields


@pytest.mark.parametrize("method, old, new, value", RENAMED)
def test_a_renamed_method_key_still_loads_under_its_old_name_with_a_note(tmp_path, method, old, new, value):
    recipe = load_recipe(write(tmp_path, yaml.safe_dump({"method": {"name": method, old: value}})))
    assert getattr(recipe.method, new) == value
    assert recipe.notes == [f"method.{old} is now method.{new}: read as that"]
    assert Recipe(method={"name": method, old: value}) == Recipe(method={"name": method, new: value})
    # the resolved recipe.yaml writes the new name, and says the value came from the recipe
    assert f"  {new}: {yaml.safe_dump(value).splitlines()[0]}  # recipe" in dump_recipe(recipe)


def test_a_method_key_given_under_its_old_and_its_new_name_is_refused_naming_both(tmp_path):
    path = write(tmp_path, "method: {name: dino, local_crops: 2, n_local_crops: 3}\n")
    with pytest.raises(
        RecipeError, match=r"method\.local_crops and method\.n_local_crops .*write method\.n_local_crops"
    ):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"overrides 'method.local_crops=2' and 'method.n_local_crops=3' set one key"):
        load_recipe(
            write(tmp_path, "name: demo\n"), ["method.name=dino", "method.local_crops=2", "method.n_local_crops=3"]
        )


def test_an_old_method_key_on_the_command_line_is_read_under_its_new_name(tmp_path):
    recipe = load_recipe("dino", ["method.local_crops=2"])  # over the recipe's n_local_crops: the command line wins
    assert recipe.method.n_local_crops == 2
    assert recipe.notes == ["method.local_crops is now method.n_local_crops: read as that"]
    assert "  n_local_crops: 2  # command line" in dump_recipe(recipe)
    # and a new name on the command line over a recipe written with the old one
    old = write(tmp_path, "method: {name: dino, local_crops: 4, temperature: 0.2}\n")
    recipe = load_recipe(old, ["method.n_local_crops=1"])
    assert (recipe.method.n_local_crops, recipe.method.student_temperature) == (1, 0.2)
    assert recipe.notes == ["method.temperature is now method.student_temperature: read as that"]
    # simclr's temperature is its own: only DINO's was renamed
    assert load_recipe("simclr", ["method.temperature=0.3"]).notes == []


def test_an_old_method_key_in_a_profile_is_read_under_its_new_name(tmp_path):
    text = "method: {name: dino}\nprofiles:\n  paper:\n    method: {local_crops: 6}\n"
    recipe = load_recipe(write(tmp_path, text), ["data.root=/data/openbhb"])
    assert recipe.method.n_local_crops == 6 and recipe.profiles["paper"] == {"method": {"n_local_crops": 6}}
    assert recipe.notes == [
        "profiles.paper.method.local_crops is now profiles.paper.method.n_local_crops: read as that"
    ]
    assert load_recipe(write(tmp_path, text)).method.n_local_crops == 4  # the embedded profile sets none
    named = "profiles:\n  paper:\n    method: {name: vicreg, vicreg_form: paper_sum}\n"
    assert load_recipe(write(tmp_path, named), ["data.root=/data/openbhb"]).method.form == "paper_sum"


@pytest.mark.parametrize("name", ["load_recipe", "Recipe", "DINOConfig", "METHOD_NAMES"])
def test_a_name_that_moved_out_of_medssl_config_says_where_it_lives_now(name):
    import importlib

    import medssl.config

    home = medssl.config.MOVED[name]
    with pytest.raises(ImportError, match=rf"medssl.config.{name} moved: from {home} import {name}$"):
        exec(f"from medssl.config import {name}", {})
    assert getattr(importlib.import_module(home), name) is not None


def test_every_name_listed_as_moved_is_importable_from_its_new_home():
    import importlib

    import medssl.config

    missing = [
        f"{home}.{name}"
        for name, home in medssl.config.MOVED.items()
        if not hasattr(importlib.import_module(home), name)
    ]
    assert missing == []
    assert not set(medssl.config.MOVED) & set(medssl.config.__all__)  # none is still here


def test_a_key_set_again_over_smoke_under_its_old_name_says_it_came_from_the_command_line():
    from medssl.recipe import with_overrides

    recipe = smoke_recipe(load_recipe("dino", ["method.local_crops=3"]))
    again = with_overrides(recipe, ["method.local_crops=3"], "command line")
    assert "  n_local_crops: 3  # command line" in dump_recipe(again).splitlines()
