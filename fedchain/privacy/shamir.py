"""Shamir secret sharing over GF(p), p = 2^256 + 297 (SPEC.md §14.6).

p is the smallest prime above 2^256, so every 256-bit secret (a seed, an X25519 private key
read as a big-endian integer) is a field element as it is. A share is (x, f(x)) with
x = 1 … m the holder's position; its value travels as 33 bytes, big-endian.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedchain.errors import PrivacyError
from fedchain.privacy.prg import WordStream

PRIME = (1 << 256) + 297
SHARE_BYTES = 33
_COEFF_BYTES = 40  # 320 bits reduced mod p: the bias is below 2^-63


def coefficients(seed: bytes, count: int) -> list[int]:
    """`count` coefficients: consecutive 40-byte blocks of keystream(seed), each read
    big-endian and reduced mod p."""
    stream = WordStream(seed)
    return [int.from_bytes(stream.take(_COEFF_BYTES), "big") % PRIME for _ in range(count)]


def split(secret: int, threshold: int, holders: int, seed: bytes) -> list[int]:
    """Shares f(1) … f(holders) of f(x) = secret + a_1 x + … + a_{t−1} x^{t−1} mod p, the
    a_j from `coefficients(seed, t − 1)`; any `threshold` of them give `secret` back."""
    if not 1 <= threshold <= holders:
        raise PrivacyError(f"threshold {threshold} must be 1 … {holders} (the holders)")
    if not 0 <= secret < PRIME:
        raise PrivacyError("a secret must be a field element")
    coeffs = [secret, *coefficients(seed, threshold - 1)]
    shares = []
    for x in range(1, holders + 1):
        y = 0
        for a in reversed(coeffs):  # Horner
            y = (y * x + a) % PRIME
        shares.append(y)
    return shares


def interpolate(shares: Mapping[int, int]) -> int:
    """f(0) of the polynomial of degree < len(shares) through the points (x, y): Lagrange
    interpolation mod p. With fewer shares than the threshold the result is unrelated to
    the secret (every value is equally likely)."""
    if not shares:
        raise PrivacyError("no shares to interpolate")
    points = sorted(shares.items())
    if any(not 1 <= x < PRIME for x, _ in points):
        raise PrivacyError("share positions must be 1 … p − 1")
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """The secret from at least `threshold` shares (the first `threshold` by position are
    used); fewer raise PrivacyError."""
    if len(shares) < threshold:
        raise PrivacyError(f"{len(shares)} shares, {threshold} needed")
    chosen = dict(sorted(shares.items())[:threshold])
    return interpolate(chosen)


def encode_share(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise PrivacyError(f"a share is {SHARE_BYTES} bytes, not {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise PrivacyError("a share is not a field element")
    return value
