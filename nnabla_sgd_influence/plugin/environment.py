"""What the plugins need from the Python that runs them, checked without importing it.

NNC runs plugins with its own Python and its own NNabla, and runs each with ``-h`` to list it
and build its dialog. :func:`check_interpreter` runs first, even for ``-h``: a Python outside
3.8-3.10, or NNabla absent or too old, is not a Python that can run the plugin at all, so its
help would promise what it cannot do. :func:`check_packages` runs when the plugin runs: a
missing run-time package (pandas, scipy, ...) is named then, and ``-h`` still works, so that
NNC keeps the plugin in its menu. Both read installed packages' metadata only, so they cost
milliseconds and import nothing heavy.

:func:`use_single_threaded_blas` is the one process-wide setting of a plugin run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

from ..errors import InfluenceError
from ..nnp.compat import NNABLA_RANGE, version_tuple

PYTHON_RANGE = ((3, 8), (3, 10))  # NNabla publishes wheels for these
NNABLA_OLDEST = NNABLA_RANGE[0]
RUN_TIME_PACKAGES = ("numpy", "scipy", "PIL", "h5py", "google.protobuf", "tqdm", "pandas")
BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"


def installed_version(distribution: str) -> Optional[str]:
    """The version ``distribution``'s metadata gives, or None when it is not installed (asked
    only of a Python in :data:`PYTHON_RANGE`, which all have ``importlib.metadata``)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_environment() -> None:
    """Raise :class:`InfluenceError` naming what this Python lacks to run the plugins."""
    check_interpreter()
    check_packages()


def check_interpreter() -> None:
    """Raise :class:`InfluenceError` when this Python or its NNabla cannot run the plugins."""
    python = sys.executable or "this Python"
    low, high = PYTHON_RANGE
    if not low <= sys.version_info[:2] <= high:
        raise InfluenceError(
            f"the plugin runs on Python {low[0]}.{low[1]}-{high[0]}.{high[1]} (NNabla's "
            f"range), but {python} is {sys.version.split()[0]}"
        )
    if importlib.util.find_spec("nnabla") is None:
        raise InfluenceError(
            f"{python} has no NNabla: install it ({python} -m pip install nnabla), or run the "
            "plugin with Neural Network Console's own Python"
        )
    version = installed_version("nnabla")
    if version is not None and version_tuple(version) < NNABLA_OLDEST:
        oldest = ".".join(map(str, NNABLA_OLDEST))
        raise InfluenceError(
            f"NNabla {version} in {python} is too old: the plugin needs NNabla {oldest} or "
            f"newer ({python} -m pip install 'nnabla>={oldest}'; a CUDA extension must match "
            "it exactly)"
        )


def check_packages() -> None:
    """Raise :class:`InfluenceError` naming the first run-time package this Python lacks."""
    python = sys.executable or "this Python"
    for package in RUN_TIME_PACKAGES:
        if _missing(package):
            name = {"PIL": "pillow", "google.protobuf": "protobuf"}.get(package, package)
            raise InfluenceError(
                f"{python} lacks the package '{name}': install it ({python} -m pip install {name})"
            )


def use_single_threaded_blas() -> None:
    """Have OpenBLAS (numpy's and scipy's each) start no threads: set before numpy loads.

    The plugins compute with NNabla, which does not use OpenBLAS, and run trials in worker
    processes for parallelism. Left alone, each OpenBLAS starts a thread per core when it is
    loaded and allocates a buffer for each; under an address-space limit (``ulimit -v``) that
    allocation fails and OpenBLAS retries it forever, so that the run hangs in an import. With
    one thread it allocates nothing when it loads. Set for the whole process (and the worker
    processes it starts), whatever the environment said.
    """
    os.environ[BLAS_THREADS_VARIABLE] = "1"


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # the parent package (google) is absent
        return True
