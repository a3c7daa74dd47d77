"""Speed, storage and memory of SGD-Influence, reported as ratios measured in one run.

Sections of the report (printed, and written to ``benchmarks/output/bench_speed.txt``):

1. retrace time / retraining time of the same epoch (1 epoch, batch 32, mode ``last``) per
   model, with the batched autodiff pass as it is (``second_order/``'s layers) and with
   nnabla's own second order ("before"), and with the finite-difference pass; target <= 4;
   then a whole trial (retrain + query + retrace) against the method of NNC's original plugin
   (a batch-of-1 forward/backward per row, no Hessian term), for the CNNs;
2. the batched pass against the per-row loops it replaces, at batch sizes 8, 32 and 128;
   target >= 10x at batch 32;
3. where the time of one batched pass goes, per nnabla function (the CNNs, before and after);
4. bytes kept for the retrace by mode ``last`` and ``exact``, extrapolated to one MNIST epoch;
5. peak resident memory of an image run on 2,000 and 20,000 generated images, each in its own
   process.

Absolute times depend on the machine and its load; the ratios compare stages timed in the same
run. Run ``.venv/bin/python benchmarks/bench_speed.py [--quick] [--output DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
from nnabla_sgd_influence.influence.graphs import GraphCache  # noqa: E402
from nnabla_sgd_influence.influence.hvp import (
    AutodiffPass,
    FiniteDifferencePass,
    PassResult,
    create_pass,
    per_row_reference,
)
from nnabla_sgd_influence.influence.parameters import ParameterSet  # noqa: E402
from nnabla_sgd_influence.influence.query import validation_gradient  # noqa: E402
from nnabla_sgd_influence.influence.retrace import retrace  # noqa: E402
from nnabla_sgd_influence.influence.training import retrain  # noqa: E402

NNC_MODEL = (
    Path(__file__).resolve().parents[2] / "shared/fixtures/nnc/fashion_mnist_cnn_results.nnp"
)
DEFAULT_OUTPUT = REPO / "benchmarks" / "output"

BATCH_SIZE = 32  # retrace ratio and storage runs (the image plugin's default)
# Divides both image counts: with 64, the last short batch (16 vs 32 rows) would get its own
# second-order graph, whose buffers differ by about 8 MB between the two runs.
MEMORY_BATCH_SIZE = 80
SEED = 0
RATIO_TARGET = 4.0  # retrace / retraining
SPEEDUP_TARGET = 10.0  # batched pass vs per-row loop, at batch SPEEDUP_TARGET_BATCH
SPEEDUP_TARGET_BATCH = 32
MNIST_ROWS = 60_000
PAPER_LAST_BYTES = 1.236e6  # Suzuki et al. 2021, MNIST: cache of mode "last"
PAPER_EXACT_BYTES = 1.932e9  # ... and of storing every step (Hara et al.)
MB = 1e6


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run or a quick one for development."""

    repeats: int  # timed repetitions; medians are reported
    batch_sizes: Tuple[int, ...]  # of the pass comparison
    reference_budget: float  # seconds after which a slow loop is not repeated again
    image_counts: Tuple[int, int]  # generated images of the two memory runs
    retrace_steps: Optional[int]  # retrace steps of the memory runs; None: the whole epoch
    train_rows: Optional[int]  # rows of the storage runs; None: the whole training set
    heavy_repeats: int  # repetitions for the ResNet-class model (seconds per step)
    heavy_rows: Optional[int]  # its training and validation rows; None: all of them
    rows: Optional[int] = None  # every model's training and validation rows; None: all
    models: Optional[Tuple[str, ...]] = None  # the models measured; None: every one


FULL = Settings(3, (8, 32, 128), 20.0, (2000, 20000), None, None, 1, None)
QUICK = Settings(1, (8, 32), 0.0, (400, 2000), 5, 256, 1, 64)
# The least that runs every section (the test suite's run; its numbers mean nothing).
SMOKE = Settings(1, (8,), 0.0, (64, 128), 1, 64, 1, 32, 64, ("digits_cnn", "cancer_mlp"))


@dataclass(frozen=True)
class ModelCase:
    """A model and the sample dataset folder whose CSVs it is run on."""

    name: str
    nnp: Path
    data: Path  # folder holding train.csv and val.csv
    heavy: bool = False  # seconds per training step: measured fewer times

    def repeats(self, settings: Settings) -> int:
        return settings.heavy_repeats if self.heavy else settings.repeats


# --------------------------------------------------------------------------------------
# Small helpers


