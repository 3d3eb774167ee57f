"""An implementation of SPEC.md from the document alone: Python's standard library and numpy.

It imports nothing from fedchain (nor the safetensors package): model files are parsed and
written by hand (SPEC §5), CIDs computed with hashlib and its own dag-pb and base32 (§4), the
plan's canonical bytes written by its own JSON writer (§6.2), and every strategy's arithmetic
follows §8 operation by operation. `run_round` is the round rule of §7.

numpy is used for elementwise IEEE arithmetic only: every operation below names the format it
runs in, both operands are converted to that format first, so numpy's promotion rules never
decide anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

F16, F32, F64 = np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8")

# --------------------------------------------------------------------------- errors


class Invalid(Exception):
    """A model file that §5.3 refuses."""


class TooLarge(Exception):
    """A model file larger than the plan's max_model_bytes."""


class StrategyFailed(Exception):
    """The strategy fails (§8): the round is carried over."""


class Malformed(Exception):
    """A plan or strategy description §6 refuses."""


# --------------------------------------------------------------------------- §4 CIDs

CHUNK = 262_144
MAX_LINKS = 174
RAW, DAG_PB = 0x55, 0x70
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise ValueError("bad varint")


def cid_for(codec: int, block: bytes) -> bytes:
    """The binary CIDv1 (sha2-256) of a block."""
    return varint(1) + varint(codec) + b"\x12\x20" + hashlib.sha256(block).digest()


