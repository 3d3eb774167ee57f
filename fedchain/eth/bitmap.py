"""The contract's bitmaps over learner indices, its sampling rule and its commitments, in Python.

Learner indices are 1-based and stable (handed out at registration); learner `index` is bit
`index - 1`, in word `(index - 1) // 256`. The contract's included and submitted sets are
bitmaps, one 256-bit word per 256 indices handed out, so a vote's gas does not grow with the
number of learners it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

#: selectPpm that selects everyone (the contract's ALL).
ALL_PPM = 1_000_000


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


def fraction_to_ppm(fraction: float) -> int:
    """The contract's selectPpm for a plan's `fraction` (0: sampling off, everyone)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ppm = round(fraction * ALL_PPM)
    return 0 if ppm >= ALL_PPM else max(1, ppm)


def is_selected(seed: bytes, index: int, select_ppm: int) -> bool:
    """Whether learner `index` takes part in the round with sampling `seed` (the contract's
    rule: keccak256(abi.encode(seed, index)) mod 1e6 < selectPpm)."""
    if select_ppm == 0 or select_ppm >= ALL_PPM:
        return True
    digest = keccak(abi_encode(["bytes32", "uint256"], [seed, index]))
    return int.from_bytes(digest, "big") % ALL_PPM < select_ppm


def commitment(learner: str, round: int, model_cid: bytes, num_examples: int,
               salt: bytes) -> bytes:
    """The commitment `commitUpdate` takes for a later `revealUpdate` of the same values."""
    return keccak(abi_encode(
        ["address", "uint256", "bytes", "uint256", "bytes32"],
        [to_checksum_address(learner), round, model_cid, num_examples, salt],
    ))


def vote_digest(model_cid: bytes, state_cid: bytes, included: Sequence[int]) -> bytes:
    """The digest the contract tallies a round's vote under."""
    return keccak(abi_encode(["bytes", "bytes", "uint256[]"],
                             [model_cid, state_cid, list(included)]))
