"""FedChain's events as typed records, decoded from raw logs with eth_abi."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address


@dataclass(frozen=True)
class Event:
    """Where an event was emitted."""

    block: int
    tx: str
    log_index: int


@dataclass(frozen=True)
class LearnerAdded(Event):
    learner: str


@dataclass(frozen=True)
class LearnerRemoved(Event):
    learner: str


@dataclass(frozen=True)
class AggregatorChanged(Event):
    previous: str
    next: str


@dataclass(frozen=True)
class GenesisSet(Event):
    model_cid: bytes
    plan_cid: bytes


@dataclass(frozen=True)
class UpdateSubmitted(Event):
    round: int
    learner: str
    model_cid: bytes
    num_examples: int


@dataclass(frozen=True)
class GlobalModelPublished(Event):
    round: int
    model_cid: bytes
    included: tuple[str, ...]


@dataclass(frozen=True)
class EvaluationReported(Event):
    round: int
    learner: str
    num_examples: int
    metrics: bytes


@dataclass(frozen=True)
class Finished(Event):
    last_round: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        LearnerAdded, LearnerRemoved, AggregatorChanged, GenesisSet, UpdateSubmitted,
        GlobalModelPublished, EvaluationReported, Finished,
    )
}


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
        fields = {}
        for item in abi["inputs"]:
            if item["indexed"]:
                (value,) = abi_decode([item["type"]], bytes(next(topics)))
            else:
                value = values[item["name"]]
            fields[_snake(item["name"])] = convert_value(value)
        return EVENT_TYPES[abi["name"]](
            block=int(log["blockNumber"]),
            tx="0x" + bytes(log["transactionHash"]).hex(),
            log_index=int(log["logIndex"]),
            **fields,
        )


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
