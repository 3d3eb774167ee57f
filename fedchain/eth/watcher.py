"""ChainWatcher: one thread per process follows a FedChain contract, block by block.

Every learner and the aggregator used to poll the chain on their own (several views every
0.2 s each). A watcher polls only the block number, at a configurable interval; when new
blocks appear it reads, in ONE request where the node takes JSON-RPC batches (Anvil, Ganache,
Hardhat, geth), the contract's logs over the new block range and a few views at the new head
(by default `currentRound` and `finished`). What it learns is kept as a cheap `Snapshot`
(the latest block, those views, how many events), and the decoded events are handed out in
chain order, each exactly once:

    watcher = ChainWatcher(contract, interval=0.1).start()
    snap = watcher.wait_until(lambda s: s.round >= 2, timeout=60)   # no polling of its own
    events, cursor = watcher.events_since(0)

Subscribers wait on a `threading.Condition` (`wait`, `wait_until`) or get a callback on the
watcher's thread (`subscribe`). Transient failures (the node down or restarting, a request
timing out) are logged and retried with backoff as `fedchain.federation.outage` does; an
outage longer than `max_outage` seconds ends the watcher, and every waiter gets the error.
A chain that goes back (a dev node restarted without its state, a reorg) is followed from its
new head, with a warning; events already handed out are not taken back.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, cast

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from web3.exceptions import Web3RPCError
from web3.types import BlockIdentifier, FilterParams, RPCEndpoint

from ..errors import ChainUnavailable, FedChainError, TransactionTimeout
from ..protocol.rules import is_selected
from ..storage.cid import CidLike
from .chain import Receipt
from .contract import FedChain, FedChainReader, RoundParams
from .events import (
    EvaluationReported,
    Event,
    GenesisSet,
    GlobalModelPublished,
    LearnerAdded,
    RoundSeeded,
    UpdateSubmitted,
)
from .gas import DEFAULT_TIP, eip1559_fees

log = logging.getLogger("fedchain.watcher")

#: Errors that mean "the node is not answering now", not "this is wrong".
TRANSIENT = (ChainUnavailable, TransactionTimeout)
#: Views read at every new head by default: snapshot name → contract function (no arguments).
DEFAULT_VIEWS: Mapping[str, str] = MappingProxyType(
    {"round": "currentRound", "finished": "finished"}
)
#: Widest block range read in one batch; wider catch-ups page through Chain.iter_logs.
BATCH_RANGE = 2_000

Callback = Callable[["Snapshot", list[Event]], None]


@dataclass(frozen=True)
class Snapshot:
    """What the watcher knows, as of `block`: cheap to copy, never changed once made."""

    #: The latest block read (-1 before the first read).
    block: int = -1
    #: Bumped at every change (new block or new events): a waiter's "since" token.
    version: int = 0
    #: Contract views read at `block` (by default `round` and `finished`).
    views: Mapping[str, Any] = field(default_factory=dict)
    #: Events seen since the watcher's first block (a cursor for `events_since`).
    events: int = 0
    #: When (time.monotonic()) this snapshot was made.
    at: float = 0.0
    #: The base fee of `block` (None: a chain without EIP-1559 fees, or not read yet).
    base_fee: int | None = None

    @property
    def round(self) -> int:
        """The contract's open round at `block` (0 before genesis)."""
        return int(self.views.get("round", 0))

    @property
    def finished(self) -> bool:
        return bool(self.views.get("finished", False))


class WatcherStopped(FedChainError):
    """The watcher was stopped, or gave up after an outage longer than its `max_outage`."""


