"""Trials on every core and over MPI: the speed-up of 2 workers and of 2 MPI ranks over 1.

The image plugin runs as a user runs it, at its default of 6 trials, on 5,000 generated
28x28 digits (shifted, noisy copies of the sample digits), once with ``--workers 1``, once with
``--workers 2`` and once as ``mpirun -n 2`` (trials split over the ranks), for the sample CNN
and the real NNC model (``../shared/fixtures/nnc/``, skipped when absent). The three CSVs must
be byte-identical. Reported: wall times, the speed-ups (measured in this run, one after the
other), and the time of one MNIST-sized run (60,000 rows) extrapolated linearly in the rows.

Writes ``benchmarks/output/bench_parallel.txt`` (also printed). Run
``.venv/bin/python benchmarks/bench_parallel.py [--quick | --smoke]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import NNC_MODEL, format_table, generate_images, read_images  # noqa: E402
from bench_speed import write_image_csv as write_dataset  # noqa: E402
from common import REPO, samples_dir  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "output"
MNIST_ROWS = 60_000
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@dataclass(frozen=True)
class Settings:
    rows: int
    trials: int


FULL = Settings(5000, 6)
QUICK = Settings(1000, 6)
SMOKE = Settings(64, 2)


def mpirun() -> Optional[str]:
    beside = Path(sys.executable).with_name("mpirun")
    return str(beside) if beside.is_file() else shutil.which("mpirun")


def make_dataset(folder: Path, samples: Path, rows: int) -> Path:
    """``rows`` generated digits in ``folder/train.csv``; the samples' val.csv beside them."""
    images, labels = read_images(samples / "digits" / "train.csv")
    write_dataset(folder / "train.csv", generate_images(folder, rows, images, labels, seed=0))
    return folder / "train.csv"


def timed_run(command: List[str], env: Dict[str, str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ...: {completed.stderr[-2000:]}")
    return time.perf_counter() - started


def measure(model: Path, train: Path, val: Path, out: Path, settings: Settings) -> Dict:
    """Wall seconds of the three ways, and whether their CSVs are the same bytes."""
    base = [
        str(REPO / "plugins" / "sgd_influence.py"),
        "-m", str(model), "-t", str(train), "-v", str(val), "-nt", str(settings.trials),
    ]  # fmt: skip
    env = {**os.environ, **MPI_ENV}
    one = [sys.executable, *base, "-o", str(out / "one.csv"), "--workers", "1"]
    two = [sys.executable, *base, "-o", str(out / "two.csv"), "--workers", "2"]
    seconds = {"1 process": timed_run(one, env), "2 workers": timed_run(two, env)}
    ranks = mpirun()
    if ranks is not None:
        command = [ranks, "-n", "2", sys.executable, *base, "-o", str(out / "mpi.csv")]
        seconds["2 MPI ranks"] = timed_run(command + ["--workers", "1"], env)
    reference = (out / "one.csv").read_bytes()
    others = [out / name for name in ("two.csv", "mpi.csv") if (out / name).exists()]
    same = all(path.read_bytes() == reference for path in others)
    return {"seconds": seconds, "identical": same}


def rows_of(name: str, result: Dict, settings: Settings) -> List[List[str]]:
    seconds = result["seconds"]
    single = seconds["1 process"]
    scale = MNIST_ROWS / settings.rows
    rows = []
    for way, value in seconds.items():
        rows.append(
            [
                name if way == "1 process" else "",
                way,
                f"{value:.1f}",
                f"{single / value:.2f}x",
                f"{value * scale / 60:.1f}",
            ]
        )
    return rows


def report(results: Dict[str, Dict], settings: Settings, seconds: float) -> str:
    lines = [
        f"Trials in parallel: the image plugin, {settings.trials} trials, {settings.rows:,} rows "
        f"(batch 32), on {os.cpu_count()} CPU cores; wall seconds of whole runs, one after the "
        "other in this run",
        "",
    ]
    table = [row for name, result in results.items() for row in rows_of(name, result, settings)]
    headers = ["model", "run", "seconds", "speed-up", f"min at {MNIST_ROWS:,} rows (extrapolated)"]
    lines += format_table(headers, table)
    lines += [
        "",
        "   speed-up: the 1-process run's seconds / this run's. Extrapolated: seconds x "
        f"{MNIST_ROWS:,} / {settings.rows:,}",
        "   (the cost is linear in the rows: steps per epoch, and images decoded once).",
        "   CSVs byte-identical across the runs: "
        + ", ".join(f"{name} {'yes' if r['identical'] else 'NO'}" for name, r in results.items()),
        "",
        f"wall time: {seconds:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1,000 rows")
    size.add_argument("--smoke", action="store_true", help="64 rows, 2 trials (the tests)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    started = time.perf_counter()
    samples = samples_dir()
    models = {"digits_cnn": samples / "models" / "digits_cnn" / "results.nnp"}
    if NNC_MODEL.is_file() and not args.smoke:
        models["nnc_fashion_mnist_cnn"] = NNC_MODEL
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as folder:
        train = make_dataset(Path(folder), samples, settings.rows)
        for name, model in models.items():
            out = Path(folder) / name
            out.mkdir()
            print(f"{name}: 3 runs ...", file=sys.stderr, flush=True)
            results[name] = measure(model, train, samples / "digits" / "val.csv", out, settings)
    text = report(results, settings, time.perf_counter() - started)
    print(text, end="")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_parallel.txt").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
