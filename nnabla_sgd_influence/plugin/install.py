"""Install the two plugins into Neural Network Console, self-contained, or remove them again.

``python -m nnabla_sgd_influence.install_nnc <NNC folder>`` (the folder holding ``libs/``)
writes, under ``libs/plugins/_Post_Process/_XAI/``::

    _Image/sgd_influence_retrace.py            the image plugin
    _Image/nnabla_sgd_influence/...            this package, beside it
    _Table/sgd_influence_retrace_tabular.py    the tabular plugin
    _Table/nnabla_sgd_influence/...            this package, beside it
    nnabla_sgd_influence_install.json          the record of what was written

so that NNC's Python needs no ``pip install`` of this project. Sony's own SGD influence plugins
(``SGD_influence.py``, ``sgd_influence_tabular.py`` and their helper folders) are never
touched: our names differ from theirs in every letter case, and a file we did not write (or
one changed since) is never overwritten or removed.

**The record** is a JSON object::

    {"tool": "nnabla-sgd-influence", "version": "...",
     "files": {"_Image/sgd_influence_retrace.py": "<SHA-256, 64 hex digits>", ...},
     "folders": ["_Post_Process/_XAI/_Image/nnabla_sgd_influence", ...]}

``files`` are relative to the ``_XAI`` folder; ``folders`` are the folders the installer
created, relative to ``libs/plugins`` (so that ``_Post_Process`` and ``_XAI`` themselves can be
listed when the installer made them). The record is read as untrusted input: it is checked
whole before anything is written or removed, and every entry must be a path this installer
itself writes: ``_Image/`` or ``_Table/``, then the plugin script's installed name or
``nnabla_sgd_influence/`` and a module path (``.py``, Python identifiers only: no ``..``, no
empty or ``.`` parts, no backslash, drive letter or absolute path); a folder is
``_Post_Process``, ``_Post_Process/_XAI``, one of the two plugin folders below it, or the
package folder and its sub-packages. Anything else stops the run with one line naming the entry.

**Links.** No path below ``libs/plugins`` that the installer writes, enters or removes may be a
symbolic link or a Windows junction: the plugin folders, the package folder, each file, its
temporary name and the record. Each is checked with ``lstat`` before it is used; files are
created with ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW`` where the system has it) and renamed
into place, which replaces a name rather than writing through it. ``--uninstall`` removes the
files of the record whose content is as written, then the folders it created, deepest first,
each only when empty (bytecode caches that NNC's Python left in them are cleared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import InfluenceError, excerpt
from ..runtime.oserrors import os_error_line
from .scripts import INSTALLED_NAMES, script_text

PACKAGE = Path(__file__).resolve().parents[1]  # the nnabla_sgd_influence folder
PACKAGE_NAME = "nnabla_sgd_influence"
PLUGINS = Path("libs", "plugins")
XAI_UNDER_PLUGINS = "_Post_Process/_XAI"
XAI = PLUGINS / XAI_UNDER_PLUGINS
FOLDERS = {"image": "_Image", "tabular": "_Table"}
RECORD = "nnabla_sgd_influence_install.json"
TOOL = "nnabla-sgd-influence"
TEMPORARY_SUFFIX = ".tmp-install"
RECORD_MAX_BYTES = 1 << 20  # ours is about 20 kB; a larger file is not one of ours
# Sony's SGD influence plugins and their helpers, which must never be touched (casefolded).
SONY_NAMES = {
    "sgd_influence.py",
    "sgd_influence_tabular.py",
    "sgd_influence_utils",
    "sgd_influence_tabular_utils",
    "utils",
}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SCRIPTS = {FOLDERS[kind]: INSTALLED_NAMES[kind] for kind in FOLDERS}
# Windows reparse points that lead elsewhere (symbolic links and junctions).
_LINK_TAGS = {
    getattr(stat, "IO_REPARSE_TAG_SYMLINK", 0xA000000C),
    getattr(stat, "IO_REPARSE_TAG_MOUNT_POINT", 0xA0000003),
}
_NEW_FILE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)
# O_NONBLOCK: opening a FIFO swapped in after the lstat check must not hang.
_READ_FILE = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
)


@dataclass(frozen=True)
class Item:
    """One file to write: where (relative to the _XAI folder) and its bytes."""

    path: str  # with forward slashes
    data: bytes


@dataclass(frozen=True)
class Record:
    """What an install wrote: file (relative to _XAI) → SHA-256, and the folders it created
    (relative to libs/plugins)."""

    files: Dict[str, str]
    folders: Tuple[str, ...]


def planned_files() -> List[Item]:
    """Both scripts and, beside each, the package's Python files (no caches)."""
    items = []
    for kind, folder in FOLDERS.items():
        items.append(Item(f"{folder}/{INSTALLED_NAMES[kind]}", script_text(kind).encode("utf-8")))
        for source in sorted(PACKAGE.rglob("*.py")):
            relative = source.relative_to(PACKAGE).as_posix()
            items.append(Item(f"{folder}/{PACKAGE_NAME}/{relative}", source.read_bytes()))
    return items


