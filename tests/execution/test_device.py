"""Where nnabla computes: the CPU by default, cuDNN when asked or when NNC's net.nntxt says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.execution import device as context_module

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
