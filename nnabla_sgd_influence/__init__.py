"""Rank the training rows of a Neural Network Console model by their SGD-Influence.

The public API (see the README, "Python API")::

    from nnabla_sgd_influence import compute_influence
    result = compute_influence("results.nnp", "train.csv", "val.csv", batch_size=32, n_trials=2)

The folders, in the order the data flows through them:

* :mod:`.nnp`: the ``.nnp`` file read into plain data (networks, parameters, solver);
* :mod:`.data`: the dataset CSVs and their images as checked batches; the CSVs and tile written;
* :mod:`.influence`: a trial (retrain, query gradient, retrace) and the trials averaged;
* :mod:`.execution`: where the trials run: device, local worker processes, MPI ranks;
* :mod:`.plugin`: the NNC plugins' command line and run, and their installer.

:mod:`.runtime` lies underneath them all (signals, staged outputs, the temporary folder, system
errors, limits, progress) and :mod:`.evaluation` beside them (leave-one-out ground truth, not
on the plugins' path). At the top: :mod:`.api` (:func:`.api.compute_influence`),
:mod:`.arguments` (the algorithm's settings), :mod:`.errors` (the one-line error) and
:mod:`.install_nnc` (``python -m nnabla_sgd_influence.install_nnc``, the installer).

Names are imported on first use, so that importing the package (as the plugins' ``-h`` does)
loads neither NNabla nor numpy.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "compute_influence": "api",
    "InfluenceResult": "influence.results",
    "InfluenceArguments": "arguments",
    "InfluenceError": "errors",
    "load_model": "nnp.model",
    "NnpModel": "nnp.model",
    "load_dataset": "data.datasets",
    "Dataset": "data.datasets",
    "run_trial": "influence.trials",
    "run_trials": "influence.trials",
    "TrialResult": "influence.trials",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
