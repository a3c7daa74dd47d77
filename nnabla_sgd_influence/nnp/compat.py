"""What differs between the nnabla (and Pillow) releases this package supports, in one place.

Supported: nnabla 1.32.0 up to, not including, 1.40 (see ``NNABLA_RANGE``). Each shim below
names the releases it serves and the public API it prefers. Where nnabla has no public API for
what we need, the private one is used when it is there, with a fallback built on public pieces
that ``tests/nnp/test_compat.py`` exercises on every release by forcing it.

Facts this module relies on, checked against the installed 1.32.0, 1.33.1, 1.34.0, 1.35.1,
1.36.0, 1.37.0, 1.38.0 and 1.39.0:

- ``nnabla.utils.load_function._create_function_instance(ctx, proto)`` exists with that
  signature in all of them (nnabla's own graph loader, ``nnabla.core.graph_def``, calls it). It
  is generated code that passes every field of the layer's ``<type>_param`` message, under the
  field's own name, to ``nnabla.function.<type>``; Shape fields as their ``dim`` list.
- ``nnabla.backward_functions.registry`` maps layer types to their backward functions in all
  of them; layers added later only add entries.
- ``Lion`` (the solver and the ``lion_param`` field of ``nnabla_pb2.Solver``) first appears in
  1.35.0. Every other solver, scheduler and ``.nnp`` field read by :mod:`.model` exists in 1.32.
- Every release from 1.32 to 1.39 looks for the modules ``nnabla.nnabla`` and
  ``nnabla.nnabla_ext`` on every ``.d``/``.g`` access and every layer it creates.
- Each release is built against one numpy minor: 1.33-1.35 pin numpy 1.23.x, 1.36-1.37 1.24.x,
  1.38-1.39 1.26.x. 1.32's metadata says numpy >= 1.20, wrongly: it imports only with 1.23.x
  (older numpy fails its C-API check; 1.24 removed ``numpy.bool``, which 1.32 reads).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import lru_cache
from typing import Callable, Dict, Mapping, Optional, Tuple

from ..errors import InfluenceError

# The nnabla releases this package is tested with: [lowest, first unsupported).
NNABLA_RANGE = ((1, 32, 0), (1, 40, 0))
# First release that knows each solver; the rest of MODELED and retraced-as-SGD solvers are
# in every supported release.
SOLVER_SINCE = {"Lion": (1, 35, 0)}


def version_tuple(text: str) -> Tuple[int, ...]:
    """``"1.35.1"`` -> ``(1, 35, 1)``; a suffix such as ``.dev0`` or ``rc1`` is dropped."""
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def nnabla_version() -> Tuple[int, ...]:
    import nnabla

    return version_tuple(getattr(nnabla, "__version__", "0"))


def nnabla_version_text() -> str:
    import nnabla

    return f"nnabla {getattr(nnabla, '__version__', '(unknown version)')}"


def nnabla_is_supported(version: Optional[Tuple[int, ...]] = None) -> bool:
    version = nnabla_version() if version is None else version
    low, high = NNABLA_RANGE
    return low <= tuple(version) < high


def _dotted(version: Tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def warn_if_untested_nnabla(log) -> None:
    """One warning on ``log`` when the installed nnabla is outside :data:`NNABLA_RANGE`."""
    if not nnabla_is_supported():
        low, high = NNABLA_RANGE
        log.warning(
            "%s is outside the tested range %s to before %s; results may differ or fail",
            nnabla_version_text(),
            _dotted(low),
            _dotted(high[:2]),
        )


# The numpy each nnabla release works with. Its wheels are built against one numpy minor
# (C API); 1.32 declares numpy >= 1.20 but imports only with 1.23.x (older: "compiled against
# API version 0x10"; 1.24 and later removed numpy.bool, which it reads).
NUMPY_FOR_NNABLA = {
    (1, 32): "1.23.0",
    (1, 33): "1.23.0",
    (1, 34): "1.23.0",
    (1, 35): "1.23.0",
    (1, 36): "1.24.0",
    (1, 37): "1.24.0",
    (1, 38): "1.26.0",
    (1, 39): "1.26.0",
}
# Compiled now: a failed import of nnabla may leave too little memory to compile them then.
_NUMPY_MISMATCH = tuple(
    re.compile(pattern)
    for pattern in (
        r"module 'numpy' has no attribute '(bool|int|float|object)'",  # numpy too new for 1.32
        r"numpy\.core\.multiarray failed to import|compiled against API version",  # too old
        r"size changed, may indicate binary incompatibility",  # numpy 2 under a numpy 1 build
    )
)


def import_nnabla():
    """``import nnabla``; a numpy that does not fit the installed nnabla is explained.

    Raises :class:`InfluenceError` naming the numpy to install (see ``NUMPY_FOR_NNABLA``);
    any other failure, a missing nnabla or memory that ran out included, is raised as it is.
    Either way the exit hook of the half-imported nnabla is dropped.
    """
    try:
        import nnabla
    except (AttributeError, ImportError, RuntimeError, ValueError, MemoryError) as error:
        _forget_half_imported_nnabla()
        message = numpy_mismatch_message(error)
        if message is None:
            raise
        raise InfluenceError(message) from None
    return nnabla


def _forget_half_imported_nnabla() -> None:
    """Drop the exit hook of an nnabla whose import failed (it would fail again, loudly)."""
    import atexit

    init = sys.modules.get("nnabla._init")
    finalize = getattr(init, "finalize", None)
    if finalize is not None:
        atexit.unregister(finalize)


def numpy_mismatch_message(error: BaseException) -> Optional[str]:
    """Why ``import nnabla`` failed, when the installed numpy does not fit it; else None."""
    if not any(pattern.search(str(error)) for pattern in _NUMPY_MISMATCH):
        return None
    from importlib import metadata

    try:
        numpy_version = metadata.version("numpy")
        nnabla_version = metadata.version("nnabla")
    except metadata.PackageNotFoundError:
        return None
    fits = NUMPY_FOR_NNABLA.get(version_tuple(nnabla_version)[:2])
    advice = f': pip install "numpy~={fits}"' if fits else ""
    works = f"; it works with numpy {fits[:-2]}.x{advice}" if fits else ""
    return (
        f"nnabla {nnabla_version} cannot be imported with numpy {numpy_version} "
        f"({(str(error).strip().splitlines() or [''])[0]}){works}"
    )


# --------------------------------------------------------------------------------------
# Faster array access (nnabla 1.32-1.39; harmless elsewhere)


def skip_missing_extension_lookup() -> None:
    """Make nnabla's array access fast: remember that two modules it looks for do not exist.

    nnabla 1.32 to 1.39 look for ``nnabla.nnabla_ext`` on every ``.d``/``.g`` access and for
    ``nnabla.nnabla`` on every layer they create (relative imports in their compiled modules
    that fail and fall back). Each failed search of the import path costs tens of microseconds,
    much of a small model's step. Recording their absence once makes those imports fail at
    once. Nothing changes where such a module does exist, or in a release that no longer looks.
    """
    for name in ("nnabla.nnabla", "nnabla.nnabla_ext"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None


# --------------------------------------------------------------------------------------
# One layer from its protobuf description


@lru_cache(maxsize=None)
def _nnabla_function_factory() -> Optional[Callable]:
    """nnabla's own ``(ctx, proto) -> Function`` (private; 1.32-1.39), or None."""
    try:
        from nnabla.utils.load_function import _create_function_instance
    except ImportError:
        return None
    return _create_function_instance if callable(_create_function_instance) else None