class ChainWatcher:
    """Follows `contract` on its chain from one thread; see the module documentation.

    `from_block`: the first block whose events are delivered (default: the head when the
    watcher starts, so only events from then on). `views`: snapshot name → name of a contract
    function without arguments, read at every new head. `keep_events`: how many decoded events
    to keep for `events_since` (older ones are dropped; callbacks still see every one).
    """

    def __init__(
        self,
        contract: FedChainReader,
        *,
        interval: float = 0.2,
        from_block: int | None = None,
        views: Mapping[str, str] = DEFAULT_VIEWS,
        keep_events: int = 1_000_000,
        max_outage: float = 600.0,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
    ) -> None:
        self.contract = contract
        self.chain = contract.chain
        self.interval = interval
        self.max_outage = max_outage
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._views = dict(views)
        self._from_block = from_block
        self._next_block: int | None = None  # first block not read yet
        self._cond = threading.Condition()
        self._snapshot = Snapshot()
        self._events: list[Event] = []
        self._dropped = 0  # events dropped from the front of _events
        self._keep = max(1, keep_events)
        self._callbacks: list[Callback] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        #: Requests sent to the node (a batch counts once): what the watcher costs.
        self.requests = 0
        #: What the events said, for WatchedFedChain: the block each round opened in, the
        #: global model of each round (0: genesis), who submitted and reported in which round.
        self._opened: dict[int, int] = {}
        self._models: dict[int, bytes] = {}
        self._submitted: set[tuple[int, str]] = set()
        self._reported: set[tuple[int, str]] = set()
        self._seeds: dict[int, bytes] = {}
        #: round -> (the seed the contract will draw, the last head block it holds for).
        self._predicted: dict[int, tuple[bytes, int | None]] = {}
        self._updates: dict[int, list[UpdateSubmitted]] = {}
        self._learners: dict[str, int] = {}  # learner -> index, from LearnerAdded
        self._params: RoundParams | None = None
        self._report_count: dict[int, int] = {}
        #: Fee tip used by `fees` (what Chain uses when the node does not suggest one).
        self.tip = DEFAULT_TIP
        self._state_by_number = True

    def __repr__(self) -> str:
        return f"ChainWatcher({self.contract.address} on {self.chain.url}, {self.snapshot()})"

    # -- reading the chain -------------------------------------------------------------

    def poll(self) -> bool:
        """Reads whatever is new once; True if the snapshot changed. The watcher's thread
        calls it every `interval` seconds; without the thread (never `start`ed) a caller may
        call it itself, from one thread at a time."""
        head = self.chain.block_number()
        self.requests += 1
        if self._next_block is None:
            self._next_block = head + 1 if self._from_block is None else self._from_block
        start = self._next_block
        went_back = 0 <= head < self._snapshot.block
        if went_back:
            # The node went back (restarted without its state, or a reorg): follow it.
            log.warning("chain %s went back from block %d to %d: following it", self.chain.url,
                        self._snapshot.block, head)
            start = self._next_block = head + 1
        elif head < start and self._snapshot.block >= 0:
            return False
        logs, views, base_fee = self._read(start, head)
        events = [e for e in map(self.contract.decode_log, logs) if e is not None]
        with self._cond:
            self._next_block = head + 1
            self._events.extend(events)
            self._index(events)
            if len(self._events) > self._keep:
                cut = len(self._events) - self._keep
                del self._events[:cut]
                self._dropped += cut
            snap = Snapshot(
                block=head,
                version=self._snapshot.version + 1,
                views=MappingProxyType(views),
                events=self._snapshot.events + len(events),
                at=time.monotonic(),
                base_fee=base_fee,
            )
            self._snapshot = snap
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(snap, events)
            except Exception:  # a subscriber's bug must not stop the others being told
                log.exception("watcher subscriber %r failed", callback)
        return True

    def _read(self, start: int, head: int) -> tuple[list[Any], dict[str, Any], int | None]:
        """The contract's logs in blocks start..head, the views and the base fee at head: one
        batch where the node takes batches, paged through iter_logs for a long catch-up.
        A node that keeps no state by block number (e.g. Anvil --prune-history) is asked for
        the views at its latest block instead."""
        if self._state_by_number:
            try:
                return self._read_at(start, head, head)
            except (Web3RPCError, ValueError) as exc:
                log.info("chain %s serves no state at block %d (%s): views read at its "
                         "latest block from now on", self.chain.url, head, exc)
                self._state_by_number = False
        return self._read_at(start, head, "latest")

    def _read_at(
        self, start: int, head: int, at: int | str
    ) -> tuple[list[Any], dict[str, Any], int | None]:
        if self.chain.backend.supports_batch and head - start < BATCH_RANGE:
            return self._read_raw(start, head, at)
        return self._read_web3(start, head, at)

    def _read_raw(
        self, start: int, head: int, at: int | str
    ) -> tuple[list[Any], dict[str, Any], int | None]:
        """`_read_at` as one plain JSON-RPC batch, parsed here: web3's formatting of a batch
        of a thousand logs costs more than reading them."""
        tag = hex(at) if isinstance(at, int) else at
        contract = self.contract
        calls: list[tuple[RPCEndpoint, Any]] = []
        if head >= start:
            calls.append((RPCEndpoint("eth_getLogs"), [{
                "address": contract.address, "fromBlock": hex(start), "toBlock": hex(head)}]))
        for fn in self._views.values():
            calls.append((RPCEndpoint("eth_call"), [
                {"to": contract.address, "data": contract._encode(fn, ())}, tag]))
        calls.append((RPCEndpoint("eth_getBlockByNumber"), [tag, False]))
        answers = self.chain.rpc_batch(calls)
        self.requests += 1
        errors = [a.get("error") for a in answers if not isinstance(a, dict) or "error" in a]
        if errors:
            raise Web3RPCError(f"chain node at {self.chain.url}: {errors[0]!r:.300}")
        results = [a["result"] for a in answers]
        logs = [_log(raw) for raw in results.pop(0)] if head >= start else []
        block = results.pop() or {}
        views = {name: _view_value(contract, fn, value)
                 for (name, fn), value in zip(self._views.items(), results, strict=True)}
        base_fee = block.get("baseFeePerGas")
        return logs, views, None if base_fee is None else int(base_fee, 16)

    def _read_web3(
        self, start: int, head: int, at: int | str
    ) -> tuple[list[Any], dict[str, Any], int | None]:
        functions = self.contract.contract.functions
        requests: list[Callable[[], Any]] = [
            partial(getattr(functions, fn)().call, block_identifier=at)
            for fn in self._views.values()
        ]
        requests.append(partial(self.chain.w3.eth.get_block, cast(BlockIdentifier, at)))
        logs: list[Any] = []
        if head >= start and head - start >= BATCH_RANGE:
            logs = list(self.chain.iter_logs(self.contract.address, None, start, head))
            self.requests += 1 + (head - start) // 10_000
            start = head + 1
        if head >= start:
            params = cast(FilterParams, {"address": self.contract.address, "fromBlock": start,
                                         "toBlock": head})
            requests.insert(0, partial(self.chain.w3.eth.get_logs, params))
        answers = self.chain.batch(requests)
        self.requests += 1 if self.chain.backend.supports_batch else len(requests)
        if head >= start:
            logs.extend(answers.pop(0))
        block = answers.pop()
        base_fee = block.get("baseFeePerGas")
        views = dict(zip(self._views, answers, strict=True))
        return logs, views, None if base_fee is None else int(base_fee)

    def _index(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, LearnerAdded):
                self._learners[e.learner] = e.index
            elif isinstance(e, UpdateSubmitted):
                self._submitted.add((e.round, e.learner))
                self._updates.setdefault(e.round, []).append(e)
            elif isinstance(e, EvaluationReported):
                self._reported.add((e.round, e.learner))
                self._report_count[e.round] = self._report_count.get(e.round, 0) + 1
            elif isinstance(e, GlobalModelPublished):
                self._models[e.round] = e.model_cid.raw
                self._opened[e.round + 1] = e.block
            elif isinstance(e, RoundSeeded):
                self._seeds[e.round] = e.seed
            elif isinstance(e, GenesisSet):
                self._models[0] = e.model_cid.raw
                self._opened[1] = e.block

    # -- the thread --------------------------------------------------------------------

    def start(self) -> ChainWatcher:
        """Reads the chain once (so the first snapshot is there at once), then follows it on
        a daemon thread. Returns self."""
        if self._thread is not None:
            return self
        self._ride_out_once()
        self._thread = threading.Thread(target=self._run, name="fedchain-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stops following the chain; waiters are woken with WatcherStopped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> ChainWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _ride_out_once(self) -> bool:
        """One poll, retried through transient failures for up to `max_outage` seconds."""
        delay = self.first_delay
        started: float | None = None
        while True:
            try:
                return self.poll()
            except TRANSIENT as exc:
                now = time.monotonic()
                started = now if started is None else started
                if now - started >= self.max_outage:
                    raise
                log.warning("chain watcher: %s: %s; retrying in %.1fs", type(exc).__name__, exc,
                            delay)
                if self._stop.wait(delay):
                    raise WatcherStopped(f"watcher stopped during an outage ({exc})") from exc
                delay = min(delay * 2, self.max_delay)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._ride_out_once()
        except WatcherStopped:
            pass
        except BaseException as exc:  # handed to every waiter
            log.error("chain watcher gave up: %s: %s", type(exc).__name__, exc)
            self.error = exc
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()

    # -- what subscribers use ----------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The latest snapshot (no request to the node)."""
        with self._cond:
            return self._snapshot

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._stop.is_set():
            raise WatcherStopped("the chain watcher was stopped")

    def wait(self, since: int, timeout: float | None = None) -> Snapshot:
        """The first snapshot newer than version `since`, or the latest one after `timeout`
        seconds; WatcherStopped (or the watcher's fatal error) once it stopped."""
        return self.wait_until(lambda s: s.version > since, timeout, raise_timeout=False)

    def wait_until(
        self,
        predicate: Callable[[Snapshot], bool],
        timeout: float | None = None,
        *,
        raise_timeout: bool = True,
    ) -> Snapshot:
        """Blocks until `predicate(snapshot)` holds and returns that snapshot. After `timeout`
        seconds: TimeoutError, or the latest snapshot if `raise_timeout` is False."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not predicate(self._snapshot):
                self._check()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if raise_timeout:
                        raise TimeoutError(f"chain watcher: condition not met within {timeout}s "
                                           f"(at {self._snapshot})")
                    return self._snapshot
                self._cond.wait(left)
            return self._snapshot

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Calls `callback(snapshot, new_events)` on the watcher's thread after each change
        (new events in chain order, each once); returns a function that unsubscribes."""
        with self._cond:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def fees(self) -> dict[str, int] | None:
        """EIP-1559 fees for a transaction now, from the head block already read (as
        `Chain._fees` computes them, with `tip`); None before a block was read or on a chain
        without base fees. Set `chain.fee_source = watcher.fees` to save two requests per
        transaction."""
        base = self.snapshot().base_fee
        if base is None:
            return None
        return eip1559_fees(base, self.tip)

    # -- what the events said, for WatchedFedChain ---------------------------------------

    def knows_round(self, round: int) -> bool:
        """Whether the watcher saw `round` open, and so every submission and report since."""
        with self._cond:
            return round in self._opened

    def model(self, round: int) -> bytes | None:
        """The global model CID recorded for `round` (0: genesis), None if not seen."""
        with self._cond:
            return self._models.get(round)

    def updates(self, round: int) -> list[UpdateSubmitted] | None:
        """The UpdateSubmitted events of `round` the watcher saw, in chain order; None when it
        did not see the round open (the chain must be asked)."""
        with self._cond:
            if round not in self._opened:
                return None
            return list(self._updates.get(round, ()))

    def reports(self, round: int) -> int | None:
        """How many evaluation reports on `round`'s global model the watcher saw; None when
        it did not see the round close."""
        with self._cond:
            if round + 1 not in self._opened:
                return None
            return self._report_count.get(round, 0)

    def learner_index(self, learner: str) -> int | None:
        """`learner`'s index as the LearnerAdded events the watcher saw give it; None if it
        saw none for it (it may have been added before the watcher's first block)."""
        with self._cond:
            return self._learners.get(learner)

    def params(self) -> RoundParams:
        """The round parameters fixed at genesis, read once (the contract's `params`)."""
        with self._cond:
            params = self._params
        if params is None:
            params = self.contract.params()
            if self.snapshot().round >= 1:  # after genesis they never change
                with self._cond:
                    self._params = params
        return params

    def seed(self, round: int) -> bytes | None:
        """Round `round`'s sampling seed: the one its RoundSeeded event gave; before any is
        seen, for the open round, the one the contract will draw (computed from the hash of
        the round's opening block, `FedChainReader.open_round_seed`, asked once per 256
        blocks); None for another round or without sampling."""
        with self._cond:
            seed = self._seeds.get(round)
            snap = self._snapshot
            predicted = self._predicted.get(round)
        if seed is not None:
            return seed
        if "round" not in snap.views or round != snap.round:
            return None
        if predicted is not None and (predicted[1] is None or snap.block <= predicted[1]):
            return predicted[0]
        if self.params().select_ppm == 0:
            return None
        open_round, seed, until = self.contract.open_round_seed()
        if open_round != round:
            return None
        with self._cond:
            self._predicted[round] = (seed, until)
        return seed

    def submitted(self, round: int, learner: str) -> bool | None:
        """Whether `learner` submitted in `round` as far as the watcher saw; None when the
        watcher did not see the round open (the chain must be asked)."""
        with self._cond:
            if round not in self._opened:
                return None
            return (round, learner) in self._submitted

    def reported(self, round: int, learner: str) -> bool | None:
        """Whether `learner` reported on `round`'s global model, as `submitted` answers."""
        with self._cond:
            if round + 1 not in self._opened:  # reports on round r come once r+1 opened
                return None
            return (round, learner) in self._reported

    def events_since(self, cursor: int = 0) -> tuple[list[Event], int]:
        """Events from position `cursor` on (0: the first the watcher saw), in chain order,
        and the cursor to pass next time. Events dropped past `keep_events` are skipped."""
        with self._cond:
            start = max(cursor - self._dropped, 0)
            return list(self._events[start:]), self._dropped + len(self._events)


def _log(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-RPC log as the event decoder reads it (bytes and ints, not hex)."""
    return {
        "topics": [bytes.fromhex(t[2:]) for t in raw["topics"]],
        "data": bytes.fromhex(raw["data"][2:]),
        "blockNumber": int(raw["blockNumber"], 16),
        "transactionHash": bytes.fromhex(raw["transactionHash"][2:]),
        "logIndex": int(raw["logIndex"], 16),
    }


def _view_value(contract: FedChainReader, fn: str, value: str) -> Any:
    """The value of view `fn` (no arguments, one output) from its eth_call result."""
    types = _outputs(contract, fn)
    decoded = abi_decode(types, bytes.fromhex(value[2:]))
    return decoded[0] if len(decoded) == 1 else decoded


_OUTPUTS: dict[tuple[int, str], list[str]] = {}


def _outputs(contract: FedChainReader, fn: str) -> list[str]:
    key = (id(contract.abi), fn)
    if key not in _OUTPUTS:
        [entry] = [f for f in contract.abi if f.get("type") == "function" and f["name"] == fn]
        _OUTPUTS[key] = [o["type"] for o in entry["outputs"]]
    return _OUTPUTS[key]


class WatchedFedChain(FedChain):
    """A signing FedChain binding whose per-step views come from a ChainWatcher.

    `LearnerNode.step()` reads the open round, whether the federation finished, whether its
    learner already submitted or reported, and the last global model's CID: with a plain
    binding that is four or five eth_calls per learner per step. This binding answers them
    from what the process's one watcher already read (falling back to the chain for what the
    watcher did not see), so a thousand learners cost no more views than one. Its own
    submissions and reports count at once, before the watcher sees their block.

    Made with `WatchedFedChain.bind(contract, account, watcher)`: a copy of an existing
    binding, so no artifact is parsed again per learner.
    """

    watcher: ChainWatcher
    _mine: set[tuple[str, int]]
    _indices: dict[str, int]

    @classmethod
    def bind(
        cls, contract: FedChainReader, account: LocalAccount, watcher: ChainWatcher
    ) -> WatchedFedChain:
        bound = copy.copy(contract)
        bound.__class__ = cls
        bound = cast(WatchedFedChain, bound)
        bound.account = account
        bound.watcher = watcher
        bound._mine = set()
        bound._indices = {}
        return bound

    def with_account(self, account: LocalAccount) -> FedChain:
        return WatchedFedChain.bind(self, account, self.watcher)

    def current_round(self) -> int:
        snap = self.watcher.snapshot()
        return snap.round if "round" in snap.views else super().current_round()

    def finished(self) -> bool:
        snap = self.watcher.snapshot()
        return snap.finished if "finished" in snap.views else super().finished()

    def global_model(self, round: int) -> bytes:
        recorded = self.watcher.model(round)
        return recorded if recorded is not None else super().global_model(round)

    def has_submitted(self, round: int, learner: str) -> bool:
        if learner == self.account.address and ("submitted", round) in self._mine:
            return True
        known = self.watcher.submitted(round, learner)
        return known if known is not None else super().has_submitted(round, learner)

    def has_reported(self, round: int, learner: str) -> bool:
        if learner == self.account.address and ("reported", round) in self._mine:
            return True
        known = self.watcher.reported(round, learner)
        return known if known is not None else super().has_reported(round, learner)

    def is_selected(self, learner: str) -> bool:
        snap = self.watcher.snapshot()
        seed = self.watcher.seed(snap.round) if "round" in snap.views else None
        if seed is None:
            return super().is_selected(learner)
        index = self.watcher.learner_index(learner)
        if index is None:
            if learner not in self._indices:
                self._indices[learner] = self.learner_index(learner)
            index = self._indices[learner]
        return index > 0 and is_selected(seed, index, self.watcher.params().select_ppm)

    def submit_update(self, round: int, model_cid: CidLike, num_examples: int) -> Receipt:
        receipt = super().submit_update(round, model_cid, num_examples)
        self._mine.add(("submitted", round))
        return receipt

    def report_evaluation(self, round: int, num_examples: int, metrics: bytes | str) -> Receipt:
        receipt = super().report_evaluation(round, num_examples, metrics)
        self._mine.add(("reported", round))
        return receipt
