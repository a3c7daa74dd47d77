"""Argument and machine limits checked before the work (``limits.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from nnabla_sgd_influence.arguments import SEED_MAX, InfluenceArguments
from nnabla_sgd_influence.errors import InfluenceError
from nnabla_sgd_influence.limits import check_memory, physical_memory


def check_seeds(seed: int, n_trials: int) -> None:
    InfluenceArguments(seed=seed, n_trials=n_trials)


def test_the_seed_range_is_what_nnabla_and_numpy_accept():
    import nnabla as nn

    for seed in (0, SEED_MAX):
        nn.seed(seed)
        np.random.RandomState(seed)
    with pytest.raises(OverflowError):
        nn.seed(SEED_MAX + 1)
    with pytest.raises(ValueError):
        nn.seed(-1)


@pytest.mark.parametrize(
    "seed, trials, words",
    [
        (-1, 1, "seed must be in [0, 2147483647], got -1"),
        (2**31, 1, "got 2147483648"),
        (2**32, 1, "got 4294967296"),
        (SEED_MAX, 2, "needs seeds up to 2147483648"),
        (0, 0, "n_trials must be a positive integer"),
    ],
)
def test_seeds_out_of_range_are_refused(seed, trials, words):
    with pytest.raises(InfluenceError) as caught:
        check_seeds(seed, trials)
    assert words in str(caught.value)


def test_seeds_in_range_pass():
    check_seeds(0, 6)
    check_seeds(SEED_MAX, 1)
    check_seeds(SEED_MAX - 5, 6)


def test_memory_beyond_the_machine_is_refused():
    available = physical_memory()
    assert available is None or available > 0
    check_memory(1 << 20, "a small cache")
    with pytest.raises(InfluenceError, match="the image cache of input-train needs .* PB"):
        check_memory(1e18, "the image cache of input-train")
