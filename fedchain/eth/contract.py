"""Typed bindings of the FedChain contract: a read-only one, and one that signs transactions.

`FedChainReader` reads state and events and needs no key; `FedChain` adds the transactions,
signed by its account, so "no account to sign with" is a type, found before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any, overload

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from ..errors import ConfigError, DeploymentNotFound, TransactionFailed
from ..storage.cid import CidLike, cid_bytes
from .accounts import learner_key
from .artifact import load_artifact
from .chain import Chain, Receipt
from .events import EVENT_TYPES, Event, EventDecoder, LearnerAdded, LearnerRemoved, UpdateSubmitted
from .reverts import decode_revert, error_table

ZERO_ADDRESS = "0x" + "00" * 20
#: Learners registered per transaction (one block has a gas limit).
LEARNER_BATCH = 100


class FedChainReader:
    """The FedChain contract at `address` on `chain`: views and events, no signing."""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.abi = load_artifact()["abi"]
        self.contract = chain.w3.eth.contract(address=self.address, abi=self.abi)
        self._errors = error_table(self.abi)
        self._decoder = EventDecoder(self.abi, chain.w3.keccak)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address} on {self.chain.url})"

    def with_account(self, account: LocalAccount) -> FedChain:
        """The same contract, signing as `account`."""
        return FedChain(self.chain, self.address, account)

    def _view(self, name: str, *args: Any) -> Any:
        fn = getattr(self.contract.functions, name)(*args)
        return self.chain.call(fn.call)

    def decode_revert(self, exc: Exception) -> Exception:
        """The fedchain exception for a revert: the contract's custom error, decoded."""
        return decode_revert(self._errors, exc)

    # -- state -------------------------------------------------------------------------

    def owner(self) -> str:
        return str(self._view("owner"))

    def pending_owner(self) -> str | None:
        """The account an ownership transfer in progress goes to, None when none is."""
        pending = str(self._view("pendingOwner"))
        return None if int(pending, 16) == 0 else pending

    def aggregator(self) -> str:
        return str(self._view("aggregator"))

    def is_learner(self, address: str) -> bool:
        return bool(self._view("isLearner", to_checksum_address(address)))

    def learner_count(self) -> int:
        return int(self._view("learnerCount"))

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
        return self._decoder.decode(log)

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
        topics: list[Any] = [self._decoder.topic0(set(names) or set(EVENT_TYPES))]
        if round is not None:
            topics.append("0x" + round.to_bytes(32, "big").hex())
        for log in self.chain.iter_logs(self.address, topics, from_block, to_block, page):
            event = self.decode_log(log)
            if event is not None:
                yield event

    def updates(self, round: int, **kw: Any) -> list[UpdateSubmitted]:
        """The updates submitted in `round`, in chain order."""
        return [
            e for e in self.events("UpdateSubmitted", round=round, **kw)
            if isinstance(e, UpdateSubmitted)
        ]

    def learners(self) -> list[str]:
        """The registered learners, from the membership events."""
        active: dict[str, bool] = {}
        for e in self.events("LearnerAdded", "LearnerRemoved"):
            if isinstance(e, LearnerAdded | LearnerRemoved):
                active[e.learner] = isinstance(e, LearnerAdded)
        return [a for a, on in active.items() if on]


