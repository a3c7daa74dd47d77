"""Confident models: the samples with saturating outputs against a float64 replay and against
leave-one-out retraining, and what taking the exact-arithmetic loss's gradient would cost.

1. The tabular samples with their output layer scaled x1, x1.5, x3, x10 (200 rows, batch 64,
   mode last, the plugin's defaults): the largest |logit|, Kendall's tau over the rows whose
   replayed score is at least 1e-4 of the largest, and the largest difference over the largest
   score, against the float64 replay of ``tests/float64_reference.py`` (numpy alone).
2. Leave-one-out on 200 rows (batch 64, mode exact) with the logits scaled to reach +-40 and
   +-100: tau over the rows whose true change is at least 1e-3 of the largest, and the largest
   error on one row over the largest true change, with the pass as built (training's clamped
   gradient) and with the exact-arithmetic loss of the logits (SigmoidCrossEntropy,
   log-softmax cross-entropy).

Run: ``.venv/bin/python benchmarks/confident_models.py`` (about a minute; ``--quick``: the x10 and
+-100 rows only). Writes ``confident_models.txt`` to ``--output`` (``benchmarks/output``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, samples_dir

sys.path.insert(0, str(REPO / "tests"))  # the float64 replay and the model variants

from float64_reference import Float64Chain, arrays, batch_rows  # noqa: E402
from saturated_models import logits, reaching, scaled, sigmoid_head  # noqa: E402

from nnabla_sgd_influence.arguments import InfluenceArguments  # noqa: E402
from nnabla_sgd_influence.data.datasets import load_dataset  # noqa: E402
from nnabla_sgd_influence.evaluation.ground_truth import LeaveOneOut  # noqa: E402
from nnabla_sgd_influence.evaluation.metrics import kendall_tau  # noqa: E402
from nnabla_sgd_influence.influence import graphs as graphs_module  # noqa: E402
from nnabla_sgd_influence.influence.second_order import equivalents  # noqa: E402
from nnabla_sgd_influence.influence.trials import run_trial  # noqa: E402
from nnabla_sgd_influence.nnp.model import load_model  # noqa: E402

SAMPLES = [
    ("cancer_logreg", "train.csv"),
    ("cancer_logreg_noisy", "train_noisy.csv"),
    ("cancer_mlp", "train.csv"),
    ("cancer_mlp_noisy", "train_noisy.csv"),
]


def tau_above(estimate: np.ndarray, reference: np.ndarray, floor: float) -> float:
    """Kendall's tau over the rows whose |reference| is at least ``floor`` of the largest."""
    keep = np.abs(reference) >= floor * np.abs(reference).max()
    return kendall_tau(estimate[keep], reference[keep])


def largest_difference(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(estimate - reference).max() / np.abs(reference).max())


def problem(root: Path, sample: str, csv: str, head: bool = False):
    model = load_model(root / "models" / sample / "results.nnp")
    if head:
        model = sigmoid_head(model)
    folder = root / "cancer"
    train = load_dataset(folder / csv, model.data_variables).subset(np.arange(200))
    val = load_dataset(folder / "val.csv", model.data_variables, role="input-val")
    return model, train, val


def scores(model, train, val, batch_size: int, mode: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        arguments = InfluenceArguments(batch_size=batch_size, mode=mode)
        return run_trial(model, train, val, arguments, workdir=Path(folder)).scores


def exact_arithmetic_pairs():
    """The probability losses as the loss of the logits in exact arithmetic (gradient p - t)."""
    import nnabla.functions as F

    def sigmoid(activation, activation_args, loss, loss_args):
        return F.sigmoid_cross_entropy(activation_args[0], loss_args[1])

    def softmax(activation, activation_args, loss, loss_args):
        axis = int(loss.categorical_cross_entropy_param.axis)
        return equivalents.softmax_cross_entropy(activation_args[0], loss_args[1], axis)

    return {
        **graphs_module.SATURATING_PAIRS,
        ("Sigmoid", "BinaryCrossEntropy"): sigmoid,
        ("Softmax", "CategoricalCrossEntropy"): softmax,
    }


def sweep(root: Path, factors) -> list:
    lines = [
        "1. Scaled samples against the float64 replay (200 rows, batch 64, mode last)",
        "",
        f"{'model':22} {'scale':>6} {'max |logit|':>11} {'tau':>7} {'largest difference':>19}",
    ]
    for sample, csv in SAMPLES:
        base, train, val = problem(root, sample, csv)
        for factor in factors:
            model = scaled(base, factor)
            estimate = scores(model, train, val, 64, "last")
            replay = Float64Chain(model).retrace(
                arrays(train, model), arrays(val, model), batch_rows(200, 64, 0), "last"
            )
            reach = float(np.abs(logits(model, train)).max())
            tau = tau_above(estimate, replay, 1e-4)
            difference = largest_difference(estimate, replay)
            lines.append(
                f"{sample:22} {'x' + str(factor):>6} {reach:11.1f} {tau:7.4f} {difference:19.1e}"
            )
    return lines


def leave_one_out(root: Path, reaches) -> list:
    lines = [
        "",
        "2. Leave-one-out (200 rows, batch 64, mode exact): the pass as built (training's",
        "   gradient) and with the exact-arithmetic loss of the logits",
        "",
        f"{'model':22} {'logits':>6} {'tau':>7} {'tau exact':>9} {'row error':>9} {'exact':>9}",
    ]
    cases = [
        ("cancer_logreg", "train.csv", False),
        ("cancer_logreg_noisy", "train_noisy.csv", False),
    ]
    cases += [("cancer_mlp", "train.csv", True), ("cancer_mlp_noisy", "train_noisy.csv", False)]
    for sample, csv, head in cases:
        base, train, val = problem(root, sample, csv, head)
        for reach in reaches:
            model = reaching(base, train, reach)
            truth = LeaveOneOut(model, train, val, batch_size=64, seed=0, epochs=1).changes()
            built = scores(model, train, val, 64, "exact")
            pairs = graphs_module.SATURATING_PAIRS
            graphs_module.SATURATING_PAIRS = exact_arithmetic_pairs()
            try:
                exact = scores(model, train, val, 64, "exact")
            finally:
                graphs_module.SATURATING_PAIRS = pairs
            name = sample + (" (Sigmoid)" if head else "")
            lines.append(
                f"{name:22} {'+-' + str(reach):>6} {tau_above(built, truth, 1e-3):7.3f} "
                f"{tau_above(exact, truth, 1e-3):9.3f} {largest_difference(built, truth):9.2f} "
                f"{largest_difference(exact, truth):9.2f}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="x10 and +-100 only")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "output")
    args = parser.parse_args()
    root = samples_dir()
    factors = (10,) if args.quick else (1, 1.5, 3, 10)
    reaches = (100,) if args.quick else (40, 100)
    report = "\n".join(sweep(root, factors) + leave_one_out(root, reaches)) + "\n"
    print(report, end="")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "confident_models.txt").write_text(report)


if __name__ == "__main__":
    main()
