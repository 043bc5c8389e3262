"""The ``Example:`` blocks of the loss docstrings run as written, on their own imports."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from torch import nn

import medssl.losses

MODULES = sorted(f"medssl.losses.{info.name}" for info in pkgutil.iter_modules(medssl.losses.__path__))
EXPORTED = [getattr(medssl.losses, name) for name in medssl.losses.__all__]
LOSS_MODULES = {loss.__module__ for loss in EXPORTED if isinstance(loss, type) and issubclass(loss, nn.Module)}


@pytest.mark.parametrize("module_name", ["medssl.losses", *MODULES])
def test_docstring_examples_run_with_only_the_imports_they_write(module_name):
    # Empty globals: an example that leans on the module's own imports fails for a user who copies it.
    results = doctest.testmod(importlib.import_module(module_name), globs={}, report=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples of {module_name} fail"
    if module_name in LOSS_MODULES:
        assert results.attempted > 0, f"{module_name} defines a loss but has no example"
