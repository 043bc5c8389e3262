"""pyproject.toml declares what the code needs, one faiss per install, and a wheel that ships the recipes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def minimum(package: str) -> tuple[int, ...]:
    (requirement,) = [item for item in PROJECT["dependencies"] if re.match(rf"{package}\b", item)]
    return tuple(int(part) for part in requirement.split(">=")[1].split("."))


def test_torchio_minimum_has_the_transform_base_args_that_views_uses():
    # Transform._get_base_args (medssl/data/views.py) is absent from torchio 0.20.0, present in 0.23.1;
    # tio.Compose takes the dict views.py hands it from 1.1.1 on (found by .ci/lowest).
    assert "_get_base_args" in (Path(__file__).parents[1] / "medssl" / "data" / "views.py").read_text()
    assert minimum("torchio") >= (1, 1, 1)


def test_no_extra_installs_a_second_faiss_next_to_faiss_cpu():
    assert any(item.startswith("faiss-cpu") for item in PROJECT["dependencies"])
    extras = [item for items in PROJECT.get("optional-dependencies", {}).values() for item in items]
    assert not [item for item in extras if item.startswith("faiss")]


ROOT = Path(__file__).parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_package_list_names_every_subpackage_on_disk_and_the_recipes():
    # The list is explicit (package-dir needs it): a new subpackage missing from it would be left out of the wheel.
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "medssl").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == on_disk | {"medssl.recipes"}
    assert SETUPTOOLS["package-dir"] == {"medssl.recipes": "recipes"}


def build_wheel(out_dir: Path) -> Path:
    """A wheel built from a copy of what the build reads: stale build/ folders of the checkout cannot leak in."""
    source = out_dir / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("medssl", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out_dir), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out_dir.glob("medssl-*.whl")
    return wheel


def test_wheel_ships_every_recipe_and_medssl_finds_them_outside_a_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    recipes = sorted(path.name for path in (ROOT / "recipes").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(Path(name).name for name in archive.namelist() if name.startswith("medssl/recipes/"))
        archive.extractall(tmp_path / "site")
    assert recipes and shipped == recipes
    # Imported from the unpacked wheel, as after a non-editable install, from a folder with no recipes/.
    code = (
        "from medssl.recipe import RECIPES_DIR, list_recipe_names, load_recipe; "
        "print(RECIPES_DIR); print(','.join(list_recipe_names())); print(load_recipe('yaware_age').method.name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    recipes_dir, names, method = result.stdout.split()
    assert Path(recipes_dir) == tmp_path / "site" / "medssl" / "recipes"
    assert names.split(",") == [Path(name).stem for name in recipes]
    assert method == "yaware"


def test_citation_cites_every_method_the_readme_names_and_both_files_give_the_repository():
    import yaml

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    cited = {(reference["authors"][0]["family-names"], reference["year"]) for reference in citation["references"]}
    # BYOL, SimSiam, Barlow Twins, VICReg, DINO, SupCon (README's recipe table), with SimCLR and DeepCluster.
    methods = {("Grill", 2020), ("Chen", 2021), ("Zbontar", 2021), ("Bardes", 2022), ("Caron", 2021), ("Khosla", 2020)}
    assert methods | {("Chen", 2020), ("Caron", 2018)} <= cited
    assert citation["repository-code"] == PROJECT["urls"]["Repository"] == "https://github.com/medssl/medssl"
    assert set(PROJECT["urls"]) == {"Repository", "Documentation", "Issues"}
