"""Dataset CSVs as the user's tools wrote them: encoding, line ends and raw records.

NNC runs on Windows, where Excel saves CSVs as UTF-8 with a byte-order mark or, in Japan, as
cp932 (Shift-JIS), with CRLF line ends. :func:`detect_format` finds which (UTF-8 is tried
first: cp932 text is almost never valid UTF-8; a UTF-16 byte-order mark is honoured too),
:func:`read_table` reads the cells as text,
and :func:`read_records` gives each record's raw text so that a subset of the rows can be
written back byte for byte (the cleansed training CSV).
"""

from __future__ import annotations

import codecs
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import InfluenceError, excerpt, excerpt_path

_CHUNK = 1 << 20
_UTF8_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class CsvFormat:
    """How a CSV file is written."""

    encoding: str  # a Python codec name: "utf-8-sig" (with BOM), "utf-8", "cp932", ...
    newline: str  # "\r\n" or "\n", as the header line ends


def check_encoding(encoding: str) -> str:
    """The codec name ``encoding`` stands for, or an error naming the option."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InfluenceError(
            f"--encoding: unknown text encoding '{excerpt(encoding)}' "
            "(e.g. utf-8, utf-8-sig, cp932)"
        ) from None


def detect_format(path: Path, role: str, encoding: Optional[str] = None) -> CsvFormat:
    """The encoding (``encoding``, or the first of UTF-8 / cp932 that decodes the whole file)
    and the line end of ``path``, read in chunks so that memory stays small."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(_CHUNK)
    except OSError as error:
        raise InfluenceError(
            f"{role}: cannot read {excerpt_path(path)} ({error.strerror})"
        ) from None
    newline = _newline(head)
    if encoding is not None:
        chosen = check_encoding(encoding)
        _decodes(path, chosen, role, strict=True)
        return CsvFormat(chosen, newline)
    if head.startswith(_UTF8_BOM) and _decodes(path, "utf-8-sig", role):
        return CsvFormat("utf-8-sig", newline)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and _decodes(
        path, "utf-16", role
    ):
        return CsvFormat("utf-16", _newline(head.decode("utf-16", errors="ignore").encode()))
    if b"\0" in head:
        raise InfluenceError(
            f"{role}: {excerpt_path(path)} is not a text file (it holds NUL bytes)"
        )
    for candidate in ("utf-8", "cp932"):
        if _decodes(path, candidate, role):
            return CsvFormat(candidate, newline)
    raise InfluenceError(
        f"{role}: {excerpt_path(path)} is neither UTF-8 nor cp932 (Shift-JIS) text; save it "
        "as UTF-8, or name its encoding with --encoding"
    )


def _newline(head: bytes) -> str:
    end = head.find(b"\n")
    return "\r\n" if end > 0 and head[end - 1 : end] == b"\r" else "\n"


def _decodes(path: Path, encoding: str, role: str, strict: bool = False) -> bool:
    """Whether the whole file decodes with ``encoding`` (with ``strict``: an error if not)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        with open(path, "rb") as stream:
            while True:
                chunk = stream.read(_CHUNK)
                decoder.decode(chunk, final=not chunk)
                if not chunk:
                    return True
                offset += len(chunk)
    except UnicodeDecodeError as error:
        if strict:
            raise InfluenceError(
                f"{role}: {excerpt_path(path)} is not {encoding} text "
                f"(byte {offset + error.start} cannot be decoded)"
            ) from None
        return False
    except OSError as error:
        raise InfluenceError(
            f"{role}: cannot read {excerpt_path(path)} ({error.strerror})"
        ) from None


def read_table(path: Path, role: str, encoding: Optional[str] = None):
    """(the CSV with every cell as a string, its :class:`CsvFormat`), or a one-line error."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InfluenceError(f"{role}: file not found: {excerpt_path(path)}")
    if not path.is_file():
        raise InfluenceError(f"{role}: {excerpt_path(path)} is not a file")
    form = detect_format(path, role, encoding)
    try:
        with warnings.catch_warnings():
            # pandas only warns when the first data row has more fields than the header.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                path, dtype=str, keep_default_na=False, index_col=False, encoding=form.encoding
            )
    except pd.errors.EmptyDataError:
        raise InfluenceError(
            f"{role}: {excerpt_path(path)} is empty: expected a header line and at least one "
            "data row"
        ) from None
    except pd.errors.ParserWarning:
        raise InfluenceError(
            f"{role}: {excerpt_path(path)} cannot be read as CSV: a data row has more fields "
            "than the header"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise InfluenceError(
            f"{role}: {excerpt_path(path)} cannot be read as CSV ({excerpt(error)})"
        ) from None
    if len(table) == 0:
        raise InfluenceError(f"{role}: {excerpt_path(path)} has a header but no data rows")
    return table, form


def read_records(path: Path, form: CsvFormat) -> Tuple[str, List[str]]:
    """(header, data records) of ``path`` as raw text, each without its line end.

    A record ends at a line end outside double quotes, as in RFC 4180; blank lines are not
    records (pandas skips them too), so record ``i`` is data row ``i``.
    """
    with open(path, encoding=form.encoding, newline="") as stream:
        text = stream.read()
    records: List[str] = []
    start = 0
    quoted = False
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == '"':
            quoted = not quoted
        elif char in "\r\n" and not quoted:
            records.append(text[start:index])
            if char == "\r" and index + 1 < length and text[index + 1] == "\n":
                index += 1
            start = index + 1
        index += 1
    if start < length:
        records.append(text[start:])
    records = [r for r in records if r.strip()]
    return records[0], records[1:]
