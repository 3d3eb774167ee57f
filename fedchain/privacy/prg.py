"""Secure aggregation's pseudo-random generator and key derivation (SPEC.md §14.2, §14.3).

Everything here is a pure function of its byte inputs: no global state, no clock, no float.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedchain.errors import PrivacyError

#: The suite's name: the HKDF salt of every derivation and the prefix of every context.
SUITE = b"fedchain-secagg/1"
SEED_BYTES = 32
_ZERO_BLOCK = bytes(16)


def hkdf(ikm: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) with salt `SUITE`."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SUITE, info=info).derive(ikm)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise PrivacyError(f"a PRG seed is {SEED_BYTES} bytes, not {len(seed)!r}")


def keystream(seed: bytes, nbytes: int) -> bytes:
    """The first `nbytes` bytes of AES-256-CTR under key `seed`, initial counter block 16 zero
    bytes, the whole block incremented as a 128-bit big-endian integer (NIST SP 800-38A)."""
    _check_seed(seed)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def prg_words(seed: bytes, length: int, bits: int = 64) -> np.ndarray:
    """`length` uint64 words: word i is bytes 8i … 8i+7 of keystream(seed) read little-endian,
    reduced mod 2^bits (its low `bits` bits kept)."""
    if not 1 <= bits <= 64:
        raise PrivacyError(f"bits must be 1 … 64, not {bits}")
    _check_seed(seed)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
    buf = bytearray(8 * length + 15)  # update_into's room for a block
    enc.update_into(bytes(8 * length), buf)
    words = np.frombuffer(buf, dtype="<u8", count=length)
    if words.dtype != np.uint64:  # a big-endian machine: the values, in native order
        words = words.astype(np.uint64)
    if bits < 64:
        words &= np.uint64((1 << bits) - 1)
    return words


class Expander:
    """prg_words for many seeds of one length, into one reused buffer (no allocation, no page
    faults per seed): `words(seed, bits)` is valid until the next call."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._zeros = bytes(8 * length)
        self._buf = bytearray(8 * length + 15)
        self._view = np.frombuffer(self._buf, dtype="<u8", count=length)

    def words(self, seed: bytes, bits: int = 64) -> np.ndarray:
        if not 1 <= bits <= 64:
            raise PrivacyError(f"bits must be 1 … 64, not {bits}")
        _check_seed(seed)
        enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
        enc.update_into(self._zeros, self._buf)
        words = self._view if self._view.dtype == np.uint64 else self._view.astype(np.uint64)
        if bits < 64:
            words &= np.uint64((1 << bits) - 1)
        return words


class _Words:
    """Consecutive chunks of keystream(seed) as little-endian uint64 words (see words_stream)."""

    def __init__(self, seed: bytes) -> None:
        _check_seed(seed)
        self._enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
        self._zeros = b""
        self._buf = bytearray(15)
        self.last = np.zeros(0, np.uint64)

    def next(self, count: int) -> np.ndarray:
        """The next `count` words (valid until the next call; also kept as `last`)."""
        if len(self._zeros) < 8 * count:
            self._zeros = bytes(8 * count)
            self._buf = bytearray(8 * count + 15)
        self._enc.update_into(memoryview(self._zeros)[:8 * count], self._buf)
        words = np.frombuffer(self._buf, dtype="<u8", count=count)
        self.last = words if words.dtype == np.uint64 else words.astype(np.uint64)
        return self.last


def words_stream(seed: bytes) -> _Words:
    """keystream(seed) read as consecutive little-endian uint64 words, chunk by chunk: the
    chunks' concatenation is prg_words(seed, total)."""
    return _Words(seed)


class WordStream:
    """Consecutive little-endian uint64 words of keystream(seed), drawn one at a time (for
    shuffles and coefficients, whose number of draws depends on rejections)."""

    _CHUNK = 4096  # bytes of keystream produced at a time; the stream is the same whatever it is

    def __init__(self, seed: bytes) -> None:
        _check_seed(seed)
        self._enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_BLOCK)).encryptor()
        self._buf = b""
        self._pos = 0

    def take(self, nbytes: int) -> bytes:
        while len(self._buf) - self._pos < nbytes:
            self._buf = self._buf[self._pos:] + self._enc.update(bytes(self._CHUNK))
            self._pos = 0
        out = self._buf[self._pos:self._pos + nbytes]
        self._pos += nbytes
        return out

    def word(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def below(self, bound: int) -> int:
        """A uniform integer in [0, bound): words w are drawn until w < 2^64 − (2^64 mod bound);
        the result is w mod bound."""
        if not 1 <= bound <= 1 << 64:
            raise PrivacyError(f"bound {bound} out of range")
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            w = self.word()
            if w < limit:
                return w % bound
