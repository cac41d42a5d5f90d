"""Every ``>>>`` example in models/ runs and is correct (also collected by ``pytest models``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import models

MODULES = sorted(m.name for m in pkgutil.iter_modules(models.__path__, "models."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
