"""A typed binding of the FedChain contract: calls, transactions, events and errors."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from web3.exceptions import ContractCustomError, ContractLogicError

from .chain import Chain, Receipt
from .compile import load_artifact
from .errors import REVERTS, ChainError, DeploymentNotFound, TransactionFailed

CidLike = Any  # bytes, a fedchain CID object, or CID text


def cid_bytes(cid: CidLike) -> bytes:
    """The binary form of a CID given as bytes, a CID object or its text."""
    if isinstance(cid, bytes | bytearray):
        return bytes(cid)
    from .storage import CID

    return bytes(CID.coerce(cid))  # text or a CID; InvalidCID for anything else


def to_cid(raw: bytes) -> Any:
    """The CID object of a binary CID read from the chain (InvalidCID if it is not one)."""
    from .storage import CID

    return CID.from_bytes(raw)


def cid_text(raw: bytes) -> str:
    """The canonical text of a binary CID (falls back to hex for bytes that are not a CID)."""
    from .storage import CID

    try:
        return str(CID.from_bytes(raw))
    except Exception:
        return "0x" + raw.hex()


# --- events --------------------------------------------------------------------------


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


_EVENT_TYPES: dict[str, type[Event]] = {
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


def _convert(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_convert(v) for v in value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return _checksum(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value


# --- reverts -------------------------------------------------------------------------


def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [i["type"] for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            table[function_signature_to_4byte_selector(sig)] = (item["name"], types)
    return table


def _revert_data(exc: Exception) -> bytes | None:
    """Digs the raw revert bytes out of whatever shape the node and web3 gave them."""
    candidates: list[Any] = []
    if isinstance(exc, ContractCustomError | ContractLogicError):
        candidates.append(exc.data)
    candidates.extend(exc.args)
    rpc = getattr(exc, "rpc_response", None)
    if isinstance(rpc, dict):
        candidates.append(rpc.get("error", {}).get("data"))
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        candidates.extend(cause.args)
        cause = cause.__cause__ or cause.__context__
    while candidates:
        c = candidates.pop(0)
        if isinstance(c, dict):
            candidates.extend(c.values())
        elif isinstance(c, list | tuple):
            candidates.extend(c)
        elif isinstance(c, bytes | bytearray) and len(c) >= 4:
            return bytes(c)
        elif isinstance(c, str) and re.search(r"reverted: b['\"]", c):
            # eth-tester's eth_call puts the revert bytes' repr into its message.
            try:
                literal = ast.literal_eval(c[c.index("reverted: ") + len("reverted: "):].strip())
            except (ValueError, SyntaxError):
                literal = None
            if isinstance(literal, bytes) and len(literal) >= 4:
                return literal
        elif isinstance(c, str):
            m = re.search(r"0x([0-9a-fA-F]{8}(?:[0-9a-fA-F]{2})*)", c)
            if m and (c.startswith("0x") or "revert" in c.lower() or "data" in c.lower()):
                return bytes.fromhex(m.group(1))
    return None


class FedChain:
    """The FedChain contract at `address` on `chain`, with `account` signing transactions."""

    def __init__(self, chain: Chain, address: str, account: LocalAccount | None = None) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.account = account
        artifact = load_artifact()
        self.abi = artifact["abi"]
        self.contract = chain.w3.eth.contract(address=self.address, abi=self.abi)
        self._errors = _error_table(self.abi)
        self._events = {
            "0x" + bytes(chain.w3.keccak(text=self._event_signature(e))).hex(): e
            for e in self.abi
            if e.get("type") == "event"
        }
        self._topics = {t: e["name"] for t, e in self._events.items()}

    def __repr__(self) -> str:
        return f"FedChain({self.address} on {self.chain.url})"

    def with_account(self, account: LocalAccount) -> FedChain:
        """The same contract, signing as `account`."""
        return FedChain(self.chain, self.address, account)

    @staticmethod
    def _event_signature(item: dict[str, Any]) -> str:
        return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"

    # -- deployment --------------------------------------------------------------------

    @classmethod
    def deploy(
        cls, chain: Chain, account: LocalAccount, aggregator: str | None = None
    ) -> tuple[FedChain, Receipt]:
        """Deploys a new FedChain; `account` becomes the owner."""
        artifact = load_artifact()
        args = abi_encode(["address"], [to_checksum_address(aggregator or account.address)])
        data = artifact["bytecode"] + args.hex()
        errors = _error_table(artifact["abi"])
        receipt = chain.transact(account, {"data": data},
                                 decode_revert=partial(decode_revert, errors))
        if not receipt.contract_address:
            raise TransactionFailed(f"deployment {receipt.tx_hash} created no contract")
        return cls(chain, receipt.contract_address, account), receipt

    @classmethod
    def at(cls, chain: Chain, address: str, account: LocalAccount | None = None) -> FedChain:
        """The FedChain at `address`, checked to hold FedChain's code."""
        code = chain.call(lambda: chain.w3.eth.get_code(to_checksum_address(address)))
        if not code:
            raise DeploymentNotFound(f"no contract at {address} on chain {chain.chain_id}")
        expected = load_artifact()["deployedBytecode"]
        if "0x" + bytes(code).hex() != expected:
            raise DeploymentNotFound(
                f"the contract at {address} is not this version of FedChain (code differs)"
            )
        return cls(chain, address, account)

    # -- plumbing ----------------------------------------------------------------------

    def _view(self, name: str, *args: Any) -> Any:
        fn = getattr(self.contract.functions, name)(*args)
        return self.chain.call(fn.call)

    def _transact(self, name: str, *args: Any) -> Receipt:
        if self.account is None:
            raise ChainError(f"{name}: no account to sign with (use with_account)")
        data = getattr(self.contract.functions, name)(*args)._encode_transaction_data()
        return self.chain.transact(
            self.account, {"to": self.address, "data": data}, decode_revert=self.decode_revert
        )

    def decode_revert(self, exc: Exception) -> Exception:
        """The fedchain exception for a revert: the contract's custom error, decoded."""
        return decode_revert(self._errors, exc)

    # -- membership --------------------------------------------------------------------

    def add_learners(self, learners: Sequence[str]) -> Receipt:
        return self._transact("addLearners", [to_checksum_address(a) for a in learners])

    def remove_learner(self, learner: str) -> Receipt:
        return self._transact("removeLearner", to_checksum_address(learner))

    def set_aggregator(self, aggregator: str) -> Receipt:
        return self._transact("setAggregator", to_checksum_address(aggregator))

    def owner(self) -> str:
        return str(self._view("owner"))

    def aggregator(self) -> str:
        return str(self._view("aggregator"))

    def is_learner(self, address: str) -> bool:
        return bool(self._view("isLearner", to_checksum_address(address)))

    def learner_count(self) -> int:
        return int(self._view("learnerCount"))

    # -- rounds ------------------------------------------------------------------------

    def set_genesis(self, model_cid: CidLike, plan_cid: CidLike) -> Receipt:
        return self._transact("setGenesis", cid_bytes(model_cid), cid_bytes(plan_cid))

    def submit_update(self, round: int, model_cid: CidLike, num_examples: int) -> Receipt:
        return self._transact("submitUpdate", round, cid_bytes(model_cid), num_examples)

    def publish_global(self, round: int, model_cid: CidLike, included: Iterable[str]) -> Receipt:
        """Publishes `round`'s global model; `included` is sorted here as the contract wants."""
        ordered = sorted((to_checksum_address(a) for a in included), key=lambda a: int(a, 16))
        return self._transact("publishGlobal", round, cid_bytes(model_cid), ordered)

    def report_evaluation(self, round: int, num_examples: int, metrics: bytes | str) -> Receipt:
        raw = metrics.encode() if isinstance(metrics, str) else metrics
        return self._transact("reportEvaluation", round, num_examples, raw)

    def finish(self) -> Receipt:
        return self._transact("finish")

    def current_round(self) -> int:
        return int(self._view("currentRound"))

    def finished(self) -> bool:
        return bool(self._view("finished"))

    def genesis(self) -> bytes:
        return bytes(self._view("genesis"))

    def plan(self) -> bytes:
        return bytes(self._view("plan"))

    def global_model(self, round: int) -> bytes:
        return bytes(self._view("globalModel", round))

    def has_submitted(self, round: int, learner: str) -> bool:
        return bool(self._view("hasSubmitted", round, to_checksum_address(learner)))

    def has_reported(self, round: int, learner: str) -> bool:
        return bool(self._view("hasReported", round, to_checksum_address(learner)))

    # -- events ------------------------------------------------------------------------

    def decode_log(self, log: Any) -> Event | None:
        """The typed event of a raw log of this contract (None for a foreign log)."""
        topic0 = "0x" + bytes(log["topics"][0]).hex() if log["topics"] else ""
        abi = self._events.get(topic0)
        if abi is None:
            return None
        # Decoded with eth_abi directly: web3's process_log is several times slower, which
        # dominates audits of long federations.
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
            fields[_snake(item["name"])] = _convert(value)
        name = abi["name"]
        return _EVENT_TYPES[name](
            block=int(log["blockNumber"]),
            tx="0x" + bytes(log["transactionHash"]).hex(),
            log_index=int(log["logIndex"]),
            **fields,
        )

    def events(
        self,
        *names: str,
        round: int | None = None,
        from_block: int = 0,
        to_block: int | None = None,
        page: int = 10_000,
    ) -> Iterator[Event]:
        """This contract's events in chain order, optionally only `names` and one `round`.

        Filtering by name and round happens in the node (topics), paged by block range.
        """
        wanted = set(names) or set(_EVENT_TYPES)
        topic0 = [t for t, n in self._topics.items() if n in wanted]
        topics: list[Any] = [topic0]
        if round is not None:
            topics.append("0x" + round.to_bytes(32, "big").hex())
        for log in self.chain.iter_logs(self.address, topics, from_block, to_block, page):
            event = self.decode_log(log)
            if event is not None:
                yield event

    def updates(self, round: int, **kw: Any) -> list[UpdateSubmitted]:
        """The updates submitted in `round`, in chain order."""
        return [e for e in self.events("UpdateSubmitted", round=round, **kw)
                if isinstance(e, UpdateSubmitted)]

    def learners(self) -> list[str]:
        """The registered learners, from the membership events."""
        active: dict[str, bool] = {}
        for e in self.events("LearnerAdded", "LearnerRemoved"):
            active[e.learner] = isinstance(e, LearnerAdded)  # type: ignore[attr-defined]
        return [a for a, on in active.items() if on]


def decode_revert(errors: dict[bytes, tuple[str, list[str]]], exc: Exception) -> Exception:
    """The contract's custom error behind a failed call, decoded; else TransactionFailed."""
    data = _revert_data(exc)
    if data is not None and data[:4] in errors:
        name, types = errors[data[:4]]
        values = abi_decode(types, data[4:]) if types else ()
        return REVERTS[name](*(_convert(v) for v in values))
    return TransactionFailed(f"transaction failed: {exc}")
