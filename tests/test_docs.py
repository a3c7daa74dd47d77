"""The words about the code: each stage's folder says what it holds."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnabla_sgd_influence"


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_folder_says_what_it_holds(folder):
    """Each stage's folder names each of its modules in its docstring."""
    package = importlib.import_module(f"nnabla_sgd_influence.{folder}")
    modules = sorted(
        p.stem if p.is_file() else p.name
        for p in (PACKAGE / folder).iterdir()
        if (p.suffix == ".py" and not p.name.startswith("_")) or (p / "__init__.py").is_file()
    )
    assert package.__doc__
    assert [m for m in modules if f":mod:`.{m}`" not in package.__doc__] == []
