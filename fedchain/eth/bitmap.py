"""The contract's bitmaps over learner indices, in Python (its sampling rule, commitments and
vote digests are the protocol's: fedchain.protocol.rules).

Learner indices are 1-based and stable (handed out at registration); learner `index` is bit
`index - 1`, in word `(index - 1) // 256`. The contract's included and submitted sets are
bitmaps, one 256-bit word per 256 indices handed out, so a vote's gas does not grow with the
number of learners it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def words_for(slots: int) -> int:
    """Words in a bitmap over `slots` learner indices."""
    return (slots + 255) // 256


def to_bits(indices: Iterable[int], words: int) -> list[int]:
    """The bitmap (`words` words) of 1-based learner `indices`."""
    out = [0] * words
    for index in indices:
        if not 1 <= index <= 256 * words:
            raise ValueError(f"learner index {index} outside a {words}-word bitmap")
        b = index - 1
        out[b >> 8] |= 1 << (b & 0xFF)
    return out


def from_bits(words: Sequence[int]) -> list[int]:
    """The 1-based learner indices set in a bitmap, ascending."""
    out = []
    for w, word in enumerate(words):
        while word:
            low = word & -word
            out.append(256 * w + low.bit_length())
            word ^= low
    return out
