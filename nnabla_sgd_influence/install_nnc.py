"""Install the two plugins into Neural Network Console, self-contained, or remove them again.

``python -m nnabla_sgd_influence.install_nnc <NNC folder>`` (the folder holding ``libs/``)
writes, under ``libs/plugins/_Post_Process/_XAI/``::

    _Image/sgd_influence_retrace.py            the image plugin
    _Image/nnabla_sgd_influence/...            this package, beside it
    _Table/sgd_influence_retrace_tabular.py    the tabular plugin
    _Table/nnabla_sgd_influence/...            this package, beside it
    nnabla_sgd_influence_install.json          what was written, with each file's SHA-256

so that NNC's Python needs no ``pip install`` of this project. Sony's own SGD influence plugins
(``SGD_influence.py``, ``sgd_influence_tabular.py`` and their helper folders) are never
touched: our names differ from theirs in every letter case, and a file we did not write (or
one changed since) is never overwritten or removed. ``--uninstall`` removes exactly what the
record lists, as it was written, and the folders it created when they are empty.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from . import __version__
from .errors import InfluenceError
from .plugin_scripts import INSTALLED_NAMES, script_text

PACKAGE = Path(__file__).resolve().parent
XAI = Path("libs", "plugins", "_Post_Process", "_XAI")
FOLDERS = {"image": "_Image", "tabular": "_Table"}
RECORD = "nnabla_sgd_influence_install.json"
# Sony's SGD influence plugins and their helpers, which must never be touched (casefolded).
SONY_NAMES = {
    "sgd_influence.py",
    "sgd_influence_tabular.py",
    "sgd_influence_utils",
    "sgd_influence_tabular_utils",
    "utils",
}


@dataclass(frozen=True)
class Item:
    """One file to write: where (relative to the _XAI folder) and its bytes."""

    path: str  # with forward slashes
    data: bytes


def planned_files() -> List[Item]:
    """Both scripts and, beside each, the package's Python files (no caches)."""
    items = []
    for kind, folder in FOLDERS.items():
        items.append(Item(f"{folder}/{INSTALLED_NAMES[kind]}", script_text(kind).encode("utf-8")))
        for source in sorted(PACKAGE.rglob("*.py")):
            relative = source.relative_to(PACKAGE).as_posix()
            items.append(Item(f"{folder}/nnabla_sgd_influence/{relative}", source.read_bytes()))
    return items


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hash(path: Path) -> Optional[str]:
    try:
        return _sha256(path.read_bytes())
    except OSError:
        return None


def xai_folder(nnc: Path) -> Path:
    """``<nnc>/libs/plugins/_Post_Process/_XAI``, or an error when ``nnc`` is not NNC's folder."""
    plugins = Path(nnc) / "libs" / "plugins"
    if not plugins.is_dir():
        raise InfluenceError(
            f"{nnc} is not a Neural Network Console folder: {plugins} not found (give the "
            "folder that holds libs/)"
        )
    return Path(nnc) / XAI


def read_record(xai: Path) -> Dict:
    path = xai / RECORD
    if not path.is_file():
        return {"files": {}, "folders": []}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("files"), dict):
            raise ValueError("no file list")
        return record
    except (OSError, ValueError) as error:
        raise InfluenceError(f"{path} is not an install record of this tool ({error})") from None


def install(nnc: Path) -> List[str]:
    """Write (or update) the plugins; return the written paths relative to the _XAI folder."""
    xai = xai_folder(nnc)
    record = read_record(xai)
    items = planned_files()
    _refuse_foreign_files(xai, items, record)
    created = [str(f) for f in record.get("folders", [])]
    for folder in _folders_to_make(xai, items):
        if not (xai / folder).is_dir():
            created.append(folder)
    stale = set(record["files"]) - {item.path for item in items}
    written = {item.path: _sha256(item.data) for item in items}
    # Recorded before writing: an interrupted install is still ours to finish or undo.
    _write_record(xai, {**record["files"], **written}, created)
    for item in items:
        target = xai / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(target, item.data)
    for path in sorted(stale):  # files of an older version that this one no longer has
        _remove_if_ours(xai / path, record["files"][path])
    _write_record(xai, written, created)
    return sorted(written)