def base32(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding."""
    bits = int.from_bytes(data, "big") if data else 0
    nbits = 8 * len(data)
    pad = (-nbits) % 5
    bits <<= pad
    count = (nbits + pad) // 5
    return "".join(_B32[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def unbase32(text: str) -> bytes:
    bits = 0
    for c in text:
        bits = (bits << 5) | _B32.index(c)
    nbits = 5 * len(text)
    extra = nbits % 8
    return (bits >> extra).to_bytes((nbits - extra) // 8, "big")


def cid_text(cid: bytes) -> str:
    return "b" + base32(cid)


def cid_parse(text: str) -> bytes:
    if not text.startswith("b"):
        raise ValueError(f"{text!r}: only base32 CIDv1 text is read here")
    return unbase32(text[1:])


def is_canonical(cid: bytes) -> bool:
    """CIDv1, sha2-256, codec raw or dag-pb (§4.1)."""
    try:
        version, pos = _read_varint(cid, 0)
        codec, pos = _read_varint(cid, pos)
        code, pos = _read_varint(cid, pos)
        length, pos = _read_varint(cid, pos)
    except ValueError:
        return False
    return (version == 1 and codec in (RAW, DAG_PB) and code == 0x12 and length == 32
            and len(cid) == pos + 32)


def multihash(cid: bytes) -> bytes:
    """The multihash of a binary CID (a CIDv0 is its multihash); other bytes: themselves."""
    if len(cid) == 34 and cid[:2] == b"\x12\x20":
        return cid
    try:
        _, pos = _read_varint(cid, 0)
        _, pos = _read_varint(cid, pos)
    except ValueError:
        return cid
    return cid[pos:]


def _parent(children: list[tuple[bytes, int, int]]) -> tuple[bytes, int, int]:
    """(cid, tsize, size) of the dag-pb UnixFS file node over (cid, tsize, size) children."""
    block = bytearray()
    for cid, tsize, _ in children:
        link = b"\x0a" + varint(len(cid)) + cid + b"\x12\x00" + b"\x18" + varint(tsize)
        block += b"\x12" + varint(len(link)) + link
    total = sum(size for _, _, size in children)
    data = b"\x08\x02" + b"\x18" + varint(total)
    for _, _, size in children:
        data += b"\x20" + varint(size)
    block += b"\x0a" + varint(len(data)) + data
    return cid_for(DAG_PB, bytes(block)), len(block) + sum(t for _, t, _ in children), total


def cid_of(data: bytes) -> str:
    """The CID text `ipfs add --cid-version=1` gives to `data` (§4.2)."""
    view = memoryview(data)
    chunks = [view[i:i + CHUNK] for i in range(0, len(view), CHUNK)] or [view]
    level = [(cid_for(RAW, c), len(c), len(c)) for c in chunks]
    while len(level) > 1:
        level = [_parent(level[i:i + MAX_LINKS]) for i in range(0, len(level), MAX_LINKS)]
    return cid_text(level[0][0])


# --------------------------------------------------------------------------- §5 model files

#: code -> (numpy dtype, floating)
DTYPES: dict[str, np.dtype[Any]] = {
    "F16": F16, "F32": F32, "F64": F64,
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
CODE_OF = {dt.name: code for code, dt in DTYPES.items()}
MAX_HEADER = 104_857_600
MAX_DIMS = 32

Weights = dict[str, np.ndarray]


def floating(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t"}


def json_string(text: str, ascii_only: bool) -> str:
    """A JSON string with raw escaping, or ASCII escaping when `ascii_only` (§5.2)."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        elif ascii_only and not 0x20 <= o <= 0x7E:
            if o > 0xFFFF:
                v = o - 0x10000
                out.append(f"\\u{0xD800 + (v >> 10):04x}\\u{0xDC00 + (v & 0x3FF):04x}")
            else:
                out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def encode(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The canonical model file of `weights` (§5.2)."""
    names = list(weights)
    order = "[" + ", ".join(json_string(n, True) for n in names) + "]"
    meta = {"format": "fedchain-weights", "order": order, "version": "1", **(metadata or {})}
    parts = ["{", json_string("__metadata__", False), ":{"]
    parts.append(",".join(json_string(k, False) + ":" + json_string(meta[k], False)
                          for k in sorted(meta)))
    parts.append("}")
    data = bytearray()
    for name in names:
        a = weights[name]
        code = CODE_OF[a.dtype.name]
        raw = np.ascontiguousarray(a, dtype=DTYPES[code]).tobytes()
        shape = ",".join(str(int(d)) for d in a.shape)
        parts.append("," + json_string(name, False) + ':{"dtype":"' + code + '","shape":['
                     + shape + '],"data_offsets":[' + f"{len(data)},{len(data) + len(raw)}]}}")
        data += raw
    parts.append("}")
    header = "".join(parts).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(data)


def _depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON text (brackets in strings skipped)."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
        i += 1
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Invalid(f"header key {k!r} twice")
        out[k] = v
    return out


def _is_size(x: Any) -> bool:
    return type(x) is int and x >= 0


def decode(data: bytes, reference: Mapping[str, np.ndarray] | None = None,
           limit: int = 2 * 1024**3) -> Weights:
    """Validated weights of a model file in its `order` (§5.3); Invalid / TooLarge."""
    n = len(data)
    if n > limit:
        raise TooLarge(f"{n} bytes > {limit}")
    if n < 8:
        raise Invalid("shorter than 8 bytes")
    (h,) = struct.unpack_from("<Q", data, 0)
    if h > MAX_HEADER or h > n - 8:
        raise Invalid("header length")
    try:
        text = data[8:8 + h].decode("utf-8")
        if _depth(text) > 100:
            raise Invalid("nested too deep")
        header = json.loads(text, object_pairs_hook=_unique)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"header: {exc}") from None
    if not isinstance(header, dict):
        raise Invalid("header not an object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise Invalid("no __metadata__ of strings")
    if meta.get("format") != "fedchain-weights" or meta.get("version") != "1":
        raise Invalid("not fedchain-weights 1")
    try:
        order_text = meta.get("order", "")
        order = json.loads(order_text) if _depth(order_text) <= 1 else None
    except ValueError:
        order = None
    if (not isinstance(order, list) or not all(isinstance(x, str) for x in order)
            or sorted(order) != sorted(header)):
        raise Invalid("order")
    body = n - 8 - h
    entries = []
    for name in order:
        info = header[name]
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise Invalid(f"{name}: entry keys")
        dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise Invalid(f"{name}: dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise Invalid(f"{name}: shape")
        if len(shape) > MAX_DIMS or math.prod(max(d, 1) for d in shape) * dtype.itemsize > limit:
            raise Invalid(f"{name}: shape too large")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_size, offsets)):
            raise Invalid(f"{name}: data_offsets")
        b, e = offsets
        if not b <= e <= body or e - b != math.prod(shape) * dtype.itemsize:
            raise Invalid(f"{name}: data_offsets {offsets}")
        entries.append((name, dtype, tuple(shape), b, e))
    position = 0
    for _, _, _, b, e in sorted(entries, key=lambda t: (t[3], t[4])):
        if b != position:
            raise Invalid("gap or overlap")
        position = e
    if position != body:
        raise Invalid("bytes after the last tensor")
    if reference is not None:
        if {t[0] for t in entries} != set(reference):
            raise Invalid("layer names differ from the reference")
        for name, dtype, shape, _, _ in entries:
            ref = reference[name]
            if shape != tuple(ref.shape) or dtype != ref.dtype.newbyteorder("<"):
                raise Invalid(f"{name}: shape/dtype differ from the reference")
    weights: Weights = {}
    start = 8 + h
    for name, dtype, shape, b, e in entries:
        raw = data[start + b:start + e]
        if dtype.kind == "b" and any(x > 1 for x in raw):
            raise Invalid(f"{name}: bool byte other than 0 or 1")
        a = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        if dtype.kind == "f" and not np.isfinite(a).all():
            raise Invalid(f"{name}: non-finite values")
        weights[name] = a
    return weights


# --------------------------------------------------------------------------- §6 plan


def _reads_back(text: str, x: float) -> bool:
    try:
        return float(text) == x  # correctly rounded decimal -> binary64 (overflow: inf)
    except OverflowError:
        return False


def shortest_float(x: float) -> str:
    """The shortest round-trip decimal of a finite binary64, formatted as §6.2 says."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    x = abs(x)
    for precision in range(1, 18):
        # The nearest decimal of `precision` digits, and its neighbours (next to a power of
        # two the interval that reads back as x is lopsided: a neighbour may fit, not it).
        mantissa, exponent = f"{x:.{precision - 1}e}".split("e")
        nearest, q = int(mantissa.replace(".", "")), int(exponent) - (precision - 1)
        fits = [d for d in (nearest, nearest - 1, nearest + 1)
                if d > 0 and _reads_back(f"{d}e{q}", x)]
        if fits:
            d = min(fits, key=lambda d: abs(Fraction(d) * Fraction(10) ** q - Fraction(x)))
            break
    text = str(d)
    e = len(text) - 1 + q  # the value is text[0].text[1:] x 10^e
    digits = text.rstrip("0") or "0"
    if -4 <= e < 16:
        if e < 0:
            return f"{sign}0.{'0' * (-e - 1)}{digits}"
        whole, frac = digits[:e + 1].ljust(e + 1, "0"), digits[e + 1:]
        return f"{sign}{whole}.{frac or '0'}"
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'-' if e < 0 else '+'}{abs(e):02d}"


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII escaping, shortest floats (§6.2)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return shortest_float(value)
    if isinstance(value, str):
        return json_string(value, True)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json_string(k, True) + ":" + canonical_json(value[k])
                              for k in sorted(value)) + "}"
    raise TypeError(type(value))


