"""Read a Neural Network Console dataset CSV into batches for the model's data variables.

Every row is checked at load time, before any training starts: numbers must parse, class labels
must be integers in range, and every image is decoded once into a compact ``uint8`` cache of the
model's input shape. ``Dataset.batch`` then turns only the requested rows into ``float32``.

Column headers follow NNC: ``NAME[__INDEX][:TYPE]`` (``x:image``, ``y:label``, ``x__3:pixel``);
columns whose header starts with ``#`` are comments and are ignored.
"""

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import InfluenceError, excerpt, excerpt_path
from ..nnp.model import DataVariable
from .csvfile import CsvFormat, read_table
from .images import IMAGE_EXTENSIONS, Locator, decode_images, image_paths, image_shape

log = logging.getLogger(__name__)

Batch = Dict[str, np.ndarray]  # variable name -> float32 values of the rows asked for


@runtime_checkable
class Batches(Protocol):
    """What retraining and the retrace need of a dataset: its number of rows and the arrays
    of any rows. A :class:`Dataset` is one; so is any object with these two methods."""

    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray) -> Batch: ...


@dataclass
class Dataset:
    """One NNC dataset CSV, validated and ready to be served in batches."""

    path: Path  # the CSV
    table: pd.DataFrame = field(repr=False)  # the CSV as read, every cell a string
    csv_format: CsvFormat  # its encoding and line end
    columns: Dict[str, List[str]]  # variable_name -> CSV column names used for it, in order
    image_variable: Optional[str]  # variable_name fed from an image column, if any
    # variable_name -> per-row values: uint8 (N, *shape) for images, float32 otherwise.
    _arrays: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # variable_name -> absolute image path per row
    _images: Dict[str, List[str]] = field(default_factory=dict, repr=False)
    _normalize_images: bool = True
    _label_variable: Optional[str] = None
    _class_labels: bool = False

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, rows: np.ndarray) -> Batch:
        """Arrays for the data rows ``rows`` (0-based, in that order), by variable name.

        Each array is float32 of shape ``(len(rows), *DataVariable.shape)``; images are divided
        by 255 when the dataset was loaded with ``normalize_images``.
        """
        index = self._row_index(rows)
        result = {}
        for name, values in self._arrays.items():
            chosen = values[index].astype(np.float32)
            if name in self._images and self._normalize_images:
                chosen /= np.float32(255)
            result[name] = chosen
        return result

    def subset(self, rows: np.ndarray) -> "Dataset":
        """A dataset of the rows ``rows`` (0-based, in that order) of this one."""
        index = self._row_index(rows)
        return dataclasses.replace(
            self,
            table=self.table.iloc[index].reset_index(drop=True),
            _arrays={name: values[index] for name, values in self._arrays.items()},
            _images={name: [paths[i] for i in index] for name, paths in self._images.items()},
        )

    def image_paths(self) -> Optional[List[Path]]:
        """Absolute paths of the image column's files, one per row; ``None`` for tabular data."""
        if self.image_variable is None:
            return None
        return [Path(p) for p in self._images[self.image_variable]]

    def images(self, rows: np.ndarray) -> Optional[np.ndarray]:
        """The decoded uint8 pixels of ``rows`` (model shape), or None for tabular data."""
        if self.image_variable is None:
            return None
        return self._arrays[self.image_variable][self._row_index(rows)]

    def labels(self) -> Optional[np.ndarray]:
        """The label variable's value per row, for reports; ``None`` if no input is a label.

        Class labels come as int64, other targets as float32; shape ``(N,)`` when the variable
        holds one value per row, else ``(N, *shape)``.
        """
        if self._label_variable is None:
            return None
        values = self._arrays[self._label_variable]
        if values[0].size == 1:
            values = values.reshape(len(values))
        return values.astype(np.int64) if self._class_labels else values.copy()

    def image_files(self) -> Dict[str, List[str]]:
        """Absolute path of each row's image, by image column (every image variable)."""
        return {self.columns[name][0]: list(paths) for name, paths in self._images.items()}

    def label_texts(self) -> List[str]:
        """Each row's label as written in the CSV (its label column), for reports."""
        if self._label_variable is None:
            return [""] * len(self)
        columns = self.columns.get(self._label_variable, [])
        if len(columns) == 1:
            return self.table[columns[0]].astype(str).tolist()
        return [" ".join(str(v) for v in np.ravel(row)) for row in np.asarray(self.labels())]

    def _row_index(self, rows: np.ndarray) -> np.ndarray:
        index = np.asarray(rows)
        if index.ndim != 1:
            raise ValueError(f"rows must be a 1-D array of row indices, got shape {index.shape}")
        if index.size == 0:
            return index.astype(np.intp)
        if not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"rows must hold integers, got {index.dtype}")
        if index.min() < 0 or index.max() >= len(self):
            raise IndexError(
                f"row index out of range [0, {len(self)}) in {excerpt_path(self.path)}"
            )
        return index.astype(np.intp, copy=False)


