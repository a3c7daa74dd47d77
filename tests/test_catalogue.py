"""The catalogue of bad inputs, faults and odd-but-legal inputs, run as a user runs the plugins.

Each failure case asserts the whole contract: its exit code, exactly one line on stderr that
names the problem, no traceback, no output file (nor step log, nor a temporary file beside
it), no temporary folder, and every input byte for byte as it was. Each case runs on its own
copy of small inputs (20 digits, 40 tabular rows), so that a case that does write over an
input harms only its copy.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
from plugin_helpers import (
    IMAGE_SCRIPT,
    TABULAR_SCRIPT,
    as_in_a_terminal,
    plugin_env,
    read_csv,
    run_in_process,
)

from nnabla_sgd_influence.errors import EXCERPT_CHARS, LINE_CHARS

pytestmark = pytest.mark.system

SCRIPTS = {"image": IMAGE_SCRIPT, "tabular": TABULAR_SCRIPT}
# Folders above a case's inputs: none, or enough to make every path over 300 characters.
DEPTHS = {
    "short paths": (),
    "paths over 300 characters": [f"project_folder_{i:02d}" for i in range(18)],
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# --------------------------------------------------------------------------------------
# The inputs of one case


@dataclass
class Kit:
    root: Path
    out: Path  # the output folder: holds nothing a failed run may leave
    temp: Path  # --temp-dir: empty after every run
    files: Dict[str, Path] = field(default_factory=dict)
    extra_outputs: List[Path] = field(default_factory=list)  # paths a run might create
    cwd: Optional[Path] = None
    preexec: Optional[Callable[[], None]] = None

    def __getitem__(self, name: str) -> Path:
        return self.files[name]

    def inputs(self) -> Dict[str, str]:
        """sha256 of every input file (model, CSVs, images)."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            inside_outputs = self.out in path.parents or self.temp in path.parents
            if path.is_file() and not path.is_symlink() and not inside_outputs:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found


def make_kit(samples: Path, root: Path) -> Kit:
    kit = Kit(root=root, out=root / "out", temp=root / "temp")
    kit.out.mkdir(parents=True)
    kit.temp.mkdir()
    models = root / "models"
    models.mkdir()
    for name in ("cancer_mlp", "cancer_logreg", "digits_cnn", "cancer_mlp_dropout"):
        target = models / f"{name}.nnp"
        target.write_bytes((samples / "models" / name / "results.nnp").read_bytes())
        kit.files[name] = target
    cancer = root / "cancer"
    cancer.mkdir()
    for name, rows in (("train", 40), ("val", 20)):
        lines = (samples / "cancer" / f"{name}.csv").read_text().splitlines()[: rows + 1]
        (cancer / f"{name}.csv").write_text("\n".join(lines) + "\n")
        kit.files[f"cancer_{name}"] = cancer / f"{name}.csv"
    digits = root / "digits"
    (digits / "images").mkdir(parents=True)
    for name, rows in (("train", 20), ("val", 10)):
        lines = (samples / "digits" / f"{name}.csv").read_text().splitlines()
        out = [lines[0]]
        for line in lines[1 : rows + 1]:
            image, label = line.split(",")
            copy = digits / "images" / Path(image).name
            copy.write_bytes((samples / "digits" / image).read_bytes())
            out.append(f"images/{copy.name},{label}")
        (digits / f"{name}.csv").write_text("\n".join(out) + "\n")
        kit.files[f"digits_{name}"] = digits / f"{name}.csv"
    kit.files["image"] = sorted((digits / "images").iterdir())[0]
    return kit


def tabular(kit: Kit, *extra, model: str = "cancer_mlp", output: Optional[Path] = None):
    output = kit.out / "o.csv" if output is None else output
    return [
        "-m",
        kit[model],
        "-t",
        kit["cancer_train"],
        "-v",
        kit["cancer_val"],
        "-o",
        output,
        "--temp-dir",
        kit.temp,
        *extra,
    ]


