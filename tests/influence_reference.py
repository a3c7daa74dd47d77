"""Test helpers that are not part of the library."""

from __future__ import annotations

from typing import Dict

import numpy as np


class Subset:
    """The first ``n`` rows of a dataset, seen by the engine as a dataset of its own."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset = dataset
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        assert np.max(rows) < self.n
        return self.dataset.batch(rows)
