"""One command from a noisy dataset to a cleaner one, and what retraining on it gives.

For each noisy sample (10 % of its training labels flipped) the plugin runs as a user runs it,
with ``--remove_top K`` (K = the number of flipped rows) and, for images, ``--tile 32``; it
writes the ranking with ``influence_std``, ``<output>_cleansed.csv`` and the tile. Then the
sample's own recipe (``samples/build_samples.py``: architecture, initialization, solver,
learning rate, batch size, epochs) trains a fresh model on the uncleaned training CSV and on
the cleansed one, for several seeds, and both are scored on ``test.csv``.

Writes ``benchmarks/output/cleansed_retraining.md`` (also printed) and the plugins' outputs in
``benchmarks/output/cleansed/``. Run ``.venv/bin/python benchmarks/cleansed_retraining.py``
(``--smoke`` for the test suite's short run).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, samples_dir  # noqa: E402

sys.path.insert(0, str(REPO / "samples"))
import build_samples  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "output"


@dataclass(frozen=True)
class Case:
    model: str  # a noisy sample model; its recipe is build_samples.MODEL_SPECS'
    script: str
    trials: int
    tile: int


CASES = (
    Case("digits_cnn_noisy", "plugins/sgd_influence.py", 6, 32),
    Case("cancer_mlp_noisy", "plugins/sgd_influence_tabular.py", 6, 0),
    Case("cancer_logreg_noisy", "plugins/sgd_influence_tabular.py", 6, 0),
)


@dataclass(frozen=True)
class Settings:
    seeds: Tuple[int, ...]  # of the retrainings from scratch
    cases: Tuple[Case, ...]


FULL = Settings(tuple(range(5)), CASES)
SMOKE = Settings((0,), (dataclasses.replace(CASES[2], trials=2),))


def recipe(name: str):
    return next(spec for spec in build_samples.MODEL_SPECS if spec.name == name)


def run_plugin(case: Case, samples: Path, folder: Path, remove_top: int) -> Path:
    """Run the plugin script as a user would; return its output CSV."""
    spec = recipe(case.model)
    data = samples / spec.dataset
    output = folder / f"{case.model}_influence.csv"
    command = [
        sys.executable,
        str(REPO / case.script),
        "-m", str(samples / "models" / case.model / "results.nnp"),
        "-t", str(data / spec.train_csv),
        "-v", str(data / "val.csv"),
        "-o", str(output),
        "-nt", str(case.trials),
        "-bs", str(spec.batch_size),
        "--remove_top", str(remove_top),
    ]  # fmt: skip
    if case.tile:
        command += ["--tile", str(case.tile)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if completed.returncode != 0:
        raise RuntimeError(f"{case.script} failed: {completed.stderr[-2000:]}")
    return output


def test_accuracy(spec, train_csv: Path, test_csv: Path, seed: int) -> float:
    """Train a fresh model with the sample's recipe (seed changed) and score it on test_csv."""
    import nnabla as nn

    spec = dataclasses.replace(spec, seed=spec.seed + seed)
    x, y = build_samples.read_dataset(train_csv)
    x_test, y_test = build_samples.read_dataset(test_csv)
    nn.clear_parameters()
    nn.random.seed(spec.seed)
    graphs = build_samples.build_graphs(spec.arch, x.shape[1:], spec.batch_size)
    build_samples.train(spec, graphs, x, y)
    runtime = build_samples.build_graphs(spec.arch, x.shape[1:], len(x_test)).runtime
    runtime["Input"].d = x_test
    runtime["output"].forward(clear_buffer=True)
    predicted = build_samples.predict_labels(runtime["output"].d.copy())
    nn.clear_parameters()
    return float(np.mean(predicted == y_test[:, 0].astype(np.int64)))


def flipped_rows(samples: Path, dataset: str) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(samples / dataset / "flipped_train_noisy.csv")["index"].to_numpy()


def removed_rows(output: Path, k: int) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(output)["datasource_index"].to_numpy()[:k]


def mean_std(values: Sequence[float]) -> str:
    values = 100.0 * np.asarray(values)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.2f} ± {std:.2f}"


def run_case(case: Case, samples: Path, folder: Path, settings: Settings) -> List[str]:
    spec = recipe(case.model)
    flipped = flipped_rows(samples, spec.dataset)
    output = run_plugin(case, samples, folder, remove_top=len(flipped))
    cleansed = output.with_name(f"{output.stem}_cleansed.csv")
    test_csv = samples / spec.dataset / "test.csv"
    noisy = [
        test_accuracy(spec, samples / spec.dataset / spec.train_csv, test_csv, s)
        for s in settings.seeds
    ]
    clean = [test_accuracy(spec, cleansed, test_csv, s) for s in settings.seeds]
    hits = int(np.isin(removed_rows(output, len(flipped)), flipped).sum())
    n_rows = len(build_samples.read_dataset(samples / spec.dataset / spec.train_csv)[0])
    return [
        case.model,
        str(case.trials),
        f"{len(flipped)} of {n_rows}",
        f"{hits} of {len(flipped)}",
        mean_std(noisy),
        mean_std(clean),
    ]


def report(rows: List[List[str]], settings: Settings, seconds: float) -> str:
    headers = [
        "sample",
        "trials",
        "rows removed (--remove_top)",
        "flipped among them",
        "test accuracy %, uncleaned",
        "test accuracy %, cleansed",
    ]
    lines = [
        "# Retraining on the cleansed training CSV",
        "",
        "One plugin run per sample writes the ranking, `<output>_cleansed.csv` and (images) the "
        "tile; a fresh model is then trained with the sample's own recipe on each CSV. Test "
        f"accuracy: mean ± standard deviation over {len(settings.seeds)} training seed(s).",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"Wall time: {seconds:.0f} s",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tabular sample, one seed")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    settings = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    samples = samples_dir()
    folder = args.output / "cleansed"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in settings.cases:
        print(f"{case.model}: ranking, cleansing and retraining ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, samples, folder, settings))
    text = report(rows, settings, time.perf_counter() - started)
    print(text, end="")
    (args.output / "cleansed_retraining.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
