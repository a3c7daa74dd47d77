"""Installing into Neural Network Console: a fake NNC tree with Sony's plugins as decoys, the
installer, NNC's plugin discovery (every script answers -h) and one run of each plugin from a
result folder, with a Python that has NNabla but not this project (``.venv-oldest``, built by
``scripts/bootstrap.sh``; ``NNSI_NNC_PYTHON`` names another)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from plugin_helpers import COMPLETION, REPO, read_csv

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.install_nnc import RECORD, install, uninstall

XAI = Path("libs", "plugins", "_Post_Process", "_XAI")
DECOY = 'import argparse\nargparse.ArgumentParser(description="{title}").parse_args()\n'
SONY_FILES = {
    "_Image/SGD_influence.py": DECOY.format(title="SGD Influence (all data)"),
    "_Image/sgd_influence_utils/infl.py": "# Sony's helper\n",
    "_Table/sgd_influence_tabular.py": DECOY.format(title="SGD Influence tabular(all data)"),
    "_Table/sgd_influence_tabular_utils/args.py": "# Sony's helper\n",
}


def nnc_tree(root: Path) -> Path:
    """An NNC folder: libs/plugins with Sony's SGD influence plugins and one more plugin."""
    for relative, text in SONY_FILES.items():
        path = root / XAI / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    other = root / "libs" / "plugins" / "_Pre_Process" / "_Create_Dataset" / "simple.py"
    other.parent.mkdir(parents=True)
    other.write_text(DECOY.format(title="Simple tabular data"))
    return root


