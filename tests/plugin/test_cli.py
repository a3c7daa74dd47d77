"""The plugins' command lines: what NNC builds its dialog from (``-h``), and how every outcome
becomes one line and an exit code."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_helpers import (
    IMAGE_SCRIPT,
    TABULAR_SCRIPT,
)

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.plugin.cli import build_parser
from nnabla_sgd_influence.runtime import signals

SCRIPTS = {"image": IMAGE_SCRIPT, "tabular": TABULAR_SCRIPT}
TITLES = {
    "image": "SGD Influence (Hessian retrace)",
    "tabular": "SGD Influence tabular (Hessian retrace)",
}
# flag -> (type shown in the dialog, default per plugin or None when required)
PROPERTIES = {
    "--model": ("model", {"image": "results.nnp", "tabular": "results.nnp"}),
    "--batch_size": ("int", {"image": "32", "tabular": "64"}),
    "--input-train": ("csv", None),
    "--input-val": ("csv", None),
    "--output": ("csv", {"image": "influence.csv", "tabular": "sgd_influence_tabular.csv"}),
    "--seed": ("int", {"image": "0", "tabular": "0"}),
    "--n_trials": ("int", {"image": "6", "tabular": "1"}),
    "--remove_top": ("int", {"image": "0", "tabular": "0"}),
}
ONLY = {"image": {"--tile": ("int", {"image": "0"})}, "tabular": {}}  # per plugin
SHORT_FLAGS = ["-m", "-bs", "-t", "-v", "-o", "-s", "-nt"]
HIDDEN = [
    "--mode",
    "--epochs",
    "--hvp",
    "--context",
    "--device-id",
    "--temp-dir",
    "--keep-temp",
    "--step-log",
    "--encoding",
    "--tile-helpful",
]


@pytest.fixture(scope="module")
def samples(samples_dir) -> Path:
    """``samples/build`` (the session fixture of conftest.py builds it when needed)."""
    return samples_dir


# --------------------------------------------------------------------------------------
# -h: what NNC builds its dialog from


def help_entries(text: str) -> dict:
    """Map each long flag of the options list to its help text (continuation lines joined)."""
    entries = {}
    current = None
    for line in text.split("options:")[-1].splitlines():
        if line.startswith("  -"):
            invocation, _, help_text = line.strip().partition("  ")
            current = re.findall(r"--[\w-]+", invocation)[0]
            entries[current] = help_text.strip()
        elif current and line.strip():
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    return entries


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_help_lists_every_property_with_type_and_default(kind):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS[kind]), "-h"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    description = result.stdout.split("\n\n")[1]
    assert description.splitlines()[0] == TITLES[kind]
    entries = help_entries(result.stdout)
    properties = {**PROPERTIES, **ONLY[kind]}
    assert set(entries) == {"--help", *properties}
    for flag, (kind_of_value, defaults) in properties.items():
        assert f"({kind_of_value})" in entries[flag], (flag, entries[flag])
        if defaults is None:
            assert "default=" not in entries[flag]
        else:
            assert entries[flag].endswith(f"default={defaults[kind]}"), entries[flag]
    for flag in SHORT_FLAGS:
        assert re.search(rf"\s{re.escape(flag)} [A-Z_]+", result.stdout), flag
    for flag in HIDDEN:
        assert not re.search(rf"{re.escape(flag)}(?![\w-])", result.stdout), flag


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_help_defaults_are_the_parser_defaults(kind):
    parser = build_parser(kind)
    visible = [a for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert len(visible) == len(PROPERTIES) + len(ONLY[kind])
    for action in visible:
        match = re.search(r"default=(\S+)$", action.help)
        if action.required:
            assert match is None
        else:
            assert match is not None and match.group(1) == str(action.default), action.help
        # NNC reads the type from the only parenthesised word of the help.
        assert len(re.findall(r"\(([a-z]+)\)", action.help)) == 1, action.help


def setting_fields():
    from dataclasses import fields

    from nnabla_sgd_influence.arguments import ExecutionArguments, InfluenceArguments
    from nnabla_sgd_influence.plugin.settings import RunSettings

    return [f for cls in (RunSettings, InfluenceArguments, ExecutionArguments) for f in fields(cls)]


def test_every_setting_says_what_it_means():
    for setting in setting_fields():
        text = setting.metadata.get("help", "")
        assert len(text) > 20 and "(" not in text.split()[-1], (setting.name, text)


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_the_options_are_the_settings_fields(kind):
    """Each option is a settings field of that name, its help the field's own text."""
    parser = build_parser(kind)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    with_flags = {f.name: f for f in setting_fields() if f.metadata["cli"]}
    image_only = {"tile", "tile_helpful"}
    assert set(actions) == set(with_flags) - (image_only if kind == "tabular" else set())
    for name, action in actions.items():
        assert tuple(action.option_strings) == with_flags[name].metadata["cli"].names
        if action.help != argparse.SUPPRESS:
            assert action.help.startswith(with_flags[name].metadata["help"] + " ("), name


