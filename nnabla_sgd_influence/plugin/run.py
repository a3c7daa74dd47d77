"""One run of a plugin: check the inputs, score every training row, write the outputs.

Everything that can be checked is checked before training starts, so that a bad file or
argument costs seconds, not a retraining: the settings and every output path first, then the
model and both datasets, then the outputs again against every image the datasets name. The
scoring itself is :func:`..api.compute_influence`. All outputs (the ranking, the step log, the
cleansed CSV, the tile) are staged and renamed into place together, or not at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..api import compute_influence
from ..arguments import InfluenceArguments
from ..data.cleansed_csv import check_remove_top, cleansed_path
from ..data.csvfile import check_encoding
from ..data.datasets import Dataset, load_dataset
from ..data.ranking_csv import write_image_csv, write_step_log, write_tabular_csv
from ..data.tile import tile_path
from ..errors import InfluenceError, excerpt_path
from ..execution.device import resolve_context
from ..execution.mpi import world as mpi_world
from ..influence.graphs import RANDOM_LAYERS
from ..influence.results import InfluenceResult, check_row_count
from ..nnp.compat import warn_if_untested_nnabla
from ..nnp.model import NnpModel, load_model
from ..runtime import signals
from ..runtime.limits import OPENBLAS_LOAD_BYTES, check_room
from ..runtime.output_paths import (
    check_outputs,
    check_temporary_parent,
    image_inputs,
    rebase_image_cells,
)
from ..runtime.output_paths import files_read as run_files_read
from ..runtime.progress import BarProgress, Progress, without_monitor_thread
from ..runtime.staging import StagedOutputs, staged_outputs
from .environment import launched

log = logging.getLogger(__name__)

KINDS = ("image", "tabular")
COMPLETION_MESSAGE = "SGD influence completed successfully."
SUMMARY_TOP = 10  # rows looked at in the summary's count, without --remove_top
Labelled = List[Tuple[str, Path]]  # (what a file is, its path), for messages
# Every module a run imports on its way that is not imported by then (see
# import_run_time_modules); the optional ones are private to nnabla, with fallbacks.
RUN_TIME_MODULES = (
    "numpy",
    "pandas",
    "h5py",
    "tqdm",
    "PIL.Image",
    "PIL.PngImagePlugin",
    "google.protobuf.text_format",
    "google.protobuf.descriptor",
    "nnabla.function",
    "nnabla.functions",
    "nnabla.solvers",
    "nnabla.ext_utils",
    "nnabla.utils.nnabla_pb2",
    "nnabla.utils.learning_rate_scheduler",
)
OPTIONAL_RUN_TIME_MODULES = ("nnabla.utils.load_function", "nnabla.backward_functions")
SPREAD_MODULES = ("scipy.stats",)  # the summary's t-interval, with several trials
TILE_MODULES = ("PIL.ImageDraw", "PIL.ImageFont")


@dataclass
class RunSettings:
    """Where a plugin run reads and writes, and what it computes on (not how it scores)."""

    model: Path
    input_train: Path
    input_val: Path
    output: Path
    kind: str  # "image" or "tabular"
    context: Optional[str] = None
    device_id: Optional[str] = None  # None: 0, or an MPI rank's local rank
    temp_dir: Optional[Path] = None  # None: beside the output, not on the system drive
    keep_temp: bool = False
    step_log: bool = False
    encoding: Optional[str] = None  # of both input CSVs; None: detected (UTF-8 or cp932)
    remove_top: int = 0  # > 0: also write the training CSV without that many harmful rows
    tile: int = 0  # > 0: also draw that many of the most harmful images (image plugin)
    tile_helpful: bool = False  # ... and as many of the most helpful
    workers: Optional[int] = None  # processes for the trials; None: one per physical core

    def outputs(self) -> Labelled:
        """Every file the run writes, each checked against what it reads before any work."""
        paths = [("output", Path(self.output))]
        if self.step_log:
            paths.append(("step log", step_log_path(self.output)))
        if self.remove_top:
            paths.append(("cleansed CSV", cleansed_path(self.output)))
        if self.tile:
            paths.append(("tile", tile_path(self.output)))
        return paths


def run(
    settings: RunSettings, arguments: InfluenceArguments, progress: Optional[Progress] = None
) -> Optional[InfluenceResult]:
    """Score every row of ``settings.input_train``, write the outputs (bars by default) and
    return the result.

    Under ``mpirun`` every rank runs this: rank 0 checks and loads the inputs and hands them
    to the others, all share the work, rank 0 writes; the other ranks return None.
    """
    start = time.perf_counter()
    import_run_time_modules(settings, arguments)
    without_monitor_thread()
    world = mpi_world()
    if world is None and launched()[0] > 1:
        if launched()[1] != 0:
            return None  # mpirun without mpi4py: rank 0 does the whole run (and says so)
        log.warning("mpi4py is not installed: the whole run is rank 0's (pip install mpi4py)")
    if world is not None and world.rank != 0:
        return _run_other_rank(settings, arguments, world)
    model, train, val = _checked_inputs(settings, world)
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
        workers=settings.workers,
        progress=BarProgress() if progress is None else progress,
    )
    counts = result.counts(settings.remove_top or SUMMARY_TOP)  # nothing fails after the write
    write_outputs(settings, train, result)
    log.info(
        "scored %d rows in %.1f s (Hessian-vector products: %s); ranking written to %s",
        len(train),
        time.perf_counter() - start,
        result.hvp_method,
        os.path.abspath(settings.output),
    )
    log.info("%s", counts.describe(result.n_trials))
    import nnabla  # a signal from here on is ignored: the outputs are in place

    nnabla.logger.log(99, COMPLETION_MESSAGE)
    return result


def import_run_time_modules(settings: RunSettings, arguments: InfluenceArguments) -> None:
    """Import now every module the run would import later (scipy for the summary, Pillow's
    drawing for the tile, pandas, nnabla's solvers...).

    A library that cannot be loaded (an address-space limit such as ``ulimit -v`` leaves no
    room to map it, or a broken install) then stops the run before any training and before any
    output is written, never once the ranking is in place.
    """
    names = list(RUN_TIME_MODULES)
    names += [name for name in OPTIONAL_RUN_TIME_MODULES if importlib.util.find_spec(name)]
    if arguments.n_trials > 1:
        check_room(OPENBLAS_LOAD_BYTES, "load scipy")  # an import that can hang
        names += SPREAD_MODULES
    if settings.tile:
        names += TILE_MODULES
    for name in names:
        importlib.import_module(name)


def _checked_inputs(settings: RunSettings, world) -> Tuple[NnpModel, Dataset, Dataset]:
    """Everything checked and loaded (on rank 0, which then hands the inputs to the others;
    if it stops instead, the others hear it from the job: see :mod:`..execution.mpi`)."""
    check_settings(settings)
    warn_if_untested_nnabla(log)
    resolve_context(settings.context, settings.device_id)  # a missing GPU fails now
    inputs = load_inputs(settings)
    if world is not None:
        world.share(inputs)
    return inputs


def _run_other_rank(settings: RunSettings, arguments: InfluenceArguments, world) -> None:
    """A rank other than 0: wait for the inputs rank 0 checked, then take its share."""
    logging.getLogger("nnabla_sgd_influence").setLevel(logging.WARNING)
    model, train, val = world.share()
    parent = temp_parent(settings)
    compute_influence(
        model,
        train,
        val,
        **dataclasses.asdict(arguments),
        context=settings.context,
        device_id=settings.device_id,
        temp_dir=parent if parent.is_dir() else None,  # another machine may not have it
        keep_temp=settings.keep_temp,
        progress=False,
    )
    return None


def load_inputs(settings: RunSettings) -> Tuple[NnpModel, Dataset, Dataset]:
    """The model and both datasets, checked; then the outputs against every image they name."""
    model = load_model(settings.model)
    signals.checkpoint()
    check_layers(model, settings.kind)
    datasets = []
    for role, path in (("input-train", settings.input_train), ("input-val", settings.input_val)):
        datasets.append(
            load_dataset(
                path, model.data_variables, model.normalize_images, role, settings.encoding
            )
        )
        signals.checkpoint()
    train, val = datasets
    if settings.kind == "image" and train.image_variable is None:
        raise InfluenceError(
            f"{excerpt_path(settings.input_train)} has no image column: use the tabular plugin for "
            "tabular datasets"
        )
    if settings.remove_top:
        check_remove_top(settings.remove_top, len(train))
    if settings.tile:
        check_row_count("tile", settings.tile, len(train), least=1)
    check_outputs(settings.outputs(), files_read(settings, train, val))
    return model, train, val


def check_settings(settings: RunSettings) -> None:
    """Refuse unknown choices and unusable paths before any work."""
    if settings.kind not in KINDS:
        raise InfluenceError(f"kind must be one of {', '.join(KINDS)}, got {settings.kind!r}")
    for name in ("remove_top", "tile"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InfluenceError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
    if settings.tile and settings.kind != "image":
        raise InfluenceError("tile draws images: it is for the image plugin")
    workers = settings.workers
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise InfluenceError(f"workers must be a positive integer, got {workers!r}")
    for label, path in files_read(settings)[:3]:
        if not Path(path).is_file():
            raise InfluenceError(f"{label.replace('the ', '', 1)} not found: {excerpt_path(path)}")
    check_outputs(settings.outputs(), files_read(settings))
    if settings.temp_dir is not None:
        check_temporary_parent(settings.temp_dir)
    if settings.encoding is not None:
        check_encoding(settings.encoding)
    if _same_file(settings.input_train, settings.input_val):
        log.warning(
            "input-train and input-val are the same file (%s): scores then measure how rows "
            "help fit the training set itself, not held-out data",
            settings.input_train,
        )


def files_read(settings: RunSettings, *datasets: Dataset) -> Labelled:
    """Every file the run reads: the model, both CSVs, the images of ``datasets``, and the
    ``net.nntxt`` of the working folder (read for the context)."""
    files = run_files_read(
        settings.model, settings.input_train, settings.input_val, settings.context
    )
    for role, dataset in zip(("input-train", "input-val"), datasets):
        for paths in dataset.image_files().values():
            files.extend(image_inputs(role, paths))
    return files


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


def write_outputs(settings: RunSettings, train: Dataset, result: InfluenceResult) -> List[Path]:
    """The ranking and what the options ask for (step log, cleansed CSV, tile), renamed into
    place together once all are complete."""
    written = [path for _, path in settings.outputs()]
    with staged_outputs() as outputs:
        write_ranking(settings, train, result, outputs)
        if settings.step_log:
            write_step_log(step_log_path(settings.output), result.steps, outputs)
        if settings.remove_top:
            kept = result.write_cleansed_csv(
                cleansed_path(settings.output), settings.remove_top, outputs
            )
        if settings.tile:
            result.write_tile(
                tile_path(settings.output), settings.tile, settings.tile_helpful, outputs
            )
    if settings.remove_top:
        log.info(
            "training CSV without its %d most harmful rows (%d rows kept) written to %s",
            settings.remove_top,
            kept,
            os.path.abspath(cleansed_path(settings.output)),
        )
    if settings.tile:
        log.info("tile of the most harmful images written to %s", tile_path(settings.output))
    return written


def write_ranking(
    settings: RunSettings, train: Dataset, result: InfluenceResult, outputs: StagedOutputs
) -> None:
    """The ranked rows in the plugin's format (see the README, Output), in the training CSV's
    encoding. Image paths resolve from the output's folder in both formats."""
    encoding = train.csv_format.encoding
    spread = result.influence_std
    if settings.kind == "image":
        paths, labels = train.image_paths(), train.label_texts()
        write_image_csv(settings.output, paths, labels, result.scores, encoding, spread, outputs)
        return
    table = train.table
    columns = list(table.columns)
    rows = table.astype(str).values.tolist()
    images = train.image_files()
    if images:
        rows = rebase_image_cells(columns, rows, images, settings.output)
    write_tabular_csv(settings.output, columns, rows, result.scores, encoding, spread, outputs)


def step_log_path(output: Path) -> Path:
    """``<output stem>_steps.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_steps.csv")
