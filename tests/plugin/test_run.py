"""One plugin run: bad inputs refused with one line before any training, settings checked
once, outputs never onto inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from plugin_helpers import (
    error_lines,
    run_in_process,
)

from nnabla_sgd_influence import arguments as arguments_module
from nnabla_sgd_influence.arguments import InfluenceArguments
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.execution import device as device_module
from nnabla_sgd_influence.plugin.run import RunSettings, check_settings, step_log_path


@pytest.fixture(scope="module")
def samples(samples_dir) -> Path:
    """``samples/build`` (the session fixture of conftest.py builds it when needed)."""
    return samples_dir


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
        ({"remove_top": -1}, r"remove_top must be 0 \(off\) or a positive integer, got -1"),
        ({"tile": 2.0}, r"tile must be 0 \(off\) or a positive integer, got 2.0"),
        ({"kind": "tabular", "tile": 3}, "tile draws images: it is for the image plugin"),
    ],
)
def test_settings_are_checked_when_made(tmp_path, changes, message):
    with pytest.raises(InfluenceError, match=message):
        settings(tmp_path, **changes)


def test_output_must_not_be_a_folder_or_an_input(tmp_path):
    with pytest.raises(InfluenceError, match="is a folder"):
        check_settings(settings(tmp_path, output=tmp_path))
    with pytest.raises(InfluenceError, match="is the model file"):
        check_settings(settings(tmp_path, output=tmp_path / "m.nnp"))


def test_same_train_and_val_file_is_a_warning(tmp_path, caplog):
    check_settings(settings(tmp_path, input_val=tmp_path / "t.csv"))
    assert "same file" in caplog.text


def test_step_log_sits_beside_the_output():
    assert step_log_path(Path("a/b/influence.csv")) == Path("a/b/influence_steps.csv")


# --------------------------------------------------------------------------------------
# Each setting made and checked once in a run


def test_a_run_makes_its_settings_and_reads_net_nntxt_once(samples, tmp_path, monkeypatch):
    """The scores' settings are made (and checked) once, and the context is chosen once: the
    working folder's net.nntxt is read once."""
    made, read = [], []
    check = InfluenceArguments.__post_init__
    choose = device_module.context_of_nntxt

    def counted_check(self):
        made.append(self)
        check(self)

    def counted_read(path):
        read.append(path)
        return choose(path)

    monkeypatch.setattr(arguments_module.InfluenceArguments, "__post_init__", counted_check)
    monkeypatch.setattr(device_module, "context_of_nntxt", counted_read)
    with zipfile.ZipFile(samples / "models" / "cancer_logreg" / "results.nnp") as archive:
        (tmp_path / "net.nntxt").write_bytes(archive.read("net.nntxt"))  # NNC leaves it there
    cancer = samples / "cancer"
    result = run_in_process(
        "tabular",
        *("-m", samples / "models" / "cancer_logreg" / "results.nnp"),
        *("-t", cancer / "train.csv", "-v", cancer / "val.csv", "-o", tmp_path / "o.csv"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(made) == 1 and made[0].batch_size == 64
    assert read == [tmp_path / "net.nntxt"]
    assert result.stderr.count("context: cpu (chosen by") == 1
