"""Reading .nnp members with sizes checked first (``archive.py``): bombs, corrupt members."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnabla_sgd_influence.errors import LINE_CHARS, InfluenceError
from nnabla_sgd_influence.nnp import archive
from nnabla_sgd_influence.nnp.archive import (
    NETWORK,
    PARAMETERS,
    NnpArchive,
    check_variable_shapes,
    member_kind,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def members(samples_dir):
    with zipfile.ZipFile(samples_dir / "models" / "cancer_mlp" / "results.nnp") as source:
        return {name: source.read(name) for name in source.namelist()}


def write_nnp(path: Path, entries, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as target:
        for name, data in entries.items():
            target.writestr(name, data)
    return path


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size of ``member`` in its local and central headers."""
    data = bytearray(path.read_bytes())
    encoded = member.encode()
    headers = ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46))  # local, central
    for signature, size_at, length_at, name_at in headers:
        start = 0
        while True:
            at = data.find(signature, start)
            if at < 0:
                break
            length = struct.unpack_from("<H", data, at + length_at)[0]
            if bytes(data[at + name_at : at + name_at + length]) == encoded:
                struct.pack_into("<L", data, at + size_at, size)
            start = at + 4
    path.write_bytes(bytes(data))


def refused(path: Path, **bounds) -> str:
    limits = {**archive.BOUNDS, **bounds} if bounds else None
    with pytest.raises(InfluenceError) as caught, NnpArchive(path, bounds=limits) as nnp:
        nnp.network_definition()
        for name in nnp.names():
            kind = member_kind(name)
            if kind is not None and name.endswith((".h5", ".optimizer")):
                nnp.read_h5(name)
            elif kind == PARAMETERS:
                nnp.parameter_protobuf(name)
    line = str(caught.value)
    assert "\n" not in line and len(line) <= LINE_CHARS, line[:300]
    return line


def test_sample_and_real_models_are_read(samples_dir, nnc_fixture):
    for path in [samples_dir / "models" / "digits_cnn" / "results.nnp", nnc_fixture]:
        with NnpArchive(path) as nnp:
            proto = nnp.network_definition()
            check_variable_shapes(proto, path)
            arrays = nnp.read_h5("parameter.h5")
            assert arrays and all(np.asarray(a).size for _, _, a in arrays)
            state = [n for n in nnp.names() if member_kind(n) == "solver state"]
            assert state and nnp.read_h5(state[0])


def test_member_kinds():
    assert member_kind("net.nntxt") == NETWORK
    assert member_kind("network.protobuf") == NETWORK
    assert member_kind("parameter.h5") == PARAMETERS
    assert member_kind("parameter.protobuf") == PARAMETERS
    assert member_kind("Optimizer_Adam_optimizer.h5.optimizer") == "solver state"
    assert member_kind("nnp_version.txt") is None


def test_declared_size_over_the_bound_is_refused_before_reading(members, tmp_path):
    path = write_nnp(tmp_path / "bomb.nnp", members)
    declare_size(path, "net.nntxt", 3 << 30)  # 3 GiB declared, nothing of it present
    line = refused(path)
    assert "member 'net.nntxt' is refused: it expands to 3.0 GiB" in line
    assert "64.0 MiB" in line


@pytest.mark.parametrize("padding", [b" ", b"\0"], ids=["spaces", "nul"])
def test_padded_network_definition_bomb(members, tmp_path, padding):
    entries = dict(members)
    entries["net.nntxt"] = members["net.nntxt"] + padding * (3 << 20)
    path = write_nnp(tmp_path / "bomb.nnp", entries)
    assert path.stat().st_size < 100_000
    line = refused(path, **{NETWORK: 1 << 20})
    assert "member 'net.nntxt' is refused: it expands to 3.0 MiB" in line