def model_cases(samples: Path) -> List[ModelCase]:
    """The models of the retrace ratio table; the real NNC model only when present."""
    models = samples / "models"
    cases = [
        ModelCase("digits_cnn", models / "digits_cnn" / "results.nnp", samples / "digits"),
        ModelCase("cancer_mlp", models / "cancer_mlp" / "results.nnp", samples / "cancer"),
        ModelCase("cancer_logreg", models / "cancer_logreg" / "results.nnp", samples / "cancer"),
    ]
    if NNC_MODEL.is_file():
        cases.append(ModelCase("nnc_fashion_mnist_cnn", NNC_MODEL, samples / "digits"))
    resnet = models / "digits_rgb_resnet" / "results.nnp"
    cases.append(ModelCase("digits_rgb_resnet", resnet, samples / "digits_rgb", heavy=True))
    return cases


CNNS = ("digits_cnn", "nnc_fashion_mnist_cnn", "digits_rgb_resnet")


def new_graphs(model: NnpModel) -> GraphCache:
    """Graphs on fresh copies of ``model``'s parameters."""
    return GraphCache(model, ParameterSet(model))


def load_case(
    case: ModelCase, settings: Optional[Settings] = None
) -> Tuple[NnpModel, Dataset, Dataset]:
    """The model with its training and validation sets (the ResNet's both cut to
    ``settings.heavy_rows`` when set)."""
    model = load_model(case.nnp)
    train = load_dataset(case.data / "train.csv", model.data_variables, model.normalize_images)
    val = load_dataset(
        case.data / "val.csv", model.data_variables, model.normalize_images, role="input-val"
    )
    rows = None if settings is None else settings.rows
    if case.heavy and settings is not None and settings.heavy_rows is not None:
        rows = settings.heavy_rows
    if rows is not None:
        train = train.subset(np.arange(min(rows, len(train))))
        val = val.subset(np.arange(min(rows, len(val))))
    return model, train, val