def test_the_python_api_takes_the_settings_by_the_same_names():
    import inspect
    from dataclasses import fields

    from nnabla_sgd_influence import compute_influence
    from nnabla_sgd_influence.arguments import ExecutionArguments, InfluenceArguments

    keywords = set(inspect.signature(compute_influence).parameters)
    from_settings = {
        f.name for cls in (InfluenceArguments, ExecutionArguments) for f in fields(cls)
    }
    assert from_settings == {
        "batch_size", "seed", "n_trials", "epochs", "mode", "hvp", "retrace_as_sgd",
        "context", "device_id", "workers", "temp_dir", "keep_temp",
    }  # fmt: skip
    assert from_settings <= keywords


def test_hidden_options_parse():
    argv = "-t a.csv -v b.csv --mode exact --epochs 2 --hvp finite-difference --context cpu"
    argv += " --device-id 1 --temp-dir /tmp --keep-temp --step-log"
    args = build_parser("image").parse_args(argv.split(" "))
    assert (args.mode, args.epochs, args.hvp) == ("exact", 2, "finite-difference")
    assert (args.context, args.device_id, args.temp_dir) == ("cpu", "1", Path("/tmp"))
    assert args.keep_temp and args.step_log


def test_help_does_not_import_nnabla():
    code = (
        "import sys; from nnabla_sgd_influence.plugin.cli import build_parser; "
        "build_parser('image').format_help(); assert 'nnabla' not in sys.modules, 'nnabla'; "
        "assert 'numpy' not in sys.modules, 'numpy'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_python_without_nnabla_gets_one_line_even_for_help():
    # -S hides site-packages: the script finds the package beside plugins/ itself, and the
    # package says on one line what this Python lacks (NNC runs -h to build its dialog).
    result = subprocess.run(
        [sys.executable, "-S", str(IMAGE_SCRIPT), "-h"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {sys.executable} has no NNabla: install it ({sys.executable} -m pip install "
        "nnabla), or run the plugin with Neural Network Console's own Python"
    ]


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_help_names_every_output_column(kind):
    help_text = build_parser(kind).format_help()
    columns = {
        "image": ["x:image", "y:label", "influence", "datasource_index", "influence_std"],
        "tabular": ["index", "influence", "datasource_index", "influence_std", "own columns"],
    }
    description = help_text.split("Output columns:")[1].split("\n\n")[0]
    for column in columns[kind]:
        assert column in description, (column, description)


# Runs a plugin script as NNC does, in a Python where ``import <package>`` fails as it does
# when the package is not installed (find_spec gives None, import raises ModuleNotFoundError).
WITHOUT_PACKAGE = """
import runpy, sys
sys.modules[{package!r}] = None
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("package", ["pandas", "scipy"])
def test_help_works_without_a_run_time_package_and_the_run_names_it(samples, tmp_path, package):
    code = WITHOUT_PACKAGE.format(package=package, script=str(IMAGE_SCRIPT))
    shown = subprocess.run(
        [sys.executable, "-c", code, "-h"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("\n\n")[1].splitlines()[0] == TITLES["image"]
    digits = samples / "digits"
    model = samples / "models" / "digits_cnn" / "results.nnp"
    args = ["-m", model, "-t", digits / "train.csv", "-v", digits / "val.csv", "-o", "o.csv"]
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    python = sys.executable
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines() == [
        f"error: {python} lacks the package '{package}': install it "
        f"({python} -m pip install {package})"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "found, version, message",
    [
        ({"nnabla": False}, None, "has no NNabla"),
        ({}, "1.31.0", "NNabla 1.31.0 in .* is too old: the plugin needs NNabla 1.32.0"),
        ({"pandas": False}, "1.39.0", "lacks the package 'pandas'"),
        ({"PIL": False}, "1.39.0", "lacks the package 'pillow'"),
    ],
)
def test_environment_check_names_what_is_missing(monkeypatch, found, version, message):
    from nnabla_sgd_influence.plugin import environment

    real = environment.importlib.util.find_spec
    monkeypatch.setattr(
        environment.importlib.util,
        "find_spec",
        lambda name: None if found.get(name, True) is False else real(name),
    )
    monkeypatch.setattr(environment, "installed_version", lambda name: version)
    with pytest.raises(InfluenceError, match=message):
        environment.check_environment()


def test_plugin_scripts_are_the_installer_text():
    from nnabla_sgd_influence.plugin.scripts import CHECKOUT_NAMES, script_text

    for kind, name in CHECKOUT_NAMES.items():
        assert (IMAGE_SCRIPT.parent / name).read_text(encoding="utf-8") == script_text(kind)


# --------------------------------------------------------------------------------------
# Exit codes (in process, the run replaced)


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (InfluenceError("bad row\nin file"), 1, "error: bad row in file"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (signals.Interrupted(signal.SIGHUP), 129, "interrupted"),
        (MemoryError(), 1, "error: out of memory"),
        (ImportError("x.so: failed to map segment from shared object"), 1, "error: out of memory"),
        (RuntimeError("can't start new thread"), 1, "error: out of memory"),
        (
            RuntimeError("boom\nmore"),
            2,
            "internal error: RuntimeError: boom more (set NNSI_DEBUG=1 for the traceback)",
        ),
        (ModuleNotFoundError("x", name="nnabla"), 1, f"error: {sys.executable} lacks the package"),
        (ModuleNotFoundError("x", name="ours"), 2, "internal error: ModuleNotFoundError"),
    ],
)
def test_exit_codes(monkeypatch, capsys, raised, code, line):
    import nnabla_sgd_influence.plugin.cli as cli
    import nnabla_sgd_influence.plugin.run as pipeline

    def fail(_settings, _execution, _arguments):
        raise raised

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.setattr(cli, "configure_logging", lambda debug: None)
    monkeypatch.delenv("NNSI_DEBUG", raising=False)
    assert cli.main_tabular(["-t", "a.csv", "-v", "b.csv"]) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(line), err


def test_interrupt_inside_an_nnabla_callback_is_an_interrupt(monkeypatch, capsys):
    import nnabla_sgd_influence.plugin.cli as cli
    import nnabla_sgd_influence.plugin.run as pipeline

    def fail(_settings, _execution, _arguments):
        # What nnabla raises when the signal handler runs inside its backward callback.
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemError("<cyfunction Variable.backward> returned a result") from interrupt

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.setattr(cli, "configure_logging", lambda debug: None)
    monkeypatch.delenv("NNSI_DEBUG", raising=False)
    assert cli.main_tabular(["-t", "a.csv", "-v", "b.csv"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_debug_shows_the_traceback(monkeypatch, capsys):
    import nnabla_sgd_influence.plugin.cli as cli
    import nnabla_sgd_influence.plugin.run as pipeline

    def fail(_settings, _execution, _arguments):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.setattr(cli, "configure_logging", lambda debug: None)
    monkeypatch.setenv("NNSI_DEBUG", "1")
    assert cli.main_image(["-t", "a.csv", "-v", "b.csv"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_arguments_reach_the_settings(monkeypatch):
    import nnabla_sgd_influence.plugin.cli as cli
    import nnabla_sgd_influence.plugin.run as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda *given: seen.append(given))
    monkeypatch.setattr(cli, "configure_logging", lambda debug: None)
    argv = ["-t", "a.csv", "-v", "b.csv", "-nt", "3", "-s", "7"]
    argv += ["--temp-dir", "t", "--step-log", "--hvp", "autodiff"]
    assert cli.main_image(argv) == 0
    ((settings, execution, arguments),) = seen
    assert (settings.kind, arguments.batch_size) == ("image", 32)
    assert (arguments.n_trials, arguments.seed) == (3, 7)
    assert settings.model == Path("results.nnp") and settings.output == Path("influence.csv")
    assert execution.temp_dir == Path("t") and execution.workers is None
    assert settings.step_log and arguments.hvp == "autodiff"
