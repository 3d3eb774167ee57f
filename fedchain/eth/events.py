"""FedChain's events as typed records, decoded from raw logs with eth_abi.

CIDs are decoded once, here, into `ChainCid`: the bytes on chain and the CID they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address

from ..errors import InvalidCID
from ..storage.cid import CID


@dataclass(frozen=True, slots=True)
class ChainCid:
    """A CID as the chain records it: its bytes, and the CID they are (None if they are not).

    The contract takes any bytes (up to 63) as a CID, so what an account recorded may not be
    one; it stays representable, shown as 0x-hex, so that it can be reported. Equal when the
    bytes are.
    """

    raw: bytes
    #: The CID the bytes are, or None.
    cid: CID | None = field(init=False, compare=False)
    #: Why the bytes are not a CID (None when they are).
    problem: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        raw = bytes(self.raw)
        cid: CID | None = None
        problem: str | None = None
        if not raw:
            problem = "no CID recorded"
        else:
            try:
                cid = CID.from_bytes(raw)
            except (InvalidCID, ValueError, IndexError) as exc:
                problem = str(exc) or type(exc).__name__
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "cid", cid)
        object.__setattr__(self, "problem", problem)

    @property
    def text(self) -> str:
        """The CID's text, or 0x-hex of bytes that are not a CID."""
        return str(self.cid) if self.cid is not None else "0x" + self.raw.hex()

    def require(self) -> CID:
        """The CID; InvalidCID saying why when the recorded bytes are not one."""
        if self.cid is None:
            raise InvalidCID(f"{self.text} is not a CID: {self.problem}")
        return self.cid

    def __str__(self) -> str:
        return self.text

    def __bytes__(self) -> bytes:
        return self.raw


@dataclass(frozen=True)
class Event:
    """Where an event was emitted."""

    block: int
    tx: str
    log_index: int


@dataclass(frozen=True)
class LearnerAdded(Event):
    learner: str
    #: 1-based and stable: the learner's bit in every bitmap is index - 1.
    index: int


@dataclass(frozen=True)
class LearnerRemoved(Event):
    learner: str


@dataclass(frozen=True)
class CommitteeChanged(Event):
    """The owner set the committee of aggregators (`epoch` counts the changes)."""

    epoch: int
    members: tuple[str, ...]
    quorum: int


@dataclass(frozen=True)
class GenesisVoted(Event):
    member: str
    digest: bytes


@dataclass(frozen=True)
class GenesisSet(Event):
    model_cid: ChainCid
    plan_cid: ChainCid
    rounds: int
    update_window: int
    reveal_window: int
    vote_window: int
    select_ppm: int
    buffer_size: int
    max_staleness: int


@dataclass(frozen=True)
class RoundSeeded(Event):
    """Round `round` opened with this sampling seed (only when sampling is on)."""

    round: int
    seed: bytes


@dataclass(frozen=True)
class UpdateSubmitted(Event):
    round: int
    learner: str
    model_cid: ChainCid
    num_examples: int
    #: How many rounds before `round` the update was trained for (asynchronous mode).
    staleness: int = 0

    @property
    def trained_for(self) -> int:
        """The round the update was trained for: on the global model of the round before."""
        return self.round - self.staleness


@dataclass(frozen=True)
class UpdateCommitted(Event):
    round: int
    learner: str
    commitment: bytes


@dataclass(frozen=True)
class Voted(Event):
    """A committee member's vote. `included` is the learners' addresses (the chain records a
    bitmap over learner indices; `FedChainReader.events` maps it); `bits` the raw words."""

    round: int
    member: str
    digest: bytes
    model_cid: ChainCid
    state_cid: ChainCid
    included: tuple[str, ...]
    #: The bitmap the chain records as `included` (the addresses above are derived from it).
    bits: tuple[int, ...] = field(default=(), metadata={"abi": "included"})


@dataclass(frozen=True)
class UnavailableReported(Event):
    """A committee member could not fetch these learners' submissions of `round` within their
    deadlines (SPEC.md §7.4): its evidence for leaving them out. `learners` are addresses (the
    chain records a bitmap over learner indices); `bits` the raw words."""

    round: int
    member: str
    learners: tuple[str, ...]
    #: The bitmap the chain records as `learners`.
    bits: tuple[int, ...] = field(default=(), metadata={"abi": "learners"})


@dataclass(frozen=True)
class GlobalModelPublished(Event):
    """`round` closed on this model (a quorum of votes, or a timeout: carried over)."""

    round: int
    model_cid: ChainCid
    state_cid: ChainCid
    included: tuple[str, ...]
    #: The bitmap the chain records as `included` (the addresses above are derived from it).
    bits: tuple[int, ...] = field(default=(), metadata={"abi": "included"})


@dataclass(frozen=True)
class RoundTimedOut(Event):
    """`round` passed its vote deadline without a quorum; `closer` closed it, carried over."""

    round: int
    closer: str


