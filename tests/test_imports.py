"""Imports go one way along the data path: cli -> finetune -> eval, train -> recipe -> methods -> models, losses -> data -> config.

Every ``import`` of every medssl module is read from its source (function-level imports
included) and checked against the rank of the packages: a module imports only from packages
of a lower rank, or from its own package. ``medssl.errors`` and ``medssl.files`` are below
everything; the command line, the benchmark runner and the pretrain pipeline sit on top.

``medssl.finetune`` (fine-tuning: it trains) sits above ``medssl.train`` and beside
``medssl.eval``: it may use the evaluation's probes and scores, while ``medssl.eval`` (protocols
on frozen features) imports nothing from ``medssl.train`` or ``medssl.finetune``, which the rank
table alone would not say of ``train`` and a test of its own checks.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import medssl

PACKAGE = Path(medssl.__file__).parent

RANKS = {
    "medssl": 0,  # the package itself: its version
    "medssl.errors": 0,
    "medssl.files": 1,
    "medssl.progress": 1,  # progress bars of every package
    "medssl.run_folder": 1,
    "medssl.lazy": 0,  # which folders a run or a cohort may be written into
    "medssl.config": 2,
    "medssl.data": 3,
    "medssl.models": 4,
    "medssl.losses": 4,
    "medssl.methods": 5,  # each method's recipe section beside its builder, and the table of methods
    "medssl.recipe": 6,  # the whole recipe: config's sections and the method's, from the table of methods
    "medssl.train": 7,
    "medssl.eval": 8,  # imports nothing from train or finetune either: see the test below
    "medssl.finetune": 9,
    "medssl.pipeline": 10,
    "medssl.benchmark": 10,
    "medssl.cli": 11,
    "medssl.__main__": 12,
}

# What the evaluation package never imports, although ranked above it: it evaluates frozen features, it does not train.
NOT_IMPORTED_BY_EVAL = ("medssl.train", "medssl.finetune")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The entry of RANKS a module belongs to (its longest prefix)."""
    candidates = [name for name in RANKS if module == name or module.startswith(name + ".")]
    if not candidates:
        raise AssertionError(f"{module}: not in the rank table of tests/test_imports.py")
    return max(candidates, key=len)


def medssl_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every medssl import in the file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "medssl"]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "medssl"
            and node.level == 0
        ):
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def direction_problems(path: Path) -> list[str]:
    importer = module_name(path)
    own = layer(importer)
    problems = []
    for line, imported, _ in medssl_imports(path):
        target = layer(imported)
        if target != own and RANKS[target] >= RANKS[own]:
            problems.append(
                f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported} "
                f"({own} rank {RANKS[own]} -> {target} rank {RANKS[target]})"
            )
    return problems


def test_every_medssl_module_is_in_the_rank_table():
    assert {layer(module_name(path)) for path in sources()} <= set(RANKS)


def test_imports_go_one_way_along_the_data_path():
    assert [problem for path in sources() for problem in direction_problems(path)] == []


def evaluation_problems(path: Path) -> list[str]:
    """Imports of ``medssl.train`` or ``medssl.finetune`` in a module of ``medssl.eval``."""
    if layer(module_name(path)) != "medssl.eval":
        return []
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module_name(path)} imports {imported}"
        for line, imported, _ in medssl_imports(path)
        if layer(imported) in NOT_IMPORTED_BY_EVAL
    ]


def test_evaluation_imports_nothing_from_training_or_fine_tuning():
    assert [path for path in sources() if layer(module_name(path)) == "medssl.eval"]
    assert [problem for path in sources() for problem in evaluation_problems(path)] == []


@pytest.mark.parametrize("upward", ["from medssl.train.setup import open_cohort", "import medssl.finetune.protocol"])
def test_the_evaluation_check_catches_training_imports_also_inside_a_function(tmp_path, monkeypatch, upward):
    planted = tmp_path / "medssl" / "eval" / "probes.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(f"def late():\n    {upward}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "medssl")
    problems = evaluation_problems(planted)
    assert len(problems) == 1 and "medssl.eval.probes imports medssl." in problems[0]


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name} from {imported}"
        for path in sources()
        for line, imported, names in medssl_imports(path)
        for name in names
        if name.startswith("_") and imported != module_name(path)
    ]
    assert private == []


@pytest.mark.parametrize(
    "upward, module, rank",
    [
        (
            "from medssl.eval.run import evaluate_encoder",
            "medssl.train.pretraining",
            "train rank 7 -> medssl.eval rank 8",
        ),
        ("import medssl.train.trainer", "medssl.methods.base", "methods rank 5 -> medssl.train rank 7"),
        (
            "from medssl.finetune.protocol import finetune_encoder",
            "medssl.eval.report",
            "eval rank 8 -> medssl.finetune rank 9",
        ),
        ("from medssl.losses import NTXentLoss", "medssl.models.heads", "models rank 4 -> medssl.losses rank 4"),
    ],
)
def test_the_check_catches_an_upward_import_also_inside_a_function(tmp_path, monkeypatch, upward, module, rank):
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    planted = tmp_path / "medssl" / path.relative_to(PACKAGE)
    planted.parent.mkdir(parents=True)
    planted.write_text(f"def late():\n    {upward}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "medssl")
    problems = direction_problems(planted)
    assert len(problems) == 1 and rank in problems[0]


def loaded_after(statements: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with ``prefixes`` that a fresh interpreter holds after ``statements``."""
    code = f"import sys; {statements}; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    return ast.literal_eval(result.stdout)  # a printed list of module names


def test_training_runs_without_loading_the_evaluation_package():
    assert loaded_after("import medssl.train.pretraining, medssl.train.finetuning", ("medssl.eval",)) == []


def test_evaluation_runs_without_loading_training_or_fine_tuning():
    modules = sorted(module_name(path) for path in sources() if layer(module_name(path)) == "medssl.eval")
    statements = f"import importlib; [importlib.import_module(m) for m in {modules!r}]"
    assert loaded_after(statements, ("medssl.train", "medssl.finetune")) == []


@pytest.mark.parametrize("package", ["medssl.data", "medssl.train", "medssl.eval", "medssl.finetune"])
def test_every_name_a_package_lists_is_importable_from_it(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__all__
    for name in module.__all__:
        assert getattr(module, name).__name__ == name
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        module.nothing  # noqa: B018


def test_reading_a_recipe_imports_neither_monai_nor_scikit_learn():
    # the methods' sections make the recipe import torch; MONAI and scikit-learn (about 3 s and 1 s
    # on a 2-core machine) wait until a network is built or a probe fitted
    statements = "from medssl.recipe import load_recipe; load_recipe('deepcluster')"
    assert loaded_after(statements, ("monai", "sklearn", "pandas")) == []
