"""How well SGD-Influence ranks rows, measured against leave-one-out retraining.

For every row of a 200-row training set, the retraining is rerun without that row and the true
change of the mean validation loss is recorded. Prints Kendall's tau and the Jaccard index of the
10 most positive and 10 most negative rows (Hara et al. 2019, Table 1) for each model, solver and
retrace mode, as a Markdown table (also saved as ``benchmarks/output/leave_one_out.md``).

    .venv/bin/python benchmarks/leave_one_out.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnabla_sgd_influence.datasets import load_dataset  # noqa: E402
from nnabla_sgd_influence.evaluation import (  # noqa: E402
    FirstRows,
    LeaveOneOut,
    agreement_with_leave_one_out,
    reinitialized,
    with_solver,
)
from nnabla_sgd_influence.model import NnpModel, load_model  # noqa: E402

N_ROWS = 200
ADAM = {"alpha": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
OTHER_SOLVERS = {
    "Momentum": {"lr": 0.01, "momentum": 0.9},
    "Nesterov": {"lr": 0.01, "momentum": 0.9},
    "SgdW": {"lr": 0.01, "momentum": 0.9, "wd": 1e-2},
    "AdamW": {**ADAM, "wd": 1e-2},
    "AMSGRAD": ADAM,
    "Adamax": {**ADAM, "alpha": 0.002},
    "RMSprop": {"lr": 0.001, "decay": 0.9, "eps": 1e-8},
    "Adagrad": {"lr": 0.01, "eps": 1e-8},
    "Adadelta": {"lr": 1.0, "decay": 0.95, "eps": 1e-6},
}

Case = Tuple[str, str, Callable[[], tuple], int, Tuple[str, ...], bool]


def samples() -> Path:
    spec = importlib.util.spec_from_file_location(
        "build_samples", ROOT / "samples" / "build_samples.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_samples"] = module
    spec.loader.exec_module(module)
    return Path(module.build())


def problem(root: Path, model_name: str, data: str):
    model = load_model(root / "models" / model_name / "results.nnp")
    train = load_dataset(root / data / "train.csv", model.data_variables)
    val = load_dataset(root / data / "val.csv", model.data_variables, role="input-val")
    return model, FirstRows(train, N_ROWS), val


def pretrained(model: NnpModel, train, val, kind: str, hyper: dict, epochs: int) -> NnpModel:
    """``model`` trained a few epochs more with ``kind``, so that it carries that solver's state."""
    start = with_solver(model, kind, hyper)
    return LeaveOneOut(start, train, val, batch_size=32, seed=7, epochs=epochs).trained_model()


def cases(root: Path, quick: bool) -> Iterator[Case]:
    """(model, setting, problem factory, epochs, modes, compare plain SGD retrace)."""
    for name in ("cancer_logreg", "cancer_mlp"):
        yield (
            name,
            "SGD, 1 epoch from the trained model",
            lambda n=name: problem(root, n, "cancer"),
            1,
            ("exact", "last"),
            False,
        )

        def scratch(n=name):
            model, train, val = problem(root, n, "cancer")
            return reinitialized(model, seed=0), train, val

        yield name, "SGD, 10 epochs from scratch", scratch, 10, ("exact", "last"), False

    def adam_mlp():
        model, train, val = problem(root, "cancer_mlp", "cancer")
        return pretrained(model, train, val, "Adam", ADAM, 5), train, val

    yield (
        "cancer_mlp",
        "Adam, 1 epoch from an Adam-trained model",
        adam_mlp,
        1,
        (
            "exact",
            "last",
        ),
        True,
    )
    yield (
        "digits_cnn",
        "Adam + BatchNorm, 1 epoch from the trained model",
        lambda: problem(root, "digits_cnn", "digits"),
        1,
        ("exact", "last"),
        True,
    )
    if quick:
        return
    for kind, hyper in OTHER_SOLVERS.items():

        def other(kind=kind, hyper=hyper):
            model, train, val = problem(root, "cancer_mlp", "cancer")
            return pretrained(model, train, val, kind, hyper, 3), train, val

        yield "cancer_mlp", f"{kind}, 1 epoch after 3 epochs of {kind}", other, 1, ("exact",), True


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the per-solver rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = samples()
    lines = [
        f"Leave-one-out agreement on {N_ROWS} training rows (batch 64, seed 0).",
        "",
        "| model | training retraced | mode | tau | Jaccard | tau, retraced as plain SGD |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for model_name, setting, factory, epochs, modes, compare in cases(root, args.quick):
            model, train, val = factory()
            for mode in modes:
                common = dict(epochs=epochs, mode=mode, workdir=Path(work))
                result = agreement_with_leave_one_out(model, train, val, **common)
                plain = "-"
                if compare:
                    other = agreement_with_leave_one_out(
                        model, train, val, model_solver=False, **common
                    )
                    plain = f"{other.tau:.3f}"
                line = (
                    f"| {model_name} | {setting} | {mode} | {result.tau:.3f} | "
                    f"{result.jaccard:.2f} | {plain} |"
                )
                print(line, flush=True)
                lines.append(line)
    lines += ["", f"({time.perf_counter() - start:.0f} s)"]
    print(lines[-1])
    output = ROOT / "benchmarks" / "output"
    output.mkdir(parents=True, exist_ok=True)
    (output / "leave_one_out.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
