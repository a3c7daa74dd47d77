"""The Python entry point: :func:`compute_influence`, what the plugins compute, for notebooks.

    >>> from nnabla_sgd_influence import compute_influence
    >>> result = compute_influence("results.nnp", "train.csv", "val.csv", batch_size=32, n_trials=2)
    >>> result.scores          # one float per row of train.csv, in its order
    >>> result.ranking()[:10]  # the ten most harmful rows

It checks its arguments, loads the inputs, builds the :class:`.execution.runner.Execution` and
runs it; the plugins run the same with their command line's values, so ``result.scores``
holds exactly the numbers they write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

from .arguments import ExecutionArguments, InfluenceArguments, settings_from
from .data.datasets import Batches, Dataset, load_dataset
from .errors import InfluenceError, excerpt
from .execution.runner import create_execution, run_influence
from .influence.results import InfluenceResult
from .nnp.model import NnpModel, load_model
from .runtime.progress import Progress, as_progress

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
    given = dict(locals())  # every argument by name: the settings' fields are named alike
    check_input_types(model, input_train, input_val)
    arguments = settings_from(InfluenceArguments, given)
    how = settings_from(ExecutionArguments, given)
    shown = as_progress(progress)
    if not isinstance(model, NnpModel):
        model = load_model(model)
    train = _dataset(input_train, model, "input-train")
    val = _dataset(input_val, model, "input-val")
    execution = create_execution(how, n_trials, progress=shown)
    return run_influence(execution, model, train, val, arguments)


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
