"""Quantization of an update's difference into Z_(2^k), and back (SPEC.md §14.1).

Float operations here are single IEEE binary64 operations (multiply, floor, subtract, compare,
a power-of-two scaling), each exact or correctly rounded on every CPU; the masked domain is
integer only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedchain.errors import PrivacyError
from fedchain.privacy.prg import words_stream

#: Largest k: a sum below 2^62 stays exact in int64 when the offset is taken off.
MAX_BITS = 62
_TWO53 = float(1 << 53)


def bits_needed(n: int, qrange: int) -> int:
    """The least k with n · 2·qrange < 2^k: n values in [0, 2·qrange] sum without wrapping
    mod 2^k, and with k − 1 bits n values of 2·qrange wrap. (Equal to ⌈log2(n · 2·qrange + 1)⌉,
    never more than ⌈log2(n · (2·qrange + 1))⌉.)"""
    if n < 1 or qrange < 1:
        raise PrivacyError(f"n ({n}) and the quantization range ({qrange}) must be ≥ 1")
    k = (n * 2 * qrange).bit_length()
    if k > MAX_BITS:
        raise PrivacyError(f"{n} learners × range {qrange} need {k} bits, more than {MAX_BITS}")
    return k


def scale(clip: float, qrange: int) -> float:
    """s = F64(qrange) ⊘ F64(clip)."""
    if not (np.isfinite(clip) and clip > 0):
        raise PrivacyError(f"clip must be a positive finite number, not {clip!r}")
    return float(np.float64(qrange) / np.float64(clip))


def flatten(layers: Mapping[str, np.ndarray]) -> np.ndarray:
    """The F64 concatenation of the layers' flat (row-major) elements, in the mapping's order."""
    parts = [np.ascontiguousarray(a).reshape(-1).astype(np.float64) for a in layers.values()]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`vector` cut back into layers with the names, order and shapes of `like` (its dtype kept)."""
    out, at = {}, 0
    for name, ref in like.items():
        size = int(np.prod(ref.shape, dtype=np.int64))
        out[name] = vector[at:at + size].reshape(ref.shape)
        at += size
    if at != vector.size:
        raise PrivacyError(f"{vector.size} values for layers of {at}")
    return out


def difference(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """F64(update) ⊖ F64(base) per layer, in `base`'s order."""
    if list(update) != list(base):
        raise PrivacyError("the update's layers are not the model's")
    return {name: np.asarray(update[name], np.float64) - np.asarray(base[name], np.float64)
            for name in base}


#: Elements quantized at a time: the temporaries stay in cache (no page faults per update).
_CHUNK = 1 << 16


def quantize(delta: Mapping[str, np.ndarray] | np.ndarray, clip: float, qrange: int,
             seed: bytes) -> np.ndarray:
    """The shifted quantized values q_i ∈ [0, 2·qrange] (uint64) of a difference:
    x = min(max(F64(v), −clip), clip); z = x ⊗ s; f = ⌊z⌋; φ = z ⊖ f; r = word_i(seed) >> 11;
    round up iff F64(r) < φ ⊗ 2^53; q = clamp(f + up, −qrange, qrange) + qrange.
    `seed` (32 bytes) is the learner's own rounding seed: nobody else can predict it.
    Computed in chunks of _CHUNK elements over one running keystream (the same values)."""
    x = delta if isinstance(delta, np.ndarray) else flatten(delta)
    x = np.asarray(x, np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise PrivacyError("an update to quantize has a non-finite value")
    c = np.float64(clip)
    s = np.float64(scale(clip, qrange))
    n = x.size
    out = np.empty(n, np.uint64)
    stream = words_stream(seed)
    z, f = np.empty(_CHUNK), np.empty(_CHUNK)
    r, up = np.empty(_CHUNK), np.empty(_CHUNK, bool)
    low, high = np.float64(-qrange), np.float64(qrange)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        zc, fc, rc, uc = z[:m], f[:m], r[:m], up[:m]
        np.maximum(x[start:start + m], -c, out=zc)
        np.minimum(zc, c, out=zc)
        np.multiply(zc, s, out=zc)               # z
        np.floor(zc, out=fc)                     # f
        np.subtract(zc, fc, out=zc)              # φ (exact)
        np.multiply(zc, _TWO53, out=zc)          # φ ⊗ 2^53 (exact)
        words = stream.next(m)
        np.right_shift(words, np.uint64(11), out=words)
        rc[...] = words                          # F64(r): exact, r < 2^53
        np.less(rc, zc, out=uc)
        np.add(fc, uc, out=fc)                   # f + up: an integer, exact in F64
        np.clip(fc, low, high, out=fc)
        np.add(fc, high, out=fc)
        out[start:start + m] = fc                # in [0, 2·qrange]: exact in uint64
    return out


def dequantize(total: np.ndarray, count: int, clip: float, qrange: int) -> np.ndarray:
    """The F64 sum of `count` learners' clipped differences from the sum of their shifted
    values: F64(total − count·qrange) ⊘ s (the integer exact in int64; its conversion exact
    below 2^53, else rounded to nearest, ties to even)."""
    total = np.asarray(total, np.uint64)
    if total.size and int(total.max()) > count * 2 * qrange:
        raise PrivacyError("a sum is larger than count learners can give: wrong count or masks")
    centred = total.astype(np.int64) - np.int64(count * qrange)
    return centred.astype(np.float64) / np.float64(scale(clip, qrange))