def seconds_of(action: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_seconds(
    action: Callable[[], object],
    repeats: int,
    budget: float,
    measured: Sequence[float] = (),
) -> float:
    """Median wall time of up to ``repeats`` calls, counting the ``measured`` ones already made;
    stops repeating once ``budget`` seconds are spent."""
    times = list(measured)
    while len(times) < repeats and (not times or sum(times) < budget):
        times.append(seconds_of(action))
    return float(np.median(times))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (no tie correction: scores are continuous)."""
    ranks_a = np.argsort(np.argsort(a)).astype(float)
    ranks_b = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def random_direction(model: NnpModel, seed: int) -> List[np.ndarray]:
    """A direction over the trainable parameters, the size of a typical query gradient."""
    rng = np.random.RandomState(seed)
    return [
        (rng.randn(*model.parameters[n].shape) * 1e-3).astype(np.float32) for n in model.trainable
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def target_note(value: float, target: float, higher_is_better: bool) -> str:
    """``met`` or ``missed``, with the factor between the value and the target."""
    factor = value / target if higher_is_better else target / value
    if factor >= 1.0:
        return f"met ({factor:.1f}x margin)"
    return f"missed by {1.0 / factor:.1f}x"


class Report:
    """Lines printed as they come and written to a file at the end."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, *lines: str) -> None:
        for text in lines:
            print(text, flush=True)
            self.lines.append(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.add(*format_table(headers, rows))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# 1. Retrace time / retraining time


@dataclass
class StageTimes:
    """Seconds of each stage of one trial, and how well the passes agree."""

    retrain: float
    query: float
    retrace: float  # with the batched autodiff pass
    retrace_before: float  # ... with nnabla's own second order (AutodiffPass(fast_layers=False))
    retrace_fd: float  # with the finite-difference pass
    retrace_batch_of_one: float  # NNC's original plugin's method (nan: not measured)
    before_difference: float  # max |score - score before| / max |score before|
    before_agreement: float  # rank correlation of the scores with the scores before
    fd_agreement: float  # rank correlation of the FD pass's scores with the autodiff scores


def time_stages(
    model: NnpModel, train: Dataset, val: Dataset, seed: int, batch_of_one: bool = False
) -> StageTimes:
    """Time retrain, query gradient and the retraces of one trial, as ``run_trial`` runs them;
    with ``batch_of_one`` also the retrace of NNC's original plugin."""
    graphs = new_graphs(model)
    params, spec = graphs.params, model.solver
    start = time.perf_counter()
    run = retrain(graphs, spec, train, batch_size=BATCH_SIZE, seed=seed)
    retrained = time.perf_counter()
    u, _ = validation_gradient(graphs, val, BATCH_SIZE)
    queried = time.perf_counter()
    scores = retrace(params, spec, train, run, u, AutodiffPass(graphs))
    retraced = time.perf_counter()
    scores_before = retrace(params, spec, train, run, u, AutodiffPass(graphs, fast_layers=False))
    retraced_before = time.perf_counter()
    scores_fd = retrace(params, spec, train, run, u, FiniteDifferencePass(graphs))
    retraced_fd = time.perf_counter()
    seconds_batch_of_one = math.nan
    if batch_of_one:
        seconds_batch_of_one = seconds_of(lambda: batch_of_one_retrace(graphs, train, run, u))
    scale = max(float(np.max(np.abs(scores_before))), 1e-30)
    return StageTimes(
        retrain=retrained - start,
        query=queried - retrained,
        retrace=retraced - queried,
        retrace_before=retraced_before - retraced,
        retrace_fd=retraced_fd - retraced_before,
        retrace_batch_of_one=seconds_batch_of_one,
        before_difference=float(np.max(np.abs(scores - scores_before))) / scale,
        before_agreement=rank_correlation(scores, scores_before),
        fd_agreement=rank_correlation(scores, scores_fd),
    )


def batch_of_one_retrace(
    graphs: GraphCache, train: Dataset, run, u: Sequence[np.ndarray]
) -> np.ndarray:
    """The retrace of NNC's original plugin, timed for comparison (mode last).

    Per step: for each row a batch-of-1 forward/backward of the training loss and
    lr/|S| <u, g_row>; then one forward/backward of the whole batch, the cost of its update of
    u (which leaves u unchanged: its gradients are unlinked before that backward). The
    BatchNormalization statistics it moves are restored.
    """
    params = graphs.params
    theta = params.theta
    one_row, one_loss = one_row_graph(graphs)
    scores = np.zeros(len(train))
    with params.preserved():
        params.set_trainable(run.final_theta)
        for step in run.steps[::-1]:
            batch = train.batch(step.rows)
            for k, row in enumerate(step.rows):
                for name, variable in one_row.inputs.items():
                    variable.d = batch[name][k : k + 1]
                one_loss.forward(clear_no_need_grad=True)
                for p in theta:
                    p.grad.zero()
                one_loss.backward(clear_buffer=True)
                dot = sum(float(np.sum(p.g * a)) for p, a in zip(theta, u))
                scores[row] += step.learning_rate * dot / len(step.rows)
            graph = graphs.loss(len(step.rows), training=True)
            graph.feed(batch)
            graph.sum_loss.forward(clear_no_need_grad=True)
            params.zero_grad()
            graph.sum_loss.backward(clear_buffer=True)
    return scores


def function_count(variable) -> int:
    """Number of nnabla functions in the graph that computes ``variable``."""
    count = [0]
    variable.visit(lambda _function: count.__setitem__(0, count[0] + 1))
    return count[0]


def graph_size_ratio(model: NnpModel) -> float:
    """Functions of the batched pass's graph / functions of the training loss's graph."""
    graphs = new_graphs(model)
    second_order = graphs.second_order(BATCH_SIZE)
    training = graphs.loss(BATCH_SIZE, training=True)
    return function_count(second_order.directional) / function_count(training.mean_loss)


def median_stages(times: Sequence[StageTimes]) -> StageTimes:
    """Field-wise median over repetitions."""
    fields = [f.name for f in dataclasses.fields(StageTimes)]
    return StageTimes(**{f: float(np.median([getattr(t, f) for t in times])) for f in fields})


def measure_stages(cases: Sequence[ModelCase], settings: Settings) -> Dict[str, Tuple]:
    """(model, rows, median StageTimes) per case; the CNNs also time the batch-of-1 retrace."""
    measured = {}
    for case in cases:
        model, train, val = load_case(case, settings)
        runs = [
            time_stages(model, train, val, SEED + r, batch_of_one=case.name in CNNS)
            for r in range(case.repeats(settings))
        ]
        measured[case.name] = (model, len(train), median_stages(runs))
    return measured


def stage_ratio_rows(cases: Sequence[ModelCase], measured: Dict[str, Tuple]) -> List[List[str]]:
    """One table row per model: stage times as multiples of the retraining epoch."""
    rows = []
    for case in cases:
        model, n_rows, t = measured[case.name]
        steps = math.ceil(n_rows / BATCH_SIZE)
        ratio = t.retrace / t.retrain
        rows.append(
            [
                case.name,
                f"{model.n_trainable:,}",
                str(steps),
                f"{t.retrain * 1000 / steps:.1f}",
                f"{graph_size_ratio(model):.1f}",
                f"{t.query / t.retrain:.2f}",
                f"{t.retrace_before / t.retrain:.2f}",
                f"{ratio:.2f}",
                f"{t.before_difference:.1e}",
                f"{t.before_agreement:.3f}",
                f"{t.retrace_fd / t.retrain:.2f}",
                f"{t.fd_agreement:.2f}",
                target_note(ratio, RATIO_TARGET, higher_is_better=False),
            ]
        )
    return rows


def trial_rows(cases: Sequence[ModelCase], measured: Dict[str, Tuple]) -> List[List[str]]:
    """Whole trial (retrain + query + retrace) against the batch-of-1 method, per CNN."""
    rows = []
    for case in cases:
        if case.name not in CNNS:
            continue
        _, _, t = measured[case.name]
        common = t.retrain + t.query
        ours, before = common + t.retrace, common + t.retrace_before
        batch_of_one = common + t.retrace_batch_of_one
        rows.append(
            [
                case.name,
                f"{before:.2f}",
                f"{ours:.2f}",
                f"{batch_of_one:.2f}",
                f"{before / batch_of_one:.2f}",
                f"{ours / batch_of_one:.2f}",
                f"{t.retrace_batch_of_one / t.retrain:.2f}",
            ]
        )
    return rows


def report_stage_ratios(report: Report, cases: Sequence[ModelCase], settings: Settings) -> None:
    report.add(
        "",
        f"1. Retrace time / retraining time, same epoch (1 epoch, batch {BATCH_SIZE}, "
        f"mode last; median of {settings.repeats}, the ResNet {settings.heavy_repeats})",
        f"   target: retrace / retrain <= {RATIO_TARGET:g} with the batched autodiff pass",
        "",
    )
    measured = measure_stages(cases, settings)
    report.table(
        [
            "model",
            "params",
            "steps",
            "train ms/step",
            "graph size",
            "query/train",
            "before",
            "retrace/train",
            "score diff",
            "rho",
            "FD retrace/train",
            "FD~autodiff rho",
            "target",
        ],
        stage_ratio_rows(cases, measured),
    )
    report.add(
        "   train ms/step: absolute scale of this machine only. graph size: nnabla functions in",
        "   the batched pass's graph / in the training loss's graph (per-function overhead",
        "   dominates the small models). Retrace includes building its second-order graphs,",
        "   retraining its first-order ones. before: retrace / retrain with nnabla's own second",
        "   order (AutodiffPass(fast_layers=False)) in the same run; score diff: max |score -",
        "   score before| / max |score before|; rho: Spearman correlation of the two (on",
        "   digits_cnn, Adam amplifies the rounding of a gradient that is exactly zero, the bias",
        "   of the convolution before BatchNormalization: permuting rows within each batch moves",
        "   nnabla's own scores as much). FD = FiniteDifferencePass (two first-order passes per",
        "   step); its rho: Spearman correlation of its scores with the autodiff scores.",
        "",
        "   A whole trial, seconds (retrain + query gradient + retrace) against the method of",
        "   NNC's original plugin, which keeps no Hessian term:",
        "",
    )
    report.table(
        [
            "model",
            "before",
            "now",
            "batch-of-1 method",
            "before / batch-of-1",
            "now / batch-of-1",
            "its retrace/train",
        ],
        trial_rows(cases, measured),
    )
    report.add(
        "   batch-of-1 method: per step, a batch-of-1 forward/backward per row and one",
        "   forward/backward of the batch (its update of u, which leaves u unchanged).",
    )


# --------------------------------------------------------------------------------------
# 2. Batched pass vs per-row loops


def batch_of_one_loop(
    step_pass: AutodiffPass, one_row: Tuple[object, object], batch: Dict[str, np.ndarray], v
) -> PassResult:
    """The way NNC's original plugin did a step: one batch-of-1 forward/backward per row for
    <v, g_i>, then one Hessian-vector product for the whole batch."""
    graph, loss = one_row
    theta = step_pass.theta
    n = len(next(iter(batch.values())))
    dots = np.zeros(n)
    for row in range(n):
        for name, variable in graph.inputs.items():
            variable.d = batch[name][row : row + 1]
        loss.forward(clear_no_need_grad=True)
        for p in theta:
            p.grad.zero()
        loss.backward(clear_buffer=True)
        dots[row] = sum(float(np.sum(p.g * a)) for p, a in zip(theta, v))
    _, hv = step_pass(batch, v)
    return dots, hv


def one_row_graph(graphs: GraphCache) -> Tuple[object, object]:
    """Training graph at batch size 1 and its scalar loss."""
    graph = graphs.loss(1, training=True)
    return graph, graph.sum_loss


def max_relative_difference(a: PassResult, b: PassResult) -> float:
    """Largest deviation of ``b`` from ``a`` over dots and H v, relative to each one's scale."""
    dots = np.max(np.abs(a[0] - b[0])) / max(np.max(np.abs(a[0])), 1e-30)
    flat_a = np.concatenate([x.ravel() for x in a[1]])
    flat_b = np.concatenate([x.ravel() for x in b[1]])
    hv = np.max(np.abs(flat_a - flat_b)) / max(np.max(np.abs(flat_a)), 1e-30)
    return float(max(dots, hv))


@dataclass
class PassTimes:
    """Seconds of one step's pass, three ways, and how far the per-row result deviates."""

    batched: float
    reference: float  # per_row_reference
    batch_of_one: float
    deviation: float  # max relative difference, batched vs per_row_reference


def time_pass_variants(
    graphs: GraphCache,
    step_pass: AutodiffPass,
    one_row: Tuple[object, object],
    batch: Dict[str, np.ndarray],
    v: List[np.ndarray],
    settings: Settings,
) -> PassTimes:
    """Median seconds of the batched pass and of both per-row loops on ``batch``."""
    batched = step_pass(batch, v)  # also builds the graph for this batch size
    started = time.perf_counter()
    reference = per_row_reference(graphs, batch, v)
    first = time.perf_counter() - started
    return PassTimes(
        batched=median_seconds(lambda: step_pass(batch, v), settings.repeats, 1e9),
        reference=median_seconds(
            lambda: per_row_reference(graphs, batch, v),
            settings.repeats,
            settings.reference_budget,
            measured=[first],
        ),
        batch_of_one=median_seconds(
            lambda: batch_of_one_loop(step_pass, one_row, batch, v), settings.repeats, 1e9
        ),
        deviation=max_relative_difference(batched, reference),
    )


def pass_speedup_rows(case: ModelCase, settings: Settings) -> List[List[str]]:
    """Batched pass vs the per-row reference and the batch-of-1 loop, per batch size."""
    model, train, _ = load_case(case, settings)
    graphs = new_graphs(model)
    step_pass = AutodiffPass(graphs)
    one_row = one_row_graph(graphs)
    v = random_direction(model, SEED)
    rows = []
    for size in settings.batch_sizes:
        batch = train.batch(np.arange(size))
        t = time_pass_variants(graphs, step_pass, one_row, batch, v, settings)
        speedup = t.reference / t.batched
        target = ""
        if size == SPEEDUP_TARGET_BATCH:
            target = target_note(speedup, SPEEDUP_TARGET, higher_is_better=True)
        rows.append(
            [
                case.name,
                str(size),
                f"{speedup:.1f}x",
                f"{t.batch_of_one / t.batched:.2f}x",
                f"{t.deviation:.1e}",
                target,
            ]
        )
    return rows


def report_pass_speedups(report: Report, cases: Sequence[ModelCase], settings: Settings) -> None:
    report.add(
        "",
        "2. Batched pass (AutodiffPass) vs the per-row loops it replaces "
        f"(speed-up = loop time / batched time, median of up to {settings.repeats})",
        f"   target: >= {SPEEDUP_TARGET:g}x at batch {SPEEDUP_TARGET_BATCH} against "
        "per_row_reference",
        "",
    )
    rows = [row for case in cases for row in pass_speedup_rows(case, settings)]
    report.table(
        ["model", "batch", "per_row_reference", "batch-of-1 loop", "max rel diff", "target"],
        rows,
    )
    report.add(
        "   per_row_reference: per row, one forward/backward for <v, g_i> and one second-order",
        "   pass for H_i v, each at the full batch with one-hot weights (exact with BatchNorm).",
        "   batch-of-1 loop: NNC's original plugin, one batch-of-1 forward/backward per row plus",
        "   one Hessian-vector product per step; its <v, g_i> differs from the batched one where",
        "   BatchNormalization uses batch statistics. max rel diff: batched vs per_row_reference.",
    )


# --------------------------------------------------------------------------------------
# 3. Where the time of one batched pass goes


def function_seconds(step_pass: AutodiffPass, batch: Dict[str, np.ndarray], v, repeats: int):
    """Mean seconds per nnabla function type in the forward and backward of one batched pass."""
    graph = step_pass.graphs.second_order(len(next(iter(batch.values()))), step_pass.fast_layers)
    totals: Dict[Tuple[str, str], float] = collections.defaultdict(float)
    started = [0.0]

    def pre(_function) -> None:
        started[0] = time.perf_counter()

    def post(phase: str) -> Callable[[object], None]:
        def hook(function) -> None:
            totals[(phase, function.info.type_name)] += time.perf_counter() - started[0]

        return hook

    step_pass(batch, v)
    for _ in range(repeats):
        for name, variable in graph.inputs.items():
            variable.d = batch[name]
        for variable, value in zip(graph.directions, v):
            variable.d = value
        graph.directional.forward(
            clear_no_need_grad=True, function_pre_hook=pre, function_post_hook=post("forward")
        )
        graph.weights.grad.zero()
        graph.directional.backward(
            clear_buffer=True, function_pre_hook=pre, function_post_hook=post("backward")
        )
    return {key: value / repeats for key, value in totals.items()}


def training_step_seconds(model: NnpModel, train: Dataset, size: int, repeats: int) -> float:
    """Median seconds of one forward/backward of the training loss (no solver update)."""
    graph = new_graphs(model).loss(size, training=True)
    loss = graph.mean_loss
    graph.feed(train.batch(np.arange(size)))

    def step() -> None:
        loss.forward(clear_no_need_grad=True)
        loss.backward(clear_buffer=True)

    step()
    return median_seconds(step, max(repeats, 3), 1e9)


def profile_rows(case: ModelCase, settings: Settings, shown: int = 5) -> List[List[str]]:
    """The functions taking the largest share of one batched pass at batch 32, with nnabla's
    own second order (before) and with this package's layers (now)."""
    model, train, _ = load_case(case, settings)
    graphs = new_graphs(model)
    batch = train.batch(np.arange(BATCH_SIZE))
    v = random_direction(model, SEED)
    repeats = case.repeats(settings) if case.heavy or settings.rows else max(settings.repeats, 3)
    step = training_step_seconds(model, train, BATCH_SIZE, settings.repeats)
    rows = []
    for version, fast in (("before", False), ("now", True)):
        step_pass = AutodiffPass(graphs, fast_layers=fast)
        shares = function_seconds(step_pass, batch, v, repeats)
        total = sum(shares.values())
        name = case.name if version == "before" else ""
        rows.append([name, version, "whole pass", "", "100%", f"{total / step:.2f}"])
        for (phase, function), seconds in sorted(shares.items(), key=lambda kv: -kv[1])[:shown]:
            share = f"{seconds / total:.0%}"
            rows.append(["", "", function, phase, share, f"{seconds / step:.2f}"])
    return rows


def report_profiles(report: Report, cases: Sequence[ModelCase], settings: Settings) -> None:
    report.add(
        "",
        f"3. Where one batched pass goes (batch {BATCH_SIZE}, per nnabla function; the pass is "
        "s = <v, grad L>, forward then backward)",
        "",
    )
    rows = [row for case in cases for row in profile_rows(case, settings)]
    report.table(["model", "version", "function", "phase of s", "share", "x train step"], rows)
    report.add(
        "   x train step: seconds / one forward+backward of the training loss at the same batch.",
        "   before: nnabla's own second order; BatchNormalizationBackward in the backward of s is",
        "   its CPU second-order backward of BatchNormalization. now: with second_order/'s",
        "   layers (SecondOrder* functions). Convolution, ConvolutionDataGrad and",
        "   ConvolutionFilterGrad are nnabla's kernels in both.",
    )


# --------------------------------------------------------------------------------------
# 4. Storage: mode last vs exact


def stored_bytes(model: NnpModel, train, val: Dataset, mode: str) -> Tuple[int, int]:
    """(bytes kept for the retrace, number of steps) of one trial in ``mode``."""
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        arguments = InfluenceArguments(batch_size=BATCH_SIZE, seed=SEED, mode=mode)
        result = run_trial(model, train, val, arguments, workdir=Path(folder))
    return result.stored_bytes, len(result.steps)


def storage_rows(case: ModelCase, settings: Settings) -> List[List[str]]:
    """Measured bytes of both modes, and their extrapolation to one epoch of MNIST."""
    model, train, val = load_case(case, settings)
    data = train if settings.train_rows is None else train.subset(np.arange(settings.train_rows))
    last, steps = stored_bytes(model, data, val, "last")
    exact, _ = stored_bytes(model, data, val, "exact")
    mnist_steps = math.ceil(MNIST_ROWS / BATCH_SIZE)
    mnist_exact = exact / steps * mnist_steps
    return [
        [
            f"{case.name}, {len(data)} rows",
            str(steps),
            f"{last / MB:.3f} MB",
            f"{exact / MB:.3f} MB",
            f"{exact / last:.0f}",
        ],
        [
            f"{case.name}, MNIST {MNIST_ROWS:,} rows (extrapolated)",
            str(mnist_steps),
            f"{last / MB:.3f} MB",
            f"{mnist_exact / 1e9:.3f} GB",
            f"{mnist_exact / last:.0f}",
        ],
    ]


def report_storage(report: Report, cases: Sequence[ModelCase], settings: Settings) -> None:
    report.add(
        "",
        f"4. Bytes kept for the retrace (TrialResult.stored_bytes; 1 epoch, batch {BATCH_SIZE})",
        "",
    )
    rows = [row for case in cases for row in storage_rows(case, settings)]
    paper_ratio = PAPER_EXACT_BYTES / PAPER_LAST_BYTES
    rows.append(
        [
            "Suzuki et al. 2021, MNIST",
            "",
            f"{PAPER_LAST_BYTES / MB:.3f} MB",
            f"{PAPER_EXACT_BYTES / 1e9:.3f} GB",
            f"{paper_ratio:.0f}",
        ]
    )
    report.table(["run", "steps", "mode last", "mode exact", "exact/last"], rows)
    report.add(
        "   last keeps the final parameters and the solver's final moments (Adam: mean, var);",
        "   exact writes both after every step, so exact/last is about the number of steps",
        "   whatever the model size.",
    )


# --------------------------------------------------------------------------------------
# 5. Peak resident memory of image runs


def read_images(csv_path: Path) -> Tuple[List[np.ndarray], List[int]]:
    """The grayscale pixels and labels of an NNC image CSV (``x:image,y:label``)."""
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(csv_path)
    images = [np.asarray(Image.open(csv_path.parent / p).convert("L")) for p in table["x:image"]]
    return images, [int(y) for y in table["y:label"]]


def generate_images(
    folder: Path, count: int, sources: Sequence[np.ndarray], labels: Sequence[int], seed: int
) -> List[Tuple[str, int]]:
    """Write ``count`` shifted, noisy copies of ``sources`` as PNG; (relative path, label)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        source = sources[index % len(sources)]
        shift = tuple(int(s) for s in rng.randint(-2, 3, size=2))
        noisy = np.roll(source, shift, axis=(0, 1)) + rng.normal(0.0, 8.0, source.shape)
        name = f"images/{index:05d}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append((name, int(labels[index % len(labels)])))
    return rows


def write_image_csv(path: Path, rows: Sequence[Tuple[str, int]]) -> None:
    """An NNC image dataset CSV."""
    lines = ["x:image,y:label"] + [f"{name},{label}" for name, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def proc_status_mb(field_name: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB; None without /proc."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024 / MB
    return None


def resident_mb() -> float:
    """Current resident set size (VmRSS) in MB; the peak so far where /proc is missing."""
    current = proc_status_mb("VmRSS")
    return peak_resident_mb() if current is None else current


def peak_resident_mb() -> float:
    """Peak resident set size of this process in MB.

    VmHWM where /proc exists: ``ru_maxrss`` also counts the parent's resident size at the
    fork (Linux keeps it across exec), which would hide a child smaller than its parent.
    """
    peak = proc_status_mb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux
    return peak


def memory_run(train_csv: Path, val_csv: Path, nnp: Path, retrace_steps: Optional[int]) -> Dict:
    """One image run in this process: load, retrain one epoch, query, retrace; RSS per phase."""
    phases: Dict[str, float] = {}
    peaks: Dict[str, float] = {}
    model = load_model(nnp)
    val = load_dataset(val_csv, model.data_variables, model.normalize_images, role="input-val")
    phases["before load"], peaks["before load"] = resident_mb(), peak_resident_mb()
    train = load_dataset(train_csv, model.data_variables, model.normalize_images)
    phases["after load"], peaks["after load"] = resident_mb(), peak_resident_mb()
    graphs = new_graphs(model)
    step_pass = create_pass(graphs)
    run = retrain(graphs, model.solver, train, batch_size=MEMORY_BATCH_SIZE, seed=SEED)
    phases["after retrain"], peaks["after retrain"] = resident_mb(), peak_resident_mb()
    u, _ = validation_gradient(graphs, val, MEMORY_BATCH_SIZE)
    total_steps = len(run.steps)
    if retrace_steps is not None:
        run = dataclasses.replace(run, steps=run.steps[-retrace_steps:])
    retrace(graphs.params, model.solver, train, run, u, step_pass)
    phases["after retrace"], peaks["after retrace"] = resident_mb(), peak_resident_mb()
    image_shape = next(v.shape for v in model.data_variables if len(v.shape) >= 2)
    return {
        "rows": len(train),
        "peak_mb": peak_resident_mb(),
        "phases": phases,
        "peaks": peaks,
        "cache_bytes": len(train) * int(np.prod(image_shape)),
        "table_bytes": int(train.table.memory_usage(deep=True).sum()),
        "steps": total_steps,
        "retraced_steps": len(run.steps),
    }


def measure_in_child(
    train_csv: Path, val_csv: Path, nnp: Path, retrace_steps: Optional[int]
) -> Dict:
    """Run :func:`memory_run` in a fresh process and return its measurements."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-memory",
        str(train_csv),
        str(val_csv),
        str(nnp),
    ]
    if retrace_steps is not None:
        command += ["--retrace-steps", str(retrace_steps)]
    env = dict(os.environ, TQDM_DISABLE="1")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory_measurements(samples: Path, settings: Settings) -> List[Dict]:
    """Generate the images once and measure one child run per image count."""
    sources, labels = read_images(samples / "digits" / "train.csv")
    nnp = samples / "models" / "digits_cnn" / "results.nnp"
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as folder:
        rows = generate_images(Path(folder), max(settings.image_counts), sources, labels, SEED)
        for count in settings.image_counts:
            csv_path = Path(folder) / f"train_{count}.csv"
            write_image_csv(csv_path, rows[:count])
            val_csv = samples / "digits" / "val.csv"
            results.append(measure_in_child(csv_path, val_csv, nnp, settings.retrace_steps))
    return results


def per_thousand(small: Dict, large: Dict, value: Callable[[Dict], float]) -> float:
    """Growth of ``value`` in MB per 1,000 extra images between the two runs."""
    return (value(large) - value(small)) / ((large["rows"] - small["rows"]) / 1000)


def memory_row(result: Dict) -> List[str]:
    """One table row: RSS before loading, growth per phase, peak, and the data's own size."""
    phases = result["phases"]
    before = phases["before load"]
    return [
        f"{result['rows']:,}",
        f"{result['retraced_steps']}/{result['steps']}",
        f"{before:.1f}",
        f"+{phases['after load'] - before:.1f}",
        f"+{phases['after retrain'] - phases['after load']:.1f}",
        f"+{phases['after retrace'] - phases['after retrain']:.1f}",
        f"{result['peak_mb']:.1f}",
        f"{result['cache_bytes'] / MB:.2f}",
        f"{result['table_bytes'] / MB:.2f}",
    ]


def _ratio(growth: float, base: float) -> str:
    """growth / base, or "n/a" when the base did not grow (a small run, RSS counted in pages)."""
    return f"{growth / base:.2f}" if base > 0 else "n/a"


def report_memory(report: Report, samples: Path, settings: Settings) -> None:
    small_count, large_count = settings.image_counts
    report.add(
        "",
        f"5. Peak resident memory of an image run, {small_count:,} vs {large_count:,} generated "
        f"28x28 grayscale PNGs",
        f"   (digits_cnn, batch {MEMORY_BATCH_SIZE}, mode last; one process each: load, "
        "retrain 1 epoch, query, retrace; MB = 10^6 bytes)",
        "",
    )
    small, large = memory_measurements(samples, settings)
    report.table(
        [
            "images",
            "retraced",
            "RSS before load",
            "load",
            "retrain",
            "retrace",
            "peak RSS",
            "uint8 cache",
            "CSV table",
        ],
        [memory_row(small), memory_row(large)],
    )
    peak = per_thousand(small, large, lambda r: r["peak_mb"])
    load = per_thousand(
        small, large, lambda r: r["phases"]["after load"] - r["phases"]["before load"]
    )
    cache = per_thousand(small, large, lambda r: r["cache_bytes"] / MB)
    table = per_thousand(small, large, lambda r: r["table_bytes"] / MB)
    report.add(
        "",
        f"   per 1,000 extra images: peak RSS +{peak:.2f} MB; load_dataset RSS +{load:.2f} MB =",
        f"   uint8 image cache {cache:.2f} (784 B/image) + pandas CSV table {table:.2f}"
        f" + rest {load - cache - table:.2f} (each row's image path, kept for the output)",
        f"   peak growth / image cache = {_ratio(peak, cache)}; peak growth / load growth = "
        f"{_ratio(peak, load)}",
        f"   batch {MEMORY_BATCH_SIZE} divides both counts, so both runs build the same graphs.",
    )
    if settings.retrace_steps is not None:
        report.add(
            f"   quick run: the retrace covers the last {settings.retrace_steps} steps only "
            "(in mode last its memory does not grow with the number of steps)."
        )


# --------------------------------------------------------------------------------------
# Entry points


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller, faster measurements")
    size.add_argument("--smoke", action="store_true", help="the least that runs every section")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="folder of bench_speed.txt"
    )
    parser.add_argument("--child-memory", nargs=3, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--retrace-steps", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def quiet_logs() -> None:
    """Keep nnabla's and the package's INFO lines out of the report."""
    import logging

    for name in ("nnabla", "nnabla_sgd_influence"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    if args.child_memory:
        print(json.dumps(memory_run(*args.child_memory, args.retrace_steps)))
        return 0
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    started = time.perf_counter()
    samples = samples_dir()
    cases = [
        c for c in model_cases(samples) if settings.models is None or c.name in settings.models
    ]
    by_name = {case.name: case for case in cases}
    report = Report()
    report.add(
        f"SGD-Influence speed benchmark ({size} run; "
        f"{os.cpu_count()} CPU cores; ratios measured in this run)"
    )
    if not NNC_MODEL.is_file():
        report.add(f"note: the real NNC model is absent ({NNC_MODEL}); its rows are skipped")
    report_stage_ratios(report, cases, settings)
    report_pass_speedups(report, [by_name["digits_cnn"], by_name["cancer_mlp"]], settings)
    report_profiles(report, [c for c in cases if c.name in CNNS], settings)
    small_cnns = [c for c in cases if c.name in ("digits_cnn", "nnc_fashion_mnist_cnn")]
    report_storage(report, small_cnns, settings)
    report_memory(report, samples, settings)
    report.add("", f"wall time: {time.perf_counter() - started:.0f} s")
    report.write(args.output / "bench_speed.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