def image(kit: Kit, *extra, output: Optional[Path] = None):
    output = kit.out / "o.csv" if output is None else output
    return [
        "-m",
        kit["digits_cnn"],
        "-t",
        kit["digits_train"],
        "-v",
        kit["digits_val"],
        "-o",
        output,
        "-nt",
        "1",
        "--temp-dir",
        kit.temp,
        *extra,
    ]


def run(kit: Kit, plugin: str, args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The plugin's main in this process, as its script runs it; a case that changes the
    process (a file-size limit) gets a process of its own."""
    if kit.preexec is None:
        return run_in_process(plugin, *args, cwd=kit.cwd or kit.root)
    return subprocess.run(
        [sys.executable, str(SCRIPTS[plugin]), *[str(a) for a in args]],
        cwd=str(kit.cwd or kit.root),
        env=plugin_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=kit.preexec,
    )


def problem_lines(stderr: str) -> List[str]:
    """What a run printed besides its log and progress lines."""
    lines = []
    for line in stderr.replace("\r", "\n").splitlines():
        if not line.strip() or "[INFO]" in line or "[WARNING]" in line or "it/s]" in line:
            continue
        if "Level 99" in line or "?it/s" in line or "s/it]" in line:
            continue
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------
# Helpers that make hostile files


def rewrite_member(source: Path, target: Path, member: str, data: Optional[bytes]) -> Path:
    with zipfile.ZipFile(source) as original:
        entries = {n: original.read(n) for n in original.namelist()}
    if data is None:
        del entries[member]
    else:
        entries[member] = data
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size of ``member`` in its local and central headers."""
    import struct

    data = bytearray(path.read_bytes())
    for signature, size_at, length_at, name_at in (
        (b"PK\x03\x04", 22, 26, 30),
        (b"PK\x01\x02", 24, 28, 46),
    ):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            length = struct.unpack_from("<H", data, at + length_at)[0]
            if bytes(data[at + name_at : at + name_at + length]) == member.encode():
                struct.pack_into("<L", data, at + size_at, size)
            start = at + 4
    path.write_bytes(bytes(data))


def h5_declaring(gib: int) -> bytes:
    import io

    import h5py

    buffer = io.BytesIO()
    side = int((gib << 28) ** 0.5)  # float32: 4 bytes each
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("Affine/affine/W", shape=(side, side), dtype="f4", chunks=(256, 256))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------
# The failure cases: (id, plugin, setup(kit) -> args, exit code, words)


def _set(kit: Kit, name: str, path: Path) -> Path:
    kit.files[name] = path
    return path


def _missing_model(kit):
    return tabular(kit, model="cancer_mlp") + ["-m", kit.root / "absent.nnp"]


def _not_a_zip(kit):
    path = _set(kit, "bad", kit.root / "models" / "not_a_zip.nnp")
    path.write_text("hello")
    return tabular(kit, model="bad")


def _no_optimizer(kit):
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    with zipfile.ZipFile(kit["cancer_mlp"]) as archive:
        proto = nnabla_pb2.NNablaProtoBuf()
        text_format.Parse(archive.read("net.nntxt").decode(), proto)
    proto.ClearField("optimizer")
    path = kit.root / "models" / "no_optimizer.nnp"
    text = text_format.MessageToString(proto).encode()
    _set(kit, "bad", rewrite_member(kit["cancer_mlp"], path, "net.nntxt", text))
    return tabular(kit, model="bad")


def _csv_without_columns(kit):
    header, rest = kit["cancer_train"].read_text().split("\n", 1)
    path = _set(kit, "cancer_train", kit.root / "cancer" / "renamed.csv")
    path.write_text(header.replace("x__", "z__") + "\n" + rest)
    return tabular(kit)


def _missing_image(kit):
    csv = kit["digits_train"]
    csv.write_text(csv.read_text() + "images/absent.png,1\n")
    return image(kit)


def _label_out_of_range(kit):
    csv = kit["cancer_train"]
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"
    csv.write_text("\n".join(lines) + "\n")
    return tabular(kit)


def _huge_cell(kit):
    csv = kit["cancer_train"]
    lines = csv.read_text().splitlines()
    lines[2] = "x" * 200_000 + lines[2][lines[2].index(",") :]
    csv.write_text("\n".join(lines) + "\n")
    return tabular(kit)


def _output_is_image(kit):
    return image(kit, output=kit["image"])


def _output_hard_links_image(kit):
    os.link(kit["image"], kit.out / "o.csv")
    return image(kit)


def _output_is_train_csv(kit):
    return tabular(kit, output=kit["cancer_train"])


def _step_log_over_val(kit):
    val = kit.out / "o_steps.csv"
    val.write_bytes(kit["cancer_val"].read_bytes())
    kit.files["cancer_val"] = val
    return tabular(kit, "--step-log")


def _output_is_fifo(kit):
    os.mkfifo(kit.out / "o.csv")
    return tabular(kit)


def _output_is_socket(kit):
    server = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(kit.out)  # a socket's own path may not exceed 107 bytes
    try:
        server.bind("o.csv")
    finally:
        os.chdir(here)
        server.close()
    return tabular(kit)


def _output_is_device(kit):
    if not IS_ROOT:
        pytest.skip("making a device node needs root")
    os.mknod(kit.out / "o.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return tabular(kit)


def _output_is_nntxt(kit):
    with zipfile.ZipFile(kit["cancer_mlp"]) as archive:
        (kit.out / "net.nntxt").write_bytes(archive.read("net.nntxt"))
    kit.cwd = kit.out  # NNC runs plugins from the result folder, which holds net.nntxt
    return tabular(kit, output=kit.out / "net.nntxt")


def _output_is_symlink(kit):
    (kit.out / "target.csv").write_text("previous\n")
    (kit.out / "o.csv").symlink_to("target.csv")
    return tabular(kit)


def _output_is_read_only(kit):
    (kit.out / "o.csv").write_text("previous\n")
    (kit.out / "o.csv").chmod(0o444)
    return tabular(kit)


def _long_name(kit):
    return tabular(kit, output=kit.out / ("n" * 256 + ".csv"))


def _long_temporary_name(kit):
    return tabular(kit, output=kit.out / ("n" * 250 + ".csv"))


def _long_step_log_name(kit):
    return tabular(kit, "--step-log", output=kit.out / ("n" * 248 + ".csv"))


def _path_over_limit(kit):
    return tabular(kit, output=kit.out.joinpath(*["d" * 200] * 21, "o.csv"))


def _full_disk(kit, where: str):
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    mount = kit.out / "full" if where == "output" else kit.temp
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], check=True)
    kit.extra_outputs.append(mount)
    (mount / "filler").write_bytes(b"\0" * (190 * 1024))
    if where == "output":
        return tabular(kit, output=mount / "o.csv")
    return image(kit, "--mode", "exact")


