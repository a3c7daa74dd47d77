"""The Python entry point: :func:`compute_influence`, what the plugins run, for notebooks.

    >>> from nnabla_sgd_influence import compute_influence
    >>> result = compute_influence("results.nnp", "train.csv", "val.csv", batch_size=32, n_trials=2)
    >>> result.scores          # one float per row of train.csv, in its order
    >>> result.ranking()[:10]  # the ten most harmful rows

The plugins call it with their command line's values, so ``result.scores`` holds exactly the
numbers they write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from .arguments import InfluenceArguments
from .context import select_context
from .datasets import Dataset, load_dataset
from .engine import run_trials, warn_about_batches_of_one
from .model import NnpModel, load_model
from .progress import Progress, as_progress
from .results import InfluenceResult
from .solvers import warn_if_not_modeled
from .workspace import workspace

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
    device_id: str = "0",
    temp_dir: Optional[PathLike] = None,
    keep_temp: bool = False,
    progress: Union[bool, Progress, Callable[[str, int, int], None]] = True,
    model_solver: bool = True,
) -> InfluenceResult:
    """SGD-Influence of every row of ``input_train`` on the mean loss of ``input_val``.

    ``model`` is a ``results.nnp`` (or a loaded :class:`NnpModel`); ``input_train`` and
    ``input_val`` are NNC dataset CSVs (or loaded :class:`Dataset` objects). The keyword
    arguments are the plugins' options under the same names (see the README);
    ``progress`` is ``True`` for bars, ``False`` for none, or ``callback(phase, done, total)``.
    Raises :class:`~.errors.InfluenceError` with a one-line message on bad input.
    """
    arguments = InfluenceArguments(
        batch_size=batch_size,
        seed=seed,
        n_trials=n_trials,
        epochs=epochs,
        mode=mode,
        hvp=hvp,
        model_solver=model_solver,
    )
    if not isinstance(model, NnpModel):
        model = load_model(model)
    train = _dataset(input_train, model, "input-train")
    val = _dataset(input_val, model, "input-val")
    warn_if_not_modeled(model.solver)
    warn_about_batches_of_one(model, len(train), batch_size)
    import nnabla as nn

    scope = nn.context_scope(select_context(context, device_id))
    folder = workspace(None if temp_dir is None else Path(temp_dir), keep=keep_temp)
    with scope, folder as path:
        return run_trials(
            model, train, val, arguments, path, keep_temp=keep_temp, progress=as_progress(progress)
        )


def _dataset(source: Union[PathLike, Dataset], model: NnpModel, role: str) -> Dataset:
    if not isinstance(source, (str, Path)):
        return source  # a Dataset, or anything with len() and batch(rows)
    return load_dataset(source, model.data_variables, model.normalize_images, role=role)
