"""Typed bindings of the FedChain contract: a read-only one, and one that signs transactions.

`FedChainReader` reads state and events and needs no key; `FedChain` adds the transactions,
signed by its account, so "no account to sign with" is a type, found before anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, overload

from eth_abi import encode as abi_encode
from eth_abi.exceptions import EncodingError
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from ..errors import (
    ConfigError,
    DeploymentNotFound,
    RevealNotOpen,
    RoundNotExpired,
    SeedNotReady,
    TransactionFailed,
    VotingNotOpen,
)
from ..protocol.params import RoundParams
from ..protocol.rules import (
    BLOCKHASH_REACH,
    draw_seed,
    is_selected,
    learner_key,
    sample_of,
    seed_anchor,
    vote_digest,
)
from ..storage.cid import CidLike, cid_bytes
from .artifact import load_artifact
from .bitmap import from_bits, to_bits
from .chain import Chain, Receipt
from .events import (
    EVENT_TYPES,
    Event,
    EventDecoder,
    GenesisSet,
    GlobalModelPublished,
    LearnerAdded,
    LearnerRemoved,
    UnavailableReported,
    UpdateSubmitted,
    Voted,
)
from .gas import FLAT_GAS, LEARNER_BATCH, headroom, time_gated_limit
from .reverts import decode_revert, error_table

ZERO_ADDRESS = "0x" + "00" * 20
#: Fields of the contract's round parameters that fit a uint24 (seconds, ppm) or less.
_UINT24 = 2**24 - 1


@dataclass(frozen=True)
class RoundInfo:
    """The open round's timing, as the contract sees it (deadlines are block timestamps)."""

    round: int
    opened_at: int
    update_deadline: int
    reveal_deadline: int
    vote_deadline: int
    frozen: bool


