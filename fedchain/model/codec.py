"""Model weights ⇄ bytes: deterministic safetensors with fedchain's header, validated on decode.

Weights are an insertion-ordered mapping name → numpy array in the model's own order (a torch
`state_dict` maps onto it, BatchNorm buffers and integer counters included).

The bytes are a standard safetensors file (any safetensors reader loads them) written by
fedchain itself rather than by the `safetensors` package, because that package's writer is
not deterministic: it emits `__metadata__` keys in hash-map order, which changes from process
to process, and a model's CID must not. fedchain writes metadata keys sorted, tensors in the
model's order (header and data), and records that order in the metadata as `order`.

Decoding never unpickles; it checks the size limit, the header (JSON, offsets within bounds,
no gaps or overlaps), the dtype allow-list, the reference (names, shapes, dtypes) and that
float values are finite, before any array is handed out. Every failure is `InvalidModel`.

Allowed dtypes: float16, float32, float64, int8, int16, int32, int64, uint8, bool. bfloat16
is refused: numpy has no bfloat16, so a bf16 model must be cast (e.g. `.float()`) first.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidModel
from ..jsonsafe import check_depth, loads

Weights = dict[str, np.ndarray]

FORMAT = "fedchain-weights"
VERSION = "1"
DEFAULT_MAX_BYTES = 2 * 1024**3
_MAX_HEADER = 100 * 1024**2
#: The most dimensions a tensor may have (numpy 1.x allows 32, 2.x 64).
MAX_DIMS = 32
_RESERVED = ("format", "version", "order")

#: safetensors dtype code ⇄ numpy dtype, for the dtypes fedchain accepts.
_DTYPES: dict[str, np.dtype[Any]] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dt.name: code for code, dt in _DTYPES.items()}
ALLOWED_DTYPES = tuple(dt.name for dt in _DTYPES.values())


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype (numpy name, e.g. "float32") of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The names, shapes and dtypes of a model's tensors, in order, without the values."""

    tensors: tuple[TensorSpec, ...]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def nbytes(self) -> int:
        """The model's size: the bytes of its tensors' values."""
        return sum(int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
                   for t in self.tensors)

    def check(self, got: ModelSpec) -> None:
        """Raise InvalidModel saying how `got` differs from this spec."""
        expected = {t.name: t for t in self.tensors}
        actual = {t.name: t for t in got.tensors}
        missing = [n for n in expected if n not in actual]
        extra = [n for n in actual if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing layers {missing}")
            if extra:
                parts.append(f"unexpected layers {extra}")
            raise InvalidModel("model does not match the reference: " + "; ".join(parts))
        for name, want in expected.items():
            have = actual[name]
            if have.shape != want.shape:
                raise InvalidModel(
                    f"layer {name}: shape {_shape_text(want.shape)} expected, "
                    f"got {_shape_text(have.shape)}"
                )
            if have.dtype != want.dtype:
                raise InvalidModel(f"layer {name}: dtype {want.dtype} expected, got {have.dtype}")


def spec(weights: Mapping[str, np.ndarray]) -> ModelSpec:
    """The ModelSpec of some weights."""
    return ModelSpec(
        tuple(TensorSpec(n, tuple(a.shape), np.asarray(a).dtype.name) for n, a in weights.items())
    )


_FINITE_BLOCK = 1 << 20


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    # In blocks: a whole-layer isfinite() would allocate a temporary as large as the layer.
    flat = array.reshape(-1)
    for start in range(0, flat.size, _FINITE_BLOCK):
        block = flat[start : start + _FINITE_BLOCK]
        if not np.isfinite(block).all():
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise InvalidModel(f"layer {name}: {bad} non-finite value(s) (NaN or ±inf)")


def _le_contiguous(name: str, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise InvalidModel(f"tensor name {name!r} is not allowed")
    if not isinstance(value, np.ndarray):
        raise InvalidModel(f"layer {name}: a numpy array expected, got {type(value).__name__}")
    code = _CODES.get(value.dtype.name)
    if code is None:
        raise InvalidModel(
            f"layer {name}: dtype {value.dtype} is not allowed "
            f"(allowed: {', '.join(ALLOWED_DTYPES)})"
        )
    _check_finite(name, value)
    return value.astype(_DTYPES[code], order="C", copy=False)


def encode(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes of `weights` in their order; the same weights give the same bytes."""
    arrays = {name: _le_contiguous(name, a) for name, a in weights.items()}
    meta = {"format": FORMAT, "version": VERSION, "order": json.dumps(list(arrays))}
    for key, value in (metadata or {}).items():
        if key in _RESERVED or not isinstance(key, str) or not isinstance(value, str):
            raise InvalidModel(
                f"metadata {key!r}: str → str expected, and {_RESERVED} are fedchain's"
            )
        meta[key] = value
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    offset = 0
    for name, a in arrays.items():
        header[name] = {
            "dtype": _CODES[a.dtype.name],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    parts: list[bytes | memoryview] = [struct.pack("<Q", len(text)), text]
    parts += [a.reshape(-1).view(np.uint8).data for a in arrays.values() if a.nbytes]
    return b"".join(parts)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidModel(f"header names {key!r} twice")
        out[key] = value
    return out


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _buffer(data: object) -> bytes | bytearray | memoryview:
    """`data` as a flat byte buffer, or InvalidModel (None, an int, a str... are no model)."""
    if isinstance(data, bytes | bytearray):
        return data
    if isinstance(data, memoryview):
        try:
            return data.cast("B") if data.format != "B" or data.ndim != 1 else data
        except (TypeError, ValueError):
            raise InvalidModel("model bytes must be a contiguous byte buffer") from None
    raise InvalidModel(f"model bytes expected, got {type(data).__name__}")


def _parse_header(
    data: bytes | bytearray | memoryview, max_bytes: int
) -> tuple[dict[str, str], list[tuple[TensorSpec, int, int]], int]:
    """Validated (metadata, [(spec, begin, end)] in model order, data start) of a model file."""
    data = _buffer(data)
    if len(data) > max_bytes:
        raise InvalidModel(f"model is {len(data)} bytes, more than the limit of {max_bytes}")
    if len(data) < 8:
        raise InvalidModel(f"model is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > _MAX_HEADER or n > len(data) - 8:
        raise InvalidModel(f"header length {n} exceeds the {len(data)}-byte model or the limit")
    try:
        text = bytes(data[8 : 8 + n])
        check_depth(text)  # deep nesting would crash json's C scanner (see fedchain.jsonsafe)
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidModel(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidModel("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidModel("header has no __metadata__ mapping of strings: not fedchain weights")
    if meta.get("format") != FORMAT:
        raise InvalidModel(f"metadata format is {meta.get('format')!r}, not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise InvalidModel(f"format version {meta.get('version')!r} is not supported ({VERSION!r})")
    try:
        order = loads(meta.get("order", ""), max_depth=1)
    except (ValueError, RecursionError):
        order = None
    if (
        not isinstance(order, list)
        or not all(isinstance(x, str) for x in order)
        or sorted(order) != sorted(header)
    ):
        raise InvalidModel("metadata 'order' does not list exactly the tensors in the header")
    body = len(data) - 8 - n
    entries = []
    for name in order:
        info = header[name]
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise InvalidModel(f"layer {name}: entry needs exactly dtype, shape, data_offsets")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise InvalidModel(
                f"layer {name}: dtype {info['dtype']!r} is not allowed "
                f"(allowed: {', '.join(_DTYPES)})"
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise InvalidModel(f"layer {name}: shape {str(shape)[:100]} is not a list of sizes")
        if len(shape) > MAX_DIMS:
            raise InvalidModel(f"layer {name}: {len(shape)} dimensions, more than {MAX_DIMS}")
        # Even an empty tensor may not declare dimensions no model of max_bytes could fill.
        if math.prod(max(d, 1) for d in shape) * dtype.itemsize > max_bytes:
            raise InvalidModel(
                f"layer {name}: shape {str(shape)[:100]} is larger than the {max_bytes}-byte limit"
            )
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_uint, offsets)):
            raise InvalidModel(f"layer {name}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if not begin <= end <= body:
            raise InvalidModel(f"layer {name}: data_offsets {offsets} outside the {body}-byte data")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise InvalidModel(
                f"layer {name}: {end - begin} bytes do not hold "
                f"{dtype.name} {_shape_text(tuple(shape))}"
            )
        entries.append((TensorSpec(name, tuple(shape), dtype.name), begin, end))
    position = 0
    for t, begin, end in sorted(entries, key=lambda e: (e[1], e[2])):
        if begin != position:
            what = "overlaps another" if begin < position else "leaves a gap before it"
            raise InvalidModel(f"layer {t.name}: data {what} (offset {begin}, expected {position})")
        position = end
    if position != body:
        raise InvalidModel(f"{body - position} bytes after the last tensor")
    return meta, entries, 8 + n


def read_spec(
    data: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_BYTES
) -> ModelSpec:
    """The validated ModelSpec of model bytes, without reading the arrays."""
    _, entries, _ = _parse_header(data, max_bytes)
    return ModelSpec(tuple(t for t, _, _ in entries))


def read_metadata(
    data: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, str]:
    """The validated metadata header of model bytes (fedchain's keys and the caller's)."""
    return _parse_header(data, max_bytes)[0]


def decode(
    data: bytes | bytearray | memoryview,
    reference: Mapping[str, np.ndarray] | ModelSpec | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    copy: bool = True,
) -> Weights:
    """Validated weights from model bytes, in the model's order; InvalidModel says what is wrong.

    With `copy=False` the arrays are read-only views into `data` where its layout allows
    (little-endian, aligned), which saves a copy of the model when it is only read, as the
    aggregator does with updates.
    """
    data = _buffer(data)
    _, entries, start = _parse_header(data, max_bytes)
    if reference is not None:
        ref = reference if isinstance(reference, ModelSpec) else spec(reference)
        ref.check(ModelSpec(tuple(t for t, _, _ in entries)))
    weights: Weights = {}
    for t, begin, end in entries:
        dtype = np.dtype(t.dtype).newbyteorder("<")
        if end == begin:
            weights[t.name] = np.zeros(t.shape, dtype=dtype.newbyteorder("="))
            continue
        flat = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=start + begin)
        if dtype == np.bool_ and flat.max() > 1:
            raise InvalidModel(f"layer {t.name}: bool values other than 0 and 1")
        view = flat.view(dtype).reshape(t.shape)
        aligned = view.dtype.isnative and view.ctypes.data % view.dtype.alignment == 0
        # By default copy out of the buffer: writable, aligned arrays that do not pin `data`.
        array = view if (not copy and aligned) else view.astype(dtype.newbyteorder("="),
                                                                copy=True)
        _check_finite(t.name, array)
        weights[t.name] = array
    return weights
