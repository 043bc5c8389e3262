"""Recipes: validation errors name the key path and the expected type; overrides; shipped recipes."""

from __future__ import annotations

import pytest
import yaml

from medssl.config import (
    Recipe,
    dump_recipe,
    field_docs,
    list_recipe_names,
    load_recipe,
    shipped_recipes,
    smoke_recipe,
)
from medssl.errors import RecipeError


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
    with pytest.raises(RecipeError, match=r"'method.name' = 'mocov9'.*'yaware'"):
        load_recipe(path)


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


def test_missing_recipe_lists_shipped_names():
    with pytest.raises(RecipeError, match="yaware_age"):
        load_recipe("no_such_recipe")


def test_every_shipped_recipe_validates_and_round_trips():
    names = list_recipe_names()
    assert {"yaware_age", "simclr", "threshold_age", "exp_age", "supcon_sex", "deepcluster", "byol", "simsiam",
            "barlow_twins", "vicreg", "dino"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        again = Recipe.model_validate(yaml.safe_load(dump_recipe(recipe)))
        assert again == recipe, name


def test_shipped_recipes_have_one_line_descriptions():
    for name, description in shipped_recipes():
        assert description and "\n" not in description, name


def test_yaware_recipe_carries_the_paper_settings():
    recipe = load_recipe("yaware_age")
    assert recipe.method.name == "yaware" and recipe.method.kernel == "rbf"
    assert recipe.method.sigma == 5.0 and recipe.method.temperature == 0.1
    assert recipe.model.encoder == "densenet121"
    assert recipe.train.batch_size == 64 and recipe.train.lr == 1e-4 and recipe.train.optimizer == "adam"


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 50
    undocumented = [key for key, _, description in rows if not description and key not in {"data", "views", "model", "method", "train", "eval"}]
    assert undocumented == []


def test_smoke_recipe_is_tiny_and_keeps_the_method():
    recipe = load_recipe("dino")
    smoke = smoke_recipe(recipe)
    assert smoke.method.name == "dino"
    assert smoke.train.max_steps_per_epoch == 2 and smoke.train.embedded.epochs == 1
    assert smoke.data.synthetic.shape == 16 and smoke.data.synthetic.subjects <= 16
    assert smoke_recipe(load_recipe("yaware_age")).data.synthetic.shape == 32  # DenseNet121 needs 32^3
    assert recipe.train.epochs == 300  # the original is untouched


def test_budget_overrides_also_set_the_embedded_budget_unless_it_is_overridden_too():
    recipe = load_recipe("simclr", ["train.epochs=2", "train.lr=0.1"])
    assert (recipe.train.epochs, recipe.train.embedded.epochs) == (2, 2)
    assert (recipe.train.lr, recipe.train.embedded.lr) == (0.1, 0.1)
    assert recipe.train.embedded.batch_size == load_recipe("simclr").train.embedded.batch_size  # untouched keys stay
    both = load_recipe("simclr", ["train.embedded.epochs=3", "train.epochs=2"])
    assert (both.train.epochs, both.train.embedded.epochs) == (2, 3)
    with pytest.raises(RecipeError, match=r"'train.epochs' = 'x'") as error:
        load_recipe("simclr", ["train.epochs=x"])
    assert "embedded" not in str(error.value)  # a bad value is reported once


def test_activation_checkpointing_is_off_by_default_and_refused_for_alexnet():
    assert load_recipe("yaware_age").model.activation_checkpointing is False
    assert load_recipe("yaware_age", ["model.activation_checkpointing=true"]).model.activation_checkpointing is True
    with pytest.raises(RecipeError, match="only ResNets and DenseNet121 support it"):
        load_recipe("yaware_age", ["model.encoder=alexnet", "model.activation_checkpointing=true"])


def test_field_defaults_are_listed_as_yaml_a_recipe_accepts():
    from medssl.config import field_docs

    defaults = {key: default for key, default, _ in field_docs()}
    assert defaults["data.root"] == "null" and defaults["views.crop.scale"] == "[0.6, 1.0]"
    assert defaults["eval.after_pretrain"] == "true" and defaults["method.kernel"] == "rbf"


def test_a_bad_model_override_is_reported_once_not_again_for_its_embedded_twin():
    with pytest.raises(RecipeError) as error:
        load_recipe("yaware_age", ["model.widths=[8,8]"])
    assert str(error.value).count("at least 4 items") == 1 and "'model.widths'" in str(error.value)
