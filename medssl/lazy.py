"""Lazy re-exports for a package's ``__init__``: a name is imported from its submodule on first
use, so importing one submodule (or the package for one name) does not load the others."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, module_of: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """The package's ``__getattr__`` and ``__dir__`` for ``module_of`` (name -> submodule);
    a name, once imported, is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *module_of])

    return __getattr__, __dir__
