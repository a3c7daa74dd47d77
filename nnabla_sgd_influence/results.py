"""What a computation of influence hands back: plain arrays, in the training CSV's row order,
and the steps after the ranking (a cleansed CSV, a tile of the worst images) as methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .output import ranking


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
    dataset: object = field(default=None, repr=False)  # the training Dataset that was scored

    @property
    def n_trials(self) -> int:
        return len(self.per_trial)

    @property
    def influence_std(self) -> Optional[np.ndarray]:
        """Each row's sample standard deviation over the trials (None with one trial)."""
        from .cleansing import influence_std

        return influence_std(self.per_trial)

    def ranking(self) -> np.ndarray:
        """Row indices from the most harmful (most negative) to the most helpful."""
        return ranking(self.scores)

    def harmful(self, k: int) -> np.ndarray:
        """The ``k`` most harmful rows, most negative influence first."""
        return self.ranking()[:k]

    def helpful(self, k: int) -> np.ndarray:
        """The ``k`` most helpful rows, most positive influence first."""
        return self.ranking()[::-1][:k]

    def counts(self, k: int = 10):
        """How many rows hurt, help or do nothing; how many of the ``k`` most harmful are
        distinguishable from zero over the trials (:class:`.cleansing.Counts`)."""
        from .cleansing import count_rows

        return count_rows(self.scores, self.per_trial, self.ranking(), k)

    def write_cleansed_csv(self, path: Union[str, Path], remove_top: int, outputs=None) -> int:
        """Write the training CSV without its ``remove_top`` most harmful rows (its own header,
        encoding and line ends); return how many rows it keeps. ``outputs`` (a
        :class:`.staging.StagedOutputs`) stages it with other files; else it is written now."""
        from .cleansing import check_remove_top, write_cleansed_csv

        check_remove_top(remove_top, len(self.scores))
        dataset = self._training_csv()
        return write_cleansed_csv(dataset, self.harmful(remove_top), Path(path), outputs)

    def write_tile(
        self, path: Union[str, Path], k: int, helpful: bool = False, outputs=None
    ) -> None:
        """A PNG of the ``k`` most harmful training images (and the ``k`` most helpful)."""
        from .tile import sections_for, write_tile

        dataset = self._training_csv()
        if dataset.image_variable is None:
            raise ValueError("the tile is for image datasets; this one has no image column")
        sections = sections_for(dataset, self.scores, self.ranking(), k, helpful)
        title = f"{Path(dataset.path).name}: SGD-Influence over {self.n_trials} trial(s)"
        write_tile(Path(path), title, sections, outputs)

    def _training_csv(self):
        if self.dataset is None or not hasattr(self.dataset, "csv_format"):
            raise ValueError("this result was computed on data that was not read from a CSV")
        return self.dataset
