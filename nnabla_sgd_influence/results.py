"""What a computation of influence hands back: plain arrays, in the training CSV's row order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np


@dataclass
class InfluenceResult:
    """The scores of every training row, averaged over trials, and each trial's own.

    ``scores[j]`` estimates the change of the mean validation loss if row ``j`` (0-based row
    of the training CSV) had not been trained on; negative means removing it should help.
    """

    scores: np.ndarray  # (rows,), float64, mean over trials
    per_trial: np.ndarray  # (trials, rows)
    seeds: List[int]  # each trial's shuffling seed
    validation_losses: np.ndarray  # (trials,), mean validation loss after retraining
    hvp_method: str  # "autodiff" or "finite-difference"
    steps: List = field(default_factory=list, repr=False)  # trial 1's training.Step records
    stored_bytes: int = 0  # what trial 1 kept for its retrace

    @property
    def n_trials(self) -> int:
        return len(self.per_trial)

    def ranking(self) -> np.ndarray:
        """Row indices from the most harmful (most negative) to the most helpful."""
        return ranking(self.scores)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Row indices by ascending influence; ties keep the rows' order (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), scores))
