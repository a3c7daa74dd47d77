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

from .api import compute_influence
from .arguments import InfluenceArguments
from .cleansing import Counts, check_remove_top, cleansed_path
from .compat import warn_if_untested_nnabla
from .context import resolve_context
from .csvfile import check_encoding
from .datasets import Dataset, load_dataset
from .errors import InfluenceError
from .graphs import RANDOM_LAYERS
from .model import NnpModel, load_model
from .output import write_image_csv, write_step_log, write_tabular_csv
from .progress import BarProgress, Progress
from .results import InfluenceResult
from .tile import tile_path

log = logging.getLogger(__name__)

KINDS = ("image", "tabular")
COMPLETION_MESSAGE = "SGD influence completed successfully."
SUMMARY_TOP = 10  # rows looked at in the summary's count, without --remove_top


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
    remove_top: int = 0  # > 0: also write the training CSV without that many harmful rows
    tile: int = 0  # > 0: also draw that many of the most harmful images (image plugin)
    tile_helpful: bool = False  # ... and as many of the most helpful

    def written_paths(self) -> List[Path]:
        """Every file the run writes (each checked against the inputs before any work)."""
        paths = [Path(self.output)]
        if self.step_log:
            paths.append(step_log_path(self.output))
        if self.remove_top:
            paths.append(cleansed_path(self.output))
        if self.tile:
            paths.append(tile_path(self.output))
        return paths


@dataclass
class Summary:
    """What a finished run produced."""

    rows: int
    seconds: float
    output: Path
    hvp_method: str
    counts: Counts
    written: List[Path]  # every file written, the output first


def run(
    settings: RunSettings, arguments: InfluenceArguments, progress: Optional[Progress] = None
) -> Summary:
    """Score every row of ``settings.input_train`` and write the ranked CSV (bars by default)."""
    start = time.perf_counter()
    check_settings(settings)
    warn_if_untested_nnabla(log)
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
    if settings.remove_top:
        check_remove_top(settings.remove_top, len(train))
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
    written = write_outputs(settings, train, result)
    counts = result.counts(settings.remove_top or SUMMARY_TOP)
    summary = Summary(
        len(train),
        time.perf_counter() - start,
        Path(settings.output),
        result.hvp_method,
        counts,
        written,
    )
    log.info(
        "scored %d rows in %.1f s (Hessian-vector products: %s); ranking written to %s",
        summary.rows,
        summary.seconds,
        summary.hvp_method,
        os.path.abspath(summary.output),
    )
    log.info("%s", counts.describe(result.n_trials))
    nnabla.logger.log(99, COMPLETION_MESSAGE)
    return summary


def write_outputs(settings: RunSettings, train: Dataset, result: InfluenceResult) -> List[Path]:
    """The ranking, then what the options ask for (step log, cleansed CSV, tile)."""
    written = [Path(settings.output)]
    write_ranking(settings, train, result)
    if settings.step_log:
        written.append(step_log_path(settings.output))
        write_step_log(written[-1], result.steps)
    if settings.remove_top:
        written.append(cleansed_path(settings.output))
        kept = result.write_cleansed_csv(written[-1], settings.remove_top)
        log.info(
            "training CSV without its %d most harmful rows (%d rows kept) written to %s",
            settings.remove_top,
            kept,
            os.path.abspath(written[-1]),
        )
    if settings.tile:
        written.append(tile_path(settings.output))
        result.write_tile(written[-1], settings.tile, helpful=settings.tile_helpful)
        log.info("tile of the %d most harmful images written to %s", settings.tile, written[-1])
    return written


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
    for name in ("remove_top", "tile"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InfluenceError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
    if settings.tile and settings.kind != "image":
        raise InfluenceError("tile draws images: it is for the image plugin")
    if _same_file(settings.input_train, settings.input_val):
        log.warning(
            "input-train and input-val are the same file (%s): scores then measure how rows "
            "help fit the training set itself, not held-out data",
            settings.input_train,
        )


def check_output_path(settings: RunSettings) -> None:
    """Every output must go to an existing, writable folder and never over an input."""
    output = Path(settings.output)
    folder = output.parent
    if output.is_dir():
        raise InfluenceError(f"output {output} is a folder; give a CSV file name")
    if not folder.is_dir():
        raise InfluenceError(f"output folder not found: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InfluenceError(f"output folder is not writable: {folder}")
    for written in settings.written_paths():
        for label, path in (
            ("model", settings.model),
            ("input-train", settings.input_train),
            ("input-val", settings.input_val),
        ):
            if _same_file(written, path):
                raise InfluenceError(f"output {written} is the {label} file; choose another name")


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


def write_ranking(settings: RunSettings, train: Dataset, result: InfluenceResult) -> None:
    """Write the ranked rows in the plugin's format (see the README, Output), in the training
    CSV's encoding; UTF-8 with a byte-order mark where that encoding cannot hold a path."""
    encoding = train.csv_format.encoding
    try:
        _write_ranked(settings, train, result, encoding)
    except UnicodeEncodeError as error:
        log.warning(
            "%s cannot hold '%s'; the output is written as UTF-8 (with a byte-order mark)",
            encoding,
            error.object[error.start : error.end],
        )
        _write_ranked(settings, train, result, "utf-8-sig")


def _write_ranked(
    settings: RunSettings, train: Dataset, result: InfluenceResult, encoding: str
) -> None:
    spread = result.influence_std
    if settings.kind == "image":
        write_image_csv(
            settings.output,
            train.image_paths(),
            train.label_texts(),
            result.scores,
            encoding,
            spread,
        )
    else:
        table = train.table
        rows = table.astype(str).values.tolist()
        columns = list(table.columns)
        write_tabular_csv(settings.output, columns, rows, result.scores, encoding, spread)


def step_log_path(output: Path) -> Path:
    """``<output stem>_steps.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_steps.csv")