def create_function_instance(ctx, proto):
    """The nnabla Function object for one layer (``nnabla_pb2.Function``), ready to call.

    nnabla has no public API for one layer (its public loaders build whole networks), so its
    private generated factory is used when present, and :func:`function_from_parameters`,
    which does the same from public pieces, otherwise.
    """
    factory = _nnabla_function_factory()
    if factory is not None:
        return factory(ctx, proto)
    return function_from_parameters(ctx, proto)


@lru_cache(maxsize=None)
def _parameter_fields() -> Dict[str, str]:
    """Layer type, lower-cased -> its ``<type>_param`` field of ``nnabla_pb2.Function``.

    The field is the type in snake case (``BatchNormalization`` -> ``batch_normalization_param``,
    ``ReLU`` -> ``relu_param``), so underscores are dropped to match.
    """
    from nnabla.utils import nnabla_pb2

    fields: Dict[str, str] = {}
    for field in nnabla_pb2.Function.DESCRIPTOR.fields:
        if field.name.endswith("_param"):
            fields[field.name[: -len("_param")].replace("_", "")] = field.name
    return fields


def parameter_field(layer_type: str) -> Optional[str]:
    """Name of the ``nnabla_pb2.Function`` field holding ``layer_type``'s arguments, or None."""
    return _parameter_fields().get(layer_type.lower())