def load_dataset(
    csv_path: "str | Path",
    data_variables: Sequence[DataVariable],
    normalize_images: bool = True,
    role: str = "input-train",
    encoding: Optional[str] = None,
) -> Dataset:
    """Read and validate the NNC dataset ``csv_path`` for ``data_variables``.

    ``role`` is the plugin property that named the file; every error message starts with it.
    ``encoding`` (a codec name) overrides the detection of UTF-8 / cp932 (:mod:`.csvfile`).
    Raises :class:`InfluenceError` on the first problem found, naming the file, row and column.
    """
    path = Path(csv_path)
    table, csv_format = read_table(path, role, encoding)
    headers = _parse_headers(table.columns)

    def where(row: int, column: str) -> str:
        return f"{role}: {excerpt_path(path)} row {row} (0-based data row), column '{column}'"

    columns = {v.variable_name: _columns_for(v, headers, path, role) for v in data_variables}
    image_columns = {
        v.variable_name: columns[v.variable_name][0]
        for v in data_variables
        if _is_image_column(table, columns[v.variable_name], headers)
    }

    arrays: Dict[str, np.ndarray] = {}
    for variable in data_variables:  # cheap checks first: a bad label fails before decoding
        if variable.variable_name not in image_columns:
            names = columns[variable.variable_name]
            arrays[variable.variable_name] = _numeric_values(
                table, names, variable, where, f"{role}: {excerpt_path(path)}"
            )

    images: Dict[str, List[str]] = {}
    for variable in data_variables:
        column = image_columns.get(variable.variable_name)
        if column is not None:
            shape = image_shape(variable, column, path, role)
            images[variable.variable_name] = image_paths(table[column], path, column, where)
            arrays[variable.variable_name] = decode_images(
                images[variable.variable_name], shape, variable, column, where, role
            )

    labels = [v for v in data_variables if v.is_label and v.variable_name not in image_columns]
    return Dataset(
        path=path,
        table=table,
        csv_format=csv_format,
        columns=columns,
        image_variable=next(iter(image_columns), None),
        _arrays={v.variable_name: arrays[v.variable_name] for v in data_variables},
        _images=images,
        _normalize_images=normalize_images,
        _label_variable=labels[0].variable_name if labels else None,
        _class_labels=bool(labels) and labels[0].n_classes is not None,
    )


# --------------------------------------------------------------------------------------
# The table and its headers


@dataclass(frozen=True)
class _Header:
    column: str  # the header exactly as in the table
    data_name: str  # NAME
    index: Optional[str]  # INDEX of NAME__INDEX, if any
    kind: Optional[str]  # TYPE after ':', if any


def _parse_headers(columns: Sequence[str]) -> List[_Header]:
    """Split each ``NAME[__INDEX][:TYPE]`` header; comment columns (``#...``) are left out."""
    headers = []
    for column in columns:
        text = str(column).strip()
        if text.startswith("#"):
            continue
        name, _, kind = text.partition(":")
        data_name, separator, index = name.partition("__")
        headers.append(
            _Header(column, data_name, index if separator else None, kind if ":" in text else None)
        )
    return headers


def _columns_for(
    variable: DataVariable, headers: List[_Header], path: Path, role: str
) -> List[str]:
    """The columns feeding ``variable``: one plain column, or ``NAME__i`` columns by index."""
    mine = [h for h in headers if h.data_name == variable.data_name]
    plain = [h for h in mine if h.index is None]
    indexed = [h for h in mine if h.index is not None]
    subject = (
        f"{role}: {excerpt_path(path)}: data '{variable.data_name}' (variable "
        f"'{variable.variable_name}')"
    )
    if not mine:
        present = ", ".join(f"'{h.column}'" for h in headers) or "none"
        raise InfluenceError(
            f"{subject} has no column: expected '{variable.data_name}' or "
            f"'{variable.data_name}__0', '{variable.data_name}__1', ... (optionally with a "
            f"':type' suffix); columns present: {present}"
        )
    if len(plain) > 1 or (plain and indexed):
        found = ", ".join(f"'{h.column}'" for h in mine)
        raise InfluenceError(f"{subject} has several columns that could feed it: {found}")
    if plain:
        return [plain[0].column]
    return _ordered_feature_columns(indexed, variable, subject)


