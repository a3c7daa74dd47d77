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

from nnabla_sgd_influence.errors import InfluenceError, excerpt
from nnabla_sgd_influence.plugin.install import RECORD, install, uninstall

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
    assert "_Image/nnabla_sgd_influence/plugin/cli.py" in written
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
# A tampered record, planted links, folders: only the installer's own paths are touched

OUTSIDE_CANARY = b"a file outside the NNC tree\n"


def tree_listing(root: Path) -> dict:
    """Every entry below ``root``, links not followed: folders, links (with their targets) and
    files (with their SHA-256), so that two listings are equal only if nothing changed."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "link to " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "folder"
            else:
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def outside_tree(tmp_path: Path) -> Path:
    """Beside the NNC folder: a file, an empty folder, and a folder of bytecode only, each of
    which a wrong path in the record would let the installer remove."""
    outside = tmp_path / "outside"
    (outside / "empty").mkdir(parents=True)
    (outside / "cache" / "__pycache__").mkdir(parents=True)
    (outside / "cache" / "__pycache__" / "m.cpython-310.pyc").write_bytes(b"\0" * 16)
    (outside / "canary.txt").write_bytes(OUTSIDE_CANARY)
    return outside


def run_installer(capsys, *args: object):
    """``main`` as the command runs it: (exit code, lines on stderr)."""
    from nnabla_sgd_influence.plugin.install import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.splitlines()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


UP_FROM_XAI = "../" * 5  # _XAI -> _Post_Process -> plugins -> libs -> nnc folder -> tmp_path


def _add_file(entry: str, data: bytes = OUTSIDE_CANARY):
    def change(record: dict, outside: Path) -> object:
        record["files"][entry.format(outside=outside)] = sha(data)
        return record

    return change


def _add_folder(entry: object):
    def change(record: dict, outside: Path) -> object:
        record["folders"].append(entry.format(outside=outside) if isinstance(entry, str) else entry)
        return record

    return change


def _set(key: str, value: object):
    def change(record: dict, outside: Path) -> object:
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
        return record

    return change


def _leaving_the_plugin_folders(
    kind: str, add, inside: str, ups: int, up_name: str, name: str
) -> dict:
    """Three record entries of ``kind`` that lead out of the plugin folders to an entry of the
    test's ``outside`` folder, each with the words its error line quotes: up from the top with
    ``..`` (to ``up_name``), up from ``inside`` (``ups`` times ``..`` reach the test's folder; to
    ``name``) and an absolute path (to ``name``)."""
    return {
        f"{kind} ..": (add(UP_FROM_XAI + "outside/" + up_name), UP_FROM_XAI),
        f"{kind} .. inside": (add(inside + "../" * ups + "outside/" + name), inside + "../"),
        f"{kind} absolute": (add("{outside}/" + name), "{outside}/" + name),
    }


TAMPERED = {
    "a list": (lambda record, outside: [], "a list"),
    "a string": (lambda record, outside: "files", "a string"),
    "folders is 5": (_set("folders", 5), '"folders"'),
    "no folders": (_set("folders", KeyError), '"folders"'),
    "another tool's": (_set("tool", "other"), '"tool"'),
    "a digest that is a number": (
        lambda record, outside: {**record, "files": {"_Image/sgd_influence_retrace.py": 5}},
        "_Image/sgd_influence_retrace.py",
    ),
    "a digest that is not hex": (
        lambda record, outside: {
            **record,
            "files": {**record["files"], "_Table/sgd_influence_retrace_tabular.py": "x" * 64},
        },
        "_Table/sgd_influence_retrace_tabular.py",
    ),
    **_leaving_the_plugin_folders(
        "file", _add_file, "_Image/nnabla_sgd_influence/", 7, "canary.txt", "canary.txt"
    ),
    "file Windows drive": (_add_file("C:/outside/canary.txt"), "C:/outside/canary.txt"),
    "file backslashes": (
        _add_file("_Image\\..\\" + "..\\" * 5 + "outside\\canary.txt"),
        "_Image\\..\\",
    ),
    "file Sony's": (
        _add_file("_Image/SGD_influence.py", SONY_FILES["_Image/SGD_influence.py"].encode()),
        "_Image/SGD_influence.py",
    ),
    "file not a module": (
        _add_file("_Image/nnabla_sgd_influence/notes.txt"),
        "_Image/nnabla_sgd_influence/notes.txt",
    ),
    **_leaving_the_plugin_folders(
        "folder", _add_folder, "_Post_Process/_XAI/_Image/", 6, "empty", "cache"
    ),
    "folder outside the plugin folders": (_add_folder("_Pre_Process"), "_Pre_Process"),
    "folder not a string": (_add_folder(5), "5"),
    "nested 100,000 deep": (lambda record, outside: None, "not JSON"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED), ids=str)
def test_a_tampered_record_is_refused_and_nothing_outside_is_touched(tmp_path, capsys, case):
    root = nnc_tree(tmp_path / "nnc")
    outside = outside_tree(tmp_path)
    install(root)
    path = root / XAI / RECORD
    change, words = TAMPERED[case]
    record = change(json.loads(path.read_text()), outside)
    text = "[" * 10**5 + "]" * 10**5 if record is None else json.dumps(record)
    path.write_text(text, encoding="utf-8")
    before_tree, before_outside = tree_listing(root), tree_listing(outside)
    for args in (["--uninstall", root], [root]):
        code, lines = run_installer(capsys, *args)
        assert tree_listing(outside) == before_outside
        assert tree_listing(root) == before_tree
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith("error: ") and RECORD in lines[0]
        assert excerpt(words.format(outside=outside)) in lines[0] and len(lines[0]) < 300
    assert (outside / "canary.txt").read_bytes() == OUTSIDE_CANARY


def _link(path: Path, target: Path) -> None:
    """Replace ``path`` (if any) by a symbolic link to ``target`` (moved there if it exists)."""
    if path.exists():
        path.rename(target)
    os.symlink(target, path)


PLANTED = {  # where a link is planted before an install, relative to _XAI
    "the temporary name of a script": ("_Image/.sgd_influence_retrace.py.tmp-install", "canary"),
    "the temporary name of the record": (f".{RECORD}.tmp-install", "canary"),
    "the record": (RECORD, "record"),
    "the package folder": ("_Image/nnabla_sgd_influence", "empty"),
    "a sub-package folder": ("_Table/nnabla_sgd_influence/evaluation", "empty"),
    "_Image": ("_Image", "moved"),
    "_XAI": (".", "moved"),
}


@pytest.mark.parametrize("case", sorted(PLANTED), ids=str)
def test_install_refuses_a_link_at_any_path_it_writes(tmp_path, capsys, case):
    root = nnc_tree(tmp_path / "nnc")
    outside = outside_tree(tmp_path)
    relative, target = PLANTED[case]
    link = (root / XAI / relative).resolve() if relative == "." else root / XAI / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    if target == "canary":
        os.symlink(outside / "canary.txt", link)
    elif target == "record":
        (outside / "record.json").write_text('{"tool": "nnabla-sgd-influence", "files": {}}')
        os.symlink(outside / "record.json", link)
    elif target == "empty":
        os.symlink(outside / "empty", link)
    else:
        _link(link, outside / "moved")
    before_tree, before_outside = tree_listing(root), tree_listing(outside)
    code, lines = run_installer(capsys, root)
    assert tree_listing(outside) == before_outside  # nothing written or replaced out there
    assert tree_listing(root) == before_tree
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "link" in lines[0]
    assert link.name in lines[0]


def test_a_hard_link_at_a_temporary_name_is_replaced_not_written_through(tmp_path):
    """What a killed install leaves at a temporary name is removed by name, and the file is
    written anew: another name of the same file (outside the tree) keeps its content."""
    root = nnc_tree(tmp_path / "nnc")
    outside = outside_tree(tmp_path)
    before = tree_listing(root)
    temporary = root / XAI / "_Table" / ".sgd_influence_retrace_tabular.py.tmp-install"
    os.link(outside / "canary.txt", temporary)
    install(root)
    assert (outside / "canary.txt").read_bytes() == OUTSIDE_CANARY
    assert not temporary.exists()
    uninstall(root)
    assert tree_listing(root) == before


def test_ctrl_c_during_the_install_is_one_line_and_leaves_no_temporary_file(
    tmp_path, capsys, monkeypatch
):
    """Interrupted half way, the install stops with 130; what it wrote is in the record, so
    that an uninstall gives back the tree as it was."""
    root = nnc_tree(tmp_path / "nnc")
    before = tree_listing(root)
    rename = os.replace
    calls = []

    def interrupted_on_the_tenth(source, target):
        """Ctrl-C when the tenth file is written whole under its temporary name."""
        calls.append(target)
        if len(calls) == 10:
            raise KeyboardInterrupt
        rename(source, target)

    monkeypatch.setattr(os, "replace", interrupted_on_the_tenth)
    code, lines = run_installer(capsys, root)
    assert code == 130 and len(lines) == 1 and lines[0].startswith("error: interrupted"), lines
    assert not [p for p in tree_listing(root) if p.endswith(".tmp-install")]
    monkeypatch.undo()
    uninstall(root)
    assert tree_listing(root) == before


INSTALLED_LINKS = [  # what is moved out of the tree and linked back after an install
    "_Image/sgd_influence_retrace.py",
    "_Image/nnabla_sgd_influence",
    "_Table/nnabla_sgd_influence/influence/second_order",
    "_Table",
    ".",
]


@pytest.mark.parametrize("relative", INSTALLED_LINKS, ids=str)
def test_uninstall_refuses_a_link_and_removes_nothing_through_it(tmp_path, capsys, relative):
    root = nnc_tree(tmp_path / "nnc")
    outside = outside_tree(tmp_path)
    install(root)
    path = (root / XAI).resolve() if relative == "." else root / XAI / relative
    _link(path, outside / "moved")
    before_tree, before_outside = tree_listing(root), tree_listing(outside)
    code, lines = run_installer(capsys, "--uninstall", root)
    assert tree_listing(outside) == before_outside  # nothing removed through the link
    assert tree_listing(root) == before_tree
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "link" in lines[0] and path.name in lines[0]


def test_uninstall_keeps_the_empty_plugin_folders_that_were_there(tmp_path):
    root = tmp_path / "nnc"
    for kind in ("_Image", "_Table"):
        (root / XAI / kind).mkdir(parents=True)
    before = tree_listing(root)
    install(root)
    uninstall(root)
    assert tree_listing(root) == before


def test_uninstall_removes_every_folder_the_install_created(tmp_path):
    """Into an NNC tree without _Post_Process; NNC's Python then leaves bytecode caches."""
    root = tmp_path / "nnc"
    other = root / "libs" / "plugins" / "_Pre_Process" / "_Create_Dataset" / "simple.py"
    other.parent.mkdir(parents=True)
    other.write_text(DECOY.format(title="Simple tabular data"))
    before = tree_listing(root)
    install(root)
    package = root / XAI / "_Image" / "nnabla_sgd_influence"
    for cache in (package / "__pycache__", package / "influence" / "second_order" / "__pycache__"):
        cache.mkdir()
        (cache / "cli.cpython-310.pyc").write_bytes(b"\0" * 16)
    uninstall(root)
    assert tree_listing(root) == before


