"""The words about the code name code that exists: each stage's folder says what it holds,
every cross-reference in the package's docstrings and comments resolves, and every file of
this repository the README cites is there.

Modules moved into folders by stage; a reference written for the old flat layout
(``:mod:`.staging``` from ``data/``) no longer names anything, and a README path to a moved
test sends a reader nowhere. References are read as Python's relative imports: one dot is
the module's own package (or the module itself), each further dot one package up.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnabla_sgd_influence"
REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr|exc|obj):`~?([\w.]+)`")
# Paths the README names that are not this repository's: Sony's plugins, nnabla's backward
# functions, NNC's folder, pyenv's, and what a run makes.
NOT_OURS = {
    "SGD_influence.py",
    "sgd_influence_tabular.py",
    "backward_function/*.py",
    "libs/",
    "versions/",
    "samples/build/",
    "benchmarks/output/",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lookup(dotted: str) -> Optional[object]:
    """The module or object ``dotted`` names (the longest importable prefix, then attributes,
    dataclass fields and annotated class attributes), or None."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            fields = dataclasses.fields(found) if dataclasses.is_dataclass(found) else ()
            annotated = getattr(found, "__annotations__", {}) if inspect.isclass(found) else {}
            if hasattr(found, name):
                found = getattr(found, name)
            elif name in {f.name for f in fields} or name in annotated:
                found = object()
            else:
                return None
        return found
    return None


def resolves(target: str, module: str, is_package: bool, source: str = "") -> bool:
    """Whether ``target``, written in ``module`` (whose text is ``source``), names something:
    unqualified, also a builtin, a class's attribute or one its methods set (``self.name =``)."""
    package = module if is_package else module.rpartition(".")[0]
    name = target.lstrip(".")
    dots = len(target) - len(name)
    if dots:
        base = package.split(".")[: len(package.split(".")) - (dots - 1)]
        candidates = [".".join([*base, name])]
        if dots == 1:
            candidates.append(f"{module}.{name}")
    else:
        own_classes = [
            f"{module}.{n}.{name}"
            for n, value in vars(importlib.import_module(module)).items()
            if inspect.isclass(value) and value.__module__ == module
        ]
        candidates = [name, f"{module}.{name}", *own_classes]
        if hasattr(builtins, name) or re.search(rf"self\.{name}\b(: [^=]+)? =", source):
            return True
    return any(_lookup(candidate) is not None for candidate in candidates)


def unresolved_references(root: Path) -> List[str]:
    """``file:line: reference`` for every cross-reference below ``root`` that names nothing."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        module = module_name(path)
        for match in REFERENCE.finditer(text):
            if not resolves(match.group(1), module, path.name == "__init__.py", text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
    return found


def test_every_docstring_reference_names_something():
    assert unresolved_references(PACKAGE) == []


def test_the_reference_check_sees_a_stale_name():
    assert not resolves(".staging", "nnabla_sgd_influence.data.ranking_csv", False)
    assert resolves("..runtime.staging", "nnabla_sgd_influence.data.ranking_csv", False)
    assert resolves(".excerpt", "nnabla_sgd_influence.errors", False)
    assert resolves("SolverSpec.state", "nnabla_sgd_influence.nnp.solvers", False)
    assert not resolves(".layers", "nnabla_sgd_influence.influence.second_order", True)


def cited_paths(readme: str) -> List[str]:
    """The file and folder paths of this repository that the README quotes in backticks:
    anything ending in ``.py``, ``.sh``, ``.txt``, ``.md`` or ``/`` without spaces."""
    quoted = re.findall(r"`([^`\s]+)`", readme)
    return [
        q
        for q in quoted
        if re.fullmatch(r"[\w./*-]+(\.py|\.sh|\.txt|\.md|/)", q) and not q.startswith("..")
    ]


def test_every_path_the_readme_cites_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        path
        for path in cited_paths(readme)
        if path not in NOT_OURS
        and not any(list(base.glob(path)) for base in (ROOT, PACKAGE, ROOT / "tests"))
    ]
    assert missing == []


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
