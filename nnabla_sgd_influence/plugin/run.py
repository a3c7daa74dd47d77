"""One run of a plugin: check the inputs, score every training row, write the outputs.

Everything that can be checked is checked before training starts, so that a bad file or
argument costs seconds, not a retraining: each setting as it is made, then where the run
computes and keeps its temporary files (its :class:`..execution.runner.Execution`), every output
path, the model and both datasets, then the outputs again against every image they name. The
scoring itself is :func:`..execution.runner.run_influence`, as for the Python API. All outputs
(the ranking, the step log, the cleansed CSV, the tile) are staged and renamed into place
together, or not at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

from ..arguments import ExecutionArguments, InfluenceArguments
from ..data.cleansed_csv import check_leaves_rows, cleansed_path, write_cleansed_csv
from ..data.csvfile import check_encoding
from ..data.datasets import Dataset, load_dataset
from ..data.ranking_csv import write_image_csv, write_step_log, write_tabular_csv
from ..data.tile import tile_path, write_ranked_tile
from ..errors import InfluenceError, excerpt_path
from ..execution.mpi import launched, loaded_on_rank_0
from ..execution.runner import create_execution, run_influence
from ..influence.graphs import RANDOM_LAYERS
from ..influence.results import InfluenceResult, check_within_rows
from ..nnp.compat import warn_if_untested_nnabla
from ..nnp.model import NnpModel, load_model
from ..runtime import signals
from ..runtime.limits import OPENBLAS_LOAD_BYTES, check_room
from ..runtime.output_paths import check_outputs, image_inputs, rebase_image_cells
from ..runtime.output_paths import files_read as run_files_read
from ..runtime.progress import BarProgress, Progress, without_monitor_thread
from ..runtime.staging import StagedOutputs, staged_outputs
from .settings import RunSettings

log = logging.getLogger(__name__)

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


def planned_outputs(settings: RunSettings) -> Labelled:
    """Every file the run writes, each checked against what it reads before any work."""
    paths = [("output", Path(settings.output))]
    if settings.step_log:
        paths.append(("step log", step_log_path(settings.output)))
    if settings.remove_top:
        paths.append(("cleansed CSV", cleansed_path(settings.output)))
    if settings.tile:
        paths.append(("tile", tile_path(settings.output)))
    return paths


def run(
    settings: RunSettings,
    execution_arguments: ExecutionArguments,
    arguments: InfluenceArguments,
    progress: Optional[Progress] = None,
) -> Optional[InfluenceResult]:
    """Score every row of ``settings.input_train``, write the outputs (bars by default) and
    return the result.

    Under ``mpirun`` every rank runs this: rank 0 checks and loads the inputs and hands them
    to the others, all share the work, rank 0 writes; the other ranks return None.
    """
    start = time.perf_counter()
    import_run_time_modules(settings, arguments)
    without_monitor_thread()
    execution = create_execution(
        execution_arguments,
        arguments.n_trials,
        progress=BarProgress() if progress is None else progress,
        default_temp_parent=Path(os.path.abspath(settings.output)).parent,
    )
    size, rank, _ = launched()
    if execution.world is None and size > 1:
        if rank != 0:
            return None  # mpirun without mpi4py: rank 0 does the whole run (and says so)
        log.warning("mpi4py is not installed: the whole run is rank 0's (pip install mpi4py)")
    if not execution.leads:
        logging.getLogger("nnabla_sgd_influence").setLevel(logging.WARNING)
    context_file = execution.device.context_file
    model, train, val = loaded_on_rank_0(
        execution.world, lambda: checked_inputs(settings, context_file)
    )
    log.info(
        "scoring %d training rows against %d validation rows, %d trial(s), batch size %d",
        len(train),
        len(val),
        arguments.n_trials,
        arguments.batch_size,
    )
    result = run_influence(execution, model, train, val, arguments)
    if result is None:
        return None  # an MPI rank other than 0
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


def checked_inputs(
    settings: RunSettings, context_file: Optional[Path]
) -> Tuple[NnpModel, Dataset, Dataset]:
    """Everything checked and loaded (under MPI on rank 0, which hands the inputs over)."""
    check_settings(settings, context_file)
    warn_if_untested_nnabla(log)
    return load_inputs(settings, context_file)


def load_inputs(
    settings: RunSettings, context_file: Optional[Path]
) -> Tuple[NnpModel, Dataset, Dataset]:
    """The model and both datasets, checked; then the outputs against every image they name
    (and the ``context_file`` read for the context)."""
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
        check_leaves_rows(settings.remove_top, len(train))
    if settings.tile:
        check_within_rows("tile", settings.tile, len(train), least=1)
    check_outputs(planned_outputs(settings), files_read(settings, context_file, train, val))
    return model, train, val


def check_settings(settings: RunSettings, context_file: Optional[Path] = None) -> None:
    """Refuse missing inputs and unusable outputs before any work (``context_file``: the file
    read for the context, which no output may be)."""
    read = files_read(settings, context_file)
    for label, path in read[:3]:
        if not Path(path).is_file():
            raise InfluenceError(f"{label.replace('the ', '', 1)} not found: {excerpt_path(path)}")
    check_outputs(planned_outputs(settings), read)
    if settings.encoding is not None:
        check_encoding(settings.encoding)
    if _same_file(settings.input_train, settings.input_val):
        log.warning(
            "input-train and input-val are the same file (%s): scores then measure how rows "
            "help fit the training set itself, not held-out data",
            settings.input_train,
        )


def files_read(settings: RunSettings, context_file: Optional[Path], *datasets: Dataset) -> Labelled:
    """Every file the run reads: the model, both CSVs, the images of ``datasets``, and the
    ``context_file`` (NNC's ``net.nntxt``) read for the context."""
    files = run_files_read(settings.model, settings.input_train, settings.input_val, context_file)
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


def write_outputs(settings: RunSettings, train: Dataset, result: InfluenceResult) -> List[Path]:
    """The ranking and what the options ask for (step log, cleansed CSV, tile), renamed into
    place together once all are complete. Counts and paths were checked before training."""
    written = [path for _, path in planned_outputs(settings)]
    ranking = result.ranking()
    with staged_outputs() as outputs:
        write_ranking(settings, train, result, outputs)
        if settings.step_log:
            write_step_log(step_log_path(settings.output), result.steps, outputs)
        if settings.remove_top:
            removed = ranking[: settings.remove_top]
            kept = write_cleansed_csv(train, removed, cleansed_path(settings.output), outputs)
        if settings.tile:
            write_ranked_tile(
                tile_path(settings.output),
                train,
                result.scores,
                ranking,
                settings.tile,
                settings.tile_helpful,
                result.n_trials,
                outputs,
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
