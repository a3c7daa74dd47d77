"""The execution of a computation, made once from its arguments: device, workers, MPI job,
temporary folder; and the settings' checks, each made when the arguments are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnabla_sgd_influence.arguments import ExecutionArguments
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.execution import runner
from nnabla_sgd_influence.execution.workers import physical_cores


class _Rank:
    """What the execution reads of an MPI job: this process's rank and local rank."""

    def __init__(self, rank: int) -> None:
        self.rank = self.local_rank = rank


@pytest.fixture
def in_folder(tmp_path, monkeypatch) -> Path:
    """A working folder without NNC's net.nntxt."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_execution_is_resolved_from_its_arguments(in_folder):
    execution = runner.create_execution(ExecutionArguments(workers=None), 3)
    assert (execution.device.name, execution.device.device_id) == ("cpu", "0")
    assert execution.device.source == "default"
    assert execution.device.context_file == in_folder / "net.nntxt"  # looked at, not there
    assert execution.workers == min(physical_cores(), 3)
    assert execution.world is None and execution.leads
    assert execution.temp_parent is None and not execution.keep_temp
    chosen = runner.create_execution(ExecutionArguments(context="cpu", workers=5), 2)
    assert chosen.device.source == "--context" and chosen.device.context_file is None
    assert chosen.workers == 2  # never more processes than trials


def test_the_temporary_folder_goes_where_it_is_told(in_folder):
    beside = in_folder / "output_folder"
    beside.mkdir()
    told = in_folder / "scratch"
    told.mkdir()
    default = runner.create_execution(ExecutionArguments(), 1, default_temp_parent=beside)
    assert default.temp_parent == beside
    explicit = ExecutionArguments(temp_dir=str(told), keep_temp=True)
    execution = runner.create_execution(explicit, 1, default_temp_parent=beside)
    assert execution.temp_parent == told and execution.keep_temp


@pytest.mark.parametrize(
    "temp_dir, message",
    [
        ("absent", "--temp-dir: temporary folder parent not found"),
        ("d" * 200 + "/" + "e" * 200 + "/" + "f" * 250 + "/g" * 1900, "too deep"),
    ],
)
def test_an_unusable_temp_dir_is_refused_when_the_execution_is_made(in_folder, temp_dir, message):
    with pytest.raises(InfluenceError, match=message):
        runner.create_execution(ExecutionArguments(temp_dir=in_folder / temp_dir), 1)


def test_a_rank_other_than_0_takes_its_local_device_and_any_temporary_folder(
    in_folder, monkeypatch
):
    """Rank 1 may run on a machine without the --temp-dir of rank 0's: it uses the system's
    temporary folder; its GPU is its local rank unless one is given."""
    monkeypatch.setattr(runner, "world", lambda: _Rank(1))
    elsewhere = ExecutionArguments(temp_dir=in_folder / "absent")
    execution = runner.create_execution(elsewhere, 1)
    assert execution.temp_parent is None and not execution.leads
    assert execution.device.device_id == "1"
    given = runner.create_execution(ExecutionArguments(device_id=0, temp_dir=in_folder), 1)
    assert given.temp_parent == in_folder and given.device.device_id == "0"
    monkeypatch.setattr(runner, "world", lambda: _Rank(0))
    with pytest.raises(InfluenceError, match="temporary folder parent not found"):
        runner.create_execution(elsewhere, 1)  # rank 0's own folder must exist


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"workers": 0}, "workers must be a positive integer, got 0"),
        ({"workers": 2.5}, "workers must be a positive integer, got 2.5"),
        ({"workers": True}, "workers must be a positive integer, got True"),
        ({"workers": "2"}, "workers must be a positive integer, got '2'"),
        ({"context": "gpu"}, r"unknown context 'gpu' \(choose one of: cpu, cudnn\)"),
        ({"device_id": 1.5}, "device_id must be a GPU's number, got 1.5"),
        ({"temp_dir": 5}, "temp_dir must be the path of a folder, got 5"),
    ],
)
def test_execution_arguments_are_checked_when_made(changes, message):
    with pytest.raises(InfluenceError, match=message):
        ExecutionArguments(**changes)


def test_execution_arguments_take_paths_and_numbers():
    arguments = ExecutionArguments(device_id=1, temp_dir=Path(os.curdir), workers=None)
    assert (arguments.device_id, arguments.workers) == (1, None)
