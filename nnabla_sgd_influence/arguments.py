"""The settings of the algorithm, in one object validated once.

:class:`InfluenceArguments` holds what changes the scores (batch size, seed, trials, epochs,
mode, Hessian-vector method); where files are read and written lives elsewhere (the plugins'
run settings in :mod:`.pipeline`). Every stage reads its settings from here, so a value is
checked in one place, when the object is made, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InfluenceError

MODES = ("last", "exact")
HVP_METHODS = ("auto", "autodiff", "finite-difference")
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


def _is_int(value: object) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
