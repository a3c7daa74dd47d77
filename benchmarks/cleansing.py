"""Data cleansing with SGD-Influence on the noisy samples (Hara et al. 2019, Section 5.2).

For each noisy sample model: rank the training rows with SGD-Influence (one trial of one epoch,
mode ``last``, seed s), remove the m most harmful rows (most negative influence), retrain from
the ``.nnp``'s parameters and solver state with the same solver, batch size and seed for as many
epochs as the sample was trained (``--epochs`` to change), and measure test accuracy; compare
with removing m random rows and the m rows of highest training loss. Averaged over seeds, with
standard deviations. Also: the share of flipped rows among the k most harmful rows (k = number
of flipped rows) for each ranking.

Writes to ``benchmarks/output/``: ``cleansing.md`` (the tables, also printed),
``cleansing_<model>.png`` (test accuracy vs m) and ``harmful_digits.png`` (the 32 most harmful
digits images). Run ``.venv/bin/python benchmarks/cleansing.py [--quick] [--output DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, samples_dir  # noqa: E402

from nnabla_sgd_influence import (
    Dataset,
    InfluenceArguments,
    NnpModel,
    load_dataset,
    load_model,
    run_trial,
)
from nnabla_sgd_influence.influence.graphs import GraphCache, build_loss_graph  # noqa: E402
from nnabla_sgd_influence.influence.parameters import ParameterSet  # noqa: E402
from nnabla_sgd_influence.influence.training import retrain  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "output"
METHODS = ("SGD-Influence", "random", "training loss")
TILE_IMAGES = 32
RANDOM_STREAM = 20190608  # keeps the random rankings apart from the samples' own seeds


@dataclass(frozen=True)
class Case:
    """One noisy sample model and its data."""

    model: str  # folder under samples/build/models
    data: str  # folder under samples/build
    batch_size: int  # the plugin's default for this kind of data (image 32, tabular 64)


CASES = (
    Case("digits_cnn_noisy", "digits", 32),
    Case("cancer_mlp_noisy", "cancer", 64),
    Case("cancer_logreg_noisy", "cancer", 64),
)


@dataclass(frozen=True)
class Settings:
    seeds: Tuple[int, ...]
    removals: Tuple[int, ...]  # m values; those >= half the training rows are skipped
    epochs: Optional[int]  # of the retraining after removal; None: as the sample was trained


FULL = Settings(seeds=tuple(range(5)), removals=(0, 10, 20, 50, 100, 200), epochs=None)
QUICK = Settings(seeds=(0, 1), removals=(0, 20, 100), epochs=2)
SMOKE = Settings(seeds=(0,), removals=(0, 20), epochs=1)  # the least that runs every part


# --------------------------------------------------------------------------------------
# Data


@dataclass
class LoadedCase:
    case: Case
    model: NnpModel
    train: Dataset
    val: Dataset
    test: Dataset
    flipped: np.ndarray  # 0-based rows of the training CSV whose label was flipped
    original_labels: Dict[int, int]  # flipped row -> label before flipping
    trained_epochs: int  # epochs the sample model was trained for (its metrics.json)


def read_flipped(path: Path) -> Tuple[np.ndarray, Dict[int, int]]:
    """Rows listed in ``flipped_train_noisy.csv`` and their original labels."""
    import pandas as pd

    table = pd.read_csv(path)
    rows = table["index"].to_numpy(dtype=np.intp)
    return rows, dict(zip(rows.tolist(), table["original_label"].astype(int).tolist()))


def load_case(case: Case, samples: Path) -> LoadedCase:
    """Model, noisy training set, validation and test sets, and the flipped rows."""
    model = load_model(samples / "models" / case.model / "results.nnp")
    folder = samples / case.data

    def read(name: str, role: str) -> Dataset:
        return load_dataset(folder / name, model.data_variables, model.normalize_images, role)

    flipped, original = read_flipped(folder / "flipped_train_noisy.csv")
    metrics = json.loads((samples / "models" / case.model / "metrics.json").read_text())
    return LoadedCase(
        case=case,
        model=model,
        train=read("train_noisy.csv", "input-train"),
        val=read("val.csv", "input-val"),
        test=read("test.csv", "input-test"),
        flipped=flipped,
        original_labels=original,
        trained_epochs=int(metrics["epochs"]),
    )


# --------------------------------------------------------------------------------------
# Rankings (most harmful first)


def influence_scores(loaded: LoadedCase, seed: int) -> np.ndarray:
    """SGD-Influence of every training row: one trial, one epoch, mode last."""
    arguments = InfluenceArguments(batch_size=loaded.case.batch_size, seed=seed, mode="last")
    return run_trial(loaded.model, loaded.train, loaded.val, arguments).scores


def harmful_first(scores: np.ndarray) -> np.ndarray:
    """Rows by influence, most negative (removing it lowers the validation loss) first."""
    return np.argsort(np.asarray(scores), kind="stable")


def random_order(n_rows: int, seed: int) -> np.ndarray:
    """A random ranking of ``n_rows`` rows.

    Drawn from its own stream: ``RandomState(1).permutation`` is how the samples chose the rows
    to flip, so a plain ``RandomState(seed)`` would "find" them for seed 1.
    """
    return np.random.default_rng([RANDOM_STREAM, seed]).permutation(n_rows)


def highest_loss_first(losses: np.ndarray) -> np.ndarray:
    """Rows by their own training loss, highest first."""
    return np.argsort(-np.asarray(losses), kind="stable")


def flipped_share(order: np.ndarray, flipped: np.ndarray, k: Optional[int] = None) -> float:
    """Share of flipped rows among the first ``k`` rows of ``order`` (default: k = #flipped)."""
    k = len(flipped) if k is None else k
    if k == 0:
        return 0.0
    return len(set(np.asarray(order)[:k].tolist()) & set(np.asarray(flipped).tolist())) / k


def flipped_count(removed: np.ndarray, flipped: np.ndarray) -> int:
    """How many of the ``removed`` rows were flipped."""
    return int(np.isin(removed, flipped).sum())


# --------------------------------------------------------------------------------------
# Evaluation network: per-row losses and predictions


def prediction_head(model: NnpModel) -> Tuple[str, str]:
    """(variable fed to the loss, loss type) in the evaluation network."""
    name = model.eval_network
    network = next(n for n in model.proto.network if n.name == name)
    for function in network.function:
        if model.loss_variables[0] in function.output:
            return function.input[0], function.type
    raise ValueError(f"{model.path}: no function of '{name}' computes the loss")


def predicted_labels(scores: np.ndarray, loss_type: str) -> np.ndarray:
    """Class per row from the loss input: argmax, or a threshold for binary heads."""
    if loss_type == "BinaryCrossEntropy":
        return (scores.reshape(len(scores)) > 0.5).astype(np.int64)
    if loss_type == "SigmoidCrossEntropy":
        return (scores.reshape(len(scores)) > 0.0).astype(np.int64)
    return np.argmax(scores.reshape(len(scores), -1), axis=1)


class Evaluator:
    """The evaluation network over a whole dataset, on shared parameters."""

    def __init__(self, model: NnpModel, params: ParameterSet, data: Dataset) -> None:
        self.graph = build_loss_graph(model, params, len(data), training=False)
        self.head, self.loss_type = prediction_head(model)
        self.graph.feed(data.batch(np.arange(len(data))))
        self.labels = np.asarray(data.labels()).reshape(len(data)).astype(np.int64)

    def losses(self) -> np.ndarray:
        """Each row's loss at the current parameters."""
        self.graph.per_sample_loss.forward(clear_buffer=True)
        return self.graph.per_sample_loss.d.copy()

    def accuracy(self) -> float:
        """Share of rows whose predicted class equals the label."""
        head = self.graph.outputs[self.head]
        head.forward(clear_buffer=True)
        return float(np.mean(predicted_labels(head.d, self.loss_type) == self.labels))


# --------------------------------------------------------------------------------------
# Retraining without the removed rows


def retrain_without(
    loaded: LoadedCase,
    graphs: GraphCache,
    removed: np.ndarray,
    seed: int,
    epochs: int,
) -> None:
    """Retrain from the ``.nnp`` (parameters and solver state) on the rows not removed."""
    graphs.params.reset()
    kept = np.setdiff1d(np.arange(len(loaded.train)), removed)
    retrain(
        graphs,
        loaded.model.solver,
        loaded.train.subset(kept),
        batch_size=loaded.case.batch_size,
        seed=seed,
        epochs=epochs,
    )


@dataclass
class CaseResult:
    """Everything measured for one model."""

    name: str
    n_rows: int
    n_flipped: int
    removals: List[int]
    epochs: int  # of each retraining after removal
    # method -> m -> per-seed test accuracy / flipped rows among the removed
    accuracy: Dict[str, Dict[int, List[float]]] = field(default_factory=dict)
    removed_flipped: Dict[str, Dict[int, List[int]]] = field(default_factory=dict)
    influence_shares: List[float] = field(default_factory=list)  # per seed
    random_shares: List[float] = field(default_factory=list)  # per seed
    mean_score_share: float = 0.0  # ranking by the seeds' mean scores
    loss_share: float = 0.0
    mean_scores: Optional[np.ndarray] = None


def rankings(loaded: LoadedCase, scores: np.ndarray, losses: np.ndarray, seed: int):
    """The three orders of the training rows compared, most harmful first."""
    return {
        "SGD-Influence": harmful_first(scores),
        "random": random_order(len(loaded.train), seed),
        "training loss": highest_loss_first(losses),
    }


def run_seed(
    loaded: LoadedCase,
    graphs: GraphCache,
    evaluator: Evaluator,
    losses: np.ndarray,
    seed: int,
    result: CaseResult,
) -> np.ndarray:
    """Rank with seed ``seed``, remove and retrain for every m; return the influence scores."""
    scores = influence_scores(loaded, seed)
    orders = rankings(loaded, scores, losses, seed)
    result.influence_shares.append(flipped_share(orders["SGD-Influence"], loaded.flipped))
    result.random_shares.append(flipped_share(orders["random"], loaded.flipped))
    baseline = None
    for m in result.removals:
        for method, order in orders.items():
            if m == 0 and baseline is not None:
                accuracy = baseline  # nothing removed: the same run for every method
            else:
                retrain_without(loaded, graphs, order[:m], seed, result.epochs)
                accuracy = evaluator.accuracy()
                baseline = accuracy if m == 0 else baseline
            result.accuracy.setdefault(method, {}).setdefault(m, []).append(accuracy)
            count = flipped_count(order[:m], loaded.flipped)
            result.removed_flipped.setdefault(method, {}).setdefault(m, []).append(count)
    return scores


def run_case(loaded: LoadedCase, settings: Settings) -> CaseResult:
    """The whole experiment for one model."""
    n_rows = len(loaded.train)
    graphs = GraphCache(loaded.model, ParameterSet(loaded.model))
    losses = Evaluator(loaded.model, graphs.params, loaded.train).losses()
    evaluator = Evaluator(loaded.model, graphs.params, loaded.test)
    result = CaseResult(
        name=loaded.case.model,
        n_rows=n_rows,
        n_flipped=len(loaded.flipped),
        removals=[m for m in settings.removals if m < n_rows / 2],
        epochs=settings.epochs or loaded.trained_epochs,
    )
    all_scores = [
        run_seed(loaded, graphs, evaluator, losses, seed, result) for seed in settings.seeds
    ]
    result.mean_scores = np.mean(all_scores, axis=0)
    result.mean_score_share = flipped_share(harmful_first(result.mean_scores), loaded.flipped)
    result.loss_share = flipped_share(highest_loss_first(losses), loaded.flipped)
    return result


# --------------------------------------------------------------------------------------
# Report


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample standard deviation over seeds)."""
    values = np.asarray(values, dtype=float) * scale
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def accuracy_table(result: CaseResult) -> List[str]:
    """Test accuracy (%) per m and method, with the flipped rows among the removed."""
    headers = ["m"]
    for method in METHODS:
        headers += [f"{method} acc. %", "flipped removed"]
    rows = []
    for m in result.removals:
        row = [str(m)]
        for method in METHODS:
            row.append(mean_std(result.accuracy[method][m], scale=100.0))
            row.append(mean_std(result.removed_flipped[method][m], digits=1))
        rows.append(row)
    return markdown_table(headers, rows)


def share_table(results: Sequence[CaseResult], n_seeds: int) -> List[str]:
    """Share of flipped rows among the k most harmful, per ranking."""
    headers = [
        "model",
        "rows N",
        "flipped k",
        f"SGD-Influence (per trial, {n_seeds} seeds)",
        "SGD-Influence (mean of trials' scores)",
        "random (expected k/N)",
        "random (drawn)",
        "training loss",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                str(r.n_rows),
                str(r.n_flipped),
                mean_std(r.influence_shares, digits=3),
                f"{r.mean_score_share:.3f}",
                f"{r.n_flipped / r.n_rows:.3f}",
                mean_std(r.random_shares, digits=3),
                f"{r.loss_share:.3f}",
            ]
        )
    return markdown_table(headers, rows)


def report_lines(results: Sequence[CaseResult], settings: Settings, size: str) -> List[str]:
    """The whole Markdown report."""
    lines = [
        f"# Data cleansing on the noisy samples ({size} run)",
        "",
        f"Ranking: SGD-Influence, 1 epoch, mode last, one trial per seed; seeds "
        f"{', '.join(map(str, settings.seeds))}. After removing m rows: retraining from the "
        ".nnp's parameters and solver state with the same solver, batch size and seed, for "
        "as many epochs as the sample model was trained (unless --epochs says otherwise). "
        "Test accuracy on test.csv, mean ± standard deviation over the seeds; 'flipped "
        "removed': how many of the m removed rows had a flipped label.",
    ]
    for result in results:
        lines += [
            "",
            f"## {result.name}: test accuracy after removing m rows "
            f"(retrained {result.epochs} epochs)",
            "",
        ]
        lines += accuracy_table(result)
    lines += [
        "",
        "## Flipped rows among the k most harmful (k = number of flipped rows)",
        "",
    ]
    lines += share_table(results, len(settings.seeds))
    return lines


def plot_accuracy(result: CaseResult, path: Path) -> None:
    """Test accuracy vs m for every method, with standard-deviation error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for offset, method in zip((-0.8, 0.0, 0.8), METHODS):
        values = [np.asarray(result.accuracy[method][m]) * 100 for m in result.removals]
        axes.errorbar(
            np.asarray(result.removals) + offset,
            [v.mean() for v in values],
            yerr=[v.std(ddof=1) if len(v) > 1 else 0.0 for v in values],
            marker="o",
            capsize=3,
            label=method,
        )
    axes.set_xlabel("training rows removed (m)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{result.name}: removing the m most harmful rows")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def tile_caption(row: int, label: int, original: Optional[int], score: float) -> str:
    """Row, label, whether it was flipped (and from what), and the influence score."""
    flag = "not flipped" if original is None else f"flipped (was {original})"
    return f"row {row}: y={label}\n{flag}\n{score:.2e}"


