"""The seed range (``arguments.py``), memory checked before the work (``runtime/limits.py``),
and a run under a memory limit (``ulimit -v``)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from plugin_helpers import IMAGE_SCRIPT, REPO, copy_digits, plugin_env, read_csv

from nnabla_sgd_influence.arguments import SEED_MAX, InfluenceArguments
from nnabla_sgd_influence.errors import OUT_OF_MEMORY, InfluenceError, is_out_of_memory
from nnabla_sgd_influence.runtime.limits import check_memory, physical_memory


def check_seeds(seed: int, n_trials: int) -> None:
    InfluenceArguments(seed=seed, n_trials=n_trials)


def test_the_seed_range_is_what_nnabla_and_numpy_accept():
    import nnabla as nn

    for seed in (0, SEED_MAX):
        nn.seed(seed)
        np.random.RandomState(seed)
    with pytest.raises(OverflowError):
        nn.seed(SEED_MAX + 1)
    with pytest.raises(ValueError):
        nn.seed(-1)


@pytest.mark.parametrize(
    "seed, trials, words",
    [
        (-1, 1, "seed must be in [0, 2147483647], got -1"),
        (2**31, 1, "got 2147483648"),
        (2**32, 1, "got 4294967296"),
        (SEED_MAX, 2, "needs seeds up to 2147483648"),
        (0, 0, "n_trials must be a positive integer"),
    ],
)
def test_seeds_out_of_range_are_refused(seed, trials, words):
    with pytest.raises(InfluenceError) as caught:
        check_seeds(seed, trials)
    assert words in str(caught.value)


def test_seeds_in_range_pass():
    check_seeds(0, 6)
    check_seeds(SEED_MAX, 1)
    check_seeds(SEED_MAX - 5, 6)


def test_memory_beyond_the_machine_is_refused():
    available = physical_memory()
    assert available is None or available > 0
    check_memory(1 << 20, "a small cache")
    with pytest.raises(InfluenceError, match="the image cache of input-train needs .* PB"):
        check_memory(1e18, "the image cache of input-train")


# --------------------------------------------------------------------------------------
# Running out of memory: one line and nothing written, or a whole run; never a hang


def test_out_of_memory_is_told_from_other_failures():
    try:
        try:
            raise ImportError("/x/_generator.so: failed to map segment from shared object")
        except ImportError as cause:
            raise ImportError(
                "Error importing numpy: you should not try to import numpy"
            ) from cause
    except ImportError as numpy_error:
        assert is_out_of_memory(numpy_error)
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert is_out_of_memory(RuntimeError("can't start new thread"))
    assert not is_out_of_memory(ImportError("No module named 'pandas'"))
    assert not is_out_of_memory(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_out_of_memory(RuntimeError("boom"))


_ROOM = """
import re, resource, sys
sys.path.insert(0, {repo!r})
from nnabla_sgd_influence.runtime.limits import OPENBLAS_LOAD_BYTES, check_room
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) << 10
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20,) * 2)
try:
    check_room(OPENBLAS_LOAD_BYTES, "load a library")
except MemoryError as error:
    print(error)
else:
    print("room")
"""


@pytest.mark.system
@pytest.mark.parametrize("spare, printed", [(64, "no room left"), (256, "room")])
def test_a_library_is_loaded_only_with_room_for_it(spare, printed):
    """OpenBLAS retries a failed allocation forever while it loads: check for room first."""
    completed = subprocess.run(
        [sys.executable, "-c", _ROOM.format(repo=str(REPO)), str(spare)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(printed), completed.stdout


def _small_image_inputs(samples: Path, folder: Path) -> Dict[str, Path]:
    """40 training and 20 validation digits with their images in ``folder``, and the model."""
    files = {"model": samples / "models" / "digits_cnn" / "results.nnp"}
    files.update(copy_digits(samples, folder, {"train": 40, "val": 20}))
    return files


# Address-space limits (MiB) around where a run of two trials on two workers, with the tile
# and the cleansed CSV, stops fitting: before, 300-500 wrote the outputs and then failed to
# import scipy (exit 2) or hung in OpenBLAS's start; 200-250 failed with exit 2 at once.
LIMITS_MIB = (250, 300, 350, 400, 450, 500, 4000)


@pytest.mark.system
@pytest.mark.parametrize(
    "limits",
    [
        pytest.param((250, 350, 450, 4000), id="4-limits"),
        pytest.param(LIMITS_MIB, id="7-limits", marks=pytest.mark.slow),
    ],
)
def test_a_memory_limit_gives_a_whole_run_or_one_line(samples_dir, tmp_path, limits):
    files = _small_image_inputs(samples_dir, tmp_path / "inputs")
    started = {}
    for mib in limits:
        out = tmp_path / f"limit_{mib}"
        out.mkdir()
        args = ["-m", files["model"], "-t", files["train"], "-v", files["val"]]
        args += ["-o", out / "o.csv", "-nt", 2, "--workers", 2, "-bs", 10]
        args += ["--tile", 3, "--remove_top", 3]

        def limit(size=mib << 20):
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

        started[mib] = subprocess.Popen(
            [sys.executable, str(IMAGE_SCRIPT), *map(str, args)],
            cwd=str(out),
            env=plugin_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit,
            start_new_session=True,
        )
    outcomes = {}
    try:
        for mib, process in started.items():
            _, stderr = process.communicate(timeout=600)  # a hang fails here
            outcomes[mib] = (process.returncode, stderr)
    finally:
        for process in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    for mib, (code, stderr) in outcomes.items():
        out = tmp_path / f"limit_{mib}"
        lines = [
            line
            for line in stderr.replace("\r", "\n").splitlines()
            if line.strip()
            and "[INFO]" not in line
            and "Level 99" not in line
            and "it/s" not in line
            and "s/it" not in line
        ]
        assert code in (0, 1), f"{mib} MiB: exit {code}: {stderr[-2000:]}"
        if code == 1:
            assert lines == [OUT_OF_MEMORY], f"{mib} MiB: {lines}"
            assert list(out.iterdir()) == [], f"{mib} MiB: left {list(out.iterdir())}"
        else:
            assert lines == [], f"{mib} MiB: {lines}"
            assert sorted(p.name for p in out.iterdir()) == [
                "o.csv",
                "o_cleansed.csv",
                "o_tile.png",
            ]
            assert len(read_csv(out / "o.csv")) == 40
            assert len(read_csv(out / "o_cleansed.csv")) == 37
            assert (out / "o_tile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    codes = {mib: code for mib, (code, _) in outcomes.items()}
    assert codes[limits[0]] == 1 and codes[limits[-1]] == 0, codes