# --------------------------------------------------------------------------------------
# Which paths are the installer's own


def is_installed_file(entry: str) -> bool:
    """Whether ``entry`` (relative to _XAI) is a file this installer writes: ``_Image/`` or
    ``_Table/``, then that folder's plugin script or ``nnabla_sgd_influence/<module path>.py``."""
    parts = entry.split("/")
    if len(parts) < 2 or parts[0] not in _SCRIPTS:
        return False
    if len(parts) == 2:
        return parts[1] == _SCRIPTS[parts[0]]
    *folders, name = parts[2:]
    return (
        parts[1] == PACKAGE_NAME
        and name.endswith(".py")
        and all(_IDENTIFIER.fullmatch(part) for part in (*folders, name[: -len(".py")]))
    )


def is_installer_folder(entry: str) -> bool:
    """Whether ``entry`` (relative to libs/plugins) is a folder this installer may create:
    ``_Post_Process``, ``_Post_Process/_XAI``, a plugin folder below it, or the package folder
    there and its sub-packages."""
    parts = entry.split("/")
    xai = XAI_UNDER_PLUGINS.split("/")
    if parts[: len(xai)] != xai[: len(parts)]:
        return False
    rest = parts[len(xai) :]
    if not rest:
        return True
    if rest[0] not in _SCRIPTS:
        return False
    return rest[1:2] in ([], [PACKAGE_NAME]) and all(_IDENTIFIER.fullmatch(p) for p in rest[2:])


def _in_plugins(file_entry: str) -> str:
    """A file entry (relative to _XAI) relative to libs/plugins."""
    return f"{XAI_UNDER_PLUGINS}/{file_entry}"


def _temporary(relative: str) -> str:
    """The name a file is written under before it is renamed into place."""
    folder, _, name = relative.rpartition("/")
    return f"{folder}/.{name}{TEMPORARY_SUFFIX}" if folder else f".{name}{TEMPORARY_SUFFIX}"


def _show(relative: str) -> str:
    """A path below libs/plugins as the messages show it: from the NNC folder."""
    return f"{PLUGINS.as_posix()}/{relative}"


# --------------------------------------------------------------------------------------
# The record


