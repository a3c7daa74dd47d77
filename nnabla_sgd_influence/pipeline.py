"""One run of a plugin: check the inputs, score every training row, write the CSV.

Everything that can be checked is checked before training starts, so that a bad file or
argument costs seconds, not a retraining. The scoring itself is :func:`.api.compute_influence`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import nnabla
import numpy as np

from .api import compute_influence
from .arguments import InfluenceArguments
from .context import resolve_context
from .csvfile import check_encoding
from .datasets import Dataset, load_dataset
from .errors import InfluenceError
from .graphs import RANDOM_LAYERS
from .model import NnpModel, load_model
from .output import write_image_csv, write_step_log, write_tabular_csv
from .progress import BarProgress, Progress
from .results import InfluenceResult

log = logging.getLogger(__name__)

KINDS = ("image", "tabular")
COMPLETION_MESSAGE = "SGD influence completed successfully."


@dataclass
class RunSettings:
    """Where a plugin run reads and writes, and what it computes on (not how it scores)."""

    model: Path
    input_train: Path
    input_val: Path
    output: Path
    kind: str  # "image" or "tabular"
    context: Optional[str] = None
    device_id: str = "0"
    temp_dir: Optional[Path] = None  # None: beside the output, not on the system drive
    keep_temp: bool = False
    step_log: bool = False
    encoding: Optional[str] = None  # of both input CSVs; None: detected (UTF-8 or cp932)


@dataclass
class Summary:
    """What a finished run produced."""

    rows: int
    seconds: float
    output: Path
    hvp_method: str
    step_log: Optional[Path] = None


def run(
    settings: RunSettings, arguments: InfluenceArguments, progress: Optional[Progress] = None
) -> Summary:
    """Score every row of ``settings.input_train`` and write the ranked CSV (bars by default)."""
    start = time.perf_counter()
    check_settings(settings)
    resolve_context(settings.context, settings.device_id)  # a missing GPU fails now
    model = load_model(settings.model)
    check_layers(model, settings.kind)
    train = load_dataset(
        settings.input_train,
        model.data_variables,
        model.normalize_images,
        role="input-train",
        encoding=settings.encoding,
    )
    val = load_dataset(
        settings.input_val,
        model.data_variables,
        model.normalize_images,
        role="input-val",
        encoding=settings.encoding,
    )
    if settings.kind == "image" and train.image_variable is None:
        raise InfluenceError(
            f"{settings.input_train} has no image column: use the tabular plugin for "
            "tabular datasets"
        )
    log.info(
        "scoring %d training rows against %d validation rows, %d trial(s), batch size %d",
        len(train),
        len(val),
        arguments.n_trials,
        arguments.batch_size,
    )
    result = compute_influence(
        model,
        train,
        val,
        **dataclasses.asdict(arguments),
        context=settings.context,
        device_id=settings.device_id,
        temp_dir=temp_parent(settings),
        keep_temp=settings.keep_temp,
        progress=BarProgress() if progress is None else progress,
    )
    step_log = step_log_path(settings.output) if settings.step_log else None
    if step_log is not None:
        write_step_log(step_log, result.steps)
    write_output(settings, model, train, result)

    summary = Summary(
        len(train), time.perf_counter() - start, Path(settings.output), result.hvp_method, step_log
    )
    nnabla.logger.log(99, COMPLETION_MESSAGE)
    log.info(
        "scored %d rows in %.1f s (Hessian-vector products: %s); ranking written to %s",
        summary.rows,
        summary.seconds,
        summary.hvp_method,
        os.path.abspath(summary.output),
    )
    return summary


def check_settings(settings: RunSettings) -> None:
    """Refuse unknown choices and unusable paths before any work."""
    if settings.kind not in KINDS:
        raise InfluenceError(f"kind must be one of {', '.join(KINDS)}, got {settings.kind!r}")
    for label, path in (
        ("model", settings.model),
        ("input-train", settings.input_train),
        ("input-val", settings.input_val),
    ):
        if not Path(path).is_file():
            raise InfluenceError(f"{label} file not found: {path}")
    check_output_path(settings)
    if settings.temp_dir is not None and not Path(settings.temp_dir).is_dir():
        raise InfluenceError(f"temporary folder parent not found: {settings.temp_dir}")
    if settings.encoding is not None:
        check_encoding(settings.encoding)
    if _same_file(settings.input_train, settings.input_val):
        log.warning(
            "input-train and input-val are the same file (%s): scores then measure how rows "
            "help fit the training set itself, not held-out data",
            settings.input_train,
        )


def check_output_path(settings: RunSettings) -> None:
    """The output must go to an existing, writable folder and never over an input."""
    output = Path(settings.output)
    folder = output.parent
    if output.is_dir():
        raise InfluenceError(f"output {output} is a folder; give a CSV file name")
    if not folder.is_dir():
        raise InfluenceError(f"output folder not found: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InfluenceError(f"output folder is not writable: {folder}")
    for label, path in (
        ("model", settings.model),
        ("input-train", settings.input_train),
        ("input-val", settings.input_val),
    ):
        if _same_file(output, path):
            raise InfluenceError(f"output {output} is the {label} file; choose another name")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_layers(model: NnpModel, kind: str) -> None:
    """Refuse Dropout in tabular models; warn about random layers in image models."""
    if kind == "tabular":
        dropout = model.layers_of_type("Dropout")
        if dropout:
            raise InfluenceError(
                f"the tabular plugin does not support Dropout ({_describe(dropout, model)}): "
                "its random masks make influence scores meaningless; remove it from the "
                "training network and train the model again"
            )
    else:
        random_layers = model.layers_of_type(*RANDOM_LAYERS)
        if random_layers:
            log.warning(
                "%s draws random numbers on every step (%s): scores are noisier; "
                "more trials (-nt) average this out",
                "/".join(sorted({layer.type for layer in random_layers})),
                _describe(random_layers, model),
            )


def _describe(layers: List, model: NnpModel) -> str:
    names = ", ".join(f"'{layer.name}'" for layer in layers)
    noun = "layer" if len(layers) == 1 else "layers"
    return f"{noun} {names} in network '{model.train_network}'"


def temp_parent(settings: RunSettings) -> Path:
    """Where the run's temporary folder is made: ``--temp-dir``, else beside the output."""
    if settings.temp_dir is not None:
        return Path(settings.temp_dir)
    return Path(os.path.abspath(settings.output)).parent