def _file_size_limit(kit):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    kit.preexec = limit
    return tabular(kit)


def _nntxt_bomb(kit):
    path = kit.root / "models" / "bomb.nnp"
    with zipfile.ZipFile(kit["cancer_mlp"]) as archive:
        text = archive.read("net.nntxt")
    rewrite_member(kit["cancer_mlp"], path, "net.nntxt", text + b" " * 4096)
    declare_size(path, "net.nntxt", 3 << 30)
    _set(kit, "bad", path)
    return tabular(kit, model="bad")


def _h5_bomb(kit):
    path = kit.root / "models" / "h5bomb.nnp"
    _set(kit, "bad", rewrite_member(kit["cancer_mlp"], path, "parameter.h5", h5_declaring(64)))
    return tabular(kit, model="bad")


def _corrupt_member(kit, member: str):
    path = kit.root / "models" / "corrupt.nnp"
    if member == "parameter.h5":
        data = b"\x89HDF\r\n\x1a\n" + b"\x07" * 2000
    elif member == "network.protobuf":
        rewrite_member(kit["cancer_mlp"], path, "net.nntxt", None)
        _set(kit, "bad", rewrite_member(path, path, "network.protobuf", b"\xff" * 3000))
        return tabular(kit, model="bad")
    else:
        data = b"\x07" * 3000
    _set(kit, "bad", rewrite_member(kit["cancer_mlp"], path, member, data))
    return tabular(kit, model="bad")


