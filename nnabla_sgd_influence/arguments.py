"""The settings of a computation, each in one object validated once, when it is made.

:class:`InfluenceArguments` holds what changes the scores (batch size, seed, trials, epochs,
mode, Hessian-vector method); :class:`ExecutionArguments` how the trials run (context and
device, worker processes, temporary folder), which never changes them. Where files are read
and written lives elsewhere (the plugins' run settings in :mod:`.plugin.settings`). Every stage
reads its settings from here, so a value is checked in one place, before any work starts.

Every field says what it means and how the plugins take it (:func:`option`): the plugins'
command lines are generated from these classes (:mod:`.plugin.cli`), and the Python API's
keyword arguments have the fields' names.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from .errors import InfluenceError, excerpt

MODES = ("last", "exact")
HVP_METHODS = ("auto", "autodiff", "finite-difference")
CONTEXTS = ("cpu", "cudnn")
Settings = TypeVar("Settings")
SEED_MAX = 2**31 - 1  # nn.seed takes a C int (numpy's RandomState would take 2**32 - 1)


@dataclass(frozen=True)
class Flags:
    """How the plugins take a setting on their command line (:mod:`.plugin.cli`)."""

    names: Tuple[str, ...]  # "-bs", "--batch_size"
    dialog: Optional[str] = None  # the type NNC's dialog shows ("int", "csv"); None: hidden
    parse: Optional[type] = None  # what the text is turned into; a bool default: a switch
    choices: Optional[Tuple[str, ...]] = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # a plugin's own, by plugin
    plugins: Optional[Tuple[str, ...]] = None  # the plugins that have it; None: both


def flags(
    *names: str,
    dialog: Optional[str] = None,
    parse: Optional[type] = None,
    choices: Optional[Sequence[str]] = None,
    plugins: Optional[Sequence[str]] = None,
    **defaults: Any,
) -> Flags:
    """The :class:`Flags` ``names``; ``defaults`` are the plugins' own defaults by plugin
    (``image=32, tabular=64``), where they differ from the Python API's."""
    listed = None if choices is None else tuple(choices)
    only = None if plugins is None else tuple(plugins)
    return Flags(tuple(names), dialog, parse, listed, defaults, only)


def option(help: str, default: Any = MISSING, *, cli: Optional[Flags] = None) -> Any:
    """A settings field that carries its ``help`` text and, when it is an option of the
    plugins, its command line (``cli``)."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class InfluenceArguments:
    """How the scores are computed (see the README's option tables).

    ``seed`` is the first trial's; trial ``i`` (0-based) shuffles with ``seed + i``.
    ``retrace_as_sgd=True`` retraces every solver's steps as plain SGD steps: kept to measure
    what following the solver's real update buys, not for users.
    """

    batch_size: int = option(
        "rows per step when retraining and retracing",
        32,
        cli=flags("-bs", "--batch_size", dialog="int", parse=int, image=32, tabular=64),
    )
    seed: int = option(
        "random seed of the first trial, the next trials add 1",
        0,
        cli=flags("-s", "--seed", dialog="int", parse=int),
    )
    n_trials: int = option(
        "number of trials with different shuffles, scores are averaged",
        1,
        cli=flags("-nt", "--n_trials", dialog="int", parse=int, image=6, tabular=1),
    )
    epochs: int = option(
        "epochs retrained from the .nnp's parameters, and retraced",
        1,
        cli=flags("--epochs", parse=int),
    )
    mode: str = option(
        "last: retrace with the final parameters only (Suzuki et al.); exact: store the "
        "parameters of every step in the temporary folder and stream them back (Hara et al.)",
        "last",
        cli=flags("--mode", choices=MODES),
    )
    hvp: str = option(
        "how Hessian-vector products are computed; auto uses second-order autodiff unless "
        "nnabla cannot differentiate a layer twice",
        "auto",
        cli=flags("--hvp", choices=HVP_METHODS),
    )
    retrace_as_sgd: bool = option(
        "retrace every solver's steps as plain SGD steps, to measure what following the "
        "solver's real update buys (not an option of the plugins)",
        False,
    )

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

    context: Optional[str] = option(
        "compute context; by default the one that NNC's net.nntxt in the working folder "
        "names, else cpu",
        None,
        cli=flags("--context", choices=CONTEXTS),
    )
    device_id: Optional[Union[str, int]] = option(
        "GPU for cudnn; by default 0, under MPI the rank's local rank",
        None,
        cli=flags("--device-id"),
    )
    workers: Optional[int] = option(
        "processes the trials run in; None (the plugins' default): one per physical core, "
        "at most one per trial",
        1,
        cli=flags("--workers", parse=int, image=None, tabular=None),
    )
    temp_dir: Optional[Union[str, os.PathLike]] = option(
        "existing folder in which the run's one temporary folder is made; by default the "
        "output's folder (the plugins), the system's temporary folder (the Python API)",
        None,
        cli=flags("--temp-dir", parse=Path),
    )
    keep_temp: bool = option(
        "keep the temporary folder (its path is logged)", False, cli=flags("--keep-temp")
    )

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


def settings_from(
    settings: Type[Settings], values: Mapping[str, object], **fixed: object
) -> Settings:
    """The ``settings`` dataclass made from the entries of ``values`` named as its fields (a
    field absent from ``values`` keeps its default), and ``fixed``."""
    names = {entry.name for entry in fields(settings)}
    return settings(**{name: value for name, value in values.items() if name in names}, **fixed)
