"""Reading an ``.nnp`` (a zip archive) with every size checked before anything is read.

A ``.nnp`` is a small zip that may expand to anything: an ``.nntxt`` padded with a gigabyte of
spaces or NUL bytes compresses to one megabyte and, read and parsed whole, took 7.4 GB of
memory and 24 s before failing with a one-gigabyte error line; a ``parameter.h5`` padded to
2 GiB took 4.2 GB; a 2 kB HDF5 file may declare a 64 GiB array. Here the zip's central
directory, each member's declared size and each HDF5 dataset's declared size are checked
against fixed bounds first, and a member over its bound is refused with one line naming it.

**The bounds** (per ``.nnp``, summed over the members of each kind):

========================  ==========================================  ============
kind                      members                                     bound
========================  ==========================================  ============
network definition        ``*.nntxt``, ``*.prototxt``, ``*.protobuf``  64 MiB
parameters                ``*parameter*.h5``, ``*parameter*.protobuf``  4 GiB
solver state              ``*.optimizer``                              8 GiB
========================  ==========================================  ============

4 GiB of parameters is one billion float32 values, far beyond models trained in NNC; the
solver state bound leaves room for Adam's two arrays per parameter. Members of other kinds
are never read. The central directory may list at most 10,000 members in at most 16 MiB.
Memory while a member is read and decoded stays within about twice its declared size
(parsing a network definition's text takes up to about 8 times its size).

Every failure, a corrupt member included (bad CRC, unsupported compression or encryption, a
damaged HDF5 file or protobuf message), is an :class:`~..errors.InfluenceError` of one line
naming the ``.nnp`` and the member, quoting at most a short excerpt of what was found.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InfluenceError, excerpt, excerpt_path
from ..runtime.limits import HDF5_OPEN_BYTES, check_room
from .compat import unknown_field_hint

MiB = 1 << 20
GiB = 1 << 30

NETWORK = "network definition"
PARAMETERS = "parameters"
SOLVER_STATE = "solver state"
BOUNDS = {NETWORK: 64 * MiB, PARAMETERS: 4 * GiB, SOLVER_STATE: 8 * GiB}
MAX_MEMBERS = 10_000
MAX_CENTRAL_DIRECTORY = 16 * MiB
# A network variable may hold at most this many values per row (8 GiB of float32).
MAX_ROW_ELEMENTS = 1 << 31

_NUMERIC_KINDS = "biuf"  # HDF5 datasets of bool, integer, unsigned and float values only


class PicklesProtoAsBytes:
    """Pickles a dataclass's ``proto`` field (a protobuf message, or None) as its bytes.

    The generated message classes cannot be pickled by reference, and worker processes and MPI
    ranks get models pickled. ``PROTO_MESSAGE`` names the ``nnabla_pb2`` class to parse back.
    """

    PROTO_MESSAGE = "NNablaProtoBuf"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["proto"] = None if self.proto is None else self.proto.SerializeToString()
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("proto") is not None:
            from nnabla.utils import nnabla_pb2

            proto = getattr(nnabla_pb2, self.PROTO_MESSAGE)()
            proto.ParseFromString(state["proto"])
            state = {**state, "proto": proto}
        self.__dict__.update(state)


def member_kind(name: str) -> Optional[str]:
    """The kind of a member by its name (as model loading uses them), or None if never read."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith(".optimizer"):
        return SOLVER_STATE
    if "parameter" in base and base.endswith((".h5", ".protobuf")):
        return PARAMETERS
    if base.endswith((".nntxt", ".prototxt", ".protobuf")):
        return NETWORK
    return None