PLAN_DEFAULTS: dict[str, Any] = {
    "min_updates": 1, "train": {}, "evaluate": {},
    "codec": {"format": "fedchain-weights", "version": "1"},
    "max_model_bytes": 2147483648, "format": "fedchain-plan/1", "software": "fedchain 0.1.0",
}
PLAN_OPTIONAL: dict[str, Any] = {
    "update_window": 0, "reveal_window": 0, "vote_window": 0, "fraction": 1.0,
    "buffer_size": 0, "max_staleness": 0, "verify": "full", "verify_max_bytes": 268435456,
    "verify_rate": 0.25, "exclude_duplicates": False,
}


def plan_bytes(fields: Mapping[str, Any]) -> bytes:
    """The canonical bytes of the plan with these fields set (the others at defaults)."""
    plan = {**PLAN_DEFAULTS, **PLAN_OPTIONAL, **fields}
    for name, default in PLAN_OPTIONAL.items():
        if plan[name] == default:
            del plan[name]
    return canonical_json(plan).encode("ascii")


_STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "FedAvg": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
               "examples_cap": None, "align": None},
    "FedMedian": {},
    "FedTrimmedAvg": {"beta": 0.2},
    "Krum": {"f": 1, "m": 1, "scaling": "num_examples", "accumulator": "float32",
             "examples_cap": None},
    "FedAvgM": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
                "examples_cap": None, "align": None, "server_lr": 1.0, "momentum": 0.9},
    "FedAdam": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
                "examples_cap": None, "align": None, "eta": 0.1, "beta1": 0.9, "beta2": 0.99,
                "tau": 1e-9},
    "FedAdagrad": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
                   "examples_cap": None, "align": None, "eta": 0.1, "beta1": 0.0, "tau": 1e-9},
    "FedYogi": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
                "examples_cap": None, "align": None, "eta": 0.01, "beta1": 0.9, "beta2": 0.99,
                "tau": 1e-3},
    "FedProx": {"scaling": "num_examples", "accumulator": "float32", "clip": None,
                "examples_cap": None, "align": None, "proximal_mu": 0.01},
}


