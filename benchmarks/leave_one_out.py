"""How well SGD-Influence ranks rows, measured against leave-one-out retraining.

For every row of a 200-row training set, the retraining is rerun without that row and the true
change of the mean validation loss is recorded. Prints Kendall's tau and the Jaccard index of the
10 most positive and 10 most negative rows (Hara et al. 2019, Table 1) for each model, solver and
retrace mode, as a Markdown table (also saved as ``benchmarks/output/leave_one_out.md``).

    .venv/bin/python benchmarks/leave_one_out.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO as ROOT  # noqa: E402
from common import samples_dir  # noqa: E402

from nnabla_sgd_influence import InfluenceArguments, NnpModel, load_dataset, load_model, run_trial
from nnabla_sgd_influence.evaluation.agreement import agreement_with_leave_one_out  # noqa: E402
from nnabla_sgd_influence.evaluation.ground_truth import LeaveOneOut  # noqa: E402
from nnabla_sgd_influence.evaluation.variants import reinitialized, trained_further, with_solver

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


@dataclass
class Case:
    model: str
    setting: str  # what is retrained and retraced
    problem: Callable[[], tuple]  # -> (model, train, val)
    epochs: int
    modes: Tuple[str, ...]
    compare_plain_sgd: bool  # also retrace as if the solver were plain SGD


def problem(root: Path, model_name: str, data: str):
    model = load_model(root / "models" / model_name / "results.nnp")
    train = load_dataset(root / data / "train.csv", model.data_variables)
    val = load_dataset(root / data / "val.csv", model.data_variables, role="input-val")
    return model, train.subset(np.arange(N_ROWS)), val


def pretrained(model: NnpModel, train, val, kind: str, hyper: dict, epochs: int) -> NnpModel:
    """``model`` trained a few epochs more with ``kind``, so that it carries that solver's state."""
    start = with_solver(model, kind, hyper)
    return trained_further(start, train, batch_size=32, seed=7, epochs=epochs)


def cases(root: Path, quick: bool) -> Iterator[Case]:
    both = ("exact", "last")
    for name in ("cancer_logreg", "cancer_mlp"):
        trained = partial(problem, root, name, "cancer")
        yield Case(name, "SGD, 1 epoch from the trained model", trained, 1, both, False)
        scratch = partial(_reinitialized, trained)
        yield Case(name, "SGD, 10 epochs from scratch", scratch, 10, both, False)

    adam_mlp = partial(_pretrained, partial(problem, root, "cancer_mlp", "cancer"), "Adam", ADAM, 5)
    yield Case("cancer_mlp", "Adam, 1 epoch from an Adam-trained model", adam_mlp, 1, both, True)

    cnn = partial(problem, root, "digits_cnn", "digits")
    setting = "Adam (eps 1e-8) + BatchNorm, 1 epoch from the trained model"
    yield Case("digits_cnn", setting, cnn, 1, both, True)
    small_sgd = partial(_with_solver, cnn, "Sgd", {"lr": 0.002})
    setting = "SGD lr 0.002 + BatchNorm, 1 epoch from the trained model"
    yield Case("digits_cnn", setting, small_sgd, 1, ("exact",), False)
    smooth_adam = partial(_pretrained, cnn, "Adam", {**ADAM, "eps": 1e-4}, 2)
    setting = "Adam (eps 1e-4) + BatchNorm, 1 epoch after 2 epochs of it"
    yield Case("digits_cnn", setting, smooth_adam, 1, ("exact",), True)
    if quick:
        return
    mlp = partial(problem, root, "cancer_mlp", "cancer")
    for kind, hyper in OTHER_SOLVERS.items():
        setting = f"{kind}, 1 epoch after 3 epochs of {kind}"
        yield Case(
            "cancer_mlp", setting, partial(_pretrained, mlp, kind, hyper, 3), 1, ("exact",), True
        )


def _reinitialized(load: Callable[[], tuple]) -> tuple:
    model, train, val = load()
    return reinitialized(model, seed=0), train, val


def _with_solver(load: Callable[[], tuple], kind: str, hyper: dict) -> tuple:
    model, train, val = load()
    return with_solver(model, kind, hyper), train, val


def _pretrained(load: Callable[[], tuple], kind: str, hyper: dict, epochs: int) -> tuple:
    model, train, val = load()
    return pretrained(model, train, val, kind, hyper, epochs), train, val


def linearity_of_the_truth(root: Path, work: Path) -> List[str]:
    """For the sample CNN under its own Adam: is a row's effect linear in its weight?

    Compares removing the row (weight 0) with ten times the effect of weight 0.9, for the rows
    with the most negative, the most positive and middling estimates.
    """
    model, train, val = problem(root, "digits_cnn", "digits")
    truth = LeaveOneOut(model, train, val, batch_size=64, seed=0, epochs=1)
    base = truth.validation_loss()
    arguments = InfluenceArguments(batch_size=64, seed=0, mode="exact")
    scores = run_trial(model, train, val, arguments, workdir=work).scores
    order = np.argsort(scores)
    rows = list(order[:3]) + list(order[N_ROWS // 2 : N_ROWS // 2 + 3]) + list(order[-3:])
    lines = [
        "Linearity of the ground truth, digits_cnn with its Adam (eps 1e-8), 1 epoch:",
        "",
        "| row | estimate | removed (weight 0) | 10 x (weight 0.9) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        removed = truth.validation_loss(row) - base
        tenth = 10 * (truth.validation_loss(row, weight=0.9) - base)
        lines.append(f"| {row} | {scores[row]:.2e} | {removed:.2e} | {tenth:.2e} |")
    print("\n".join(lines), flush=True)
    return lines


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the per-solver rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = samples_dir()
    lines = [
        f"Leave-one-out agreement on {N_ROWS} training rows (batch 64, seed 0).",
        "",
        "| model | training retraced | mode | tau | Jaccard | tau, retraced as plain SGD |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for case in cases(root, args.quick):
            model, train, val = case.problem()
            for mode in case.modes:
                common = dict(epochs=case.epochs, mode=mode, workdir=Path(work))
                result = agreement_with_leave_one_out(model, train, val, **common)
                plain = "-"
                if case.compare_plain_sgd:
                    other = agreement_with_leave_one_out(
                        model, train, val, retrace_as_sgd=True, **common
                    )
                    plain = f"{other.tau:.3f}"
                line = (
                    f"| {case.model} | {case.setting} | {mode} | {result.tau:.3f} | "
                    f"{result.jaccard:.2f} | {plain} |"
                )
                print(line, flush=True)
                lines.append(line)
        lines += ["", *linearity_of_the_truth(root, Path(work))]
    lines += ["", f"({time.perf_counter() - start:.0f} s)"]
    print(lines[-1])
    output = ROOT / "benchmarks" / "output"
    output.mkdir(parents=True, exist_ok=True)
    (output / "leave_one_out.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