def test_real_bounds_keep_memory_bounded(members, tmp_path):
    """A 256 MiB nntxt of NUL bytes in a 260 kB zip, with the default bounds, in a fresh
    process: refused with memory of the order of the bound, not of the padding."""
    path = tmp_path / "bomb.nnp"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            if name != "net.nntxt":
                target.writestr(name, data)
        with target.open("net.nntxt", "w") as stream:
            stream.write(members["net.nntxt"])
            block = b"\0" * (1 << 20)
            for _ in range(256):
                stream.write(block)
    # VmHWM is this process's own peak; ru_maxrss would keep the pytest process's across the
    # fork and exec that start it (Linux).
    code = (
        "import re, sys; from nnabla_sgd_influence.nnp.archive import NnpArchive;"
        "from nnabla_sgd_influence.errors import InfluenceError\n"
        f"try:\n  NnpArchive({str(path)!r}).network_definition()\nexcept InfluenceError as e:\n"
        "  print(e); print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line, peak_kib = result.stdout.splitlines()
    assert "is refused: it expands to 256.0 MiB" in line
    assert int(peak_kib) < 200 * 1024  # measured about 70 MB; read whole it is 1.8 GB


def test_zipfile_never_returns_more_than_declared(members, tmp_path):
    entries = dict(members)
    entries["net.nntxt"] = members["net.nntxt"] + b" " * (1 << 20)
    path = write_nnp(tmp_path / "lying.nnp", entries)
    declare_size(path, "net.nntxt", 1000)  # claims 1000 bytes, inflates to 1 MiB
    line = refused(path)
    assert "member 'net.nntxt' is damaged" in line or "not a valid network" in line


def test_huge_declared_hdf5_dataset_is_refused_before_reading(members, tmp_path):
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:  # 64 GiB of zeros in a few kB
        h5.create_dataset("W", shape=(1 << 17, 1 << 17), dtype="f4", chunks=(256, 256))
    path = write_nnp(tmp_path / "h5bomb.nnp", {**members, "parameter.h5": buffer.getvalue()})
    assert path.stat().st_size < 100_000
    line = refused(path)
    assert "member 'parameter.h5' is refused: its datasets declare 64.0 GiB" in line


def test_hdf5_datasets_that_are_not_plain_numbers_are_refused(members, tmp_path):
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("W", data=np.array([b"text"], dtype=object), dtype=h5py.string_dtype())
    path = write_nnp(tmp_path / "strings.nnp", {**members, "parameter.h5": buffer.getvalue()})
    assert "dataset 'W' holds object, not numbers" in refused(path)

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("W", shape=(4,), dtype="f4", external=[("/etc/hostname", 0, 16)])
    path = write_nnp(tmp_path / "external.nnp", {**members, "parameter.h5": buffer.getvalue()})
    assert "keeps its values in other files" in refused(path)


def _corrupt(members, kind):
    entries = dict(members)
    state = next(n for n in entries if n.endswith(".optimizer"))
    if kind == "parameter.h5":
        entries["parameter.h5"] = b"\x89HDF\r\n\x1a\n" + os.urandom(2000)
    elif kind == "truncated parameter.h5":
        entries["parameter.h5"] = members["parameter.h5"][:3000]
    elif kind == "solver state":
        entries[state] = os.urandom(3000)
    elif kind == "network.protobuf":
        del entries["net.nntxt"]
        entries["network.protobuf"] = b"\xff" * 5000
    elif kind == "parameter.protobuf":
        del entries["parameter.h5"]
        entries["parameter.protobuf"] = b"\xff" * 5000
    elif kind == "not utf-8":
        entries["net.nntxt"] = b"\xff\xfe" + members["net.nntxt"]
    return entries


@pytest.mark.parametrize(
    "kind, member, words",
    [
        ("parameter.h5", "parameter.h5", "is not a valid HDF5 file"),
        ("truncated parameter.h5", "parameter.h5", "is not a valid HDF5 file"),
        ("solver state", "Optimizer_Sgd_optimizer.h5.optimizer", "is not a valid HDF5 file"),
        ("network.protobuf", "network.protobuf", "is not a valid network definition"),
        ("parameter.protobuf", "parameter.protobuf", "is not a valid parameter file"),
        ("not utf-8", "net.nntxt", "is not UTF-8 text"),
    ],
)
def test_corrupt_members_are_named(members, tmp_path, kind, member, words):
    path = write_nnp(tmp_path / "corrupt.nnp", _corrupt(members, kind))
    line = refused(path)
    assert f"member '{member}' {words}" in line


def test_bad_crc_encryption_and_unknown_compression_are_named(members, tmp_path):
    def patched(name, signature_offsets, value=None, bit=None):
        path = write_nnp(tmp_path / f"{name}.nnp", members, zipfile.ZIP_STORED)
        data = bytearray(path.read_bytes())
        for signature, offset in signature_offsets:
            start = 0
            while (at := data.find(signature, start)) >= 0:
                if value is not None:
                    data[at + offset] = value
                else:
                    data[at + offset] |= bit
                start = at + 4
        path.write_bytes(bytes(data))
        return path

    path = write_nnp(tmp_path / "crc.nnp", members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.find(b"network {") + 1] ^= 1
    path.write_bytes(bytes(data))
    assert "member 'net.nntxt' is damaged (Bad CRC-32" in refused(path)

    headers = [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)]
    assert "password required" in refused(patched("encrypted", headers, bit=1))
    methods = [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10)]
    assert "compression method is not supported" in refused(patched("aes", methods, value=99))