@dataclass(frozen=True)
class Disputed(Event):
    """`learner` re-derived `round`'s global model and got `computed_cid`."""

    round: int
    learner: str
    computed_cid: ChainCid


@dataclass(frozen=True)
class RoundVoided(Event):
    """More than half of the active learners (`disputes`) disputed `round`: its result is void,
    the global model is `restored_cid` again (the one before it), and the committee members
    that voted for the result (`evicted`) lost their seats. The round open at the time closes
    carried over on the restored model, in the same transaction."""

    round: int
    restored_cid: ChainCid
    disputes: int
    evicted: tuple[str, ...]


@dataclass(frozen=True)
class EvaluationReported(Event):
    round: int
    learner: str
    num_examples: int
    metrics: bytes


@dataclass(frozen=True)
class SecaggPosted(Event):
    """A secure-aggregation message of `round` (SPEC.md §14): kind 0 a participant's round
    keys (a learner's followed by its dealing), kind 1 a committee member's revealed keys."""

    round: int
    sender: str
    kind: int
    data: bytes


@dataclass(frozen=True)
class Finished(Event):
    last_round: int


@dataclass(frozen=True)
class OwnershipTransferStarted(Event):
    """The owner offered ownership to `new_owner` (the zero address: the offer withdrawn)."""

    previous_owner: str
    new_owner: str


@dataclass(frozen=True)
class OwnershipTransferred(Event):
    """`new_owner` accepted the ownership `previous_owner` offered."""

    previous_owner: str
    new_owner: str


@dataclass(frozen=True)
class ChangeAnnounced(Event):
    """The owner announced `change` (keccak256 of a call's calldata), which it may make from
    `executable_at` (block time) on."""

    change: bytes
    executable_at: int


@dataclass(frozen=True)
class ChangeApproved(Event):
    """A committee quorum approved the owner's `change`: it may be made at once."""

    change: bytes


@dataclass(frozen=True)
class ChangeCancelled(Event):
    """The owner withdrew `change`."""

    change: bytes


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        LearnerAdded, LearnerRemoved, CommitteeChanged, GenesisVoted, GenesisSet, RoundSeeded,
        UpdateSubmitted, UpdateCommitted, Voted, UnavailableReported, GlobalModelPublished,
        RoundTimedOut, Disputed, RoundVoided, EvaluationReported, SecaggPosted, Finished,
        OwnershipTransferStarted, OwnershipTransferred, ChangeAnnounced, ChangeApproved,
        ChangeCancelled,
    )
}


#: Event fields that hold a CID.
CID_FIELDS = frozenset({"model_cid", "plan_cid", "state_cid", "computed_cid", "restored_cid"})
#: Event fields that hold a bitmap over learner indices (kept as `bits`; mapped to addresses).
BITMAP_FIELDS = frozenset({"included", "learners"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@lru_cache(maxsize=4096)
def _checksum(address: str) -> str:
    return str(to_checksum_address(address))


def convert_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(convert_value(v) for v in value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return _checksum(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value


class EventDecoder:
    """Decodes this ABI's raw logs into typed events (web3's process_log is several times
    slower, which dominates audits of long federations)."""

    def __init__(self, abi: list[dict[str, Any]], keccak: Any) -> None:
        self._events = {
            "0x" + bytes(keccak(text=_signature(e))).hex(): e
            for e in abi
            if e.get("type") == "event"
        }
        self.topics = {t: e["name"] for t, e in self._events.items()}

    def topic0(self, names: set[str]) -> list[str]:
        return [t for t, n in self.topics.items() if n in names]

    def decode(self, log: Any) -> Event | None:
        """The typed event of a raw log (None for a log of another contract's event)."""
        topic0 = "0x" + bytes(log["topics"][0]).hex() if log["topics"] else ""
        abi = self._events.get(topic0)
        if abi is None:
            return None
        topics = iter(log["topics"][1:])
        data_inputs = [i for i in abi["inputs"] if not i["indexed"]]
        data = abi_decode([i["type"] for i in data_inputs], bytes(log["data"]))
        values = dict(zip((i["name"] for i in data_inputs), data, strict=True))
        fields: dict[str, Any] = {}
        for item in abi["inputs"]:
            if item["indexed"]:
                (value,) = abi_decode([item["type"]], bytes(next(topics)))
            else:
                value = values[item["name"]]
            name = _snake(item["name"])
            if name in CID_FIELDS:
                fields[name] = ChainCid(value)
            elif name in BITMAP_FIELDS:
                fields["bits"] = tuple(int(w) for w in value)
                fields[name] = ()  # addresses: filled in by FedChainReader, which knows them
            else:
                fields[name] = convert_value(value)
        return EVENT_TYPES[abi["name"]](
            block=int(log["blockNumber"]),
            tx="0x" + bytes(log["transactionHash"]).hex(),
            log_index=int(log["logIndex"]),
            **fields,
        )


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