def test_reinstall_removes_the_files_and_folders_of_an_older_version(tmp_path):
    root = nnc_tree(tmp_path / "nnc")
    before = tree_listing(root)
    install(root)
    path = root / XAI / RECORD
    record = json.loads(path.read_text())
    old = root / XAI / "_Table" / "nnabla_sgd_influence" / "retired" / "gone.py"
    old.parent.mkdir()
    old.write_bytes(b"# a module of an older version\n")
    record["files"]["_Table/nnabla_sgd_influence/retired/gone.py"] = sha(old.read_bytes())
    record["folders"].append("_Post_Process/_XAI/_Table/nnabla_sgd_influence/retired")
    path.write_text(json.dumps(record))
    install(root)
    assert not old.parent.exists()
    uninstall(root)
    assert tree_listing(root) == before


@pytest.mark.parametrize(
    "existing",
    [
        "_post_process",
        "_Post_Process/_xai",
        "_Post_Process/_XAI/_image",
        "_Post_Process/_XAI/_TABLE",
        "_Post_Process/_XAI/_Image/NNabla_SGD_Influence",
    ],
    ids=str,
)
def test_a_folder_name_that_differs_only_in_case_is_refused(tmp_path, capsys, existing):
    """Where NNC on Windows would see one folder, and NNC elsewhere two (listing our plugins
    beside what is in the other), the install stops before writing anything."""
    root = tmp_path / "nnc"
    (root / "libs" / "plugins" / existing).mkdir(parents=True)
    (root / "libs" / "plugins" / existing / "keep.py").write_text("# someone's\n")
    before = tree_listing(root)
    code, lines = run_installer(capsys, root)
    assert code == 1 and len(lines) == 1, lines
    name = existing.rsplit("/", 1)[-1]
    assert "only in letter case" in lines[0] and name in lines[0]
    assert tree_listing(root) == before


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


@pytest.mark.system
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
