"""The README's demo: run both plugins on the noisy samples and show the rows they flag.

Each plugin script runs as a separate process, exactly as a user would type it. The samples
have 10% of their training labels flipped on purpose (``flipped_train_noisy.csv`` lists them),
so a good ranking puts flipped rows among the most harmful ones.

To stay quick the demo uses two trials (``-nt 2``, one per core); the image plugin's default is
6 trials, whose average is steadier. Each run also writes the training CSV without its worst
rows (``--remove_top``: as many as were flipped) and, for the images, a tile of the worst ones
(``--tile 32``). Output goes to ``demo_output/``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO / "demo_output"
SHOWN_ROWS = 5


@dataclass
class Case:
    """One plugin run of the demo."""

    title: str
    script: str  # relative to the repository
    model: str  # relative to samples/build
    data: str  # dataset folder, relative to samples/build
    label_column: str  # in the training CSV
    output: str  # file name in demo_output/
    extra: Tuple[str, ...] = ()  # further options of the plugin


CASES = [
    Case(
        "Image plugin: handwritten digits, 10% of the labels flipped",
        "plugins/sgd_influence.py",
        "models/digits_cnn_noisy/results.nnp",
        "digits",
        "y:label",
        "digits_influence.csv",
        ("--remove_top", "100", "--tile", "32"),
    ),
    Case(
        "Tabular plugin: breast-cancer features, 10% of the labels flipped",
        "plugins/sgd_influence_tabular.py",
        "models/cancer_mlp_noisy/results.nnp",
        "cancer",
        "y",
        "cancer_influence.csv",
        ("--remove_top", "34"),
    ),
]


def build_samples() -> Path:
    """The built samples folder (built now if missing or outdated)."""
    sys.path.insert(0, str(REPO / "samples"))
    import build_samples as builder

    return builder.build()


def read_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def relative(path: Path) -> str:
    return os.path.relpath(path, REPO)


def run_plugin(case: Case, samples: Path) -> float:
    """Run the plugin script as a user would; return its wall time in seconds."""
    data = samples / case.data
    command = [
        sys.executable,
        case.script,
        "-m",
        relative(samples / case.model),
        "-t",
        relative(data / "train_noisy.csv"),
        "-v",
        relative(data / "val.csv"),
        "-o",
        relative(OUTPUT_DIR / case.output),
        "-nt",
        "2",
        *case.extra,
    ]
    print("$ " + " ".join([relative(Path(sys.executable)), *command[1:]]), flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"demo: {case.script} failed with exit code {completed.returncode}")
    return seconds


def report(case: Case, samples: Path, seconds: float) -> None:
    """Print the most harmful rows and how many flipped rows the ranking puts on top."""
    data = samples / case.data
    train = read_rows(data / "train_noisy.csv")
    flipped = {
        int(r["index"]): r["original_label"] for r in read_rows(data / "flipped_train_noisy.csv")
    }
    ranked = read_rows(OUTPUT_DIR / case.output)

    print(f"\n{case.script} took {seconds:.1f} s; ranking in {relative(OUTPUT_DIR / case.output)}")
    print(f"The {SHOWN_ROWS} most harmful training rows (most negative influence first):")
    print(f"  {'rank':>4}  {'row':>5}  {'label':>5}  {'flipped?':<14}  influence")
    for rank, row in enumerate(ranked[:SHOWN_ROWS], start=1):
        index = int(row["datasource_index"])
        label = train[index][case.label_column]
        flag = f"yes (was {flipped[index]})" if index in flipped else "no"
        print(f"  {rank:>4}  {index:>5}  {label:>5}  {flag:<14}  {float(row['influence']):.3e}")

    k = len(flipped)
    found = sum(int(r["datasource_index"]) in flipped for r in ranked[:k])
    chance = k * k / len(train)
    print(
        f"Flipped rows among the {k} most harmful: {found} of {k} "
        f"(a random order would find about {chance:.0f})"
    )
    stem = OUTPUT_DIR / Path(case.output).stem
    for suffix in ("_cleansed.csv", "_tile.png"):
        if Path(f"{stem}{suffix}").is_file():
            print(f"Also written: {relative(Path(f'{stem}{suffix}'))}")


def main() -> int:
    samples = build_samples()
    OUTPUT_DIR.mkdir(exist_ok=True)
    print("Demo: SGD-Influence on samples with known label noise (two trials each, -nt 2).")
    timings = []
    for case in CASES:
        print(f"\n=== {case.title} ===", flush=True)
        seconds = run_plugin(case, samples)
        report(case, samples, seconds)
        timings.append((case.script, seconds))
    print("\nWall times: " + ", ".join(f"{script} {s:.1f} s" for script, s in timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
