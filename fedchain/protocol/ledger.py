"""The ledger: what the chain says about each round, read from the contract's events once.

`Ledger` reads the contract's events in pages, from where it last stopped to the chain's
head, and files them by round; `Ledger.record(r)` is a `RoundRecord`, everything round r
depends on and how it closed: the previous global model and server state (CIDs), the plan,
the submissions, the learners the owner removed while it was open, the committee's votes,
the published result, the learners' disputes, the sampling seed, whether it timed out. Reading
round r after round r−1 reads only the events in between: O(1) amortised per round, however
long the history (the old way rescanned every GlobalModelPublished event on each call).

Every role gathers a round's inputs here: a learner checking the committee, the audit, the
aggregator restoring its server state after a restart, the results of a distributed run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from copy import copy
from dataclasses import dataclass, field, fields
from functools import partial

from ..eth.contract import FedChainReader
from ..eth.events import (
    ChainCid,
    CommitteeChanged,
    Disputed,
    EvaluationReported,
    Event,
    Finished,
    GenesisSet,
    GenesisVoted,
    GlobalModelPublished,
    LearnerAdded,
    LearnerRemoved,
    RoundSeeded,
    RoundTimedOut,
    RoundVoided,
    SecaggPosted,
    UnavailableReported,
    UpdateSubmitted,
    Voted,
)
from .rules import vote_digest


@dataclass(kw_only=True)
class _RoundEvents:
    """A round's events, filed by the ledger."""

    submissions: list[UpdateSubmitted] = field(default_factory=list)
    #: Learners the owner removed while the round was open (their updates are excluded).
    removed: set[str] = field(default_factory=set)
    #: The committee's votes, in chain order (evidence, agreeing or not).
    votes: list[Voted] = field(default_factory=list)
    #: The learners whose submissions each member reported unavailable (UnavailableReported,
    #: every report of the round added up), by member.
    unavailable: dict[str, set[str]] = field(default_factory=dict)
    #: The event that closed the round (None while it is open).
    published: GlobalModelPublished | None = None
    disputes: list[Disputed] = field(default_factory=list)
    evaluations: list[EvaluationReported] = field(default_factory=list)
    #: The round's sampling seed (only when sampling is on), as its RoundSeeded event gave it:
    #: none before a submission (or seedRound) drew it, in a block after `opened_block`.
    seed: bytes | None = None
    #: The block the round opened in (the GenesisSet or previous GlobalModelPublished event's),
    #: whose hash the seed is drawn from, and the learner indices handed out by then (the n
    #: the seed's permutation ranges over); None when the ledger did not see it open.
    opened_block: int | None = None
    slots: int | None = None
    #: The round passed its vote deadline without a quorum and was closed, carried over.
    timed_out: bool = False
    #: The learners voided the round's result (more than half disputed it): RoundVoided.
    voided: RoundVoided | None = None
    #: The round was closed by the void of the round before it, on this restored model.
    restored: ChainCid | None = None
    #: Secure-aggregation messages (SecaggPosted), in chain order.
    secagg: list[SecaggPosted] = field(default_factory=list)


@dataclass(frozen=True)
class ChainFacts:
    """What a secure-aggregation round's rule reads from the chain beyond its events
    (SPEC.md §14.3): where it runs, when and in which block the round opened, the timestamps
    of the blocks its messages are in, the committee in force when it opened, and the
    learners' indices (for sampling)."""

    chain_id: int
    contract: str
    opened_at: int
    opened_hash: bytes
    block_times: dict[int, int]
    committee: tuple[str, ...]
    quorum: int
    indices: dict[str, int]
    #: The learners active now (as far as the ledger has read).
    active: frozenset[str] = frozenset()


@dataclass
class RoundRecord(_RoundEvents):
    """Everything round `round` depends on, and how it closed, from the chain's events.

    `previous_model` is round−1's published global model (the genesis model for round 1);
    `previous_state` the server-optimizer state CID in force after round−1 (the last one a
    round up to it published; None: none yet).
    """

    round: int
    previous_model: ChainCid
    previous_state: ChainCid | None = None
    plan_cid: ChainCid | None = None
    #: Secure aggregation's chain facts (Ledger.record(..., facts=True), or a round with
    #: SecaggPosted events); None otherwise.
    facts: ChainFacts | None = None

    @property
    def included(self) -> tuple[str, ...]:
        """The learners whose updates the published model includes (empty while open)."""
        return () if self.published is None else self.published.included

    @property
    def closing_voters(self) -> tuple[str, ...]:
        """The members whose votes closed the round: those that voted for the result it was
        published with (empty while it is open, or when it timed out or was restored)."""
        if self.published is None or self.timed_out or self.restored is not None:
            return ()
        p = self.published
        digest = vote_digest(p.model_cid.raw, p.state_cid.raw, p.bits)
        return tuple(dict.fromkeys(v.member for v in self.votes if v.digest == digest))

    @property
    def excused(self) -> frozenset[str]:
        """The learners whose submissions every member whose vote closed the round reported
        unavailable (SPEC.md §7.4): re-derivations treat them as unavailable, unfetched."""
        voters = self.closing_voters
        if not voters:
            return frozenset()
        sets = [self.unavailable.get(m, set()) for m in voters]
        return frozenset(set.intersection(*sets))

    @property
    def usable(self) -> list[UpdateSubmitted]:
        """The submissions the round's rule considers: all but the removed learners'."""
        return [s for s in self.submissions if s.learner not in self.removed]