def _diverging_solver(kit):
    """A learning rate that overflows float32: the first update makes the parameters
    infinite, and the next step's training loss is NaN."""
    path = kit.root / "models" / "diverging.nnp"
    with zipfile.ZipFile(kit["cancer_mlp"]) as archive:
        text = archive.read("net.nntxt").decode()
    text = text.replace("lr: 0.05\n", "lr: 1e+39\n")  # inf in float32
    assert "lr: 1e+39" in text
    _set(kit, "bad", rewrite_member(kit["cancer_mlp"], path, "net.nntxt", text.encode()))
    return tabular(kit, "-bs", "8", model="bad")


def _long_token(kit):
    path = kit.root / "models" / "token.nnp"
    data = b'network { name: "Main" } ' + b"x" * (4 << 20)
    _set(kit, "bad", rewrite_member(kit["cancer_mlp"], path, "net.nntxt", data))
    return tabular(kit, model="bad")


CASES = [
    # What the README's "Errors" paragraph lists
    ("missing model", "tabular", _missing_model, 1, "absent.nnp"),
    ("not a zip", "tabular", _not_a_zip, 1, "not a .nnp file"),
    ("no optimizer", "tabular", _no_optimizer, 1, "no optimizer"),
    ("csv without the columns", "tabular", _csv_without_columns, 1, "has no column"),
    ("missing image", "image", _missing_image, 1, "image file not found"),
    ("label out of range", "tabular", _label_out_of_range, 1, "is not a class index"),
    ("batch size 0", "tabular", lambda k: tabular(k, "-bs", "0"), 1, "batch_size"),
    ("dropout", "tabular", lambda k: tabular(k, model="cancer_mlp_dropout"), 1, "Dropout"),
    ("diverging retraining", "tabular", _diverging_solver, 1, "retraining diverged: the"),
    ("bad int", "tabular", lambda k: tabular(k, "-nt", "two"), 2, "invalid int value"),
    ("tabular into image", "image", tabular, 1, "no image column"),
    ("tile beyond the rows", "image", lambda k: image(k, "--tile", "21"), 1, "from 1 to 20"),
    # 3. never write over an input; only regular files are replaced
    ("output is an image", "image", _output_is_image, 1, "is the image of"),
    ("output hard-links an image", "image", _output_hard_links_image, 1, "hard link"),
    ("output is input-train", "tabular", _output_is_train_csv, 1, "input-train"),
    ("step log over input-val", "tabular", _step_log_over_val, 1, "input-val"),
    ("output is a FIFO", "tabular", _output_is_fifo, 1, "FIFO"),
    ("output is a socket", "tabular", _output_is_socket, 1, "socket"),
    ("output is a device", "tabular", _output_is_device, 1, "character device"),
    ("output is net.nntxt", "tabular", _output_is_nntxt, 1, "net.nntxt"),
    # 4. arguments and resources
    ("seed -1", "tabular", lambda k: tabular(k, "-s", "-1"), 1, "seed must be"),
    ("seed 2**31", "tabular", lambda k: tabular(k, "-s", str(2**31)), 1, "seed"),
    (
        "last trial's seed",
        "tabular",
        lambda k: tabular(k, "-s", str(2**31 - 1), "-nt", "2"),
        1,
        "needs seeds up to",
    ),
    ("name too long", "tabular", _long_name, 1, "its name is 260 bytes"),
    ("step log name too long", "tabular", _long_step_log_name, 1, "step log"),
    ("path too long", "tabular", _path_over_limit, 1, "the path is"),
    (
        "temp-dir too deep",
        "tabular",
        lambda k: tabular(k, "--temp-dir", k.temp.joinpath(*["d" * 200] * 20)),
        1,
        "too deep",
    ),
    (
        "output disk full",
        "tabular",
        lambda k: _full_disk(k, "output"),
        1,
        "no space left",
    ),
    (
        "temporary disk full",
        "image",
        lambda k: _full_disk(k, "temp"),
        1,
        "no space left",
    ),
    ("file-size limit", "tabular", _file_size_limit, 1, "file too large"),
    # 5. hostile .nnp files
    ("nntxt bomb", "tabular", _nntxt_bomb, 1, "member 'net.nntxt' is refused"),
    ("hdf5 bomb", "tabular", _h5_bomb, 1, "declare 64.0 GiB"),
    (
        "corrupt parameter.h5",
        "tabular",
        lambda k: _corrupt_member(k, "parameter.h5"),
        1,
        "member 'parameter.h5'",
    ),
    (
        "corrupt network.protobuf",
        "tabular",
        lambda k: _corrupt_member(k, "network.protobuf"),
        1,
        "network definition",
    ),
    (
        "corrupt solver state",
        "tabular",
        lambda k: _corrupt_member(k, "Optimizer_Sgd_optimizer.h5.optimizer"),
        1,
        "member 'Optimizer_Sgd_optimizer.h5.optimizer'",
    ),
    ("long token", "tabular", _long_token, 1, "characters)"),
    ("huge cell", "tabular", _huge_cell, 1, "characters)"),
    # 6. odd but legal: decided
    ("output is a symlink", "tabular", _output_is_symlink, 1, "symbolic link"),
    ("output is read-only", "tabular", _output_is_read_only, 1, "read-only"),
]


