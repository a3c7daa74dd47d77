"""Choose where nnabla computes: the CPU by default, or cuDNN on a GPU.

The choice comes from, in this order: the ``--context`` option; the ``global_config`` of an NNC
``net.nntxt`` in the working folder (NNC runs plugins from the training result folder, and that
file records the context the model was trained with); otherwise the CPU. A GPU context without
the ``nnabla-ext-cuda`` package is an error, never a silent fallback to the CPU.
:func:`resolve_device` makes the choice once per run, as a :class:`Device`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..errors import InfluenceError, excerpt_path

log = logging.getLogger(__name__)

NNTXT_NAME = "net.nntxt"
_MISSING_CUDA = (
    "context 'cudnn' needs the nnabla-ext-cuda package matching your CUDA "
    "(e.g. pip install nnabla-ext-cuda120)"
)


@dataclass(frozen=True)
class Device:
    """Where a run computes, chosen once: the context's name, the device, why, and the
    nnabla context itself."""

    name: str  # "cpu" or "cudnn"
    device_id: str
    source: str  # what chose it: "--context", "default", or the path of the net.nntxt
    context_file: Optional[Path]  # the net.nntxt looked at (no --context), whether or not it exists
    context: object  # nnabla's Context

    def describe(self) -> str:
        """The run's log line about it."""
        if self.name == "cudnn":
            return f"context: cudnn on device {self.device_id} (chosen by {self.source})"
        return f"context: cpu (chosen by {self.source})"


def choose_context(requested: Optional[str], folder: Optional[Path] = None) -> Tuple[str, str]:
    """Return the context name (``cpu`` or ``cudnn``) and where the choice came from;
    ``requested`` is one of :data:`..arguments.CONTEXTS` or None."""
    if requested is not None:
        return requested, "--context"
    nntxt = Path.cwd() / NNTXT_NAME if folder is None else folder / NNTXT_NAME
    from_file = context_of_nntxt(nntxt)
    if from_file is not None:
        return from_file, str(nntxt)
    return "cpu", "default"


def context_of_nntxt(path: Path) -> Optional[str]:
    """The context named by the ``global_config`` of an NNC ``net.nntxt``, or None.

    Only the ``global_config`` block is parsed, so that the rest of the file (datasets,
    networks, paths of another machine) can never stop a run. Any problem is ignored.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    block = _global_config_block(text)
    if block is None:
        return None
    try:
        from google.protobuf import text_format
        from nnabla.utils import nnabla_pb2

        proto = nnabla_pb2.NNablaProtoBuf()
        text_format.Parse(block, proto)
    except Exception as error:  # protobuf raises several unrelated types
        log.debug("ignoring the global_config of %s: %s", path, error)
        return None
    context = proto.global_config.default_context
    names = list(context.backends) + [context.backend, context.array_class]
    if any(name.lower().startswith(("cudnn", "cuda")) for name in names if name):
        return "cudnn"
    return "cpu" if any(names) else None


def _global_config_block(text: str) -> Optional[str]:
    """The text of the top-level ``global_config { ... }`` block, braces matched."""
    start = _top_level_key(text, "global_config")
    if start is None:
        return None
    opening = text.find("{", start)
    if opening < 0:
        return None
    depth = 0
    quote = ""
    index = opening
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
        index += 1
    return None


def _top_level_key(text: str, key: str) -> Optional[int]:
    """Offset of ``key`` at the start of a line outside any block, or None."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.startswith(key) and line[len(key) :].lstrip().startswith(("{", ":")):
            return offset
        offset += len(line)
    return None


def create_context(name: str, device_id: Optional[str] = "0") -> object:
    """The nnabla context ``name`` (``cpu`` or ``cudnn``) on ``device_id`` (nnabla's default
    context is left alone).

    For ``cudnn``, ``NNABLA_CUDNN_DETERMINISTIC`` is set (unless the user set it) so that
    the same seed gives the same scores on the GPU too.
    """
    if name == "cudnn":
        os.environ.setdefault("NNABLA_CUDNN_DETERMINISTIC", "1")
        _require_cuda_extension()

    from nnabla.ext_utils import get_extension_context

    device = "0" if device_id is None else str(device_id)
    return get_extension_context(name, device_id=device, type_config="float")


def _require_cuda_extension() -> None:
    try:
        import nnabla_ext.cuda  # noqa: F401
    except Exception as error:  # ImportError, or OSError for a missing CUDA library
        log.debug("importing nnabla_ext.cuda failed: %s", error)
        raise InfluenceError(_MISSING_CUDA) from None


def resolve_device(
    requested: Optional[str], device_id: str = "0", folder: Optional[Path] = None
) -> Device:
    """The :class:`Device` of ``requested`` (see the module docstring; ``folder``: where to
    look for ``net.nntxt``, the working folder by default), or an error naming what is
    missing."""
    name, source = choose_context(requested, folder)
    try:
        context = create_context(name, device_id)
    except InfluenceError as error:
        if source in ("--context", "default"):
            raise
        raise InfluenceError(
            f"{error}; {excerpt_path(source)} asks for it (override: --context cpu)"
        ) from None
    looked_at = None if requested is not None else (folder or Path.cwd()) / NNTXT_NAME
    return Device(name, str(device_id), source, looked_at, context)