def _write_record(xai: Path, files: Dict[str, str], folders: Sequence[str]) -> None:
    record = {"tool": "nnabla-sgd-influence", "version": __version__}
    record.update({"files": dict(sorted(files.items())), "folders": sorted(set(folders))})
    xai.mkdir(parents=True, exist_ok=True)
    _write_whole(xai / RECORD, (json.dumps(record, indent=1) + "\n").encode("utf-8"))


def uninstall(nnc: Path) -> Tuple[List[str], List[str]]:
    """Remove what the record lists: (removed paths, paths kept because they were changed)."""
    xai = xai_folder(nnc)
    record = read_record(xai)
    if not record["files"]:
        raise InfluenceError(f"nothing to uninstall: no install record in {xai}")
    removed, kept = [], []
    for path, digest in sorted(record["files"].items()):
        target = xai / path
        if _remove_if_ours(target, digest):
            removed.append(path)
        elif target.exists():
            kept.append(path)
    for folder in _deepest_first(
        {str(Path(p).parent.as_posix()) for p in record["files"]} | set(record["folders"])
    ):
        _remove_empty_folder(xai / folder, xai)
    (xai / RECORD).unlink()
    return removed, kept


def _refuse_foreign_files(xai: Path, items: Sequence[Item], record: Dict) -> None:
    """Stop before writing anything if a target is not ours or collides with Sony's."""
    for item in items:
        name = Path(item.path).parts[1].casefold()
        if name in SONY_NAMES:
            raise InfluenceError(f"refusing to write {item.path}: the name is Sony's plugin's")
        target = xai / item.path
        clash = _case_insensitive_clash(target)
        if clash is not None:
            raise InfluenceError(
                f"refusing to install: {clash} exists and differs from {target.name} only in "
                "letter case (they would be one file on Windows)"
            )
        if target.exists() or target.is_symlink():
            if not target.is_file() or target.is_symlink():
                raise InfluenceError(f"refusing to replace {target}: it is not a regular file")
            ours = record["files"].get(item.path)
            if ours is None or _file_hash(target) != ours:
                raise InfluenceError(
                    f"refusing to overwrite {target}: this installer did not write it (or it "
                    "was changed since); move it away and run the installer again"
                )


def _case_insensitive_clash(target: Path) -> Optional[Path]:
    """An existing sibling of ``target`` whose name equals it but for letter case."""
    folder = target.parent
    if not folder.is_dir():
        return None
    for entry in folder.iterdir():
        if entry.name != target.name and entry.name.casefold() == target.name.casefold():
            return entry
    return None


def _folders_to_make(xai: Path, items: Sequence[Item]) -> Iterator[str]:
    seen = set()
    for item in items:
        parts = Path(item.path).parts[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                yield folder


def _write_whole(target: Path, data: bytes) -> None:
    """Write ``target`` through a temporary file beside it, so it is never half written."""
    temporary = target.with_name(f".{target.name}.tmp-install")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def _remove_if_ours(target: Path, digest: str) -> bool:
    if target.is_file() and not target.is_symlink() and _file_hash(target) == digest:
        target.unlink()
        return True
    return False


def _deepest_first(folders) -> List[str]:
    return sorted((f for f in folders if f not in ("", ".")), key=lambda f: -f.count("/"))


def _remove_empty_folder(folder: Path, xai: Path) -> None:
    cache = folder / "__pycache__"  # written by NNC's Python when it ran the plugin
    if cache.is_dir() and all(p.suffix == ".pyc" for p in cache.iterdir()):
        shutil.rmtree(cache)
    if folder != xai and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


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
            scripts = [p for p in written if "/nnabla_sgd_influence/" not in p]
            print(f"installed {len(written)} files into {xai}:")
            for path in scripts:
                print(f"  {path}")
            print("restart Neural Network Console; the plugins are in the menu of an evaluation")
            print("result as 'SGD Influence (Hessian retrace)' and its tabular counterpart")
    except InfluenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error.filename or args.nnc_folder}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