@pytest.fixture(scope="module")
def samples(samples_dir) -> Path:
    return samples_dir


def longest_quote(line: str, data: List[str]) -> int:
    """The most characters in a row that ``line`` quotes of any string of ``data``."""
    longest = 0
    for text in data:
        while longest < len(text) and any(
            text[start : start + longest + 1] in line for start in range(len(text) - longest)
        ):
            longest += 1
    return longest


@pytest.mark.parametrize("depth", list(DEPTHS))
@pytest.mark.parametrize(
    "plugin, setup, code, words",
    [
        pytest.param(plugin, setup, code, words, id=name)
        for name, plugin, setup, code, words in CASES
    ],
)
def test_failure_keeps_the_contract(samples, tmp_path, plugin, setup, code, words, depth):
    kit = make_kit(samples, tmp_path.joinpath(*DEPTHS[depth]))
    args = setup(kit)
    before_inputs = kit.inputs()
    before_out = {p.name: p.lstat() for p in kit.out.iterdir()}
    try:
        result = run(kit, plugin, args)
    finally:
        for mount in kit.extra_outputs:
            leftovers = sorted(p.name for p in mount.iterdir())
            subprocess.run(["umount", str(mount)], check=False)
            assert leftovers == ["filler"], leftovers
    lines = problem_lines(result.stderr)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "internal error" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and words in lines[0], lines[0][:500]
    assert len(lines[0]) <= LINE_CHARS + len("error: ")
    quoted = [str(kit.root), *(str(a) for a in args), *(str(p) for p in kit.files.values())]
    assert longest_quote(lines[0], quoted) <= EXCERPT_CHARS, lines[0]
    after_out = {p.name: p.lstat() for p in kit.out.iterdir()}
    assert sorted(after_out) == sorted(before_out), "the run left or removed files"
    mounts = {m.name for m in kit.extra_outputs}
    for name, info in before_out.items():
        if name in mounts:
            continue
        assert (after_out[name].st_ino, after_out[name].st_mtime_ns) == (
            info.st_ino,
            info.st_mtime_ns,
        ), f"{name} was replaced"
    assert list(kit.temp.iterdir()) == [] or kit.extra_outputs, "temporary folder left"
    assert kit.inputs() == before_inputs, "an input changed"


