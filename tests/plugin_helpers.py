"""Shared by the plugin tests: paths, and running a plugin script as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
IMAGE_SCRIPT = REPO / "plugins" / "sgd_influence.py"
TABULAR_SCRIPT = REPO / "plugins" / "sgd_influence_tabular.py"
COMPLETION = "SGD influence completed successfully."


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