class FedChain(FedChainReader):
    """The FedChain contract at `address` on `chain`, with `account` signing transactions."""

    def __init__(self, chain: Chain, address: str, account: LocalAccount) -> None:
        if account is None:
            raise ConfigError("a signing FedChain binding needs an account (use FedChainReader)")
        super().__init__(chain, address)
        self.account = account

    # -- deployment --------------------------------------------------------------------

    @classmethod
    def deploy(
        cls, chain: Chain, account: LocalAccount, aggregator: str | None = None
    ) -> tuple[FedChain, Receipt]:
        """Deploys a new FedChain; `account` becomes the owner."""
        artifact = load_artifact()
        args = abi_encode(["address"], [to_checksum_address(aggregator or account.address)])
        data = artifact["bytecode"] + args.hex()
        errors = error_table(artifact["abi"])
        receipt = chain.transact(account, {"data": data},
                                 decode_revert=partial(decode_revert, errors))
        if not receipt.contract_address:
            raise TransactionFailed(f"deployment {receipt.tx_hash} created no contract",
                                    url=chain.url, tx_hash=receipt.tx_hash)
        return cls(chain, receipt.contract_address, account), receipt

    @overload
    @classmethod
    def at(cls, chain: Chain, address: str) -> FedChainReader: ...

    @overload
    @classmethod
    def at(cls, chain: Chain, address: str, account: LocalAccount) -> FedChain: ...

    @overload
    @classmethod
    def at(
        cls, chain: Chain, address: str, account: LocalAccount | None
    ) -> FedChainReader: ...

    @classmethod
    def at(
        cls, chain: Chain, address: str, account: LocalAccount | None = None
    ) -> FedChainReader:
        """The FedChain at `address`, checked to hold FedChain's code; signing if given an
        account, read-only otherwise."""
        code = chain.call(lambda: chain.w3.eth.get_code(to_checksum_address(address)))
        if not code:
            raise DeploymentNotFound(f"no contract at {address} on chain {chain.chain_id}",
                                     url=chain.url)
        expected = load_artifact()["deployedBytecode"]
        if "0x" + bytes(code).hex() != expected:
            raise DeploymentNotFound(
                f"the contract at {address} is not this version of FedChain (code differs)",
                url=chain.url,
            )
        return FedChainReader(chain, address) if account is None else cls(chain, address, account)

    def _transact(self, name: str, *args: Any) -> Receipt:
        data = getattr(self.contract.functions, name)(*args)._encode_transaction_data()
        return self.chain.transact(
            self.account, {"to": self.address, "data": data}, decode_revert=self.decode_revert
        )

    # -- transactions ------------------------------------------------------------------

    def add_learners(self, learners: Sequence[str]) -> Receipt:
        return self._transact("addLearners", [to_checksum_address(a) for a in learners])

    def register_learners(self, learners: Sequence[str]) -> list[Receipt]:
        """Adds `learners` in batches of LEARNER_BATCH, so any number fits the block gas limit."""
        return [
            self.add_learners(learners[i : i + LEARNER_BATCH])
            for i in range(0, len(learners), LEARNER_BATCH)
        ]

    def remove_learner(self, learner: str) -> Receipt:
        return self._transact("removeLearner", to_checksum_address(learner))

    def set_aggregator(self, aggregator: str) -> Receipt:
        return self._transact("setAggregator", to_checksum_address(aggregator))

    def transfer_ownership(self, new_owner: str | None) -> Receipt:
        """Owner only: offers ownership to `new_owner`, who takes it with accept_ownership;
        None (or the zero address) withdraws a pending offer."""
        return self._transact("transferOwnership", to_checksum_address(new_owner or ZERO_ADDRESS))

    def accept_ownership(self) -> Receipt:
        """The pending owner only: takes over the ownership offered by transfer_ownership."""
        return self._transact("acceptOwnership")

    def set_genesis(self, model_cid: CidLike, plan_cid: CidLike) -> Receipt:
        return self._transact("setGenesis", cid_bytes(model_cid), cid_bytes(plan_cid))

    def submit_update(self, round: int, model_cid: CidLike, num_examples: int) -> Receipt:
        return self._transact("submitUpdate", round, cid_bytes(model_cid), num_examples)

    def publish_global(self, round: int, model_cid: CidLike, included: Iterable[str]) -> Receipt:
        """Publishes `round`'s global model; `included` is sorted here as the contract wants."""
        ordered = sorted((to_checksum_address(a) for a in included), key=learner_key)
        return self._transact("publishGlobal", round, cid_bytes(model_cid), ordered)

    def report_evaluation(self, round: int, num_examples: int, metrics: bytes | str) -> Receipt:
        raw = metrics.encode() if isinstance(metrics, str) else metrics
        return self._transact("reportEvaluation", round, num_examples, raw)

    def finish(self) -> Receipt:
        return self._transact("finish")


def require_signer(contract: FedChainReader, who: str) -> FedChain:
    """`contract` as a signing binding, or ConfigError naming `who` needs one."""
    if not isinstance(contract, FedChain):
        raise ConfigError(f"{who}'s contract binding needs a signing account (with_account)")
    return contract
