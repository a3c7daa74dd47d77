"""The plugin command lines: NNC's dialog (``-h``), one-line errors, and the safety pieces
(context choice, atomic output, the temporary folder)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from plugin_helpers import (
    IMAGE_SCRIPT,
    TABULAR_SCRIPT,
    error_lines,
    read_csv,
    run_in_process,
)

from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.data.ranking_csv import (
    format_float,
    relative_path,
    write_image_csv,
    write_step_log,
    write_tabular_csv,
)
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.execution import device as context_module
from nnabla_sgd_influence.influence.results import ranking
from nnabla_sgd_influence.plugin.cli import build_parser
from nnabla_sgd_influence.plugin.run import RunSettings, check_settings, step_log_path, temp_parent
from nnabla_sgd_influence.runtime import signals
from nnabla_sgd_influence.runtime.workspace import PREFIX, workspace

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


def test_hidden_options_parse():
    argv = "-t a.csv -v b.csv --mode exact --epochs 2 --hvp finite-difference --context cpu"
    argv += " --device-id 1 --temp-dir /tmp --keep-temp --step-log"
    args = build_parser("image").parse_args(argv.split(" "))
    assert (args.mode, args.epochs, args.hvp) == ("exact", 2, "finite-difference")
    assert (args.context, args.device_id, args.temp_dir) == ("cpu", "1", "/tmp")
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
# Bad inputs: one line, non-zero exit, no output file


def nnp_without_optimizer(source: Path, target: Path) -> Path:
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Parse(entries["net.nntxt"].decode("utf-8"), proto)
    proto.ClearField("optimizer")
    entries["net.nntxt"] = text_format.MessageToString(proto).encode("utf-8")
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def bad_cases(samples: Path, tmp: Path):
    """(id, plugin, arguments, expected text of the error line)."""
    cancer = samples / "cancer"
    tabular = ["-t", cancer / "train.csv", "-v", cancer / "val.csv"]
    model = samples / "models" / "cancer_mlp" / "results.nnp"
    not_zip = tmp / "not_a_zip.nnp"
    not_zip.write_text("hello")
    no_optimizer = nnp_without_optimizer(model, tmp / "no_optimizer.nnp")
    dropout = samples / "models" / "cancer_mlp_dropout" / "results.nnp"
    return [
        ("missing model", "tabular", ["-m", tmp / "absent.nnp", *tabular], "absent.nnp"),
        ("not a zip", "tabular", ["-m", not_zip, *tabular], "not a .nnp file"),
        ("no optimizer", "tabular", ["-m", no_optimizer, *tabular], "no optimizer"),
        (
            "missing csv",
            "tabular",
            ["-m", model, "-t", tmp / "absent.csv", "-v", cancer / "val.csv"],
            "absent.csv",
        ),
        ("batch size 0", "tabular", ["-m", model, *tabular, "-bs", "0"], "batch_size"),
        ("dropout", "tabular", ["-m", dropout, *tabular], "layer 'Dropout' in network 'Main'"),
        (
            "cudnn",
            "tabular",
            ["-m", model, *tabular, "--context", "cudnn"],
            "pip install nnabla-ext-cuda",
        ),
        ("bad int", "tabular", ["-m", model, *tabular, "-nt", "two"], "invalid int value"),
        (
            "output folder",
            "tabular",
            ["-m", model, *tabular, "-o", tmp / "absent" / "out.csv"],
            "output folder not found",
        ),
        ("tabular into image", "image", ["-m", model, *tabular], "no image column"),
    ]


def test_bad_inputs_fail_with_one_line_and_no_output(samples, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases = []
    for name, kind, arguments, expected in bad_cases(samples, tmp_path):
        if "-o" not in arguments:
            arguments = [*arguments, "-o", out_dir / f"{name.replace(' ', '_')}.csv"]
        cases.append((name, kind, arguments, expected))
    failures = []
    for name, kind, arguments, expected in cases:
        result = run_in_process(kind, *arguments, cwd=tmp_path)
        lines = error_lines(result.stderr)
        if not (
            result.returncode in (1, 2)
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and expected in lines[0]
            and "Traceback" not in result.stderr
        ):
            failures.append(f"{name}: rc={result.returncode} stderr={result.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert list(out_dir.iterdir()) == []


def test_dropout_message_names_the_layer_and_the_reason(samples, tmp_path):
    cancer = samples / "cancer"
    result = run_in_process(
        "tabular",
        "-m",
        samples / "models" / "cancer_mlp_dropout" / "results.nnp",
        "-t",
        cancer / "train.csv",
        "-v",
        cancer / "val.csv",
        "-o",
        tmp_path / "out.csv",
    )
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: the tabular plugin does not support Dropout (layer 'Dropout'")
    assert "random masks" in line
    assert not (tmp_path / "out.csv").exists()


def test_inputs_are_never_overwritten(samples, tmp_path):
    cancer = samples / "cancer"
    train = tmp_path / "train.csv"
    train.write_bytes((cancer / "train.csv").read_bytes())
    before = train.read_bytes()
    result = run_in_process(
        "tabular",
        "-m",
        samples / "models" / "cancer_mlp" / "results.nnp",
        "-t",
        train,
        "-v",
        cancer / "val.csv",
        "-o",
        train,
    )
    assert result.returncode == 1
    assert "is the input-train file" in error_lines(result.stderr)[0]
    assert train.read_bytes() == before


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

    def fail(_settings, _arguments):
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

    def fail(_settings, _arguments):
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

    def fail(_settings, _arguments):
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
    ((settings, arguments),) = seen
    assert (settings.kind, arguments.batch_size) == ("image", 32)
    assert (arguments.n_trials, arguments.seed) == (3, 7)
    assert settings.model == Path("results.nnp") and settings.output == Path("influence.csv")
    assert settings.temp_dir == Path("t") and settings.step_log and arguments.hvp == "autodiff"


# --------------------------------------------------------------------------------------
# Settings checks (in process)


def settings(tmp_path: Path, **changes) -> RunSettings:
    for name in ("m.nnp", "t.csv", "v.csv"):
        (tmp_path / name).write_text("x")
    values = dict(
        model=tmp_path / "m.nnp",
        input_train=tmp_path / "t.csv",
        input_val=tmp_path / "v.csv",
        output=tmp_path / "o.csv",
        kind="image",
    )
    values.update(changes)
    return RunSettings(**values)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"n_trials": 0}, "n_trials must be a positive integer"),
        ({"epochs": -1}, "epochs must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"mode": "all"}, "mode must be one of last, exact"),
        ({"hvp": "magic"}, "hvp must be one of"),
        ({"seed": -1}, r"seed must be in \[0, 2147483647\], got -1"),
        ({"seed": 2**31}, r"seed must be in \[0, 2147483647\], got 2147483648"),
        ({"seed": 2**31 - 2, "n_trials": 3}, "needs seeds up to 2147483648"),
    ],
)
def test_arguments_are_checked(changes, message):
    with pytest.raises(InfluenceError, match=message):
        InfluenceArguments(**changes)


def test_the_last_seed_is_accepted():
    assert InfluenceArguments(seed=2**31 - 3, n_trials=3).seed_of(2) == 2**31 - 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "audio"}, "kind must be one of"),
        ({"temp_dir": Path("/nonexistent/folder")}, "temporary folder parent not found"),
    ],
)
def test_settings_are_checked(tmp_path, changes, message):
    with pytest.raises(InfluenceError, match=message):
        check_settings(settings(tmp_path, **changes))


def test_output_must_not_be_a_folder_or_an_input(tmp_path):
    with pytest.raises(InfluenceError, match="is a folder"):
        check_settings(settings(tmp_path, output=tmp_path))
    with pytest.raises(InfluenceError, match="is the model file"):
        check_settings(settings(tmp_path, output=tmp_path / "m.nnp"))


def test_same_train_and_val_file_is_a_warning(tmp_path, caplog):
    check_settings(settings(tmp_path, input_val=tmp_path / "t.csv"))
    assert "same file" in caplog.text


def test_temporary_folder_goes_beside_the_output_unless_told(tmp_path):
    assert temp_parent(settings(tmp_path)) == tmp_path  # o.csv is in tmp_path
    elsewhere = tmp_path / "scratch"
    assert temp_parent(settings(tmp_path, temp_dir=elsewhere)) == elsewhere


def test_step_log_sits_beside_the_output():
    assert step_log_path(Path("a/b/influence.csv")) == Path("a/b/influence_steps.csv")


# --------------------------------------------------------------------------------------
# Context


def write_nntxt(folder: Path, backends: str, rest: str = "") -> Path:
    array_class = "CpuCachedArray" if backends.startswith("cpu") else "CudaCachedArray"
    text = (
        "global_config {\n  default_context {\n"
        f'    array_class: "{array_class}"\n    backends: "{backends}"\n'
        '    device_id: "0"\n  }\n}\n' + rest
    )
    (folder / "net.nntxt").write_text(text)
    return folder


def test_context_defaults_to_cpu(tmp_path):
    assert context_module.choose_context(None, tmp_path) == ("cpu", "default")


def test_nntxt_in_the_working_folder_names_cudnn(tmp_path):
    write_nntxt(tmp_path, "cudnn:float", rest="dataset {\n  uri: 'C:\\\\x\\\\{weird}.csv'\n}\n")
    name, source = context_module.choose_context(None, tmp_path)
    assert name == "cudnn" and source.endswith("net.nntxt")


def test_nntxt_cpu_and_explicit_flag_wins(tmp_path):
    write_nntxt(tmp_path, "cudnn:float")
    assert context_module.choose_context("cpu", tmp_path) == ("cpu", "--context")
    write_nntxt(tmp_path, "cpu:float")
    assert context_module.choose_context(None, tmp_path)[0] == "cpu"


@pytest.mark.parametrize(
    "text",
    [
        "global_config { default_context { backends: 'cudnn:float' ",  # unclosed
        "global_config { not_a_field: 1 }\n",
        "\x00\x01binary",
        "network { name: 'Main' }\n",
    ],
)
def test_malformed_nntxt_is_ignored(tmp_path, text):
    (tmp_path / "net.nntxt").write_text(text)
    assert context_module.choose_context(None, tmp_path) == ("cpu", "default")


def test_only_global_config_is_parsed(tmp_path):
    write_nntxt(tmp_path, "cudnn:float", rest="this is { not protobuf text at all\n")
    assert context_module.choose_context(None, tmp_path)[0] == "cudnn"


def test_cudnn_without_the_extension_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NNABLA_CUDNN_DETERMINISTIC", raising=False)
    monkeypatch.setitem(sys.modules, "nnabla_ext.cuda", None)  # import fails
    with pytest.raises(InfluenceError) as error:
        context_module.create_context("cudnn", "0")
    assert str(error.value) == (
        "context 'cudnn' needs the nnabla-ext-cuda package matching your CUDA "
        "(e.g. pip install nnabla-ext-cuda120)"
    )
    assert os.environ["NNABLA_CUDNN_DETERMINISTIC"] == "1"


def test_cpu_context_is_created_without_changing_the_default():
    import nnabla as nn

    before = nn.get_current_context()
    assert context_module.create_context("cpu").backend == ["cpu:float"]
    assert nn.get_current_context() == before


# --------------------------------------------------------------------------------------
# Output CSV


def test_ranking_is_ascending_and_stable():
    scores = np.array([0.5, -1.0, 0.5, -1.0, 0.0])
    assert ranking(scores).tolist() == [1, 3, 4, 0, 2]


def test_floats_round_trip_exactly():
    for value in (0.1, -1.2345678901234567e-09, 3.0, np.float32(0.3)):
        assert float(format_float(value)) == float(value)


def test_relative_paths_use_forward_slashes(tmp_path):
    image = tmp_path / "data" / "images" / "a.png"
    assert relative_path(image, tmp_path / "out") == "../data/images/a.png"
    assert relative_path(image, tmp_path) == "data/images/a.png"


def test_image_csv_is_sorted_and_resolvable_from_its_folder(tmp_path):
    images = []
    for i in range(4):
        path = tmp_path / "data" / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        images.append(path)
    out = tmp_path / "results" / "influence.csv"
    out.parent.mkdir()
    write_image_csv(out, images, ["3", "1", "4", "1"], np.array([0.2, -0.5, 0.2, 0.0]))
    assert out.read_text().splitlines()[0] == "x:image,y:label,influence,datasource_index"
    rows = read_csv(out)
    assert [r["datasource_index"] for r in rows] == ["1", "3", "0", "2"]
    assert [r["y:label"] for r in rows] == ["1", "1", "3", "4"]
    assert rows[0]["x:image"] == "../data/img/1.png"
    for row in rows:
        assert (out.parent / row["x:image"]).resolve() == images[int(row["datasource_index"])]
    assert float(rows[0]["influence"]) == -0.5


def test_tabular_csv_keeps_the_rows_own_columns(tmp_path):
    out = tmp_path / "t.csv"
    write_tabular_csv(out, ["x__0", "y"], [["1.5", "0"], ["2.25", "1"]], np.array([1.0, -2.0]))
    assert out.read_text() == (
        "index,influence,datasource_index,x__0,y\n1,-2.0,1,2.25,1\n0,1.0,0,1.5,0\n"
    )


def test_step_log(tmp_path):
    steps = [
        SimpleNamespace(epoch=0, step=0, iteration=5, learning_rate=0.1, rows=np.array([2, 0]))
    ]
    write_step_log(tmp_path / "s.csv", steps)
    assert (tmp_path / "s.csv").read_text() == (
        "epoch,step,iteration,learning_rate,rows\n0,0,5,0.1,2 0\n"
    )


class Boom(Exception):
    pass


def failing_labels(count: int):
    """Labels whose text fails after ``count`` rows, as a disk or conversion error would."""

    class Label:
        def __init__(self, index):
            self.index = index

        def __str__(self):
            if self.index >= count:
                raise Boom("write failed")
            return str(self.index)

    return [Label(i) for i in range(10)]


def test_a_failed_write_leaves_no_file(tmp_path):
    images = [tmp_path / f"{i}.png" for i in range(10)]
    out = tmp_path / "out" / "influence.csv"
    out.parent.mkdir()
    with pytest.raises(Boom):
        write_image_csv(out, images, failing_labels(5), np.arange(10.0))
    assert list(out.parent.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "influence.csv"
    out.write_text("previous\n")
    with pytest.raises(Boom):
        write_image_csv(out, [tmp_path / "a.png"] * 10, failing_labels(3), np.zeros(10))
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["influence.csv"]


def test_interrupt_during_write_leaves_no_file(tmp_path, monkeypatch):
    import nnabla_sgd_influence.data.ranking_csv as output

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(output.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_tabular_csv(tmp_path / "t.csv", ["a"], [["1"]], np.zeros(1))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# The temporary folder


def test_workspace_is_removed_on_success(tmp_path):
    with workspace(tmp_path) as folder:
        (folder / "f").write_text("x")
        assert folder.parent == tmp_path and folder.name.startswith(PREFIX)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exception", [RuntimeError, InfluenceError, KeyboardInterrupt])
def test_workspace_is_removed_on_error_and_interrupt(tmp_path, exception):
    with pytest.raises(exception), workspace(tmp_path) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "f").write_bytes(b"x" * 100)
        raise exception("stop")
    assert list(tmp_path.iterdir()) == []


def test_workspace_can_be_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with workspace(tmp_path, keep=True) as folder:
        pass
    assert folder.is_dir()
    assert str(folder) in caplog.text


def test_workspace_parent_must_exist(tmp_path):
    with pytest.raises(InfluenceError, match="not found"), workspace(tmp_path / "absent"):
        pass