def _quote(value: object) -> str:
    """One entry of the record, as a message quotes it (at most 60 characters of it)."""
    if isinstance(value, str):
        return f'"{excerpt(value)}"'
    return excerpt(json.dumps(value))


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names.update({int: "a number", float: "a number", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _not_a_record(what: str) -> InfluenceError:
    return InfluenceError(
        f"{_show(f'{XAI_UNDER_PLUGINS}/{RECORD}')} is not an install record of this tool: "
        f"{what}; nothing was changed"
    )


def parse_record(content: object) -> Record:
    """The record from its parsed JSON, checked whole: any entry that is not the installer's
    own path (see the module's docstring) stops here, before anything is touched."""
    if not isinstance(content, dict):
        raise _not_a_record(f"it holds {_kind(content)}, not an object")
    if content.get("tool") != TOOL:
        raise _not_a_record(f'its "tool" is {_quote(content.get("tool"))}, not "{TOOL}"')
    files, folders = content.get("files"), content.get("folders")
    if not isinstance(files, dict):
        raise _not_a_record(f'its "files" is {_kind(files)}, not an object')
    if not isinstance(folders, list):
        raise _not_a_record(f'its "folders" is {_kind(folders)}, not a list')
    for entry, digest in files.items():
        if not is_installed_file(entry):
            raise _not_a_record(f'"files" entry {_quote(entry)} is not a file it writes')
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise _not_a_record(
                f'"files" entry {_quote(entry)} has {_quote(digest)}, not a SHA-256 in hex'
            )
    for entry in folders:
        if not (isinstance(entry, str) and is_installer_folder(entry)):
            raise _not_a_record(f'"folders" entry {_quote(entry)} is not a folder it creates')
    return Record(dict(files), tuple(folders))


def read_record(plugins: Path) -> Record:
    """The record in ``plugins``' _XAI folder (empty when there is none), checked whole."""
    relative = f"{XAI_UNDER_PLUGINS}/{RECORD}"
    _refuse_links(plugins, relative)
    status = _lstat(plugins / relative)
    if status is None:
        return Record({}, ())
    if not stat.S_ISREG(status.st_mode):
        raise _not_a_record("it is not a regular file")
    data = _read_regular_file(plugins / relative, RECORD_MAX_BYTES)
    if data is None:
        raise _not_a_record(f"it is not a regular file of at most {RECORD_MAX_BYTES} bytes")
    try:
        content = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise _not_a_record(f"not JSON ({excerpt(error, 120)})") from None
    return parse_record(content)


def _write_record(plugins: Path, files: Dict[str, str], folders: Iterable[str]) -> None:
    record = {"tool": TOOL, "version": __version__}
    record.update({"files": dict(sorted(files.items())), "folders": sorted(set(folders))})
    text = json.dumps(record, indent=1) + "\n"
    _write_whole(plugins, f"{XAI_UNDER_PLUGINS}/{RECORD}", text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Checks before anything is written


def _is_link(status: os.stat_result) -> bool:
    """A symbolic link, or a Windows junction (a reparse point that leads elsewhere)."""
    return stat.S_ISLNK(status.st_mode) or getattr(status, "st_reparse_tag", 0) in _LINK_TAGS


def _refuse_links(plugins: Path, relative: str) -> None:
    """Stop when a part of ``plugins/relative`` that exists is a link, or a part above the
    last is not a folder: writing or removing there would reach outside NNC's tree."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        shown = "/".join(parts[:depth])
        try:
            status = os.lstat(plugins.joinpath(*parts[:depth]))
        except FileNotFoundError:
            return
        if _is_link(status):
            raise InfluenceError(
                f"refusing to use {_show(shown)}: it is a symbolic link (or junction), which "
                "could lead outside NNC's tree"
            )
        if depth < len(parts) and not stat.S_ISDIR(status.st_mode):
            raise InfluenceError(f"refusing to install: {_show(shown)} is not a folder")


def _refuse_any_link(plugins: Path, files: Iterable[str], folders: Iterable[str]) -> None:
    """:func:`_refuse_links` for each file (and its temporary name) and each folder, all
    relative to libs/plugins: every check is made before anything is written or removed."""
    for relative in files:
        _refuse_links(plugins, relative)
        _refuse_links(plugins, _temporary(relative))
    for relative in folders:
        _refuse_links(plugins, relative)


def _refuse_case_clashes(plugins: Path, paths: Iterable[str]) -> None:
    """Stop when a folder or file the installer creates or enters has a sibling whose name
    differs only in letter case: one name on Windows, two entries elsewhere."""
    listings: Dict[Path, Optional[List[str]]] = {}
    for relative in paths:
        folder = plugins
        for part in relative.split("/"):
            if folder not in listings:
                try:
                    listings[folder] = os.listdir(folder)
                except (FileNotFoundError, NotADirectoryError):
                    listings[folder] = None
            names = listings[folder]
            if names is None:
                break
            for name in names:
                if name != part and name.casefold() == part.casefold():
                    existing = (folder / name).relative_to(plugins).as_posix()
                    raise InfluenceError(
                        f"refusing to install: {_show(existing)} exists and differs from "
                        f"{part} only in letter case (they would be one on Windows)"
                    )
            folder = folder / part


def _refuse_foreign_files(plugins: Path, items: Sequence[Item], record: Record) -> None:
    """Stop if a target is not a regular file this installer wrote (and left unchanged), or a
    temporary name is taken by something that is not a file."""
    for item in items:
        if item.path.split("/")[1].casefold() in SONY_NAMES:
            raise InfluenceError(f"refusing to write {item.path}: the name is Sony's plugin's")
        relative = _in_plugins(item.path)
        status = _lstat(plugins / relative)
        if status is not None:
            if not stat.S_ISREG(status.st_mode):
                raise InfluenceError(f"refusing to replace {_show(relative)}: not a regular file")
            if _file_hash(plugins / relative) != record.files.get(item.path):
                raise InfluenceError(
                    f"refusing to overwrite {_show(relative)}: this installer did not write it "
                    "(or it was changed since); move it away and run the installer again"
                )
        _refuse_non_file(plugins, _temporary(relative))


def _refuse_non_file(plugins: Path, relative: str) -> None:
    status = _lstat(plugins / relative)
    if status is not None and not stat.S_ISREG(status.st_mode):
        raise InfluenceError(f"refusing to replace {_show(relative)}: not a regular file")


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------
# Install and uninstall


def xai_folder(nnc: Path) -> Path:
    """``<nnc>/libs/plugins/_Post_Process/_XAI``, or an error when ``nnc`` is not NNC's folder."""
    return plugins_folder(nnc) / XAI_UNDER_PLUGINS


def plugins_folder(nnc: Path) -> Path:
    """``<nnc>/libs/plugins``, or an error when ``nnc`` is not NNC's folder."""
    plugins = Path(nnc) / PLUGINS
    if not plugins.is_dir():
        raise InfluenceError(
            f"{excerpt(nnc)} is not a Neural Network Console folder: {PLUGINS.as_posix()} not "
            "found in it (give the folder that holds libs/)"
        )
    return plugins


def _folders_of(paths: Iterable[str]) -> List[str]:
    """Every folder above the given paths (relative to libs/plugins), shallowest first."""
    found = set()
    for relative in paths:
        parts = relative.split("/")[:-1]
        found.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    return sorted(found, key=lambda folder: (folder.count("/"), folder))


def install(nnc: Path) -> List[str]:
    """Write (or update) the plugins; return the written paths relative to the _XAI folder."""
    plugins = plugins_folder(nnc)
    record = read_record(plugins)
    items = planned_files()
    targets = [_in_plugins(item.path) for item in items]
    stale = sorted(set(record.files) - {item.path for item in items})
    needed = _folders_of(targets)
    record_path = f"{XAI_UNDER_PLUGINS}/{RECORD}"
    _refuse_any_link(plugins, [*targets, record_path, *map(_in_plugins, stale)], record.folders)
    _refuse_case_clashes(plugins, [*targets, record_path])
    _refuse_foreign_files(plugins, items, record)
    _refuse_non_file(plugins, _temporary(record_path))
    created = [folder for folder in needed if _lstat(plugins / folder) is None]
    folders = set(record.folders) | set(created)
    written = {item.path: _sha256(item.data) for item in items}
    for folder in _folders_of([record_path]):
        _make_folder(plugins, folder)
    # Recorded before writing: an interrupted install is still ours to finish or undo.
    _write_record(plugins, {**record.files, **written}, folders)
    for folder in needed:
        _make_folder(plugins, folder)
    for item, relative in zip(items, targets):
        _write_whole(plugins, relative, item.data)
    for path in stale:  # files of an older version that this one no longer has
        _remove_if_ours(plugins, _in_plugins(path), record.files[path])
    retired = [folder for folder in record.folders if folder not in needed]
    folders -= set(_remove_created_folders(plugins, retired))
    _write_record(plugins, written, folders)
    return sorted(written)


def uninstall(nnc: Path) -> Tuple[List[str], List[str]]:
    """Remove what the record lists: (removed paths, paths kept because they were changed)."""
    plugins = plugins_folder(nnc)
    record = read_record(plugins)
    if not record.files:
        raise InfluenceError(
            f"nothing to uninstall: no install record in {_show(XAI_UNDER_PLUGINS)}"
        )
    _refuse_any_link(plugins, [_in_plugins(path) for path in record.files], record.folders)
    removed, kept = [], []
    for path, digest in sorted(record.files.items()):
        relative = _in_plugins(path)
        _remove_leftover(plugins, _temporary(relative))
        if _remove_if_ours(plugins, relative, digest):
            removed.append(path)
        elif _lstat(plugins / relative) is not None:
            kept.append(path)
    os.unlink(plugins / XAI_UNDER_PLUGINS / RECORD)
    _remove_created_folders(plugins, record.folders)
    return removed, kept


# --------------------------------------------------------------------------------------
# File operations that never follow a link


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hash(path: Path) -> Optional[str]:
    """SHA-256 of a regular file, read in pieces (a planted file may be huge); None if the
    file cannot be read or is not a regular file."""
    digest = hashlib.sha256()
    try:
        descriptor = os.open(path, _READ_FILE)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_regular_file(path: Path, limit: int) -> Optional[bytes]:
    """The bytes of a regular file, or None when it has more than ``limit`` (or is not a
    regular file by the time it is opened)."""
    with os.fdopen(os.open(path, _READ_FILE), "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        data = stream.read(limit + 1)
    return data if len(data) <= limit else None


def _make_folder(plugins: Path, relative: str) -> None:
    """Create ``plugins/relative`` unless it is there; either way it must be a real folder."""
    _refuse_links(plugins, relative)
    with suppress(FileExistsError):
        os.mkdir(plugins / relative)
    _refuse_links(plugins, relative)
    if not stat.S_ISDIR(os.lstat(plugins / relative).st_mode):
        raise InfluenceError(f"refusing to install: {_show(relative)} is not a folder")


def _write_whole(plugins: Path, relative: str, data: bytes) -> None:
    """Write ``plugins/relative`` through a new temporary file beside it, renamed into place:
    the target is never half written, and a link there is replaced, never written through."""
    temporary = _temporary(relative)
    _refuse_links(plugins, relative)
    _refuse_links(plugins, temporary)
    _remove_leftover(plugins, temporary)
    descriptor = os.open(plugins / temporary, _NEW_FILE, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(plugins / temporary, plugins / relative)
    except BaseException:
        with suppress(OSError):
            os.unlink(plugins / temporary)
        raise


def _remove_leftover(plugins: Path, temporary: str) -> None:
    """Remove a temporary file an interrupted install left (a regular file only)."""
    status = _lstat(plugins / temporary)
    if status is not None:
        if not stat.S_ISREG(status.st_mode):
            raise InfluenceError(f"refusing to replace {_show(temporary)}: not a regular file")
        os.unlink(plugins / temporary)


def _remove_if_ours(plugins: Path, relative: str, digest: str) -> bool:
    """Remove a regular file whose content is still what the installer wrote."""
    path = plugins / relative
    status = _lstat(path)
    if status is None or not stat.S_ISREG(status.st_mode) or _file_hash(path) != digest:
        return False
    os.unlink(path)
    return True


def _remove_created_folders(plugins: Path, folders: Iterable[str]) -> List[str]:
    """Remove the given folders, deepest first, each only if it is a real folder and empty
    but for a bytecode cache; return those removed (or already gone)."""
    removed = []
    for folder in sorted(set(folders), key=lambda f: (-f.count("/"), f)):
        path = plugins / folder
        status = _lstat(path)
        if status is None:
            removed.append(folder)
            continue
        if _is_link(status) or not stat.S_ISDIR(status.st_mode):
            continue
        _clear_bytecode_cache(path)
        if not os.listdir(path):
            os.rmdir(path)
            removed.append(folder)
    return removed


def _clear_bytecode_cache(folder: Path) -> None:
    """Remove ``folder/__pycache__`` when it is all that ``folder`` holds and it holds only
    ``.pyc`` files: NNC's Python wrote it when it ran the plugin."""
    cache = folder / "__pycache__"
    if os.listdir(folder) != ["__pycache__"]:
        return
    status = os.lstat(cache)
    if _is_link(status) or not stat.S_ISDIR(status.st_mode):
        return
    names = os.listdir(cache)
    for name in names:
        entry = os.lstat(cache / name)
        if not (name.endswith(".pyc") and stat.S_ISREG(entry.st_mode)):
            return
    for name in names:
        os.unlink(cache / name)
    os.rmdir(cache)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nnabla_sgd_influence.install_nnc",
        description="Install the nnabla-sgd-influence plugins into Neural Network Console "
        "(self-contained: NNC's Python needs no pip install of this project), or remove them.",
    )
    parser.add_argument("nnc_folder", type=Path, help="the NNC folder, which holds libs/")
    parser.add_argument("--uninstall", action="store_true", help="remove what was installed")
    args = parser.parse_args(argv)
    try:
        if args.uninstall:
            removed, kept = uninstall(args.nnc_folder)
            print(f"removed {len(removed)} files from {xai_folder(args.nnc_folder)}")
            for path in kept:
                print(f"kept {path}: it was changed after the install")
        else:
            written = install(args.nnc_folder)
            xai = xai_folder(args.nnc_folder)
            scripts = [p for p in written if f"/{PACKAGE_NAME}/" not in p]
            print(f"installed {len(written)} files into {xai}:")
            for path in scripts:
                print(f"  {path}")
            print("restart Neural Network Console; the plugins are in the menu of an evaluation")
            print("result as 'SGD Influence (Hessian retrace)' and its tabular counterpart")
    except InfluenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        action = "uninstall from" if args.uninstall else "install into"
        print(f"error: {os_error_line(error, args.nnc_folder, action)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the record already lists what was written: run it again
        print(
            "error: interrupted; run the installer again to finish, or with --uninstall",
            file=sys.stderr,
        )
        return 130
    return 0