# --------------------------------------------------------------------------------------
# 1. and 6.: runs that must succeed


SUCCESSES = [
    ("batch size 1", "tabular", lambda k: tabular(k, "-bs", "1")),
    ("last batch of one row", "tabular", lambda k: tabular(k, "-bs", "39")),
    (
        "binary loss, batch 1",
        "tabular",
        lambda k: tabular(k, "-bs", "1", model="cancer_logreg"),
    ),
    ("image, last batch of one", "image", lambda k: image(k, "-bs", "19", "--mode", "exact")),
    ("image, one row", "image", lambda k: image(k, "-bs", "1")),
    ("tabular plugin on images", "tabular", None),
]


def _tabular_on_images(kit):
    return [
        "-m",
        kit["digits_cnn"],
        "-t",
        kit["digits_train"],
        "-v",
        kit["digits_val"],
        "-o",
        kit.out / "o.csv",
        "--temp-dir",
        kit.temp,
    ]


@pytest.mark.parametrize(
    "plugin, setup",
    [
        pytest.param(plugin, setup or _tabular_on_images, id=name)
        for name, plugin, setup in SUCCESSES
    ],
)
def test_odd_but_legal_runs_succeed(samples, tmp_path, plugin, setup):
    kit = make_kit(samples, tmp_path)
    args = setup(kit)
    if "-bs" in args and args[args.index("-bs") + 1] == "1" and plugin == "image":
        csv = kit["digits_train"]
        csv.write_text("\n".join(csv.read_text().splitlines()[:2]) + "\n")  # one row
    before = kit.inputs()
    result = run(kit, plugin, args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert problem_lines(result.stderr) == [], result.stderr[-2000:]
    assert list(kit.temp.iterdir()) == []
    assert kit.inputs() == before
    rows = read_csv(kit.out / "o.csv")
    assert rows and all(r["influence"] not in ("", "nan") for r in rows)
    for row in rows:
        if "x:image" in row:
            assert (kit.out / row["x:image"]).is_file(), row["x:image"]


# --------------------------------------------------------------------------------------
# 2. signals at any moment, through the plugins


def _caught(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


@pytest.mark.parametrize(
    "signum, delays",
    [
        (signal.SIGINT, [0.0, 0.4, 1.2]),  # importing nnabla, retraining, retrace or write
        (signal.SIGTERM, [0.15, 0.9]),
        (signal.SIGHUP, [0.3, 1.6]),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_signals_through_the_plugin(samples, tmp_path, signum, delays):
    """From the script's first line through import, retraining, retrace and the write."""
    expected = 129 if signum == signal.SIGHUP else 130
    for index, delay in enumerate(delays):
        kit = make_kit(samples, tmp_path / f"run{index}")
        (kit.out / "o.csv").write_text("previous\n")
        before = kit.inputs()
        args = image(kit, "-nt", "2", "--mode", "exact")
        process = subprocess.Popen(
            [sys.executable, str(IMAGE_SCRIPT), *[str(a) for a in args]],
            cwd=str(kit.root),
            env=plugin_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_in_a_terminal,
        )
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if _caught(process.pid) & (1 << (signal.SIGHUP - 1)):
                    break
            except OSError:
                pass
            time.sleep(0.001)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        label = f"{signal.Signals(signum).name} after {delay} s"
        lines = problem_lines(stderr)
        assert process.returncode in (0, expected), f"{label}: {stderr[-2000:]}"
        assert "Traceback" not in stderr and "internal error" not in stderr, label
        assert list(kit.temp.iterdir()) == [], label
        assert kit.inputs() == before, label
        content = (kit.out / "o.csv").read_text()
        names = sorted(p.name for p in kit.out.iterdir())
        assert names == ["o.csv"], f"{label}: {names}"
        if process.returncode == 0:
            assert content.startswith("x:image,y:label,influence"), label
        else:
            assert lines == ["interrupted"], f"{label}: {lines}"
            assert content == "previous\n", label
