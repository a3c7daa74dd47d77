"""One run of a plugin: check the inputs, score every training row, write the CSV.

Everything that can be checked is checked before training starts, so that a bad file or
argument costs seconds, not a retraining.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import nnabla
import numpy as np

from .compat import warn_if_untested_nnabla
from .context import select_context
from .datasets import Dataset, load_dataset
from .engine import TrialResult, run_trial
from .errors import InfluenceError
from .hvp import HVP_METHODS
from .model import NnpModel, load_model
from .output import write_image_csv, write_step_log, write_tabular_csv
from .training import MODES
from .workspace import remove_folder, workspace

log = logging.getLogger(__name__)

KINDS = ("image", "tabular")
COMPLETION_MESSAGE = "SGD influence completed successfully."
RANDOM_LAYERS = ("Dropout", "ImageAugmentation")


@dataclass
class Settings:
    """What a plugin run needs, as given on the command line."""

    model: Path
    input_train: Path
    input_val: Path
    output: Path
    batch_size: int
    seed: int
    n_trials: int
    kind: str  # "image" or "tabular"
    mode: str = "last"
    epochs: int = 1
    hvp: str = "auto"
    context: Optional[str] = None
    device_id: str = "0"
    temp_dir: Optional[Path] = None
    keep_temp: bool = False
    step_log: bool = False


@dataclass
class Summary:
    """What a finished run produced."""

    rows: int
    seconds: float
    output: Path
    hvp_method: str
    step_log: Optional[Path] = None


def run(settings: Settings) -> Summary:
    """Score every row of ``settings.input_train`` and write the ranked CSV."""
    start = time.perf_counter()
    check_settings(settings)
    warn_if_untested_nnabla(log)
    select_context(settings.context, settings.device_id)
    model = load_model(settings.model)
    check_layers(model, settings.kind)
    train = load_dataset(
        settings.input_train, model.data_variables, model.normalize_images, role="input-train"
    )
    val = load_dataset(
        settings.input_val, model.data_variables, model.normalize_images, role="input-val"
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
        settings.n_trials,
        settings.batch_size,
    )

    with workspace(settings.temp_dir, keep=settings.keep_temp) as folder:
        scores, first = run_trials(settings, model, train, val, folder)
    step_log = step_log_path(settings.output) if settings.step_log else None
    if step_log is not None:
        write_step_log(step_log, first.steps)
    write_output(settings, model, train, scores)

    seconds = time.perf_counter() - start
    nnabla.logger.log(99, COMPLETION_MESSAGE)
    log.info(
        "scored %d rows in %.1f s (Hessian-vector products: %s); ranking written to %s",
        len(train),
        seconds,
        first.hvp_method,
        os.path.abspath(settings.output),
    )
    return Summary(len(train), seconds, Path(settings.output), first.hvp_method, step_log)


def check_settings(settings: Settings) -> None:
    """Refuse impossible numbers, unknown choices and unusable paths before any work."""
    for name in ("batch_size", "n_trials", "epochs"):
        value = getattr(settings, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InfluenceError(f"{name} must be a positive integer, got {value!r}")
    for name, value, choices in (
        ("kind", settings.kind, KINDS),
        ("mode", settings.mode, MODES),
        ("hvp", settings.hvp, HVP_METHODS),
    ):
        if value not in choices:
            raise InfluenceError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
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
    if _same_file(settings.input_train, settings.input_val):
        log.warning(
            "input-train and input-val are the same file (%s): scores then measure how rows "
            "help fit the training set itself, not held-out data",
            settings.input_train,
        )


def check_output_path(settings: Settings) -> None:
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


def run_trials(
    settings: Settings, model: NnpModel, train: Dataset, val: Dataset, folder: Path
) -> Tuple[np.ndarray, TrialResult]:
    """Run the trials with seeds seed, seed+1, ...; return the mean scores and trial 1."""
    total = np.zeros(len(train), dtype=np.float64)
    first = None
    for index in range(settings.n_trials):
        workdir = folder / f"trial_{index + 1}"
        workdir.mkdir()
        result = run_trial(
            model,
            train,
            val,
            batch_size=settings.batch_size,
            seed=settings.seed + index,
            epochs=settings.epochs,
            mode=settings.mode,
            hvp=settings.hvp,
            workdir=workdir,
            label=f"trial {index + 1}/{settings.n_trials}",
        )
        if not settings.keep_temp:
            remove_folder(workdir)  # mode "exact" may have stored much there
        scores = np.asarray(result.scores, dtype=np.float64)
        if scores.shape != total.shape:
            raise RuntimeError(f"trial returned {scores.shape} scores for {len(train)} rows")
        total += scores
        if first is None:
            first = result
    scores = total / settings.n_trials
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise InfluenceError(
            f"influence is not finite for {bad} of {len(scores)} rows: retraining diverged "
            "(check the model's solver and learning rate, or try a smaller batch size)"
        )
    return scores, first


def write_output(settings: Settings, model: NnpModel, train: Dataset, scores: np.ndarray) -> None:
    """Write the ranked rows in the plugin's format (see DESIGN.md, Interfaces)."""
    table = train.table
    if settings.kind == "image":
        write_image_csv(settings.output, train.image_paths(), label_texts(model, train), scores)
    else:
        write_tabular_csv(
            settings.output, list(table.columns), table.astype(str).values.tolist(), scores
        )


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
