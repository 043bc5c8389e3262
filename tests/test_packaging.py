"""pyproject.toml declares what the code needs, and one faiss per install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def minimum(package: str) -> tuple[int, ...]:
    (requirement,) = [item for item in PROJECT["dependencies"] if re.match(rf"{package}\b", item)]
    return tuple(int(part) for part in requirement.split(">=")[1].split("."))


def test_torchio_minimum_has_the_transform_base_args_that_views_uses():
    # Transform._get_base_args (medssl/data/views.py) is absent from torchio 0.20.0, present in 0.23.1.
    assert "_get_base_args" in (Path(__file__).parents[1] / "medssl" / "data" / "views.py").read_text()
    assert minimum("torchio") >= (0, 23, 1)


def test_no_extra_installs_a_second_faiss_next_to_faiss_cpu():
    assert any(item.startswith("faiss-cpu") for item in PROJECT["dependencies"])
    extras = [item for items in PROJECT.get("optional-dependencies", {}).values() for item in items]
    assert not [item for item in extras if item.startswith("faiss")]
