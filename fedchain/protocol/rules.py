"""The protocol's pure rules: who takes part, in what order, with what weight, and when a round
carries its model over. Every party (the aggregator, a learner checking the committee, the
audit) decides these with the same functions, and the contract mirrors the first three.

- order: updates are aggregated in ascending `learner_key` (lower-case hex address);
- sampling: `is_selected`, the contract's exact-count rule (a round selects
  `sample_size(selectPpm, n)` = ⌈selectPpm·n/1e6⌉ of its n learner indices: those whose
  `sample_position` in the permutation its seed draws is below that), `sample_of` (n and the
  size, which the seed carries), `seed_anchor` and `draw_seed` (how the contract draws a
  round's seed from a block hash) and `fraction_to_ppm` for a plan's fraction;
- commit-reveal: `commitment`; committee votes: `vote_digest`;
- asynchronous rounds: `staleness_weight`;
- free-riding: `find_duplicates`, exact duplicates by CID multihash in chain order;
- the default quorum of updates: `default_min_updates`;
- carry-over: `carry_over_reason`.

No module here imports the Ethereum layer or does I/O. SPEC.md states each rule normatively.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from ..errors import AggregationError, ChainError, InvalidCID
from ..storage.cid import CID
from ..storage.fetch import DEFAULT_DEADLINES

#: selectPpm that selects everyone (the contract's ALL).
ALL_PPM = 1_000_000


def learner_key(address: str) -> str:
    """Sort key of a learner address: updates are aggregated in ascending order of this key."""
    return address.lower()


# --- sampling ------------------------------------------------------------------------


def fraction_to_ppm(fraction: float) -> int:
    """The contract's selectPpm for a plan's `fraction` (0: sampling off, everyone)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ppm = round(fraction * ALL_PPM)
    return 0 if ppm >= ALL_PPM else max(1, ppm)


def sample_size(select_ppm: int, learners: int) -> int:
    """How many of `learners` indices a round with sampling `select_ppm` selects, exactly:
    ⌈select_ppm · learners / 1e6⌉ (the contract's integer arithmetic; 0: everyone)."""
    if select_ppm == 0 or select_ppm >= ALL_PPM:
        return learners
    return (select_ppm * learners + ALL_PPM - 1) // ALL_PPM


def sample_of(seed: bytes) -> tuple[int, int]:
    """(n, k) of a round's seed: the learner indices 1..n its permutation ranges over (those
    handed out when the round opened) and how many of them it selects. The contract packs
    both into the seed's low 64 bits (n in bits 32..63, k in bits 0..31)."""
    word = int.from_bytes(seed, "big")
    return (word >> 32) & 0xFFFFFFFF, word & 0xFFFFFFFF


#: How far back the EVM's BLOCKHASH reaches: a round's seed comes from its opening block's hash
#: if drawn within this many blocks after it, else from a later anchor (`seed_anchor`).
BLOCKHASH_REACH = 256


def seed_anchor(open_block: int, block: int) -> int:
    """The block whose hash draws the seed of a round that opened in `open_block`, for a
    transaction in `block` (> open_block): the opening block if `block` is at most 256 blocks
    later, else the latest block open_block + 256·j before `block` (the contract's rule,
    open_block + 256·⌊(block − 1 − open_block)/256⌋; BLOCKHASH reaches 256 blocks back)."""
    if block <= open_block:
        raise ChainError(f"a round's seed is drawn after its opening block {open_block}, "
                         f"not in block {block}")
    return open_block + (block - 1 - open_block) // BLOCKHASH_REACH * BLOCKHASH_REACH


def draw_seed(block_hash: bytes, contract: str, round: int, n: int, k: int) -> bytes:
    """A round's sampling seed as the contract draws it: keccak256(abi.encode(bytes32
    block_hash, address contract, uint256 round)) with its low 64 bits replaced by n (bits
    32..63) and k (bits 0..31); `block_hash` is the anchor block's (`seed_anchor`)."""
    x = int.from_bytes(keccak(abi_encode(["bytes32", "address", "uint256"],
                                         [bytes(block_hash), to_checksum_address(contract),
                                          round])), "big")
    return (((x >> 64) << 64) | (n << 32) | k).to_bytes(32, "big")


def pending_seed_block(word: bytes) -> int | None:
    """The opening block a pending seed word carries (the contract's roundSeed in the round's
    opening block: bits 128..255 zero, bits 64..127 the block), None for a drawn seed."""
    w = int.from_bytes(word, "big")
    return None if w >> 128 else w >> 64


