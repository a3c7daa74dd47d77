"""Signals at any moment (``signals.py``): recorded at once, acted on at safe points.

In process: the handler only records, checkpoints raise, ``deferred`` holds signals off.
In a subprocess (``signal_harness.py``, a run made of the safety pieces only): SIGINT, SIGTERM
and SIGHUP swept over the whole run, from the first line of the script through
``import nnabla``, second-order passes and the staged write, and a second Ctrl-C during
clean-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from plugin_helpers import as_in_a_terminal

from nnabla_sgd_influence.runtime import signals

HARNESS = Path(__file__).resolve().parents[1] / "signal_harness.py"
HANDLED = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture
def fresh():
    """Handlers and state as Python has them, before and after the test."""
    saved = {s: signal.getsignal(s) for s in HANDLED}
    signals.uninstall()
    yield
    signals.uninstall()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(100):  # Python runs the handler at the next bytecode boundary
        time.sleep(0)


def test_signals_are_recorded_not_raised(fresh):
    assert signals.install()
    deliver(signal.SIGINT)
    deliver(signal.SIGINT)
    assert signals.pending() == signal.SIGINT
    assert signals.received() == 2
    with pytest.raises(signals.Interrupted) as caught:
        signals.checkpoint()
    assert caught.value.exit_code == 130
    assert isinstance(caught.value, KeyboardInterrupt)


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGHUP, 129)]
)
def test_exit_codes(fresh, signum, code):
    signals.install()
    deliver(signum)
    with pytest.raises(signals.Interrupted) as caught:
        signals.checkpoint()
    assert caught.value.exit_code == code == signals.exit_code(signum)


def test_the_first_signal_decides(fresh):
    signals.install()
    deliver(signal.SIGHUP)
    deliver(signal.SIGINT)
    assert signals.pending() == signal.SIGHUP


def test_checkpoints_wrap_a_loop(fresh):
    signals.install()
    seen = []
    with pytest.raises(signals.Interrupted):
        for item in signals.checkpoints(range(10)):
            seen.append(item)
            if item == 3:
                deliver(signal.SIGTERM)
    assert seen == [0, 1, 2, 3]


def test_checkpoints_inside_deferred_do_not_raise(fresh):
    signals.install()
    deliver(signal.SIGINT)
    with signals.deferred():
        signals.checkpoint()  # clean-up code may pass checkpoints
    with pytest.raises(signals.Interrupted):
        signals.checkpoint()


def test_ignored_signals_stay_ignored(fresh):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    signals.install()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_install_outside_the_main_thread_changes_nothing(fresh):
    results = []
    thread = threading.Thread(target=lambda: results.append(signals.install()))
    thread.start()
    thread.join()
    assert results == [False]
    assert not signals.installed()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_without_install_delivers_afterwards(fresh):
    """Library use: Python's own Ctrl-C, held off during the block, raised after it."""
    finished = False
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        deliver(signal.SIGINT)
        deliver(signal.SIGINT)  # a second Ctrl-C during clean-up
        finished = True
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signals.pending() is None


def test_deferred_without_install_calls_a_previous_handler(fresh):
    calls = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    with signals.deferred():
        deliver(signal.SIGTERM)
        assert calls == []
    assert calls == [signal.SIGTERM]


def test_hold_until_exit_ignores_the_signals(fresh):
    """The interpreter's shutdown leaves ignored signals ignored (it restores handled ones)."""
    signals.install()
    signals.hold_until_exit()
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in HANDLED)
    deliver(signal.SIGTERM)  # ignored: the test process lives on
    assert signals.pending() is None


# --------------------------------------------------------------------------------------
# The sweep, in a subprocess


def _caught_mask(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


def _start(tmp: Path, name: str):
    work = tmp / name
    temp = work / "temp"
    temp.mkdir(parents=True)
    output = work / "out.csv"
    output.write_text("previous\n")
    process = subprocess.Popen(
        [sys.executable, str(HARNESS), str(output), str(temp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "NNSI_DEBUG"},
        preexec_fn=as_in_a_terminal,
    )
    return process, output, temp


def _wait_for_install(process) -> None:
    """Until the harness has set its handlers (SIGHUP caught: only signals.install does it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _caught_mask(process.pid) & (1 << (signal.SIGHUP - 1)):
                return
        except OSError:
            pass
        time.sleep(0.001)


def _check(process, output: Path, temp: Path, signum: int, label: str) -> str:
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in stderr.splitlines() if "[INFO]" not in line and line.strip()]
    code = process.returncode
    assert code in (0, signals.exit_code(signum)), f"{label}: exit {code}: {stderr[-1500:]}"
    assert "Traceback" not in stderr and "Error" not in stderr, f"{label}: {stderr[-1500:]}"
    assert list(temp.iterdir()) == [], f"{label}: left {list(temp.iterdir())}"
    content = output.read_text()
    assert content == "previous\n" or content.endswith("\nend\n"), f"{label}: partial output"
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".")] == []
    if code == 0:
        assert lines == [], f"{label}: {lines}"
        return "finished"
    assert lines == ["interrupted"], f"{label}: {lines}"
    assert content == "previous\n"
    return "interrupted"


def _sweep(tmp_path: Path, delays, signums, second_after=None):
    outcomes = []
    for index, delay in enumerate(delays):
        signum = signums[index % len(signums)]
        label = f"{signal.Signals(signum).name} after {delay:.3f} s"
        process, output, temp = _start(tmp_path, f"run{index}")
        _wait_for_install(process)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signum)
            if second_after is not None:
                time.sleep(second_after)
                if process.poll() is None:
                    process.send_signal(signum)
        outcomes.append(_check(process, output, temp, signum, label))
    return outcomes


@pytest.mark.system
def test_signals_swept_over_a_run(tmp_path):
    """From the first line to the final write: one line, 130 or 129, nothing left."""
    delays = [0.0, 0.02, 0.06, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
    outcomes = _sweep(tmp_path, delays, HANDLED)
    assert outcomes.count("interrupted") >= len(delays) // 2, outcomes


@pytest.mark.system
def test_a_second_ctrl_c_during_clean_up(tmp_path):
    outcomes = _sweep(tmp_path, [0.3, 0.45, 0.6], [signal.SIGINT], second_after=0.003)
    assert "interrupted" in outcomes


@pytest.mark.slow
@pytest.mark.parametrize("signum", HANDLED, ids=lambda s: signal.Signals(s).name)
def test_dense_signal_sweep(tmp_path, signum):
    delays = [i * 0.01 for i in range(80)]
    outcomes = _sweep(tmp_path, delays, [signum])
    assert outcomes.count("interrupted") >= 40, outcomes


@pytest.mark.system
def test_a_signal_before_the_first_line_has_its_default_effect(tmp_path):
    """Before the script's first line nothing of ours runs: the signal's default action (or
    Python's own KeyboardInterrupt) ends the process, and nothing has been created yet."""
    process, output, temp = _start(tmp_path, "early")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode in (-signal.SIGTERM, 130, 0)
    assert list(temp.iterdir()) == []
    if process.returncode != 0:
        assert output.read_text() == "previous\n"