def test_many_members_are_refused_from_the_end_record(members, tmp_path):
    path = tmp_path / "many.nnp"
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
        for index in range(archive.MAX_MEMBERS + 1):
            target.writestr(f"x{index}", b"")
    assert f"lists {archive.MAX_MEMBERS + len(members) + 1} members" in refused(path)


def test_not_a_zip_and_an_empty_file(tmp_path):
    for content in (b"", b"hello", b"PK\x05\x06"):
        path = tmp_path / "x.nnp"
        path.write_bytes(content)
        assert "is not a .nnp file (not a zip archive" in refused(path)


def test_long_tokens_are_quoted_as_excerpts(members, tmp_path):
    entries = {**members, "net.nntxt": b'network { name: "Main" } ' + b"x" * (1 << 20)}
    line = refused(write_nnp(tmp_path / "token.nnp", entries))
    assert "is not a valid network definition" in line and "characters)" in line


def test_parameter_values_must_fit_their_shape(members, tmp_path):
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    entry = proto.parameter.add()
    entry.variable_name = "Affine/affine/W"
    entry.shape.dim.extend([30, 10])
    entry.data.extend([0.0] * 7)
    entries = {k: v for k, v in members.items() if k != "parameter.h5"}
    entries["parameter.protobuf"] = proto.SerializeToString()
    line = refused(write_nnp(tmp_path / "shape.nnp", entries))
    assert "parameter 'Affine/affine/W' has 7 values for shape (30, 10)" in line


def test_absurd_variable_shapes_are_refused(members, tmp_path):
    text = members["net.nntxt"].decode().replace("dim: 30\n", "dim: 3000000000\n", 1)
    path = write_nnp(tmp_path / "shape.nnp", {**members, "net.nntxt": text.encode()})
    with NnpArchive(path) as nnp:
        proto = nnp.network_definition()
    with pytest.raises(InfluenceError, match="variable 'Input' of network 'Main' has 3e"):
        check_variable_shapes(proto, path)


def test_bounds_are_summed_over_members(members, tmp_path):
    entries = {**members, "second.nntxt": b" " * 600_000, "third.nntxt": b" " * 600_000}
    line = refused(write_nnp(tmp_path / "sum.nnp", entries), **{NETWORK: 1 << 20})
    assert "is refused" in line and "1.0 MiB" in line
