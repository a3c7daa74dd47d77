"""The Python entry point: :func:`compute_influence`, what the plugins run, for notebooks.

    >>> from nnabla_sgd_influence import compute_influence
    >>> result = compute_influence("results.nnp", "train.csv", "val.csv", batch_size=32, n_trials=2)
    >>> result.scores          # one float per row of train.csv, in its order
    >>> result.ranking()[:10]  # the ten most harmful rows

The plugins call it with their command line's values, so ``result.scores`` holds exactly the
numbers they write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

from .arguments import InfluenceArguments
from .data.datasets import Batches, Dataset, load_dataset
from .errors import InfluenceError, excerpt
from .execution.device import select_context
from .execution.mpi import run_trials_over_mpi
from .execution.mpi import world as mpi_world
from .execution.workers import default_workers, run_trials_in_processes
from .influence.results import InfluenceResult, images_read
from .influence.trials import run_trials, warn_about_batches_of_one
from .nnp.model import NnpModel, load_model
from .nnp.solvers import warn_if_not_modeled
from .runtime.output_paths import files_read
from .runtime.progress import Progress, as_progress
from .runtime.workspace import workspace

PathLike = Union[str, Path]


def compute_influence(
    model: Union[PathLike, NnpModel],
    input_train: Union[PathLike, Dataset],
    input_val: Union[PathLike, Dataset],
    *,
    batch_size: int = 32,
    seed: int = 0,
    n_trials: int = 1,
    epochs: int = 1,
    mode: str = "last",
    hvp: str = "auto",
    context: Optional[str] = None,
    device_id: Optional[str] = None,
    temp_dir: Optional[PathLike] = None,
    keep_temp: bool = False,
    workers: Optional[int] = 1,
    progress: Union[bool, Progress, Callable[[str, int, int], None]] = True,
    retrace_as_sgd: bool = False,
) -> Optional[InfluenceResult]:
    """SGD-Influence of every row of ``input_train`` on the mean loss of ``input_val``.

    ``model`` is a ``results.nnp`` (or a loaded :class:`NnpModel`); ``input_train`` and
    ``input_val`` are NNC dataset CSVs (or loaded :class:`Dataset` objects). The keyword
    arguments are the plugins' options under the same names (see the README);
    ``workers`` runs the trials in that many processes (None: one per physical core, at most
    one per trial); ``progress`` is ``True`` for bars, ``False`` for none, or
    ``callback(phase, done, total)``. Under ``mpirun`` (with mpi4py) every rank calls this and
    the ranks share the work; rank 0 gets the result, the others None.
    Raises :class:`~.errors.InfluenceError` with a one-line message on bad input, an input
    of the wrong type included, before any training.

    The result knows which files were read, so that its writers never write over one: all
    of them when paths are given; for loaded objects, the files they were loaded from.
    """
    check_input_types(model, input_train, input_val)
    arguments = InfluenceArguments(
        batch_size=batch_size,
        seed=seed,
        n_trials=n_trials,
        epochs=epochs,
        mode=mode,
        hvp=hvp,
        retrace_as_sgd=retrace_as_sgd,
    )
    if not isinstance(model, NnpModel):
        model = load_model(model)
    train = _dataset(input_train, model, "input-train")
    val = _dataset(input_val, model, "input-val")
    workers = default_workers(n_trials) if workers is None else min(int(workers), n_trials)
    if workers < 1:
        raise InfluenceError(f"workers must be a positive integer, got {workers!r}")
    world = mpi_world()
    if world is None or world.rank == 0:
        warn_if_not_modeled(model.solver)
        warn_about_batches_of_one(model, len(train), batch_size)
    if device_id is None:
        device_id = "0" if world is None else str(world.local_rank)  # one GPU per rank
    import nnabla as nn

    context_object = select_context(context, device_id)
    for_workers = ("cudnn" if "cudnn" in str(context_object.backend) else "cpu", device_id)
    folder = workspace(None if temp_dir is None else Path(temp_dir), keep=keep_temp)
    sources = (getattr(source, "path", None) for source in (model, train, val))
    read = files_read(*sources, context)  # net.nntxt: if the context was chosen from it
    with nn.context_scope(context_object), folder as path:
        inputs = (model, train, val, arguments, path)
        options = dict(keep_temp=keep_temp, progress=as_progress(progress))
        if world is not None:
            result = run_trials_over_mpi(*inputs, world, **options)
        elif workers > 1:
            result = run_trials_in_processes(
                *inputs, workers=workers, context=for_workers, **options
            )
        else:
            result = run_trials(*inputs, **options)
    if result is not None:  # rank 0, or no MPI
        result.files_read = tuple((label, str(path)) for label, path in read)
        result.images_read = images_read(train, "input-train") + images_read(val, "input-val")
    return result


def check_input_types(model: object, input_train: object, input_val: object) -> None:
    """Refuse, before any work, an input that is neither a path nor a loaded object."""
    if not (_is_path(model) or isinstance(model, NnpModel)):
        raise InfluenceError(
            f"model must be the path of a .nnp file or a loaded NnpModel, got {_kind(model)}"
        )
    for name, source in (("input_train", input_train), ("input_val", input_val)):
        if not (_is_path(source) or isinstance(source, Batches)):
            raise InfluenceError(
                f"{name} must be the path of a CSV file or a loaded Dataset, got {_kind(source)}"
            )


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _kind(value: object) -> str:
    return "None" if value is None else f"{type(value).__name__} {excerpt(repr(value))}"


def _dataset(source: Union[PathLike, Batches], model: NnpModel, role: str) -> Batches:
    if not _is_path(source):
        return source  # a Dataset, or any other Batches
    return load_dataset(source, model.data_variables, model.normalize_images, role=role)