@dataclass
class _Round(_RoundEvents):
    """What the ledger has filed for one round so far."""

    #: The server-state CID in force after this round (set when it is published).
    state_after: ChainCid | None = None


class Ledger:
    """A contract's events filed by round, read incrementally (thread-safe)."""

    def __init__(self, contract: FedChainReader, *, from_block: int = 0,
                 page: int = 10_000, keep_txs: bool = False) -> None:
        self.contract = contract
        self.page = page
        self._lock = threading.RLock()
        self._next_block = from_block
        self._rounds: dict[int, _Round] = {}
        self.genesis: GenesisSet | None = None
        #: The learners' 1-based indices, by address (LearnerAdded).
        self.indices: dict[str, int] = {}
        #: Whether each learner ever registered is active now.
        self.active: dict[str, bool] = {}
        self.committee: CommitteeChanged | None = None
        #: The committee in force at the genesis.
        self.genesis_committee: CommitteeChanged | None = None
        #: When the chain was last read to its head (time.monotonic()).
        self._read_at = float("-inf")
        #: block number -> (timestamp, hash), for the blocks secure aggregation reads.
        self._blocks: dict[int, tuple[int, bytes]] = {}
        #: Committee changes after the genesis, with the round open when each happened.
        self.committee_changes: list[tuple[int, CommitteeChanged]] = []
        #: The committee members' genesis votes (their digests differ where they dissent).
        self.genesis_votes: list[GenesisVoted] = []
        self.finished_after: int | None = None
        #: The round open after the events read so far (1 before the genesis).
        self.open_round = 1
        self._state: ChainCid | None = None
        #: round -> (the block it opened in, learner indices handed out by then).
        self._opened: dict[int, tuple[int, int]] = {}
        self._slots = 0
        self.keep_txs = keep_txs
        #: Every transaction that emitted an event, in chain order (with keep_txs).
        self.txs: list[str] = []

    # -- reading ---------------------------------------------------------------------------

    def refresh(self, to_block: int | None = None) -> int:
        """Files the events from where the last read stopped to `to_block` (the head);
        returns the last block read."""
        with self._lock:
            head = self.contract.chain.block_number() if to_block is None else to_block
            if head < self._next_block:
                self._read_at = time.monotonic() if to_block is None else self._read_at
                return head
            for e in self.contract.events(from_block=self._next_block, to_block=head,
                                          page=self.page):
                self._apply(e)
            self._next_block = head + 1
            if to_block is None:
                self._read_at = time.monotonic()
            return head

    def _at(self, round: int) -> _Round:
        found = self._rounds.get(round)
        if found is None:
            found = self._rounds[round] = _Round()
        return found

    def _apply(self, e: Event) -> None:
        if self.keep_txs:
            self.txs.append(e.tx)
        if isinstance(e, UpdateSubmitted):
            self._at(e.round).submissions.append(e)
        elif isinstance(e, Voted):
            self._at(e.round).votes.append(e)
        elif isinstance(e, UnavailableReported):
            self._at(e.round).unavailable.setdefault(e.member, set()).update(e.learners)
        elif isinstance(e, GlobalModelPublished):
            r = self._at(e.round)
            r.published = e
            if e.state_cid.raw:
                self._state = e.state_cid
            r.state_after = self._state
            self.open_round = e.round + 1
            self._opened[e.round + 1] = (e.block, self._slots)
        elif isinstance(e, RoundSeeded):
            self._at(e.round).seed = e.seed
        elif isinstance(e, RoundTimedOut):
            self._at(e.round).timed_out = True
        elif isinstance(e, RoundVoided):
            # The model before the voided round is in force again, and so is its server
            # state; the round open at the time closes on it (its GlobalModelPublished next).
            voided = self._at(e.round)
            voided.voided = e
            self._state = self.state_after(e.round - 1)
            voided.state_after = self._state
            self._at(e.round + 1).restored = e.restored_cid
        elif isinstance(e, Disputed):
            self._at(e.round).disputes.append(e)
        elif isinstance(e, EvaluationReported):
            self._at(e.round).evaluations.append(e)
        elif isinstance(e, SecaggPosted):
            self._at(e.round).secagg.append(e)
        elif isinstance(e, LearnerAdded):
            self.indices[e.learner] = e.index
            self._slots = max(self._slots, e.index)
            self.active[e.learner] = True
            self._rounds.get(self.open_round, _Round()).removed.discard(e.learner)
        elif isinstance(e, LearnerRemoved):
            self.active[e.learner] = False
            if self.genesis is not None:
                self._at(self.open_round).removed.add(e.learner)
        elif isinstance(e, GenesisSet):
            self.genesis = e
            self._opened[1] = (e.block, self._slots)
        elif isinstance(e, CommitteeChanged):
            if self.genesis is None:
                self.genesis_committee = e
            self.committee = e
            if self.genesis is not None:
                self.committee_changes.append((self.open_round, e))
        elif isinstance(e, GenesisVoted):
            self.genesis_votes.append(e)
        elif isinstance(e, Finished):
            self.finished_after = e.last_round

    # -- records ---------------------------------------------------------------------------

    def rounds(self) -> list[int]:
        """The rounds any event names so far, ascending."""
        with self._lock:
            return sorted(self._rounds)

    def record(self, round: int, *, refresh: bool = True, facts: bool = False,
               max_age: float | None = None) -> RoundRecord:
        """Round `round`'s record; the chain is read first (only what is new) unless
        `refresh` is False or the round was already published, or (`max_age`) the ledger
        read the chain less than `max_age` seconds ago: many pollers of one ledger then share
        a read. Its secure-aggregation `facts` are read too with `facts`, or when the round
        has SecaggPosted events."""
        with self._lock:
            known = self._rounds.get(round)
            fresh = max_age is not None and time.monotonic() - self._read_at < max_age
            if refresh and (known is None or known.published is None) and not fresh:
                self.refresh()
            if self.genesis is None:
                raise LookupError("the federation has no genesis on chain yet")
            r = self._rounds.get(round, _Round())
            # Copies of the lists: a record is the caller's to change.
            events = {f.name: copy(getattr(r, f.name)) for f in fields(_RoundEvents)}
            if round in self._opened:
                events["opened_block"], events["slots"] = self._opened[round]
            out = RoundRecord(round, self.global_model(round - 1), self.state_after(round - 1),
                              self.genesis.plan_cid, **events)
        if (facts or out.secagg) and out.opened_block is not None:
            out.facts = self.facts(out)  # its block reads without the lock: others go on
        return out

    def committee_at(self, round: int) -> CommitteeChanged | None:
        """The committee in force when `round` opened (a change made while a round was open
        counts from the next round)."""
        with self._lock:
            found = self.genesis_committee
            for opened, change in self.committee_changes:
                if opened < round:
                    found = change
            return found

    def blocks(self, numbers: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        """(timestamp, hash) of each block, each read once (the unknown ones in one batch,
        without holding the ledger's lock)."""
        wanted = set(numbers)
        known = {n: self._blocks[n] for n in wanted if n in self._blocks}
        missing = sorted(wanted - set(known))
        if missing:
            chain = self.contract.chain
            read = chain.batch([partial(chain.w3.eth.get_block, n) for n in missing])
            got = {n: (int(b["timestamp"]), bytes(b["hash"])) for n, b in zip(
                missing, read, strict=True)}
            with self._lock:
                self._blocks.update(got)
            known.update(got)
        return known

    def facts(self, record: RoundRecord) -> ChainFacts:
        """The chain facts secure aggregation's rule reads for `record` (its messages'
        blocks' timestamps, the opening block's, the committee, the indices)."""
        assert record.opened_block is not None
        read = self.blocks([record.opened_block, *(e.block for e in record.secagg)])
        opened_at, opened_hash = read[record.opened_block]
        times = {e.block: read[e.block][0] for e in record.secagg}
        with self._lock:
            committee = self.committee_at(record.round)
            indices = dict(self.indices)
            active = frozenset(a for a, on in self.active.items() if on)
        return ChainFacts(
            chain_id=self.contract.chain.chain_id, contract=self.contract.address,
            opened_at=opened_at, opened_hash=opened_hash, block_times=times,
            committee=tuple(committee.members) if committee else (),
            quorum=committee.quorum if committee else 0, indices=indices, active=active)

    def records(self) -> Iterator[RoundRecord]:
        """Every round's record, ascending (nothing is read from the chain)."""
        for r in self.rounds():
            yield self.record(r, refresh=False)

    def global_model(self, round: int) -> ChainCid:
        """`round`'s global model in force: the published one (the genesis model for 0; the
        restored one for a voided round); an empty CID while unpublished."""
        with self._lock:
            if round == 0:
                return self.genesis.model_cid if self.genesis is not None else ChainCid(b"")
            r = self._rounds.get(round)
            if r is not None and r.voided is not None:
                return r.voided.restored_cid  # its result void: the model before it again
            return r.published.model_cid if r is not None and r.published else ChainCid(b"")

    def state_after(self, round: int) -> ChainCid | None:
        """The server-state CID in force after `round` (None: no round up to it published
        one). Rounds are published in order, so the last published one up to `round` says."""
        with self._lock:
            for r in range(round, 0, -1):
                known = self._rounds.get(r)
                if known is not None and known.published is not None:
                    return known.state_after
            return None