def plot_harmful_tile(loaded: LoadedCase, scores: np.ndarray, path: Path) -> None:
    """The most harmful training images with label, flipped flag and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = loaded.train.image_paths()
    labels = loaded.train.labels()
    rows = harmful_first(scores)[:TILE_IMAGES]
    columns = 8
    figure, axes = plt.subplots(
        (len(rows) + columns - 1) // columns, columns, figsize=(columns * 1.5, 8.5)
    )
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, row in zip(np.ravel(axes), rows):
        with Image.open(paths[row]) as image:
            axis.imshow(np.asarray(image.convert("L")), cmap="gray")
        original = loaded.original_labels.get(int(row))
        caption = tile_caption(int(row), int(labels[row]), original, float(scores[row]))
        axis.set_title(caption, fontsize=7, color="black" if original is None else "red")
    figure.suptitle(
        f"{loaded.case.model}: the {len(rows)} most harmful training images "
        "(mean SGD-Influence over the seeds; red = label flipped)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer seeds, m values and epochs")
    size.add_argument("--smoke", action="store_true", help="one seed, one m, one epoch (tests)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of each retraining after removal (default: as the sample was trained)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="folder of the report and plots"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for name in ("nnabla", "nnabla_sgd_influence"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    started = time.perf_counter()
    samples = samples_dir()
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for case in CASES:
        print(f"{case.model}: ranking and retraining ...", file=sys.stderr, flush=True)
        loaded = load_case(case, samples)
        result = run_case(loaded, settings)
        plot_accuracy(result, args.output / f"cleansing_{case.model}.png")
        if loaded.train.image_variable is not None:
            plot_harmful_tile(loaded, result.mean_scores, args.output / "harmful_digits.png")
        results.append(result)
    lines = report_lines(
        results, settings, "smoke" if args.smoke else "quick" if args.quick else "full"
    )
    lines += ["", f"Wall time: {time.perf_counter() - started:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.output / "cleansing.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