def hashes(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_install_writes_beside_sony_and_uninstall_removes_exactly_that(tmp_path):
    root = nnc_tree(tmp_path / "neural_network_console")
    before = hashes(root)
    written = install(root)
    xai = root / XAI
    assert "_Image/sgd_influence_retrace.py" in written
    assert "_Table/sgd_influence_retrace_tabular.py" in written
    assert "_Image/nnabla_sgd_influence/cli.py" in written
    assert "_Table/nnabla_sgd_influence/api.py" in written
    after = hashes(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else changed
    record = json.loads((xai / RECORD).read_text())
    assert sorted(record["files"]) == written
    assert install(root) == written  # installing again updates our own files
    removed, kept = uninstall(root)
    assert sorted(removed) == written and kept == []
    assert hashes(root) == before
    assert sorted(p.name for p in (xai / "_Image").iterdir()) == [
        "SGD_influence.py",
        "sgd_influence_utils",
    ]


def test_a_file_the_installer_did_not_write_is_never_overwritten(tmp_path):
    root = nnc_tree(tmp_path / "nnc")
    mine = root / XAI / "_Table" / "sgd_influence_retrace_tabular.py"
    mine.write_text("# someone's own plugin\n")
    before = hashes(root)
    with pytest.raises(InfluenceError, match="refusing to overwrite .*did not write it"):
        install(root)
    assert hashes(root) == before  # nothing written at all


def test_a_name_that_differs_only_in_case_is_refused(tmp_path):
    root = nnc_tree(tmp_path / "nnc")
    (root / XAI / "_Image" / "SGD_Influence_Retrace.py").write_text("# other\n")
    before = hashes(root)
    with pytest.raises(
        InfluenceError, match="differs from sgd_influence_retrace.py only in letter"
    ):
        install(root)
    assert hashes(root) == before


def test_uninstall_keeps_a_file_changed_after_the_install(tmp_path):
    root = nnc_tree(tmp_path / "nnc")
    install(root)
    script = root / XAI / "_Image" / "sgd_influence_retrace.py"
    script.write_text(script.read_text() + "# edited\n")
    removed, kept = uninstall(root)
    assert kept == ["_Image/sgd_influence_retrace.py"] and script.is_file()
    assert not (root / XAI / "_Image" / "nnabla_sgd_influence").exists()


def test_not_an_nnc_folder(tmp_path):
    with pytest.raises(InfluenceError, match="is not a Neural Network Console folder"):
        install(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "nnabla_sgd_influence.install_nnc", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: ") and len(completed.stderr.splitlines()) == 1


# --------------------------------------------------------------------------------------
# The NNC path end to end, with NNC's kind of Python


@pytest.fixture(scope="module")
def nnc_python() -> str:
    """A Python with NNabla (and pandas) but without this project."""
    named = os.environ.get("NNSI_NNC_PYTHON")
    python = Path(named) if named else REPO / ".venv-oldest" / "bin" / "python"
    if not python.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{python} is missing: scripts/bootstrap.sh builds it")
        pytest.skip(f"{python} is missing: run scripts/bootstrap.sh")
    probe = (
        "import importlib.util as u, sys; sys.exit(u.find_spec('nnabla_sgd_influence') is not None)"
    )
    assert subprocess.run([str(python), "-c", probe], cwd="/").returncode == 0, (
        f"{python} has nnabla_sgd_influence installed; the test needs a Python without it"
    )
    return str(python)


def discover(plugins: Path):
    """The scripts NNC lists: plugins/_*/_*/[A-Za-z]*.py and plugins/_*/_*/_*/[A-Za-z]*.py."""
    found = list(plugins.glob("_*/_*/[A-Za-z]*.py")) + list(plugins.glob("_*/_*/_*/[A-Za-z]*.py"))
    return sorted(found)


def result_folder(root: Path, model: Path) -> Path:
    """What NNC runs a post-processing plugin in: an evaluation result's folder."""
    folder = root / "project.files" / "20260101_000000"
    folder.mkdir(parents=True)
    (folder / "results.nnp").write_bytes(model.read_bytes())
    with zipfile.ZipFile(model) as archive:
        (folder / "net.nntxt").write_bytes(archive.read("net.nntxt"))
    return folder


def first_rows(source: Path, target: Path, n: int) -> Path:
    """The first ``n`` rows of an NNC CSV, with image paths made absolute."""
    lines = source.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1 : n + 1]
    if header.startswith("x:image"):
        rows = [
            str((source.parent / r.split(",")[0]).resolve()) + "," + r.split(",", 1)[1]
            for r in rows
        ]
    target.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return target


def test_nnc_discovers_and_runs_the_installed_plugins(tmp_path, samples_dir, nnc_python):
    root = nnc_tree(tmp_path / "nnc")
    completed = subprocess.run(
        [sys.executable, "-m", "nnabla_sgd_influence.install_nnc", str(root)],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert completed.returncode == 0, completed.stderr

    plugins = root / "libs" / "plugins"
    scripts = discover(plugins)
    names = {p.name for p in scripts}
    assert {
        "sgd_influence_retrace.py",
        "sgd_influence_retrace_tabular.py",
        "SGD_influence.py",
    } <= names
    assert not any(
        "nnabla_sgd_influence" in p.parts for p in scripts
    )  # the package is not a plugin
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NNSI_DEBUG")}
    helps = [
        subprocess.Popen(
            [nnc_python, str(s), "-h"],
            cwd=s.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in scripts
    ]
    for script, process in zip(scripts, helps):
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"{script}: {stderr}"
        assert "usage:" in stdout
    xai = plugins / "_Post_Process" / "_XAI"
    title = subprocess.run(
        [nnc_python, str(xai / "_Image" / "sgd_influence_retrace.py"), "-h"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    ).stdout
    assert "SGD Influence (Hessian retrace)" in title

    runs = []
    digits, cancer = samples_dir / "digits", samples_dir / "cancer"
    image_folder = result_folder(
        tmp_path / "image", samples_dir / "models" / "digits_cnn" / "results.nnp"
    )
    train = first_rows(digits / "train.csv", tmp_path / "image_train.csv", 48)
    val = first_rows(digits / "val.csv", tmp_path / "image_val.csv", 24)
    runs.append(
        (
            image_folder,
            "influence.csv",
            [
                xai / "_Image" / "sgd_influence_retrace.py",
                "-t",
                train,
                "-v",
                val,
                "-bs",
                16,
                "-nt",
                1,
            ],
        )
    )
    table_folder = result_folder(
        tmp_path / "table", samples_dir / "models" / "cancer_mlp" / "results.nnp"
    )
    runs.append(
        (
            table_folder,
            "sgd_influence_tabular.csv",
            [
                xai / "_Table" / "sgd_influence_retrace_tabular.py",
                "-t",
                cancer / "train.csv",
                "-v",
                cancer / "val.csv",
            ],
        )
    )
    started = [
        subprocess.Popen(
            [nnc_python, *map(str, args)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, _, args in runs
    ]
    for (folder, output, _), process in zip(runs, started):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert COMPLETION in stderr
        assert "chosen by" in stderr and "net.nntxt" in stderr  # NNC's context file was read
        rows = read_csv(folder / output)
        assert rows and all(float(r["influence"]) == float(r["influence"]) for r in rows)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["results.nnp", "net.nntxt", output]
        )