def _feistel_half_bits(n: int) -> int:
    """h of the permutation over n values: 4**h is the smallest power of four ≥ n (h ≥ 1)."""
    h = 1
    while 1 << (2 * h) < n:
        h += 1
    return h


def sample_position(seed: bytes, index: int) -> int | None:
    """Learner `index`'s place in the permutation of 0..n−1 that a round's `seed` draws (the
    contract's `samplePosition`), None outside 1..n. The learner is selected iff the place
    is below the seed's sample size.

    The permutation: a balanced Feistel network of 4 rounds on 2h bits (4**h the smallest
    power of four ≥ n), round i's function keccak256(seed ‖ uint256(i·2**32 + right)) mod 2**h,
    and cycle-walking: a value ≥ n is permuted again until it falls below n."""
    n, _ = sample_of(seed)
    if not 1 <= index <= n:
        return None
    seed = bytes(seed)
    h = _feistel_half_bits(n)
    mask = (1 << h) - 1
    x = index - 1
    while True:
        left, right = x >> h, x & mask
        for i in range(4):
            f = int.from_bytes(keccak(seed + ((i << 32) | right).to_bytes(32, "big")), "big")
            left, right = right, left ^ (f & mask)
        x = (left << h) | right
        if x < n:
            return x


def is_selected(seed: bytes, index: int, select_ppm: int) -> bool:
    """Whether learner `index` takes part in the round with sampling `seed` (the contract's
    rule: exactly the sample size k of the seed's n indices are selected, those whose
    `sample_position` is below k; everyone when `select_ppm` is 0, sampling off)."""
    if select_ppm == 0 or select_ppm >= ALL_PPM:
        return True
    n, k = sample_of(seed)
    if not 1 <= index <= n:
        return False
    if k >= n:
        return True
    position = sample_position(seed, index)
    return position is not None and position < k


# --- commitments and votes -----------------------------------------------------------


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


# --- weights and quorum --------------------------------------------------------------


def staleness_weight(num_examples: int, staleness: int) -> int:
    """The example count an update trained `staleness` rounds before the open one counts for
    (asynchronous rounds): halved per round of staleness, rounded down, at least 1, i.e.
    s(τ) = 2^−τ on integers, so aggregation stays exact and the audit re-derives it."""
    return max(1, num_examples >> staleness) if staleness else num_examples


def default_min_updates(learners: int) -> int:
    """The updates a round needs when the configuration names no `min_updates`: a quorum of
    two thirds of the learners, ⌈2n/3⌉, at least 1 (n = 3 → 2, 5 → 4, 10 → 7).

    Not all of them: with every learner required, one learner that sends a bad update (or
    none) would stop every round from aggregating. The aggregator still waits for every
    learner until the round's timeout; the quorum only decides whether the round aggregates
    what it got or carries the global model over.
    """
    return max(1, math.ceil(2 * learners / 3))


def plan_min_updates(learners: int, fraction: float = 1.0, buffer_size: int = 0) -> int:
    """The default quorum of a plan for `learners` registered at genesis: two thirds of the
    learners a round samples (exactly `sample_size` of them: 4 of the 5 that fraction 0.5 of
    10 selects), at most `buffer_size` in asynchronous rounds (which close once the buffer's
    worth arrived)."""
    quorum = default_min_updates(sample_size(fraction_to_ppm(fraction), learners))
    return min(quorum, buffer_size) if buffer_size else quorum


# --- fetching ----------------------------------------------------------------------


#: Bytes an update's file may hold beyond its tensors (its safetensors header).
HEADER_ALLOWANCE = 64 * 1024


def update_timeout(model_bytes: int) -> float:
    """Seconds each update of a round may take to fetch, from its own start: the documented
    max(30 s, size / 1 MiB/s) for the size every valid update has (the global model's tensors
    and a header), capped at an hour. Sized from the model, not from what a node declares, so
    an update that trickles in costs its own deadline only and every other update keeps its
    own; every party fetches with it, so an update too slow for the committee is too slow for
    the learners and the audit alike."""
    return DEFAULT_DEADLINES.seconds(model_bytes + HEADER_ALLOWANCE)


# --- deadlines of a committee ------------------------------------------------------


#: The shortest update and vote windows a committee's plan gets by default (seconds).
MIN_COMMITTEE_WINDOW = 60


