"""Shared by the tests: paths, running a plugin script as a user would, its inputs and
outputs, and a disk that fills up."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_SCRIPT = REPO / "plugins" / "sgd_influence.py"
TABULAR_SCRIPT = REPO / "plugins" / "sgd_influence_tabular.py"
COMPLETION = "SGD influence completed successfully."


def as_in_a_terminal() -> None:
    """``preexec_fn`` of a process that tests send Ctrl-C: SIGINT and SIGQUIT at their
    defaults, as in a terminal's foreground job. A job started in the background by a
    non-interactive shell (``make test &`` in a script) inherits both ignored, and the plugin
    rightly keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def plugin_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a plugin run: no debug tracebacks, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "NNSI_DEBUG"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_plugin(
    script: Path, *args: object, cwd: Optional[Path] = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` with the test's Python and capture its output."""
    return subprocess.run(
        [sys.executable, str(script), *[str(a) for a in args]],
        cwd=str(cwd or REPO),
        env=plugin_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_plugins(
    jobs: Sequence[Tuple[Path, Sequence[object]]], cwd: Optional[Path] = None, timeout: float = 300
) -> List[subprocess.CompletedProcess]:
    """Run several ``(script, args)`` at once (each is mostly nnabla's start-up time)."""
    started = [
        subprocess.Popen(
            [sys.executable, str(script), *[str(a) for a in args]],
            cwd=str(cwd or REPO),
            env=plugin_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, args in jobs
    ]
    results = []
    for process in started:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return results


def run_in_process(
    kind: str, *args: object, cwd: Optional[Path] = None
) -> subprocess.CompletedProcess:
    """Run the ``image`` or ``tabular`` plugin's ``main`` here, as its script would, capturing
    what it prints; the logging set-up, signal handlers and working folder are put back."""
    from nnabla_sgd_influence.plugin import cli

    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    saved_cwd = os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(kind, argv)
            except SystemExit as exit:
                code = exit.code
    finally:
        os.chdir(saved_cwd)
        root.handlers[:], _ = saved_logging
        root.setLevel(saved_logging[1])
        for number, handler in saved_signals.items():
            signal.signal(number, handler)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def error_lines(stderr: str) -> List[str]:
    """The lines a failed run printed as its error (nnabla's INFO lines left out)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("error:", "internal error:", "interrupted", "Traceback"))
    ]


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_header(path: Path) -> List[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def scores_by_row(path: Path) -> np.ndarray:
    """An output CSV's ``influence`` column in input-train's row order (``datasource_index``);
    a row the file does not list stays NaN."""
    rows = read_csv(path)
    scores = np.full(len(rows), np.nan)
    for row in rows:
        scores[int(row["datasource_index"])] = float(row["influence"])
    return scores


def copy_digits(samples: Path, folder: Path, rows: Dict[str, int]) -> Dict[str, Path]:
    """The first rows of the sample digits' CSVs (``rows``: ``{"train": 40, "val": 20}``) with
    their images, copied into ``folder``: ``{name: CSV path}``. Images go to ``folder/images``
    as ``<name>_<file>``, so that the copies are the only files a run on them reads."""
    (folder / "images").mkdir(parents=True)
    files = {}
    for name, count in rows.items():
        lines = (samples / "digits" / f"{name}.csv").read_text().splitlines()
        kept = [lines[0]]
        for line in lines[1 : count + 1]:
            image, label = line.split(",")
            copy = folder / "images" / f"{name}_{Path(image).name}"
            copy.write_bytes((samples / "digits" / image).read_bytes())
            kept.append(f"images/{copy.name},{label}")
        files[name] = folder / f"{name}.csv"
        files[name].write_text("\n".join(kept) + "\n")
    return files


@contextlib.contextmanager
def full_tmpfs(mount: Path, size_kib: int, filled_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted on ``mount`` (made here), ``filled_kib`` of it taken
    by the file ``filler``: a disk that is full after a few more KiB. Mounting needs root; the
    test is skipped where it fails. Unmounted on leaving."""
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (mount / "filler").write_bytes(b"\0" * (filled_kib * 1024))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