def _number(name: str, v: Any, low: float, high: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if type(v) is bool or not isinstance(v, kinds) or not math.isfinite(v) or not low <= v <= high:
        raise Malformed(f"{name} = {v!r}")


def strategy_params(strategy: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, all parameters) of a plan's strategy, checked (§6.3)."""
    name = strategy.get("name")
    if name not in _STRATEGY_PARAMS:
        raise Malformed(f"unknown strategy {name!r}")
    given = dict(strategy.get("params", {}))
    unknown = set(given) - set(_STRATEGY_PARAMS[name])
    if unknown:
        raise Malformed(f"unknown parameters {sorted(unknown)}")
    p = {**_STRATEGY_PARAMS[name], **given}
    if "scaling" in p:
        if p["scaling"] not in ("num_examples", "uniform"):
            raise Malformed("scaling")
        if p["accumulator"] not in ("float32", "float64"):
            raise Malformed("accumulator")
        for bound in ("clip", "examples_cap"):
            if p.get(bound) is not None:
                _number(bound, p[bound], 0.0, 1e6)
                if p[bound] == 0:
                    raise Malformed(bound)
        if p.get("examples_cap") is not None and p["scaling"] != "num_examples":
            raise Malformed("examples_cap needs scaling num_examples")
        if p.get("align") is not None and type(p["align"]) is not bool:
            raise Malformed("align must be true or false")
    if name == "FedTrimmedAvg":
        _number("beta", p["beta"], 0.0, 0.5)
        if p["beta"] == 0.5:
            raise Malformed("beta")
    if name == "Krum":
        _number("f", p["f"], 0, 2**31, integer=True)
        _number("m", p["m"], 1, 2**31, integer=True)
    if name == "FedAvgM":
        _number("server_lr", p["server_lr"], 0.0, 1e6)
        _number("momentum", p["momentum"], 0.0, 1.0)
    if name == "FedAdam":
        for k, hi in (("eta", 1e6), ("beta1", 1.0), ("beta2", 1.0), ("tau", 1e6)):
            _number(k, p[k], 0.0, hi)
        if p["beta1"] == 1.0 or p["beta2"] == 1.0:
            raise Malformed("beta1/beta2")
    if name in ("FedAdagrad", "FedYogi"):
        for k, hi in (("eta", 1e6), ("beta1", 1.0), ("tau", 1e6)):
            _number(k, p[k], 0.0, hi)
        if p["beta1"] == 1.0:
            raise Malformed("beta1")
    if name == "FedYogi":
        _number("beta2", p["beta2"], 0.0, 1.0)
        if p["beta2"] == 1.0:
            raise Malformed("beta2")
    if name == "FedProx":
        _number("proximal_mu", p["proximal_mu"], 0.0, 1e6)
    return name, p


STATEFUL = ("FedAvgM", "FedAdam", "FedAdagrad", "FedYogi")

# --------------------------------------------------------------------------- §8 arithmetic


@dataclass
class Update:
    learner: str
    weight: int  # §7.2, an integer >= 1
    weights: Weights


def _flat64(a: np.ndarray) -> np.ndarray:
    """F64(x) of every element, flat."""
    return np.ravel(a).astype(F64)


def cast_to(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """cast_D (§8.1) of computed floats into `like`'s dtype and shape."""
    with np.errstate(over="ignore", invalid="ignore"):
        if like.dtype.kind == "f":
            out = values.astype(like.dtype)
        elif like.dtype.kind == "b":
            out = np.rint(values) != 0
        else:
            rounded = np.rint(values)
            info = np.iinfo(like.dtype)
            # float(max) + 1 is the first value past the range, exactly, for every dtype
            if ((rounded < float(info.min)) | (rounded >= float(info.max) + 1.0)).any():
                raise StrategyFailed(f"an integer result outside {like.dtype}")
            out = rounded.astype(like.dtype)
    return out.reshape(like.shape)


def halving_sum(values: np.ndarray) -> float:
    v = np.array(values, dtype=F64)
    n = v.size
    while n > 1:
        h = (n + 1) // 2
        v[: n - h] = v[: n - h] + v[h:n]
        n = h
    return float(v[0]) if v.size else 0.0


def _pw(a: list[float]) -> float:
    n = len(a)
    if n < 8:
        s = 0.0
        for x in a:
            s += x
        return s
    if n <= 128:
        r = a[:8]
        i = 8
        while i < n - n % 8:
            r = [r[j] + a[i + j] for j in range(8)]
            i += 8
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            s += a[i]
            i += 1
        return s
    m = n // 2
    m -= m % 8
    return _pw(a[:m]) + _pw(a[m:])


def pairwise_sum(values: np.ndarray) -> float:
    """§8.2's pairwise sum (Python floats are binary64)."""
    return 0.0 + _pw([float(x) for x in np.ravel(values)])


BLOCK = 65_536


def _blocks(size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, size, BLOCK):
        yield start, min(start + BLOCK, size)


def lower_median(values: Sequence[Any]) -> Any:
    return sorted(values)[(len(values) - 1) // 2]


def sum_format(dtype: np.dtype[Any], accumulator: str) -> np.dtype[Any]:
    if dtype.kind != "f":
        return F64
    acc = F32 if accumulator == "float32" else F64
    return dtype if dtype.itemsize >= acc.itemsize else acc


def weighted_mean(previous: Weights, updates: Sequence[Update], factors: Sequence[int],
                  accumulator: str) -> Weights:
    """§8.3: Σ T(x_k)·T(f_k) in T, then ⊘ T(N) and cast back."""
    total = sum(int(f) for f in factors)
    out: Weights = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in previous.items():
            t = sum_format(ref.dtype, accumulator)
            s = None
            for u, f in zip(updates, factors, strict=True):
                term = np.ravel(u.weights[name]).astype(t) * np.asarray(f, dtype=F64).astype(t)
                s = term if s is None else s + term
            assert s is not None
            if ref.dtype.kind == "f":
                mean = s / np.asarray(total, dtype=F64).astype(t)
            else:
                mean = s / np.float64(total)
            out[name] = cast_to(mean, ref)
    return out


def capped(weights: Sequence[int], cap_factor: float) -> list[int]:
    """§8.4."""
    m = lower_median([int(w) for w in weights])
    cap = max(1, math.floor(float(cap_factor) * float(m)))
    return [min(int(w), cap) for w in weights]


def update_norm(previous: Weights, weights: Weights) -> float:
    t = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in previous.items():
            if ref.dtype.kind != "f":
                continue
            x, p = _flat64(weights[name]), _flat64(ref)
            for a, b in _blocks(x.size):
                d = x[a:b] - p[a:b]
                t = t + halving_sum(d * d)
    return math.sqrt(t)


def clipped_mean(previous: Weights, updates: Sequence[Update], weights: Sequence[int],
                 clip: float) -> Weights:
    """§8.5."""
    norms = [update_norm(previous, u.weights) for u in updates]
    if any(math.isnan(v) for v in norms):
        raise StrategyFailed("a NaN norm")
    bound = float(clip) * float(lower_median(norms))
    factors = [1.0 if v <= bound else bound / v for v in norms]
    total = float(sum(int(w) for w in weights))
    out: Weights = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in previous.items():
            p = _flat64(ref)
            if ref.dtype.kind == "f":
                a = np.zeros(p.size, F64)
                for u, w, phi in zip(updates, weights, factors, strict=True):
                    scale = float(w) * phi
                    if scale != 0.0:
                        a = a + (_flat64(u.weights[name]) - p) * scale
                out[name] = cast_to((a / total) + p, ref)
            else:
                s = None
                for u, w in zip(updates, weights, strict=True):
                    term = _flat64(u.weights[name]) * float(w)
                    s = term if s is None else s + term
                assert s is not None
                out[name] = cast_to(s / total, ref)
    return out


def _delta(previous: Weights, weights: Weights, name: str) -> np.ndarray:
    return _flat64(weights[name]) - _flat64(previous[name])


def aligned_mean(previous: Weights, updates: Sequence[Update], weights: Sequence[int],
                 clip: float | None, cap_factor: float | None) -> Weights:
    """§8.15 (`weights` before §8.4's cap, which step 1 takes from the moved updates)."""
    norms = [update_norm(previous, u.weights) for u in updates]
    if any(math.isnan(v) for v in norms):
        raise StrategyFailed("a NaN norm")
    usable = [0.0 < v < math.inf for v in norms]
    counted = [k for k, ok in enumerate(usable) if ok] or list(range(len(updates)))
    if cap_factor is not None:
        m = lower_median([int(weights[k]) for k in counted])
        cap = max(1, math.floor(float(cap_factor) * float(m)))
        weights = [min(int(w), cap) for w in weights]
    if clip is None:
        factors = [1.0] * len(updates)
    else:
        bound = float(clip) * float(lower_median([norms[k] for k in counted]))
        factors = [1.0 if v <= bound else bound / v for v in norms]
    floating = [name for name, ref in previous.items() if ref.dtype.kind == "f"]
    with np.errstate(over="ignore", invalid="ignore"):
        r = {name: np.zeros(previous[name].size, F64) for name in floating}
        for u, v, ok in zip(updates, norms, usable, strict=True):
            if ok:
                for name in floating:
                    r[name] = r[name] + _delta(previous, u.weights, name) / v
        t = 0.0
        for name in floating:
            for a, b in _blocks(r[name].size):
                t = t + halving_sum(r[name][a:b] * r[name][a:b])
        rho = math.sqrt(t)
        gammas = []
        for u, v, ok in zip(updates, norms, usable, strict=True):
            if not ok or rho == 0.0 or rho == math.inf:
                gammas.append(0.0)
                continue
            t = 0.0
            for name in floating:
                d = _delta(previous, u.weights, name)
                for a, b in _blocks(d.size):
                    t = t + halving_sum(d[a:b] * r[name][a:b])
            q = 0.0 if v * rho == math.inf else t / (v * rho)
            gammas.append(1.0 if q >= 1.0 else (q if q > 0.0 else 0.0))
        divisor = 0.0
        for w, g in zip(weights, gammas, strict=True):
            divisor = divisor + float(w) * g
        total = float(sum(int(w) for w in weights))
        out: Weights = {}
        for name, ref in previous.items():
            p = _flat64(ref)
            if ref.dtype.kind == "f":
                if divisor == 0.0:
                    out[name] = ref.copy()
                    continue
                acc = np.zeros(p.size, F64)
                for u, w, phi, g in zip(updates, weights, factors, gammas, strict=True):
                    sigma = float(w) * (phi * g)
                    if sigma != 0.0:
                        acc = acc + (_flat64(u.weights[name]) - p) * sigma
                out[name] = cast_to((acc / divisor) + p, ref)
            else:
                s = None
                for u, w in zip(updates, weights, strict=True):
                    term = _flat64(u.weights[name]) * float(w)
                    s = term if s is None else s + term
                assert s is not None
                out[name] = cast_to(s / total, ref)
    return out


def fedavg_mean(previous: Weights, updates: Sequence[Update], p: Mapping[str, Any]) -> Weights:
    """FedAvg's mean with its optional bounds (§8.3-8.5, §8.15)."""
    weights = [u.weight for u in updates]
    if p.get("align"):
        if p["scaling"] == "uniform":
            return aligned_mean(previous, updates, [1] * len(updates), p.get("clip"), None)
        return aligned_mean(previous, updates, weights, p.get("clip"), p.get("examples_cap"))
    if p.get("examples_cap") is not None and p["scaling"] == "num_examples":
        weights = capped(weights, p["examples_cap"])
    if p["scaling"] == "uniform":
        weights = [1] * len(updates)
    if p.get("clip") is not None:
        return clipped_mean(previous, updates, weights, p["clip"])
    return weighted_mean(previous, updates, weights, p["accumulator"])


def _total_order_sort(rows: np.ndarray) -> np.ndarray:
    """Rows of F64 sorted ascending by IEEE totalOrder (−0 before +0), per §8.6."""
    bits = rows.view(np.int64)
    keys = np.where(bits < 0, bits ^ np.int64(0x7FFFFFFFFFFFFFFF), bits)
    return np.take_along_axis(rows, np.argsort(keys, axis=1, kind="stable"), axis=1)


def coordinatewise(previous: Weights, updates: Sequence[Update], rule: Any) -> Weights:
    out: Weights = {}
    for name, ref in previous.items():
        rows = np.stack([_flat64(u.weights[name]) for u in updates], axis=1)
        rows = _total_order_sort(rows.reshape(ref.size, len(updates)))
        out[name] = cast_to(np.array([rule(list(r)) for r in rows], dtype=F64), ref)
    return out


def median_rule(values: list[float]) -> float:
    n = len(values)
    if n % 2:
        return values[(n - 1) // 2]
    return (values[n // 2 - 1] + values[n // 2]) / 2.0


def trimmed_rule(beta: float) -> Any:
    def rule(values: list[float]) -> float:
        n = len(values)
        cut = math.floor(float(beta) * float(n))
        kept = values[cut:n - cut]
        s = kept[0]
        for v in kept[1:]:
            s = s + v
        return s / float(len(kept))
    return rule


def krum(previous: Weights, updates: Sequence[Update], p: Mapping[str, Any]) -> Weights:
    """§8.7."""
    n, f, m = len(updates), p["f"], p["m"]
    if n < 2 * f + 3 or not 1 <= m <= n - f:
        raise StrategyFailed(f"Krum f={f} m={m} with {n} updates")
    d = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            t = 0.0
            for name in previous:
                a, b = _flat64(updates[i].weights[name]), _flat64(updates[j].weights[name])
                for lo, hi in _blocks(a.size):
                    q = a[lo:hi] - b[lo:hi]
                    t = t + pairwise_sum(q * q)
            d[i][j] = d[j][i] = t
    scores = []
    for i in range(n):
        others = sorted(d[i][j] for j in range(n) if j != i)[: n - f - 2]
        s = 0.0
        for v in others:
            s = s + v
        scores.append(s)
    kept = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    if m == 1:
        return {name: updates[kept[0]].weights[name].copy() for name in previous}
    weights = [u.weight for u in updates]
    if p.get("examples_cap") is not None and p["scaling"] == "num_examples":
        weights = capped(weights, p["examples_cap"])
    factors = [weights[i] if p["scaling"] == "num_examples" else 1 for i in kept]
    return weighted_mean(previous, [updates[i] for i in kept], factors, p["accumulator"])


def _state_tensor(state: Weights | None, key: str, like: np.ndarray) -> np.ndarray | None:
    if state is None or key not in state:
        return None
    if state[key].shape != like.shape or state[key].dtype != F64:
        raise StrategyFailed(f"state {key} is {state[key].dtype} {state[key].shape}")
    return np.ravel(state[key]).astype(F64)


def fedavgm(previous: Weights, mean: Weights, state: Weights | None,
            p: Mapping[str, Any]) -> tuple[Weights, Weights]:
    """§8.8."""
    lr, mu = float(p["server_lr"]), float(p["momentum"])
    new, new_state = {}, {}
    for name, ref in previous.items():
        if ref.dtype.kind != "f":
            new[name] = mean[name]
            continue
        prev = _flat64(ref)
        delta = _flat64(mean[name]) - prev
        old = _state_tensor(state, "momentum/" + name, ref)
        v = delta if old is None else delta + mu * old
        new_state["momentum/" + name] = v.reshape(ref.shape)
        new[name] = cast_to((v * lr) + prev, ref)
    return new, new_state


def fedadam(previous: Weights, mean: Weights, state: Weights | None,
            p: Mapping[str, Any]) -> tuple[Weights, Weights]:
    """§8.9."""
    eta, b1, b2, tau = (float(p[k]) for k in ("eta", "beta1", "beta2", "tau"))
    step = None if state is None else state.get("step")
    if step is not None and (step.dtype != np.int64 or step.shape != () or
                             not 0 <= int(step) < 2**31):
        raise StrategyFailed(f"state step is {step.dtype} {step.shape}")
    t = 1 + (0 if step is None else int(step))
    p1 = p2 = 1.0
    for _ in range(t):
        p1 *= b1
        p2 *= b2
    eta_t = (eta * math.sqrt(1.0 - p2)) / (1.0 - p1)
    new: Weights = {}
    new_state: Weights = {"step": np.array(t, dtype=np.int64)}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in previous.items():
            if ref.dtype.kind != "f":
                new[name] = mean[name]
                continue
            prev = _flat64(ref)
            delta = _flat64(mean[name]) - prev
            m_old = _state_tensor(state, "m/" + name, ref)
            v_old = _state_tensor(state, "v/" + name, ref)
            m = (1.0 - b1) * delta + (0.0 if m_old is None else b1 * m_old)
            v = (1.0 - b2) * (delta * delta) + (0.0 if v_old is None else b2 * v_old)
            new_state["m/" + name] = m.reshape(ref.shape)
            new_state["v/" + name] = v.reshape(ref.shape)
            new[name] = cast_to(((eta_t * m) / (np.sqrt(v) + tau)) + prev, ref)
    return new, new_state


def adaptive(previous: Weights, mean: Weights, state: Weights | None,
             p: Mapping[str, Any], yogi: bool) -> tuple[Weights, Weights]:
    """§8.12 (FedAdagrad) and §8.13 (FedYogi)."""
    eta, b1, tau = (float(p[k]) for k in ("eta", "beta1", "tau"))
    new: Weights = {}
    new_state: Weights = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, ref in previous.items():
            if ref.dtype.kind != "f":
                new[name] = mean[name]
                continue
            prev = _flat64(ref)
            delta = _flat64(mean[name]) - prev
            m_old = _state_tensor(state, "m/" + name, ref)
            v_old = _state_tensor(state, "v/" + name, ref)
            m = (1.0 - b1) * delta + (0.0 if m_old is None else b1 * m_old)
            sq = delta * delta
            old = np.zeros_like(sq) if v_old is None else v_old
            b2 = float(p.get("beta2", 0.0))
            v = old - ((1.0 - b2) * sq) * np.sign(old - sq) if yogi else sq + old
            new_state["m/" + name] = m.reshape(ref.shape)
            new_state["v/" + name] = v.reshape(ref.shape)
            new[name] = cast_to(((eta * m) / (np.sqrt(v) + tau)) + prev, ref)
    return new, new_state


def aggregate(strategy: Mapping[str, Any], previous: Weights, updates: Sequence[Update],
              state: Weights | None) -> tuple[Weights, Weights | None]:
    """(new model, new state or None) of the included updates (n >= 1), or StrategyFailed."""
    name, p = strategy_params(strategy)
    new_state: Weights | None = None
    if name in ("FedAvg", "FedProx"):
        new = fedavg_mean(previous, updates, p)
    elif name == "FedMedian":
        new = coordinatewise(previous, updates, median_rule)
    elif name == "FedTrimmedAvg":
        new = coordinatewise(previous, updates, trimmed_rule(p["beta"]))
    elif name == "Krum":
        new = krum(previous, updates, p)
    else:
        mean = fedavg_mean(previous, updates, p)
        if name in ("FedAdagrad", "FedYogi"):
            new, new_state = adaptive(previous, mean, state, p, yogi=name == "FedYogi")
        else:
            step = fedavgm if name == "FedAvgM" else fedadam
            new, new_state = step(previous, mean, state, p)
    for what in (new, new_state or {}):
        for key, a in what.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise StrategyFailed(f"{key} is not finite")
    return {k: new[k] for k in previous}, new_state


# --------------------------------------------------------------------------- §7 the round


@dataclass
class Submission:
    """One UpdateSubmitted event (chain order is the list order); `content` None: the store
    cannot serve it; `cid` defaults to the CID of `content`."""

    learner: str
    num_examples: int
    staleness: int
    content: bytes | None
    cid: bytes | None = None

    def cid_bytes(self) -> bytes:
        if self.cid is not None:
            return self.cid
        assert self.content is not None
        return cid_parse(cid_of(self.content))


def staleness_weight(num_examples: int, staleness: int) -> int:
    return max(1, num_examples >> staleness) if staleness else num_examples


@dataclass
class Outcome:
    model_cid: str
    state_cid: str | None
    included: list[str]
    carried_over: str | None
    rejected: list[tuple[str, str]]
    model: Weights | None = None
    state: Weights | None = None


def key(address: str) -> str:
    return address.lower()


def run_round(
    previous: bytes,
    state: bytes | None,
    strategy: Mapping[str, Any],
    submissions: Sequence[Submission],
    *,
    min_updates: int = 1,
    exclude_duplicates: bool = False,
    max_model_bytes: int = 2 * 1024**3,
    removed: Iterable[str] = (),
    timed_out: bool = False,
    previous_cid: str | None = None,
    excused: Iterable[str] = (),
) -> Outcome:
    """The outcome of a round (§7.3)."""
    name, _ = strategy_params(strategy)
    if timed_out:
        return Outcome(previous_cid or cid_of(previous), None, [], "timed-out", [])
    prev = decode(previous, None, max_model_bytes)
    prev_state = None if state is None else decode(state, None, max_model_bytes)
    gone = {key(a) for a in removed}
    rejected = [(s.learner, "removed") for s in submissions if key(s.learner) in gone]
    usable = [s for s in submissions if key(s.learner) not in gone]

    def carried(reason: str) -> Outcome:
        return Outcome(cid_of(encode(prev)), None, [], reason,
                       sorted(rejected, key=lambda r: key(r[0])), prev, prev_state)

    if len(usable) < min_updates:
        return carried("below-min-updates")
    # Reported unavailable by every closing voter: unavailable, unfetched, set aside before
    # the others are judged (they take no part in finding duplicates).
    out = {key(a) for a in excused}
    rejected += [(s.learner, "unavailable") for s in usable if key(s.learner) in out]
    usable = [s for s in usable if key(s.learner) not in out]
    chain_pos = {id(s): i for i, s in enumerate(usable)}
    first_of: dict[bytes, Submission] = {}  # multihash -> first submission (chain order)
    for s in usable:
        first_of.setdefault(multihash(s.cid_bytes()), s)
    included: list[Update] = []
    for s in sorted(usable, key=lambda s: key(s.learner)):
        cid = s.cid_bytes()
        if exclude_duplicates and first_of[multihash(cid)] is not s:
            rejected.append((s.learner, "duplicate"))
            continue
        if not is_canonical(cid):
            rejected.append((s.learner, "bad-cid"))
            continue
        if s.content is not None and len(s.content) > max_model_bytes:
            rejected.append((s.learner, "too-large"))
            continue
        if s.content is None or cid_of(s.content) != cid_text(cid):
            rejected.append((s.learner, "unavailable"))
            continue
        try:
            weights = decode(s.content, prev, max_model_bytes)
        except (Invalid, TooLarge):
            rejected.append((s.learner, "invalid"))
            continue
        if exclude_duplicates:
            first = first_of.get(multihash(cid_parse(cid_of(encode(weights)))))
            if (first is not None and chain_pos[id(first)] < chain_pos[id(s)]
                    and key(first.learner) != key(s.learner)):
                rejected.append((s.learner, "duplicate"))
                continue
        included.append(Update(s.learner, staleness_weight(s.num_examples, s.staleness),
                               weights))
    try:
        if not included:
            raise _Nothing
        new, new_state = aggregate(strategy, prev, included, prev_state)
    except StrategyFailed:
        return carried("aggregation-failed")
    except _Nothing:
        return carried("too-few-valid")
    if len(included) < max(1, min_updates):
        return carried("too-few-valid")
    state_cid = cid_of(encode(new_state)) if name in STATEFUL and new_state is not None else None
    return Outcome(cid_of(encode(new)), state_cid, [u.learner for u in included], None,
                   sorted(rejected, key=lambda r: key(r[0])), new, new_state)


class _Nothing(Exception):
    """No update was included: the strategy has nothing to aggregate."""
