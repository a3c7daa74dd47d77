"""After the ranking: how sure each score is, and the training CSV without its worst rows.

**Spread.** With several trials each row has one score per trial; ``influence_std`` is their
sample standard deviation. A row's mean is *distinguishable from zero* when the two-sided 95 %
t-interval over the trials, ``mean +/- t(0.975, n-1) * std / sqrt(n)``, excludes zero.

**Cleansed CSV.** :func:`write_cleansed_csv` writes the training CSV without the chosen rows:
the input's own header and records, in their order, encoding and line ends, each record's raw
text untouched, except that relative image paths are rewritten to resolve from the new file's
folder when it is not the input's.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InfluenceError, excerpt_path
from ..runtime.output_paths import relative_path
from ..runtime.signals import checkpoints
from .csvfile import read_records
from .ranking_csv import staged

CONFIDENCE = 0.95


def influence_std(per_trial: np.ndarray) -> Optional[np.ndarray]:
    """Sample standard deviation of each row's scores over the trials (None for one trial)."""
    per_trial = np.asarray(per_trial, dtype=np.float64)
    if len(per_trial) < 2:
        return None
    return per_trial.std(axis=0, ddof=1)


def distinguishable_from_zero(per_trial: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Whether each row's mean score differs from zero at ``confidence`` (t-interval)."""
    from scipy.stats import t

    per_trial = np.asarray(per_trial, dtype=np.float64)
    n = len(per_trial)
    if n < 2:
        return np.zeros(per_trial.shape[1], dtype=bool)
    half_width = t.ppf(0.5 + confidence / 2.0, n - 1) * per_trial.std(axis=0, ddof=1) / np.sqrt(n)
    return np.abs(per_trial.mean(axis=0)) > half_width


@dataclass(frozen=True)
class Counts:
    """How many rows help, hurt or do nothing, and how sure the top ones are."""

    rows: int
    negative: int  # removing them should lower the validation loss
    positive: int  # removing them should raise it: they help
    zero: int
    top: int  # k, the most harmful rows looked at
    top_distinguishable: Optional[int]  # of those, how many differ from zero (None: 1 trial)

    def describe(self, n_trials: int) -> str:
        """The summary's sentence, its verbs agreeing with its counts."""
        one = self.negative == 1
        text = (
            f"{self.negative} of {self.rows} {'row' if self.rows == 1 else 'rows'} "
            f"{'has' if one else 'have'} negative influence (removing {'it' if one else 'them'} "
            f"should lower the validation loss), {self.positive} positive "
            f"({'it helps' if self.positive == 1 else 'they help'}), {self.zero} zero"
        )
        if self.top_distinguishable is not None:
            harmful = "the most harmful row" if self.top == 1 else f"the {self.top} most harmful"
            verb = "is" if self.top_distinguishable == 1 else "are"
            text += (
                f"; of {harmful}, {self.top_distinguishable} {verb} distinguishable from zero "
                f"({CONFIDENCE:.0%} interval over {n_trials} trials)"
            )
        return text


def count_rows(scores: np.ndarray, per_trial: np.ndarray, ranking: np.ndarray, k: int) -> Counts:
    """The :class:`Counts` of a result; ``ranking`` is most harmful first."""
    scores = np.asarray(scores)
    top = np.asarray(ranking)[: max(0, min(k, len(scores)))]
    sure = None
    if len(per_trial) > 1:
        sure = int(np.count_nonzero(distinguishable_from_zero(per_trial)[top] & (scores[top] < 0)))
    return Counts(
        rows=len(scores),
        negative=int(np.count_nonzero(scores < 0)),
        positive=int(np.count_nonzero(scores > 0)),
        zero=int(np.count_nonzero(scores == 0)),
        top=len(top),
        top_distinguishable=sure,
    )


def cleansed_path(output: Path) -> Path:
    """``<output stem>_cleansed.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_cleansed.csv")


def check_remove_top(remove_top: int, n_rows: int) -> None:
    if not isinstance(remove_top, (int, np.integer)) or isinstance(remove_top, bool):
        raise InfluenceError(f"remove_top must be an integer, got {remove_top!r}")
    if remove_top < 0:
        raise InfluenceError(f"remove_top must be 0 (off) or more, got {remove_top}")
    if remove_top >= n_rows:
        raise InfluenceError(
            f"remove_top {remove_top} would leave no training rows (input-train has {n_rows})"
        )


def write_cleansed_csv(dataset, removed: Sequence[int], path: Path, outputs=None) -> int:
    """Write ``dataset``'s CSV without the rows ``removed`` to ``path`` (staged in ``outputs``,
    a :class:`..runtime.staging.StagedOutputs`, when given); return how many rows it keeps."""
    path = Path(path)
    form = dataset.csv_format
    header, records = read_records(dataset.path, form)
    _check_records_match(dataset, records)
    gone = set(int(r) for r in removed)
    kept = [i for i in range(len(records)) if i not in gone]
    rewrite = _image_rewriter(dataset, header, path.parent)
    with staged(outputs) as sink, sink.text(path, form.encoding) as stream:
        stream.write(header + form.newline)
        for i in checkpoints(kept):
            stream.write((rewrite(i, records[i]) if rewrite else records[i]) + form.newline)
    return len(kept)


def _check_records_match(dataset, records: List[str]) -> None:
    """Each raw record must be the table's row of the same index (else refuse to write)."""
    table = dataset.table
    if len(records) != len(table):
        raise InfluenceError(
            f"{excerpt_path(dataset.path)}: {len(records)} records but {len(table)} rows were "
            "read; "
            "the cleansed CSV is not written"
        )
    rows = table.astype(str).values.tolist()
    for i, record in enumerate(records):
        fields = next(csv.reader(io.StringIO(record)), [])
        if fields[: len(rows[i])] != rows[i]:
            raise InfluenceError(
                f"{excerpt_path(dataset.path)}: record {i} does not read back as row {i}; "
                "the cleansed CSV is not written"
            )


def _image_rewriter(dataset, header: str, folder: Path):
    """A function giving a record with its image path relative to ``folder``, or None when
    the CSV's own folder is ``folder`` (every record is written as it is)."""
    if dataset.image_variable is None:
        return None
    if os.path.abspath(folder) == os.path.abspath(Path(dataset.path).parent):
        return None
    column = dataset.columns[dataset.image_variable][0]
    position = list(dataset.table.columns).index(column)
    paths = dataset.image_paths()

    def rewrite(row: int, record: str) -> str:
        fields = next(csv.reader(io.StringIO(record)))
        cell = fields[position]
        if os.path.isabs(cell.strip()):
            return record
        new = relative_path(paths[row], folder)
        fields[position] = new.replace("/", "\\") if "\\" in cell else new
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(fields)
        return out.getvalue()

    return rewrite
