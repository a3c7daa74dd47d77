"""What a computation of influence hands back: plain arrays, in the training CSV's row order,
and the steps after the ranking (a cleansed CSV, a tile of the worst images) as methods.

The result also keeps, as plain data, which files the computation read (the model, both CSVs,
their images, the ``net.nntxt`` read for the context), so that its writers refuse exactly
what the plugins refuse (:mod:`..runtime.output_paths`): an input, a symbolic link, a folder,
a read-only file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.cleansed_csv import check_remove_top, write_cleansed_csv
from ..data.datasets import Batches, Dataset
from ..data.ranking_csv import ranking
from ..data.tile import write_ranked_tile
from ..errors import InfluenceError, excerpt
from ..runtime.output_paths import check_outputs, image_inputs
from .spread import Counts, count_rows, influence_std

Labelled = Tuple[Tuple[str, str], ...]  # (what a file is, its path)
ImagesRead = Tuple[Tuple[str, Sequence[str]], ...]  # (role, the path of each row's image)


def check_row_count(name: str, k: object, rows: int, least: int = 0) -> None:
    """Refuse ``k`` rows asked for unless it is an integer from ``least`` to ``rows``: a
    count beyond the rows is an error, never quietly cut to what there is."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise InfluenceError(f"{name} must be an integer, got {excerpt(repr(k))}")
    check_within_rows(name, k, rows, least)


def check_within_rows(name: str, k: int, rows: int, least: int = 0) -> None:
    """Refuse a count of rows ``k`` (an integer) outside ``least`` to ``rows``."""
    if not least <= k <= rows:
        raise InfluenceError(
            f"{name} must be from {least} to {rows} (the training rows), got {int(k)}"
        )


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
    dataset: Optional[Batches] = field(default=None, repr=False)  # the training rows scored
    # The files read, for the writers' checks; by default what the training Dataset tells.
    files_read: Labelled = field(default=(), repr=False)
    images_read: ImagesRead = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.files_read and not self.images_read and isinstance(self.dataset, Dataset):
            self.files_read = (("the input-train file", str(self.dataset.path)),)
            self.images_read = images_read(self.dataset, "input-train")

    @property
    def n_trials(self) -> int:
        return len(self.per_trial)

    @property
    def influence_std(self) -> Optional[np.ndarray]:
        """Each row's sample standard deviation over the trials (None with one trial)."""
        return influence_std(self.per_trial)

    def ranking(self) -> np.ndarray:
        """Row indices from the most harmful (most negative) to the most helpful."""
        return ranking(self.scores)

    def harmful(self, k: int) -> np.ndarray:
        """The ``k`` most harmful rows, most negative influence first (0 <= k <= rows)."""
        check_row_count("k", k, len(self.scores))
        return self.ranking()[:k]

    def helpful(self, k: int) -> np.ndarray:
        """The ``k`` most helpful rows, most positive influence first (0 <= k <= rows)."""
        check_row_count("k", k, len(self.scores))
        return self.ranking()[::-1][:k]

    def counts(self, k: int = 10) -> Counts:
        """How many rows hurt, help or do nothing; how many of the ``k`` most harmful are
        distinguishable from zero over the trials (:class:`.spread.Counts`)."""
        return count_rows(self.scores, self.per_trial, self.ranking(), k)

    def inputs(self) -> Iterator[Tuple[str, str]]:
        """``(description, path)`` of every file the computation is known to have read.

        A result computed from paths knows them all. One computed from loaded objects knows
        what they tell: the path each was loaded from (an :class:`~..nnp.model.NnpModel`'s, a
        :class:`~..data.datasets.Dataset`'s and its images); an object that was not loaded from a
        file adds nothing, and a file it came from cannot be protected.
        """
        yield from self.files_read
        for role, paths in self.images_read:
            yield from image_inputs(role, paths)

    def write_cleansed_csv(self, path: Union[str, Path], remove_top: int, outputs=None) -> int:
        """Write the training CSV without its ``remove_top`` most harmful rows (its own header,
        encoding and line ends); return how many rows it keeps. ``outputs`` (a
        :class:`..runtime.staging.StagedOutputs`) stages it with other files; else it is
        written now.

        ``path`` is refused as the plugins refuse an output (:mod:`..runtime.output_paths`): a
        file the computation read (see :meth:`inputs`), a link, a folder or a read-only file.
        """
        check_remove_top(remove_top, len(self.scores))
        dataset = self._training_csv()
        check_outputs([("cleansed CSV", Path(path))], self.inputs())
        return write_cleansed_csv(dataset, self.ranking()[:remove_top], Path(path), outputs)

    def write_tile(
        self, path: Union[str, Path], k: int, helpful: bool = False, outputs=None
    ) -> None:
        """A PNG of the ``k`` most harmful training images (and the ``k`` most helpful);
        1 <= k <= rows. ``path`` is refused as in :meth:`write_cleansed_csv`."""
        dataset = self._training_csv()
        if dataset.image_variable is None:
            raise InfluenceError("the tile is for image datasets; this one has no image column")
        check_row_count("k", k, len(self.scores), least=1)
        check_outputs([("tile", Path(path))], self.inputs())
        ranking = self.ranking()
        write_ranked_tile(path, dataset, self.scores, ranking, k, helpful, self.n_trials, outputs)

    def _training_csv(self) -> Dataset:
        if not isinstance(self.dataset, Dataset):
            raise InfluenceError("this result was computed on data that was not read from a CSV")
        return self.dataset


def images_read(dataset: Batches, role: str) -> ImagesRead:
    """``(role, paths)`` for each image column of a loaded :class:`Dataset` (none for other
    rows, which do not say where their images came from)."""
    if not isinstance(dataset, Dataset):
        return ()
    return tuple((role, paths) for paths in dataset.image_files().values())