def _ordered_feature_columns(
    indexed: List[_Header], variable: DataVariable, subject: str
) -> List[str]:
    numbered = []
    for header in indexed:
        if not header.index.isdigit():
            raise InfluenceError(
                f"{subject}: column '{header.column}' has index '{header.index}', "
                "expected a non-negative integer after '__'"
            )
        numbered.append((int(header.index), header.column))
    numbered.sort()
    expected = _size(variable.shape)
    if len(numbered) != expected:
        raise InfluenceError(
            f"{subject} needs {expected} values per row (shape {variable.shape}) but the CSV "
            f"has {len(numbered)} columns '{variable.data_name}__<i>'"
        )
    indices = [index for index, _ in numbered]
    if indices != list(range(expected)):
        missing = sorted(set(range(expected)) - set(indices))
        problem = f"index {missing[0]} is missing" if missing else "an index is repeated"
        raise InfluenceError(
            f"{subject}: columns '{variable.data_name}__<i>' must be numbered 0..{expected - 1}, "
            f"but {problem}"
        )
    return [column for _, column in numbered]


def _is_image_column(table: pd.DataFrame, names: List[str], headers: List[_Header]) -> bool:
    """A single column typed ``:image``, or holding file names with an image extension."""
    if len(names) != 1:
        return False
    header = next(h for h in headers if h.column == names[0])
    if header.kind is not None and header.kind.strip().lower() == "image":
        return True
    return any(str(value).strip().lower().endswith(IMAGE_EXTENSIONS) for value in table[names[0]])


def _size(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


# --------------------------------------------------------------------------------------
# Numbers and labels


def _numeric_values(
    table: pd.DataFrame, names: List[str], variable: DataVariable, where: Locator, source: str
) -> np.ndarray:
    """float32 values of shape ``(N, *variable.shape)``, with label ranges checked."""
    if _size(variable.shape) != len(names):
        raise InfluenceError(
            f"{source}: data '{variable.data_name}' (variable '{variable.variable_name}') needs "
            f"{_size(variable.shape)} values per row (shape {variable.shape}) but column "
            f"'{names[0]}' holds one number per row; image columns need a ':image' header "
            f"or file names ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    values = np.empty((len(table), len(names)), dtype=np.float64)
    for position, name in enumerate(names):
        values[:, position] = _parse_column(table[name], name, where)
    if variable.n_classes is not None:
        _check_class_labels(values, table, names, variable, where)
    elif variable.binary_target:
        _check_binary_targets(values, table, names, variable, where)
    return values.astype(np.float32).reshape((len(table),) + tuple(variable.shape))


def _parse_column(column: pd.Series, name: str, where: Locator) -> np.ndarray:
    """The column as finite float64 numbers, or an error naming the first bad cell."""
    cells = column.tolist()
    try:
        values = np.array(cells, dtype=np.float64)
    except (ValueError, TypeError):
        values = None
    if values is not None:
        with np.errstate(over="ignore"):
            finite = np.isfinite(values.astype(np.float32))
        if finite.all():
            return values
        row = int(np.flatnonzero(~finite)[0])
        raise InfluenceError(f"{where(row, name)}: '{excerpt(cells[row])}' is not a finite number")
    for row, cell in enumerate(cells):
        if not str(cell).strip():
            raise InfluenceError(f"{where(row, name)}: the cell is empty, a number is expected")
        try:
            float(cell)
        except (ValueError, TypeError):
            raise InfluenceError(f"{where(row, name)}: '{excerpt(cell)}' is not a number") from None
    raise AssertionError("unreachable: a cell failed to parse as a whole but not alone")


def _first_bad_cell(
    bad: np.ndarray, table: pd.DataFrame, names: List[str], where: Locator
) -> Tuple[str, str]:
    row, position = (int(i) for i in np.argwhere(bad)[0])
    return where(row, names[position]), table[names[position]].iloc[row]


def _check_class_labels(
    values: np.ndarray,
    table: pd.DataFrame,
    names: List[str],
    variable: DataVariable,
    where: Locator,
) -> None:
    n_classes = variable.n_classes
    bad = (values != np.round(values)) | (values < 0) | (values >= n_classes)
    if bad.any():
        location, cell = _first_bad_cell(bad, table, names, where)
        raise InfluenceError(
            f"{location}: '{excerpt(cell)}' is not a class index; variable "
            f"'{variable.variable_name}' has {n_classes} classes, so an integer in "
            f"[0, {n_classes}) is expected"
        )


def _check_binary_targets(
    values: np.ndarray,
    table: pd.DataFrame,
    names: List[str],
    variable: DataVariable,
    where: Locator,
) -> None:
    bad = (values < 0) | (values > 1)
    if bad.any():
        location, cell = _first_bad_cell(bad, table, names, where)
        raise InfluenceError(
            f"{location}: '{excerpt(cell)}' is outside [0, 1]; variable '{variable.variable_name}' "
            "is a binary target"
        )
