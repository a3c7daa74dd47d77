"""The source distribution: it holds what ``make test`` and ``make demo`` need, and its long
description (the README) names its figures instead of linking paths that break off the
repository."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Set

ROOT = Path(__file__).resolve().parents[1]
# What a test run and the demo read besides the package: every file of these folders (the
# samples' builder and demo, not what they build), and these files.
FOLDERS = ("tests", "plugins", "benchmarks", "scripts", "docs", "samples")
FILES = ("Makefile", "setup.py", "pyproject.toml", "README.md", "LICENSE")
MADE_BY_RUNS = ("samples/build/", "benchmarks/output/", "__pycache__", ".build-tmp-")


def source_files() -> Set[str]:
    """The files of ``FOLDERS`` in this tree that no run made, and ``FILES``."""
    found = set(FILES)
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not any(made in relative for made in MADE_BY_RUNS):
                found.add(relative)
    return found


def test_the_source_distribution_holds_what_make_test_needs(tmp_path):
    egg_base = tmp_path / "egg"
    egg_base.mkdir()
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg_base)]
    command += ["sdist", "--dist-dir", str(tmp_path)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert source_files() - names == set()
    assert "tests/conftest.py" in names and "tests/plugin_helpers.py" in names
    assert [n for n in names if n.startswith(MADE_BY_RUNS[:2]) or ".pyc" in n] == []
    oldest = re.findall(r"tests/\S+\.py", (ROOT / "Makefile").read_text())
    assert oldest and set(oldest) <= names  # make test-oldest's modules


def test_the_long_description_names_its_figures():
    printed = subprocess.run(
        [sys.executable, "setup.py", "--long-description"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    description = printed.stdout[:-1]  # print's own line end
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    figures = re.findall(r"!\[([^\]]*)\]\((docs/[^)]+)\)", readme)
    assert len(figures) >= 4
    assert "](docs/" not in description
    for alt, path in figures:
        assert f"*(figure: {alt}; {path} in the source distribution)*" in description
    unchanged = [line for line in readme.splitlines() if "](docs/" not in line]
    assert [line for line in description.splitlines() if "(figure: " not in line] == unchanged