def committee_windows(round_timeout: float, update_window: int = 0,
                      vote_window: int = 0) -> tuple[int, int]:
    """(update_window, vote_window) of a plan run by a committee of more than one member.

    Without deadlines the first vote closes a round's submissions, so one member voting
    "nothing included" as each round opens would freeze learning; with them, the contract
    refuses votes before the update deadline unless every learner is in, and anyone may close
    a round past its vote deadline. Windows the configuration names are kept; missing ones
    are sized from the aggregator's round timeout: the update window the round timeout, the
    vote window half of it, each at least MIN_COMMITTEE_WINDOW seconds."""
    updates = update_window or max(MIN_COMMITTEE_WINDOW, math.ceil(round_timeout))
    votes = vote_window or max(MIN_COMMITTEE_WINDOW, math.ceil(round_timeout / 2))
    return min(updates, 2**24 - 1), min(votes, 2**24 - 1)


# --- carry-over ----------------------------------------------------------------------


def too_few_submissions(usable: int, min_updates: int) -> str | None:
    """Why a round with `usable` submissions (after the owner's removals) carries over without
    fetching anything, or None."""
    if usable < min_updates:
        return f"{usable} submissions, fewer than the plan's min_updates {min_updates}"
    return None


def too_few_included(included: int, min_updates: int) -> str | None:
    """Why a round whose strategy would include `included` valid updates carries over, or
    None: at least max(1, min_updates) are needed."""
    needed = max(1, min_updates)
    if included < needed:
        return f"{included} valid updates, fewer than the {needed} the plan requires"
    return None


# --- exact duplicates ----------------------------------------------------------------




@dataclass(frozen=True)
class Submission:
    """One update submitted in a round, as the chain orders it.

    `content` identifies the model's bytes: the multihash of its CID (so the CIDv0 and CIDv1
    spellings of one block agree; see `Submission.of`) or a hash of the fetched bytes.
    `order` is (block number, log index), the chain's total order of events. `ref` carries
    the caller's own record (e.g. the event) through, and takes no part in comparisons.
    """

    learner: str
    content: Hashable
    order: tuple[int, int]
    ref: Any = field(default=None, compare=False)

    @classmethod
    def of(cls, event: Any) -> Submission:
        """The submission of an UpdateSubmitted-like event (.learner, .model_cid, .block,
        .log_index); content is its CID's multihash, or the raw bytes if they are no CID."""
        raw = bytes(event.model_cid)
        try:
            content: Hashable = CID.from_bytes(raw).multihash
        except InvalidCID:
            content = raw
        return cls(event.learner, content, (int(event.block), int(event.log_index)), event)


@dataclass(frozen=True)
class Duplicate:
    """A submission whose content an earlier submission of the round already had."""

    submission: Submission
    original: Submission

    @property
    def reason(self) -> str:
        return f"same content as {self.original.learner}'s update"


def find_duplicates(
    submissions: Iterable[Submission],
) -> tuple[list[Submission], list[Duplicate]]:
    """(the first submission of each content, the later ones), both in chain order.

    A learner that resubmits another learner's CID (free-riding, or doubling the victim's
    weight) is the later one and is dropped; the first submitter keeps its update. Pure and
    deterministic: the aggregator filters a round with it before aggregating and an audit
    re-derives the same split from the chain. Two submissions with the same order key cannot
    come from one chain and raise AggregationError.
    """
    ordered = sorted(submissions, key=lambda s: s.order)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.order == b.order:
            raise AggregationError(
                f"submissions of {a.learner} and {b.learner} have the same chain position "
                f"{a.order}"
            )
    first: dict[Hashable, Submission] = {}
    kept: list[Submission] = []
    duplicates: list[Duplicate] = []
    for s in ordered:
        original = first.get(s.content)
        if original is None:
            first[s.content] = s
            kept.append(s)
        else:
            duplicates.append(Duplicate(s, original))
    return kept, duplicates


def duplicates_without_commit_reveal(exclude_duplicates: bool, reveal_window: int) -> str | None:
    """Why a plan that excludes duplicates must run commit-reveal rounds (None: it does, or
    it does not exclude them). Without commit-reveal a submission's CID is public while it is
    pending: a copier who sends the same CID with a higher tip is mined first, keeps the
    update, and the honest learner is left out as the duplicate. With it, a CID is public only
    once the commitments are closed, and a commitment binds its learner."""
    if not exclude_duplicates or reveal_window:
        return None
    return ("exclude_duplicates needs commit-reveal rounds (reveal_window > 0, with an "
            "update_window): without it a copier who sees a pending submission sends the same "
            "CID with a higher tip, is mined first, and the honest learner is left out as the "
            "duplicate")
