"""The table of methods: one entry per method, each built from its own recipe section, with its needs."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch

import medssl.train
from medssl.methods import METHOD_NAMES, METHOD_SECTIONS, METHODS, build_method, method_needs
from medssl.models import build_encoder
from medssl.recipe import RENAMED_METHOD_KEYS, Recipe

# name -> (label, views per subject with views.n_views = 3, kind of views, runs under DDP)
EXPECTED_NEEDS = {
    "yaware": (True, 3, "augmented", True),
    "threshold": (True, 3, "augmented", True),
    "exponential": (True, 3, "augmented", True),
    "supcon": (True, 3, "augmented", True),
    "eps_supinfonce": (True, 3, "augmented", True),
    "eps_supcon": (True, 3, "augmented", True),
    "supervised": (True, 3, "augmented", True),
    "simclr": (False, 3, "augmented", True),
    "decoupled": (False, 3, "augmented", True),
    "barlow_twins": (False, 3, "augmented", True),
    "vicreg": (False, 3, "augmented", True),
    "byol": (False, 3, "augmented", True),
    "simsiam": (False, 3, "augmented", True),
    "dino": (False, 2, "global", True),  # the teacher's 2 global views; the method cuts local crops from them
    "deepcluster": (False, 1, "augmented", False),  # clusters the whole cohort on one process
}

# name -> (a value other than the default for every key of its section, where the built method keeps each)
WIRING = {
    "yaware": (
        {"temperature": 0.3, "sigma": 2.0, "kernel": "cauchy", "shuffle_labels": True},
        lambda m: {
            "temperature": m.loss.temperature,
            "sigma": m.loss.sigma,
            "kernel": m.loss.kernel,
            "shuffle_labels": m.shuffle_labels,
        },
    ),
    "threshold": (
        {"temperature": 0.3, "sigma": 2.0, "kernel": "gaussian", "reference_code": True, "shuffle_labels": True},
        lambda m: {
            "temperature": m.loss.temperature,
            "sigma": m.loss.sigma,
            "kernel": m.loss.kernel,
            "reference_code": m.loss.reference_code,
            "shuffle_labels": m.shuffle_labels,
        },
    ),
    "exponential": (
        {"temperature": 0.3, "sigma": 2.0, "kernel": "gaussian", "reference_code": True, "shuffle_labels": True},
        lambda m: {
            "temperature": m.loss.temperature,
            "sigma": m.loss.sigma,
            "kernel": m.loss.kernel,
            "reference_code": m.loss.reference_code,
            "shuffle_labels": m.shuffle_labels,
        },
    ),
    "supcon": (
        {"temperature": 0.3, "shuffle_labels": True},
        lambda m: {"temperature": m.loss.temperature, "shuffle_labels": m.shuffle_labels},
    ),
    "eps_supinfonce": (
        {"temperature": 0.3, "eps": 0.2, "shuffle_labels": True},
        lambda m: {"temperature": m.loss.temperature, "eps": m.loss.eps, "shuffle_labels": m.shuffle_labels},
    ),
    "eps_supcon": (
        {"temperature": 0.3, "eps": 0.2, "shuffle_labels": True},
        lambda m: {"temperature": m.loss.temperature, "eps": m.loss.eps, "shuffle_labels": m.shuffle_labels},
    ),
    "simclr": ({"temperature": 0.3}, lambda m: {"temperature": m.loss.temperature}),
    "decoupled": ({"temperature": 0.3}, lambda m: {"temperature": m.loss.temperature}),
    "barlow_twins": ({"lambd": 0.01}, lambda m: {"lambd": m.loss.lambd}),
    "vicreg": (
        {"sim_weight": 1.0, "var_weight": 2.0, "cov_weight": 3.0, "form": "paper_sum"},
        lambda m: {
            "sim_weight": m.loss.sim_weight,
            "var_weight": m.loss.var_weight,
            "cov_weight": m.loss.cov_weight,
            "form": m.loss.form,
        },
    ),
    "byol": (
        {"momentum": 0.99, "predictor_hidden_dim": 24},
        lambda m: {"momentum": m.base_momentum, "predictor_hidden_dim": m.predictor.layers[0].out_features},
    ),
    "simsiam": ({"predictor_hidden_dim": 24}, lambda m: {"predictor_hidden_dim": m.predictor.layers[0].out_features}),
    "dino": (
        {
            "student_temperature": 0.2,
            "teacher_temperature": 0.06,
            "warmup_teacher_temperature": 0.03,
            "warmup_teacher_temperature_epochs": 3,
            "center_momentum": 0.8,
            "momentum": 0.99,
            "out_dim": 32,
            "n_local_crops": 1,
            "local_crop_scale": (0.2, 0.4),
        },
        lambda m: {
            "student_temperature": m.loss.student_temperature,
            "teacher_temperature": m.teacher_temperatures[-1],
            "warmup_teacher_temperature": m.teacher_temperatures[0],
            "warmup_teacher_temperature_epochs": int((m.teacher_temperatures < 0.06).sum()) + 1,
            "center_momentum": m.loss.center_momentum,
            "momentum": m.base_momentum,
            "out_dim": m.loss.out_dim,
            "n_local_crops": m.n_local_crops,
            "local_crop_scale": m.local_crop_scale,
        },
    ),
    "deepcluster": (
        {"clusters": 7, "pca_dim": 5, "kmeans_iters": 3},
        lambda m: {"clusters": m.clusters, "pca_dim": m.pca_dim, "kmeans_iters": m.kmeans_iters},
    ),
    "supervised": (
        {"task": "classification", "classes": 3},
        lambda m: {"task": m.task, "classes": m.output.out_features},
    ),
}


def test_the_table_has_one_entry_per_method_section():
    assert {name: entry.config for name, entry in METHODS.items()} == METHOD_SECTIONS
    assert set(EXPECTED_NEEDS) == set(WIRING) == set(METHOD_NAMES)


def test_the_recipes_method_section_is_the_union_of_the_tables_sections():
    assert get_args(Recipe.model_fields["method"].annotation) == tuple(entry.config for entry in METHODS.values())


def entries_of(module) -> list:
    """The table entries a module defines: a constant, or in a tuple constant (a family of methods)."""
    values = vars(module).values()
    return [
        entry
        for value in values
        for entry in (value if isinstance(value, tuple) else (value,))
        if entry in METHODS.values()
    ]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_methods_section_lives_in_its_module_beside_its_entry(name):
    entry = METHODS[name]
    module = sys.modules[entry.config.__module__]
    assert module.__name__.startswith("medssl.methods.") and module.__name__ != "medssl.methods.base"
    assert entry in entries_of(module)
    # a method with a Method class of its own is built in that module; an embedding loss by embedding_loss
    assert entry.build.__module__ in (module.__name__, "medssl.methods.contrastive")


def test_renamed_method_keys_are_read_from_the_sections():
    assert RENAMED_METHOD_KEYS == {
        "dino": {"temperature": "student_temperature", "local_crops": "n_local_crops"},
        "vicreg": {"vicreg_form": "form"},
    }
    # every new name is a key of its section
    for name, renamed in RENAMED_METHOD_KEYS.items():
        assert set(renamed.values()) <= set(METHOD_SECTIONS[name].model_fields)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_declares_its_needs(name):
    needs = method_needs(Recipe(method={"name": name}, views={"n_views": 3}))
    assert needs.name == name
    assert (needs.label, needs.views, needs.view_kind, needs.distributed) == EXPECTED_NEEDS[name]


def test_contrastive_methods_take_at_least_two_views_whatever_the_views_section_says():
    assert method_needs(Recipe(method={"name": "simclr"}, views={"n_views": 1})).views == 2


# method.debias of an embedding method: every key of the term reaches the built classifier (3 bias classes).
DEBIAS = {"name": "adversarial", "weight": 0.3, "schedule": "constant", "hidden_dim": 5}


def kept_debias(method) -> dict:
    term = method.debias
    assert term.classifier[-1].out_features == 3
    return {
        "name": "adversarial",
        "weight": term.weight,
        "schedule": term.schedule,
        "hidden_dim": term.classifier[0].out_features,
    }


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_is_built_from_every_key_of_its_own_section(name):
    values, kept = WIRING[name]
    takes_debias = "debias" in METHOD_SECTIONS[name].model_fields
    values = {**values, "debias": DEBIAS} if takes_debias else values
    recipe = Recipe(
        method={"name": name, **values}, model={"encoder": "alexnet", "head": {"hidden_dim": 16, "out_dim": 8}}
    )
    assert set(values) == set(METHOD_SECTIONS[name].model_fields) - {"name"}  # the check covers every key
    method = build_method(recipe, build_encoder("alexnet"), bias_classes=3 if takes_debias else None)
    assert {**kept(method), **({"debias": kept_debias(method)} if takes_debias else {})} == values
    # Alignment and uniformity are measured on a projection; a classifier's outputs are none.
    assert method.has_projection == (name not in {"deepcluster", "supervised"})


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_key_of_a_method_section_has_the_name_of_the_constructor_keyword_that_receives_it(name):
    # method.n_local_crops is DINO(n_local_crops=...), method.form VICRegLoss(form=...): one setting, one name.
    recipe = Recipe(method={"name": name}, model={"encoder": "alexnet", "head": {"hidden_dim": 16, "out_dim": 8}})
    method = build_method(recipe, build_encoder("alexnet"))
    keywords = set(inspect.signature(type(method)).parameters)
    if isinstance(getattr(method, "loss", None), torch.nn.Module):
        keywords |= set(inspect.signature(type(method.loss)).parameters)
    # method.debias is handed whole to its term's constructor (medssl.methods.debias)
    assert set(METHOD_SECTIONS[name].model_fields) - {"name", "debias"} <= keywords


def test_no_file_of_the_training_engine_names_a_method():
    root = Path(medssl.train.__file__).parent
    texts = {
        path.relative_to(root): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.suffix in {".py", ".md", ".txt"}
    }
    assert len(texts) >= 2  # the package's files were read
    named = [
        (str(path), name)
        for path, text in texts.items()
        for name in METHOD_NAMES
        if f'"{name}"' in text or f"'{name}'" in text
    ]
    assert named == []


def test_the_example_method_of_the_guide_to_adding_a_method_builds_and_trains(tmp_path, monkeypatch):
    guide = (Path(medssl.train.__file__).parents[2] / "docs" / "extending.md").read_text()
    source = guide.split("```python\n", 1)[1].split("```", 1)[0]  # the module the guide writes
    path = tmp_path / "align_uniform.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("align_uniform", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "align_uniform", module)  # pydantic resolves the annotations there
    spec.loader.exec_module(module)
    entry = module.ALIGN_UNIFORM_METHOD
    assert entry.name == "align_uniform" and entry.config().uniformity_weight == 1.0
    recipe = Recipe(model={"encoder": "alexnet", "head": {"hidden_dim": 16, "out_dim": 8}})
    method = entry.build(entry.config(uniformity_weight=2.0), recipe, build_encoder("alexnet"))
    assert method.uniformity_weight == 2.0
    loss, _ = method.training_loss({"views": torch.randn(4, 2, 1, 16, 16, 16)})
    loss.backward()
    grads = [parameter.grad for parameter in method.encoder.parameters() if parameter.grad is not None]
    assert torch.isfinite(loss) and grads and sum(grad.abs().sum() for grad in grads) > 0