def function_arguments(proto) -> Dict[str, object]:
    """The keyword arguments of ``nnabla.function.<type>`` for one layer, from its proto.

    Every field of the layer's parameter message, by its own name; Shape fields as their
    ``dim`` list, other repeated fields as lists. Layers without parameters have none.
    """
    from google.protobuf.descriptor import FieldDescriptor

    name = parameter_field(proto.type)
    if name is None:
        return {}
    message = getattr(proto, name)
    arguments: Dict[str, object] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.name == "Shape":
            value = list(value.dim)
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            value = list(value)
        arguments[field.name] = value
    return arguments


def function_from_parameters(ctx, proto):
    """What nnabla's private factory does, from ``nnabla.function.<type>`` and the proto."""
    import nnabla.function

    create = getattr(nnabla.function, proto.type, None)
    if not callable(create):
        raise ValueError(f'Function "{proto.type}" is not supported.')
    return create(ctx, **function_arguments(proto))


# --------------------------------------------------------------------------------------
# Which layers nnabla can differentiate twice


def backward_function_registry() -> Optional[Mapping[str, object]]:
    """nnabla's backward functions by layer type (``nnabla.backward_functions.registry``).

    Module-level and undocumented, but present in 1.32-1.39; None when it is gone, in which
    case callers name no suspect layer (the trial second-order pass still decides).
    """
    try:
        from nnabla.backward_functions import registry
    except ImportError:
        return None
    return registry if isinstance(registry, Mapping) else None


# --------------------------------------------------------------------------------------
# The .nnp's solver


def solver_parameters(solver_proto, field_name: str):
    """The ``<solver>_param`` message of an ``nnabla_pb2.Solver``.

    Raises :class:`InfluenceError` naming the release that introduced the solver when this
    nnabla's protobuf has no such field (``lion_param`` before 1.35: a binary ``.nnp`` keeps
    it as an unknown field and its type says ``Lion``).
    """
    if field_name in solver_proto.DESCRIPTOR.fields_by_name:
        return getattr(solver_proto, field_name)
    raise InfluenceError(solver_unavailable_message(solver_proto.type))


def solver_unavailable_message(solver_type: str) -> str:
    since = SOLVER_SINCE.get(solver_type)
    needs = f"; it needs nnabla {_dotted(since)} or newer" if since else ""
    return f"solver '{solver_type}' is not available in {nnabla_version_text()}{needs}"


def unknown_field_hint(error: BaseException) -> str:
    """For a protobuf parse error on a field this nnabla does not know: why, else ''."""
    found = re.search(r'has no field named "(\w+)"', str(error))
    if found is None:
        return ""
    field = found.group(1)
    solver = next((s for s in SOLVER_SINCE if field == f"{s.lower()}_param"), None)
    if solver is not None:
        return f"; solver '{solver}' needs nnabla {_dotted(SOLVER_SINCE[solver])} or newer"
    return f"; the file may come from a newer nnabla than {nnabla_version_text()}"


# --------------------------------------------------------------------------------------
# Pillow


def sixteen_bit_png(image):
    """A 16-bit grayscale PNG as an ``I;16`` image, whatever the Pillow; else None.

    Pillow 10.3 and later open such files in mode ``I;16``; earlier ones (8.x to 10.2) in
    mode ``I``, 32-bit, which would be refused as an unsupported mode. A PNG holds at most
    16 bits per sample, so its ``I`` pixels fit ``uint16`` exactly.
    """
    if image.format != "PNG" or image.mode != "I":
        return None
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.asarray(image).astype(np.uint16))


def bilinear_resample():
    """Pillow's bilinear filter: ``Image.Resampling.BILINEAR`` since 9.1, ``Image.BILINEAR`` before.

    nnabla up to 1.35 accepts any Pillow, so an NNC Python with an older nnabla may have one.
    """
    from PIL import Image

    resampling = getattr(Image, "Resampling", None)
    return resampling.BILINEAR if resampling is not None else Image.BILINEAR
