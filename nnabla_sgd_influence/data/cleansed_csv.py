"""After the ranking: the training CSV without its worst rows.

:func:`write_cleansed_csv` writes the training CSV without the chosen rows:
the input's own header and records, in their order, encoding and line ends, each record's raw
text untouched, except that relative image paths are rewritten to resolve from the new file's
folder when it is not the input's.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..errors import InfluenceError, excerpt_path
from ..runtime.output_paths import relative_path
from ..runtime.signals import checkpoints
from .csvfile import read_records
from .datasets import Dataset
from .ranking_csv import staged


def cleansed_path(output: Path) -> Path:
    """``<output stem>_cleansed.csv`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_cleansed.csv")


def check_remove_top(remove_top: int, n_rows: int) -> None:
    """Refuse ``remove_top`` unless it is an integer from 0 to ``n_rows - 1``."""
    if not isinstance(remove_top, (int, np.integer)) or isinstance(remove_top, bool):
        raise InfluenceError(f"remove_top must be an integer, got {remove_top!r}")
    if remove_top < 0:
        raise InfluenceError(f"remove_top must be 0 (off) or more, got {remove_top}")
    check_leaves_rows(remove_top, n_rows)


def check_leaves_rows(remove_top: int, n_rows: int) -> None:
    """Refuse a count ``remove_top`` (a non-negative integer) that would remove every row."""
    if remove_top >= n_rows:
        raise InfluenceError(
            f"remove_top {remove_top} would leave no training rows (input-train has {n_rows})"
        )


def write_cleansed_csv(dataset: Dataset, removed: Sequence[int], path: Path, outputs=None) -> int:
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


def _check_records_match(dataset: Dataset, records: List[str]) -> None:
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


def _image_rewriter(dataset: Dataset, header: str, folder: Path):
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