def write_output(
    settings: RunSettings, model: NnpModel, train: Dataset, result: InfluenceResult
) -> None:
    """Write the ranked rows in the plugin's format (see the README, Output), in the training
    CSV's encoding; UTF-8 with a byte-order mark where that encoding cannot hold a path."""
    encoding = train.csv_format.encoding
    try:
        _write_ranked(settings, model, train, result, encoding)
    except UnicodeEncodeError as error:
        log.warning(
            "%s cannot hold '%s'; the output is written as UTF-8 (with a byte-order mark)",
            encoding,
            error.object[error.start : error.end],
        )
        _write_ranked(settings, model, train, result, "utf-8-sig")


def _write_ranked(
    settings: RunSettings, model: NnpModel, train: Dataset, result: InfluenceResult, encoding: str
) -> None:
    if settings.kind == "image":
        labels = label_texts(model, train)
        write_image_csv(settings.output, train.image_paths(), labels, result.scores, encoding)
    else:
        table = train.table
        rows = table.astype(str).values.tolist()
        write_tabular_csv(settings.output, list(table.columns), rows, result.scores, encoding)


def label_texts(model: NnpModel, dataset: Dataset) -> List[str]:
    """Each row's label as written in the dataset CSV (its label column, untouched)."""
    for variable in model.data_variables:
        if not variable.is_label:
            continue
        columns = dataset.columns.get(variable.variable_name, [])
        if len(columns) == 1:
            return dataset.table[columns[0]].astype(str).tolist()
    labels = np.asarray(dataset.labels())
    return [" ".join(str(v) for v in np.ravel(row)) for row in labels]


def step_log_path(output: Path) -> Path:
    """``<output stem>_steps.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_steps.csv")