def _abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param.get("components", []))
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def _call_table(abi: list[dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """Function name -> (selector hex, input types) for the ABI's functions that are not
    overloaded."""
    functions = [f for f in abi if f.get("type") == "function"]
    names = [f["name"] for f in functions]
    table = {}
    for f in functions:
        if names.count(f["name"]) != 1:
            continue
        types = [_abi_type(p) for p in f.get("inputs", [])]
        selector = keccak(text=f"{f['name']}({','.join(types)})")[:4].hex()
        table[f["name"]] = (selector, types)
    return table


class FedChainReader:
    """The FedChain contract at `address` on `chain`: views and events, no signing."""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.abi = load_artifact()["abi"]
        self.contract = chain.w3.eth.contract(address=self.address, abi=self.abi)
        self._errors = error_table(self.abi)
        self._decoder = EventDecoder(self.abi, chain.w3.keccak)
        self._by_index: dict[int, str] = {}
        self._index_of: dict[str, int] = {}
        self._calls: dict[str, tuple[str, list[str]]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address} on {self.chain.url})"

    def with_account(self, account: LocalAccount) -> FedChain:
        """The same contract, signing as `account`."""
        return FedChain(self.chain, self.address, account)

    def _encode(self, name: str, args: tuple[Any, ...]) -> str:
        """The call data of `name(*args)`: the selector and eth-abi's encoding, from a table
        made once per binding (web3's contract-function objects cost ~0.4 ms a call, which
        a pool of learners pays thousands of times a round); web3's own encoding, with its
        checks and messages, for anything the table does not cover or eth-abi refuses."""
        table = self._calls
        if table is None:
            table = self._calls = _call_table(self.abi)
        entry = table.get(name)
        if entry is not None:
            selector, types = entry
            try:
                return "0x" + selector + abi_encode(types, args).hex()
            except (EncodingError, TypeError, ValueError, OverflowError):
                pass  # web3 below says what is wrong, as it always did
        return getattr(self.contract.functions, name)(*args)._encode_transaction_data()

    def _view(self, name: str, *args: Any) -> Any:
        fn = getattr(self.contract.functions, name)(*args)
        return self.chain.call(fn.call)

    def decode_revert(self, exc: Exception) -> Exception:
        """The fedchain exception for a revert: the contract's custom error, decoded."""
        return decode_revert(self._errors, exc)

    # -- state -------------------------------------------------------------------------

    def owner(self) -> str:
        return str(self._view("owner"))

    def owner_delay(self) -> int:
        """Seconds between announcing an owner change after genesis and making it (0: none)."""
        return int(self._view("ownerDelay"))

    def change_hash(self, function: str, *args: Any) -> bytes:
        """The change `function(*args)` is announced and approved as: keccak256 of its
        calldata, e.g. change_hash("removeLearner", address)."""
        return bytes(keccak(hexstr=self._encode(function, _normalized(args))))

    def change_ready_at(self, change: bytes) -> int:
        """When the owner may make `change`: 0 not announced, 1 approved by the committee,
        else a block timestamp."""
        return int(self._view("changeReadyAt", change))

    def pending_owner(self) -> str | None:
        """The account an ownership transfer in progress goes to, None when none is."""
        pending = str(self._view("pendingOwner"))
        return None if int(pending, 16) == 0 else pending

    def aggregator(self) -> str:
        """The committee's first member (the aggregator, for a committee of one)."""
        return str(self._view("aggregator"))

    def committee(self) -> tuple[list[str], int]:
        """The committee of aggregators and its quorum."""
        members, quorum = self._view("committee")
        return [to_checksum_address(m) for m in members], int(quorum)

    def is_aggregator(self, address: str) -> bool:
        return bool(self._view("isAggregator", to_checksum_address(address)))

    def learner_index(self, address: str) -> int:
        """`address`'s 1-based learner index (0: never registered)."""
        return int(self._view("learnerIndex", to_checksum_address(address)))

    def learner_slots(self) -> int:
        return int(self._view("learnerSlots"))

    def is_learner(self, address: str) -> bool:
        return bool(self._view("isLearner", to_checksum_address(address)))

    def learner_count(self) -> int:
        return int(self._view("learnerCount"))

    def current_round(self) -> int:
        return int(self._view("currentRound"))

    def finished(self) -> bool:
        return bool(self._view("finished"))

    def genesis(self) -> bytes:
        """The genesis model's CID bytes (empty before genesis)."""
        return self.global_model(0)

    def genesis_event(self) -> GenesisSet | None:
        for e in self.events("GenesisSet"):
            if isinstance(e, GenesisSet):
                return e
        return None

    def plan(self) -> bytes:
        return bytes(self._view("plan"))

    def params(self) -> RoundParams:
        """The round parameters fixed at genesis (all zero before it)."""
        return RoundParams(*(int(v) for v in self._view("params")))

    def block_time(self) -> int:
        """The earliest timestamp the next block can have: the clock the contract's deadlines
        run on. Dev chains mine only when a transaction comes, so an idle chain's latest block
        lags: the next one is stamped at least now, and no earlier than the latest (Ganache
        stamps two blocks mined in one second alike, so not latest + 1: a vote sent when
        latest + 1 passed a deadline could land in the deadline's own second and revert)."""
        latest = int(self.chain.call(lambda: self.chain.w3.eth.get_block("latest")["timestamp"]))
        return max(latest, int(time.time()))

    def round_info(self) -> RoundInfo:
        r, opened, update, reveal, vote, frozen = self._view("roundInfo")
        return RoundInfo(int(r), int(opened), int(update), int(reveal), int(vote), bool(frozen))

    def latest_global(self) -> tuple[int, bytes]:
        """The last closed round (0: genesis) and its global model's CID bytes."""
        round, cid = self._view("latestGlobal")
        return int(round), bytes(cid)

    def global_model(self, round: int) -> bytes:
        """`round`'s global model CID bytes (0: genesis); empty if not published (yet).

        The contract stores only the latest; earlier ones come from its events."""
        latest, cid = self.latest_global()
        if not cid or round > latest:
            return b""
        if round == latest:
            return cid
        if round == 0:
            e = self.genesis_event()
            return e.model_cid.raw if e is not None else b""
        for g in self.events("GlobalModelPublished", round=round):
            if isinstance(g, GlobalModelPublished):
                return g.model_cid.raw
        return b""

    def published(self, round: int) -> GlobalModelPublished | None:
        """The event that closed `round` (None while it is open)."""
        for g in self.events("GlobalModelPublished", round=round):
            if isinstance(g, GlobalModelPublished):
                return g
        return None

    def round_seed(self) -> bytes:
        """The open round's sampling seed (zero without sampling): see `open_round_seed`."""
        return self.open_round_seed()[1]

    def seed_block(self) -> int:
        """The block the open round opened in while its sampling seed is not drawn yet; 0
        once drawn, or without sampling."""
        return int(self._view("seedBlock"))

    def open_round_seed(self) -> tuple[int, bytes, int | None]:
        """(the open round, its sampling seed (zero without sampling), the last head block
        for which that seed holds: None once drawn, final).

        The round's first submission (or `seedRound`) draws the seed, in a block after the one
        the round opened in, from that block's hash (`RoundSeeded`); until then it is computed
        here the same way, for a transaction in the block after the head, from the hash of
        the opening block as the node serves it (past 256 blocks, of the anchor block the
        contract would use: `rules.seed_anchor`), so who is selected is known before anyone
        submits — even in the opening block, where the contract's views cannot know it."""
        opened = int(self._view("seedBlock"))
        word = bytes(self._view("roundSeed"))
        round = self.current_round()
        if opened == 0:
            return round, word, None
        head = self.chain.block_number()
        anchor = seed_anchor(opened, max(head + 1, opened + 1))
        n, k = sample_of(word)
        block_hash = bytes(self.chain.call(lambda: self.chain.w3.eth.get_block(anchor)["hash"]))
        return (round, draw_seed(block_hash, self.address, round, n, k),
                anchor + BLOCKHASH_REACH - 1)

    def is_selected(self, learner: str) -> bool:
        """Whether `learner` is sampled for the open round (always, without sampling), by
        `round_seed` (which knows the seed before it is drawn on chain)."""
        index = self.learner_index(learner)
        if index == 0:
            return False
        select_ppm = self.params().select_ppm
        if select_ppm == 0:
            return True
        return is_selected(self.round_seed(), index, select_ppm)

    def sample_position(self, seed: bytes, index: int) -> int | None:
        """Learner `index`'s place in the permutation a round's `seed` draws, as the contract
        computes it (selected iff below the seed's sample size); None outside 1..n.
        `fedchain.protocol.rules.sample_position` is the same rule without a chain."""
        place = int(self._view("samplePosition", bytes(seed), index))
        return None if place == 2**256 - 1 else place

    def submitted_bits(self, round: int) -> list[int]:
        return [int(w) for w in self._view("submittedBits", round)]

    def active_bits(self) -> list[int]:
        return [int(w) for w in self._view("activeBits")]

    def votes(self, round: int, digest: bytes) -> int:
        """Current committee votes for `digest` in open `round` (0: genesis)."""
        return int(self._view("votes", round, digest))

    def commitment(self, round: int, learner: str) -> bytes:
        return bytes(self._view("commitment", round, to_checksum_address(learner)))

    def has_submitted(self, round: int, learner: str) -> bool:
        return bool(self._view("hasSubmitted", round, to_checksum_address(learner)))

    def has_reported(self, round: int, learner: str) -> bool:
        return bool(self._view("hasReported", round, to_checksum_address(learner)))

    def dispute_count(self, round: int) -> int:
        """How many active learners disputed `round` (each counted once)."""
        return int(self._view("disputeCount", round))

    def has_disputed(self, round: int, learner: str) -> bool:
        return bool(self._view("hasDisputed", round, to_checksum_address(learner)))

    def voidable(self, round: int) -> bool:
        """Whether `round` is the latest closed round and more than half of the active
        learners disputed it (what voidRound checks first; it also needs `round` to have
        closed on a committee vote, not voided already)."""
        latest, _ = self.latest_global()
        return (round >= 1 and round == latest
                and 2 * self.dispute_count(round) > self.learner_count())

    def result_digest(self, round: int) -> bytes | None:
        """The digest of the result `round` closed on (what its quorum voted for), from its
        GlobalModelPublished event; None while it is open."""
        published = self.published(round)
        if published is None:
            return None
        return vote_digest(published.model_cid.raw, published.state_cid.raw, published.bits)

    # -- events ------------------------------------------------------------------------

    def decode_log(self, log: Any) -> Event | None:
        """The typed event of a raw log of this contract (None for a foreign log); bitmaps of
        learner indices come with the learners' addresses."""
        event = self._decoder.decode(log)
        if isinstance(event, Voted | GlobalModelPublished) and event.bits:
            learners = sorted(self.addresses(from_bits(event.bits)), key=learner_key)
            event = replace(event, included=tuple(learners))
        elif isinstance(event, UnavailableReported) and event.bits:
            learners = sorted(self.addresses(from_bits(event.bits)), key=learner_key)
            event = replace(event, learners=tuple(learners))
        return event

    def addresses(self, indices: Iterable[int]) -> list[str]:
        """The learners at 1-based `indices` (from the LearnerAdded events, cached)."""
        wanted = list(indices)
        if any(i not in self._by_index for i in wanted):
            for e in self.events("LearnerAdded"):
                if isinstance(e, LearnerAdded):
                    self._by_index[e.index] = e.learner
                    self._index_of[e.learner] = e.index
        missing = [i for i in wanted if i not in self._by_index]
        if missing:
            raise ConfigError(f"no learner registered at index {missing[0]}")
        return [self._by_index[i] for i in wanted]

    def indices(self, learners: Iterable[str]) -> list[int]:
        """The 1-based learner indices of `learners` (cached after the first look-up)."""
        out = []
        for a in learners:
            address = to_checksum_address(a)
            index = self._index_of.get(address)
            if index is None:
                index = self.learner_index(address)
                if index == 0:
                    raise ConfigError(f"{address} was never registered as a learner")
                self._index_of[address] = index
                self._by_index[index] = address
            out.append(index)
        return out

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
        cls,
        chain: Chain,
        account: LocalAccount,
        aggregator: str | Sequence[str] | None = None,
        quorum: int | None = None,
        owner_delay: int = 0,
    ) -> tuple[FedChain, Receipt]:
        """Deploys a new FedChain; `account` becomes the owner. `aggregator` is one account or
        a committee (`quorum` of them must agree; default: a majority). After genesis, the
        owner's changes of the learners and the committee need an announcement `owner_delay`
        seconds old (or the committee's approval); 0: they take effect at once."""
        artifact = load_artifact()
        members = [aggregator or account.address] if isinstance(aggregator, str | None) else list(
            aggregator)
        quorum = quorum if quorum is not None else len(members) // 2 + 1
        args = abi_encode(["address[]", "uint256", "uint256"],
                          [[to_checksum_address(m) for m in members], quorum, owner_delay])
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
        data = self._encode(name, args)
        tx = {"to": self.address, "data": data}
        try:
            return self.chain.transact(self.account, tx, decode_revert=self.decode_revert,
                                       headroom=headroom(name))
        except (RoundNotExpired, VotingNotOpen, RevealNotOpen) as exc:
            # Refused at estimation on an idle chain whose latest block predates a deadline
            # that this machine's clock says has passed: sent with a fixed limit (see
            # gas.TIME_GATED_GAS); mined in a block stamped now, or reverting as it was.
            limit = time_gated_limit(name, args)
            if limit is None or exc.tx_hash is not None or not self._deadline_passed(exc):
                raise
            return self.chain.transact(self.account, {**tx, "gas": limit},
                                       decode_revert=self.decode_revert)
        except SeedNotReady as exc:
            # Estimated in the round's opening block (a node that estimates at its latest
            # block): the transaction lands in a later one, where the seed is known.
            limit = FLAT_GAS.get(name)
            if limit is None or exc.tx_hash is not None:
                raise
            return self.chain.transact(self.account, {**tx, "gas": limit},
                                       decode_revert=self.decode_revert)

    def _deadline_passed(self, exc: Exception) -> bool:
        """Whether the next block will be stamped past the deadline a time-gated revert names
        (its `opensAfter`/`deadline` field; else the open round's vote deadline)."""
        fields = getattr(exc, "fields", {}) or {}
        when = fields.get("opensAfter", fields.get("deadline"))
        if when is None:
            when = self.round_info().vote_deadline
        return self.block_time() > int(when)

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

    def set_committee(self, members: Sequence[str], quorum: int) -> Receipt:
        return self._transact("setCommittee", [to_checksum_address(m) for m in members], quorum)

    def transfer_ownership(self, new_owner: str | None) -> Receipt:
        """Owner only: offers ownership to `new_owner`, who takes it with accept_ownership;
        None (or the zero address) withdraws a pending offer."""
        return self._transact("transferOwnership", to_checksum_address(new_owner or ZERO_ADDRESS))

    def accept_ownership(self) -> Receipt:
        """The pending owner only: takes over the ownership offered by transfer_ownership."""
        return self._transact("acceptOwnership")

    def renounce_ownership(self) -> Receipt:
        """Owner only: gives the ownership up for good (learners and committee then change
        only through void_round)."""
        return self._transact("renounceOwnership")

    def announce_change(self, function: str, *args: Any) -> Receipt:
        """Owner only: announces `function(*args)` (e.g. "removeLearner", address), which it
        may then call `owner_delay` seconds of block time later."""
        return self._transact("announceChange", self.change_hash(function, *args))

    def cancel_change(self, function: str, *args: Any) -> Receipt:
        """Owner only: withdraws an announced or approved `function(*args)`."""
        return self._transact("cancelChange", self.change_hash(function, *args))

    def approve_change(self, function: str, *args: Any) -> Receipt:
        """A committee member's approval of the owner's `function(*args)`: with a quorum of
        them the owner may make it at once."""
        return self._transact("approveChange", self.change_hash(function, *args))

    def set_genesis(self, model_cid: CidLike, plan_cid: CidLike,
                    params: RoundParams | int) -> Receipt:
        """A committee member's vote for the genesis model, plan and round parameters (an int:
        that many rounds, no deadlines); with a quorum, round 1 opens."""
        p = RoundParams(params) if isinstance(params, int) else params
        return self._transact("setGenesis", cid_bytes(model_cid), cid_bytes(plan_cid),
                              p.as_tuple())

    def submit_update(self, round: int, model_cid: CidLike, num_examples: int) -> Receipt:
        return self._transact("submitUpdate", round, cid_bytes(model_cid), num_examples)

    def seed_round(self, round: int) -> Receipt:
        """Draws open `round`'s sampling seed now if still pending (anyone may; see the
        contract's seedRound): the seed then stays the one its opening block's hash gives,
        however late the first submission comes."""
        return self._transact("seedRound", round)

    def commit_update(self, round: int, commitment: bytes) -> Receipt:
        """Commit-reveal mode: commits to `bitmap.commitment(...)` of the update to reveal."""
        return self._transact("commitUpdate", round, commitment)

    def reveal_update(self, round: int, model_cid: CidLike, num_examples: int,
                      salt: bytes) -> Receipt:
        return self._transact("revealUpdate", round, cid_bytes(model_cid), num_examples, salt)

    def bitmaps(self, round: int, included: Iterable[str],
                seen: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
        """The included and seen bitmaps a vote on `round` takes (seen: read now if None)."""
        seen = self.submitted_bits(round) if seen is None else list(seen)
        return to_bits(self.indices(included), len(seen)), seen

    def publish_global(
        self,
        round: int,
        model_cid: CidLike,
        included: Iterable[str],
        *,
        state_cid: CidLike | None = None,
        seen: Sequence[int] | None = None,
    ) -> Receipt:
        """A committee member's vote for `round`'s global model (with a quorum, it is
        published): `included` are learner addresses; `seen` the round's submitted bitmap the
        vote accounts for (read now when None)."""
        bits, seen_bits = self.bitmaps(round, included, seen)
        state = cid_bytes(state_cid) if state_cid is not None else b""
        return self._transact("publishGlobal", round, cid_bytes(model_cid), state, bits,
                              seen_bits)

    def report_unavailable(self, round: int, learners: Iterable[str],
                           *, seen: Sequence[int] | None = None) -> Receipt:
        """A committee member's record that it could not fetch these learners' submissions of
        the open `round` within their deadlines (UnavailableReported): the evidence that
        excuses leaving them out (SPEC.md §7.4)."""
        bits, _ = self.bitmaps(round, learners, seen)
        return self._transact("reportUnavailable", round, bits)

    def post_secagg(self, round: int, kind: int, data: bytes) -> Receipt:
        """A secure-aggregation message in the open `round` (SecaggPosted; SPEC.md §14): kind 0
        the sender's round keys (a learner's with its dealing), by the update deadline; kind 1
        a committee member's revealed share keys, after it."""
        return self._transact("postSecagg", round, kind, bytes(data))

    def close_round(self, round: int) -> Receipt:
        """Anyone, past the vote deadline without a quorum: closes `round`, carried over."""
        return self._transact("closeRound", round)

    def dispute(self, round: int, computed_cid: CidLike) -> Receipt:
        """A learner's record that it re-derived `round`'s model as `computed_cid`."""
        return self._transact("dispute", round, cid_bytes(computed_cid))

    def void_round(self, round: int, digest: bytes | None = None) -> Receipt:
        """Anyone, once more than half of the active learners disputed the latest closed
        `round`: voids its result (model restored, its voters evicted; see RoundVoided).
        `digest`: the result the round closed on (default: read from its event)."""
        if digest is None:
            digest = self.result_digest(round) or bytes(32)
        return self._transact("voidRound", round, digest)

    def report_evaluation(self, round: int, num_examples: int, metrics: bytes | str) -> Receipt:
        raw = metrics.encode() if isinstance(metrics, str) else metrics
        return self._transact("reportEvaluation", round, num_examples, raw)

    def finish(self) -> Receipt:
        return self._transact("finish")


def _normalized(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`args` as the binding's own transactions pass them (addresses checksummed, sequences
    as lists), so that a change's hash is the hash of the call made later."""
    def norm(v: Any) -> Any:
        if isinstance(v, str) and v.startswith("0x") and len(v) == 42:
            return to_checksum_address(v)
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return v
    return tuple(norm(a) for a in args)


def require_signer(contract: FedChainReader, who: str) -> FedChain:
    """`contract` as a signing binding, or ConfigError naming `who` needs one."""
    if not isinstance(contract, FedChain):
        raise ConfigError(f"{who}'s contract binding needs a signing account (with_account)")
    return contract