def _human(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# --------------------------------------------------------------------------------------
# The zip's directory, before zipfile reads it


def _directory_extent(path: Path) -> Tuple[int, int]:
    """(members, bytes) of the zip's central directory, read from its end records.

    zipfile reads the whole central directory into memory and builds an object per member
    before anything can be checked; this reads the 22-byte end record (and the zip64 one when
    present) from the last 64 KiB of the file instead.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        tail_length = min(size, 22 + 65535)
        handle.seek(size - tail_length)
        tail = handle.read(tail_length)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise zipfile.BadZipFile("no end of central directory record")
        fields = struct.unpack("<4s4H2LH", tail[at : at + 22])
        entries, directory = fields[4], fields[5]
        if entries == 0xFFFF or directory == 0xFFFFFFFF:
            locator = tail[at - 20 : at] if at >= 20 else b""
            if locator[:4] == b"PK\x06\x07":
                offset = struct.unpack("<4sLQL", locator)[2]
                handle.seek(offset)
                record = handle.read(56)
                if record[:4] == b"PK\x06\x06" and len(record) == 56:
                    values = struct.unpack("<4sQ2H2L4Q", record)
                    entries, directory = values[7], values[8]
    return int(entries), int(directory)


class NnpArchive:
    """An ``.nnp`` opened for size-checked reading; use as a context manager."""

    def __init__(self, path: os.PathLike, bounds: Optional[Dict[str, int]] = None) -> None:
        self.path = Path(path)
        self.bounds = dict(BOUNDS if bounds is None else bounds)
        self._used = {kind: 0 for kind in self.bounds}  # declared bytes of members read
        self._declared: Dict[str, int] = {}  # declared bytes of HDF5 datasets, by kind
        try:
            entries, directory = _directory_extent(self.path)
        except (zipfile.BadZipFile, OSError, struct.error) as error:
            raise InfluenceError(
                f"{excerpt_path(self.path)} is not a .nnp file (not a zip archive: "
                f"{excerpt(error, 120)})"
            ) from None
        if entries > MAX_MEMBERS or directory > MAX_CENTRAL_DIRECTORY:
            raise InfluenceError(
                f"{excerpt_path(self.path)} is refused: its zip directory lists {entries} "
                f"members in {_human(directory)} (a .nnp holds a few; at most {MAX_MEMBERS} "
                f"members and {_human(MAX_CENTRAL_DIRECTORY)} are read)"
            )
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as error:
            raise InfluenceError(
                f"{excerpt_path(self.path)} is not a .nnp file (not a zip archive: "
                f"{excerpt(error, 120)})"
            ) from None
        self._check_declared_sizes()

    def __enter__(self) -> NnpArchive:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def names(self) -> List[str]:
        return self._zip.namelist()

    def _check_declared_sizes(self) -> None:
        totals: Dict[str, int] = {kind: 0 for kind in self.bounds}
        for info in self._zip.infolist():
            kind = member_kind(info.filename)
            if kind is None:
                continue
            totals[kind] += info.file_size
            if totals[kind] > self.bounds[kind]:
                raise self._too_large(info.filename, kind, info.file_size)

    def _too_large(self, name: str, kind: str, size: int) -> InfluenceError:
        return InfluenceError(
            f"{excerpt_path(self.path)}: member '{excerpt(name)}' is refused: it expands to "
            f"{_human(size)}, and a .nnp's {kind} may take at most {_human(self.bounds[kind])} "
            "(a damaged or hostile file)"
        )

    def _error(self, name: str, what: str, error: BaseException) -> InfluenceError:
        detail = excerpt(str(error) or type(error).__name__, 120)
        return InfluenceError(
            f"{excerpt_path(self.path)}: member '{excerpt(name)}' {what} ({detail})"
        )

    # ----------------------------------------------------------------------------------
    # Members

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``, within the bound of its kind (checked first)."""
        kind = member_kind(name)
        info = self._zip.getinfo(name)
        if kind is not None:
            if self._used[kind] + info.file_size > self.bounds[kind]:
                raise self._too_large(name, kind, info.file_size)
            self._used[kind] += info.file_size
        try:
            # zipfile never returns more than the declared file_size, and checks the CRC.
            return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise self._error(name, "is damaged", error) from None
        except NotImplementedError as error:  # a compression method zipfile lacks
            raise self._error(name, "cannot be read", error) from None
        except RuntimeError as error:  # encrypted
            raise self._error(name, "cannot be read", error) from None

    def read_text(self, name: str) -> str:
        data = self.read(name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InfluenceError(
                f"{excerpt_path(self.path)}: member '{excerpt(name)}' is not UTF-8 text "
                f"(byte {error.start} of {len(data)})"
            ) from None

    def network_definition(self):
        """Every network-definition member merged into one ``NNablaProtoBuf``, as nnabla does."""
        from google.protobuf import text_format
        from nnabla.utils import nnabla_pb2

        proto = nnabla_pb2.NNablaProtoBuf()
        names = [n for n in self.names() if member_kind(n) == NETWORK]
        if not names:
            raise InfluenceError(
                f"{excerpt_path(self.path)} is not a .nnp file: it holds no network definition"
            )
        for name in names:
            binary = name.endswith(".protobuf")
            content = self.read(name) if binary else self.read_text(name)
            try:
                if binary:
                    part = nnabla_pb2.NNablaProtoBuf()
                    part.ParseFromString(content)
                    proto.MergeFrom(part)
                else:
                    text_format.Merge(content, proto)
            except Exception as error:  # protobuf raises several unrelated types
                what = f"is not a valid network definition{unknown_field_hint(error)}"
                raise self._error(name, what, error) from None
            finally:
                del content
        return proto

    def h5_arrays(self, name: str, budget: Optional[int] = None) -> Iterator[Tuple[str, object]]:
        """(key, h5py dataset) of every dataset in HDF5 member ``name``, sizes checked first.

        The declared size of all datasets together must fit ``budget`` (default: the bound of
        the member's kind); external, virtual and non-numeric datasets are refused. Yields
        inside the open file: read each dataset (``dataset[()]``) before the next.
        """
        import h5py

        kind = member_kind(name) or PARAMETERS
        if budget is None:  # what the kind's bound leaves after the datasets read before
            budget = self.bounds[kind] - self._declared.get(kind, 0)
        data = self.read(name)
        check_room(HDF5_OPEN_BYTES, "open an HDF5 file")  # HDF5 would crash without it
        try:
            h5 = h5py.File(io.BytesIO(data), "r")
        except Exception as error:  # h5py raises OSError, ValueError, KeyError...
            raise self._error(name, "is not a valid HDF5 file", error) from None
        try:
            datasets = self._h5_datasets(name, h5)
            declared = sum(size for _, _, size in datasets)
            if declared > budget:
                raise InfluenceError(
                    f"{excerpt_path(self.path)}: member '{excerpt(name)}' is refused: its "
                    "datasets declare "
                    f"{_human(declared)} of values, more than the {_human(budget)} read for "
                    f"{kind} (a damaged or hostile file)"
                )
            self._declared[kind] = self._declared.get(kind, 0) + declared
            for key, dataset, _ in datasets:
                yield key, dataset
        finally:
            h5.close()

    def _h5_datasets(self, name: str, h5) -> List[Tuple[str, object, int]]:
        import h5py

        found: List[Tuple[str, object, int]] = []
        problems: List[str] = []

        def visit(key: str, obj) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.dtype.kind not in _NUMERIC_KINDS:
                problems.append(f"dataset '{excerpt(key)}' holds {obj.dtype}, not numbers")
            elif obj.is_virtual or obj.external:
                problems.append(f"dataset '{excerpt(key)}' keeps its values in other files")
            else:
                size = int(np.prod(obj.shape, dtype=np.float64)) * obj.dtype.itemsize
                found.append((key, obj, size))

        try:
            h5.visititems(visit)
        except Exception as error:
            raise self._error(name, "is not a valid HDF5 file", error) from None
        if problems:
            raise InfluenceError(
                f"{excerpt_path(self.path)}: member '{excerpt(name)}': {problems[0]}"
            )
        return found

    def read_h5(self, name: str, budget: Optional[int] = None) -> List[Tuple[int, str, np.ndarray]]:
        """(stored ``index`` attribute, key, values) of every dataset of HDF5 member ``name``."""
        result = []
        for key, dataset in self.h5_arrays(name, budget):
            try:
                index = int(dataset.attrs.get("index", 0))
                result.append((index, key, np.asarray(dataset[()])))
            except Exception as error:
                raise self._error(name, f"dataset '{excerpt(key)}' cannot be read", error) from None
        return result

    def parameter_protobuf(self, name: str) -> Dict[str, np.ndarray]:
        """The parameters stored in protobuf member ``name``, each checked against its shape."""
        from nnabla.utils import nnabla_pb2

        part = nnabla_pb2.NNablaProtoBuf()
        try:
            part.ParseFromString(self.read(name))
        except Exception as error:
            raise self._error(name, "is not a valid parameter file", error) from None
        return parameters_of(part, self.path, name)


def parameters_of(proto, path: os.PathLike, member: str = "") -> Dict[str, np.ndarray]:
    """``proto.parameter`` as float32 arrays; a value count that does not fit its shape is an
    error naming the parameter."""
    where = (
        f"{excerpt_path(path)}: member '{excerpt(member)}'" if member else f"{excerpt_path(path)}"
    )
    parameters: Dict[str, np.ndarray] = {}
    for entry in proto.parameter:
        shape = tuple(int(d) for d in entry.shape.dim)
        expected = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if any(d < 0 for d in shape) or expected != len(entry.data):
            raise InfluenceError(
                f"{where}: parameter '{excerpt(entry.variable_name)}' has {len(entry.data)} "
                f"values for shape {excerpt(shape)}"
            )
        values = np.asarray(entry.data, dtype=np.float32)
        parameters[entry.variable_name] = values.reshape(shape)
    return parameters


def check_variable_shapes(proto, path: os.PathLike, limit: int = MAX_ROW_ELEMENTS) -> None:
    """Refuse network variables with negative sizes (other than a batch axis of -1) or more
    than ``limit`` values per row, before any array is made for them."""
    for network in proto.network:
        for variable in network.variable:
            dims = [int(d) for d in variable.shape.dim]
            row = dims[1:] if dims and dims[0] in (-1, network.batch_size) else dims
            if any(d < 0 for d in row):
                raise InfluenceError(
                    f"{excerpt_path(path)}: variable '{excerpt(variable.name)}' of network "
                    f"'{excerpt(network.name)}' has a negative size in shape {excerpt(dims)}"
                )
            elements = float(np.prod(row, dtype=np.float64)) if row else 1.0
            if elements > limit:
                raise InfluenceError(
                    f"{excerpt_path(path)}: variable '{excerpt(variable.name)}' of network "
                    f"'{excerpt(network.name)}' has {elements:.3g} values per row (shape "
                    f"{excerpt(dims)}), more than the {limit} this tool builds"
                )
