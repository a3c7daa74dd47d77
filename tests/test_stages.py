"""The package's folders are the stages of its data flow: no module imports from a later stage.

Read from the source (every import statement, those inside functions and under
``TYPE_CHECKING`` included), so that a lazy import cannot hide an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "nnabla_sgd_influence"
# From the first stage to the last; a stage may import its own modules and earlier stages'.
# The execution of trials and their evaluation both stand on the engine, apart.
STAGES = (
    ("errors",),
    ("arguments",),
    ("runtime",),
    ("nnp",),
    ("data",),
    ("influence",),
    ("execution", "evaluation"),
    ("api",),
    ("plugin",),
    ("install_nnc",),
)
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}


def stage_of(dotted: str) -> str:
    """The stage (first name under the package) of ``nnabla_sgd_influence.<stage>...``."""
    return dotted.split(".")[1]


def imports_of(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, the package's module imported) for every import of the package in ``path``."""
    parts = ("nnabla_sgd_influence", *path.relative_to(PACKAGE).with_suffix("").parts)
    here = parts[:-1]  # the module's package
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nnabla_sgd_influence."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "nnabla_sgd_influence":  # from .. import <module>, or __version__
                for alias in node.names:
                    if alias.name in RANK:
                        yield node.lineno, f"{target}.{alias.name}"
            elif target.startswith("nnabla_sgd_influence."):
                yield node.lineno, target


def test_no_module_imports_from_a_later_stage():
    modules = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]
    assert len(modules) > 40
    back_up = []
    for path in modules:
        own = path.relative_to(PACKAGE).with_suffix("").parts[0]
        for line, target in imports_of(path):
            other = stage_of(target)
            if other != own and not RANK[other] < RANK[own]:
                back_up.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert back_up == []


def test_every_folder_and_top_module_has_a_stage():
    names = {
        p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert names - {"__init__"} == set(RANK)
