"""The settings of a computation, each in one object validated once, when it is made.

:class:`InfluenceArguments` holds what changes the scores (batch size, seed, trials, epochs,
mode, Hessian-vector method); :class:`ExecutionArguments` how the trials run (context and
device, worker processes, temporary folder), which never changes them. Where files are read
and written lives elsewhere (the plugins' run settings in :mod:`.plugin.run`). Every stage
reads its settings from here, so a value is checked in one place, before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Type, TypeVar, Union

from .errors import InfluenceError, excerpt

MODES = ("last", "exact")
HVP_METHODS = ("auto", "autodiff", "finite-difference")
CONTEXTS = ("cpu", "cudnn")
Settings = TypeVar("Settings")
SEED_MAX = 2**31 - 1  # nn.seed takes a C int (numpy's RandomState would take 2**32 - 1)


@dataclass(frozen=True)
class InfluenceArguments:
    """How the scores are computed (see the README's option tables).

    ``seed`` is the first trial's; trial ``i`` (0-based) shuffles with ``seed + i``.
    ``retrace_as_sgd=True`` retraces every solver's steps as plain SGD steps: kept to measure
    what following the solver's real update buys, not for users.
    """

    batch_size: int = 32
    seed: int = 0
    n_trials: int = 1
    epochs: int = 1
    mode: str = "last"
    hvp: str = "auto"
    retrace_as_sgd: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_trials", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InfluenceError(f"{name} must be a positive integer, got {value!r}")
        for name, value, choices in (("mode", self.mode, MODES), ("hvp", self.hvp, HVP_METHODS)):
            if value not in choices:
                raise InfluenceError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise InfluenceError(f"seed must be in [0, {SEED_MAX}], got {self.seed!r}")
        last = self.seed + self.n_trials - 1
        if last > SEED_MAX:
            raise InfluenceError(
                f"seed {self.seed} with {self.n_trials} trials needs seeds up to {last}, above "
                f"{SEED_MAX}: use a seed of at most {SEED_MAX - self.n_trials + 1}"
            )

    def seed_of(self, trial: int) -> int:
        """The shuffling seed of ``trial`` (0-based)."""
        return self.seed + trial


@dataclass(frozen=True)
class ExecutionArguments:
    """Where and how the trials run (see the README's option tables); the scores are the same
    whatever these say.

    ``context`` None chooses from the working folder's ``net.nntxt``, else the CPU;
    ``device_id`` None is 0, or an MPI rank's local rank; ``workers`` None is one process per
    physical core (at most one per trial); ``temp_dir`` None leaves the temporary folder's
    place to the caller (the plugins: beside the output; the Python API: the system's).
    """

    context: Optional[str] = None
    device_id: Optional[Union[str, int]] = None
    workers: Optional[int] = 1
    temp_dir: Optional[Union[str, os.PathLike]] = None
    keep_temp: bool = False

    def __post_init__(self) -> None:
        if self.context is not None and self.context not in CONTEXTS:
            raise InfluenceError(
                f"unknown context '{excerpt(self.context)}' (choose one of: {', '.join(CONTEXTS)})"
            )
        if self.device_id is not None and not (
            isinstance(self.device_id, str) or _is_int(self.device_id)
        ):
            raise InfluenceError(f"device_id must be a GPU's number, got {self.device_id!r}")
        if self.workers is not None and (not _is_int(self.workers) or self.workers < 1):
            raise InfluenceError(f"workers must be a positive integer, got {self.workers!r}")
        if self.temp_dir is not None and not isinstance(self.temp_dir, (str, os.PathLike)):
            raise InfluenceError(f"temp_dir must be the path of a folder, got {self.temp_dir!r}")


def _is_int(value: object) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def settings_from(kind: Type[Settings], values: Mapping[str, object], **fixed: object) -> Settings:
    """The settings dataclass ``kind`` made from the entries of ``values`` named as its
    fields (a field absent from ``values`` keeps its default), and ``fixed``."""
    names = {field.name for field in fields(kind)}
    return kind(**{name: value for name, value in values.items() if name in names}, **fixed)
