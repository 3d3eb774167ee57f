"""LearnerPool: many learners in one process, driven by one ChainWatcher and a few threads.

`simulate` runs each learner as a thread that polls the chain every 0.2 s, several views a
poll: at a few hundred learners the polling alone fills the machine. A pool instead waits on
the process's one `ChainWatcher`; when it reports a change (a round opened, the federation
finished), the pool calls `LearnerNode.step()` for the learners that have something to do,
on a bounded thread pool. Learners are made when first needed, by `make_node(i)` (as Flower's
virtual client engine instantiates clients), and optionally dropped between rounds.

    watcher = ChainWatcher(reader, interval=0.1).start()
    pool = LearnerPool(lambda i: LearnerNode(make_learner(i), bind(i), store), n, watcher,
                       workers=4)
    pool.run(timeout=3600)          # returns once every learner saw the federation finish

`LearnerNode.step()` stays a learner's unit of work ("do whatever is due now", False once the
federation has finished): the pool only decides when to call it, and for whom.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from eth_account.signers.local import LocalAccount

from ..errors import ConfigError, FedChainError
from ..eth.contract import FedChainReader
from ..eth.events import Event
from ..eth.gas import flat_gas_policy
from ..eth.watcher import ChainWatcher, Snapshot, WatchedFedChain
from .node import LearnerNode
from .outage import ride_out

log = logging.getLogger("fedchain.pool")

#: Worker threads of a pool unless told otherwise. A learner's step mostly waits on the node
#: (its transactions are mined in blocks), so more threads than cores; each one training at
#: once holds a model, so not hundreds by default (bench/scale.py runs 256 tiny learners).
DEFAULT_WORKERS = 32


@dataclass
class _Slot:
    """The pool's record of learner i."""

    node: LearnerNode | None = None
    #: The round whose work the learner has done (-1: none yet).
    handled: int = -1
    #: The learner saw the federation finish (its step returned False).
    done: bool = False
    busy: bool = False
    #: Not before this time (time.monotonic()) again, after a step that could not finish its
    #: round (e.g. the global model not retrievable yet).
    retry_at: float = 0.0
    steps: int = 0


def watched_bindings(
    contract: FedChainReader, watcher: ChainWatcher
) -> Callable[[LocalAccount], WatchedFedChain]:
    """How a pool's learners reach the chain: each learner's views answered from `watcher`
    (WatchedFedChain), and, on the contract's Chain, receipts found for all waiting learners
    at once and transactions sent in JSON-RPC batches (`share_receipt_polling`), fees from
    the head block the watcher read, a fixed gas limit for the learners' flat-gas calls
    (`flat_gas_policy`). Returns account -> binding."""
    chain = contract.chain
    chain.share_receipt_polling()
    chain.fee_source = watcher.fees
    chain.gas_policy = flat_gas_policy(contract)

    def bind(account: LocalAccount) -> WatchedFedChain:
        return WatchedFedChain.bind(contract, account, watcher)

    return bind


class LearnerPool:
    """Runs learners 0..n-1 against one federation from one watcher; see the module docs.

    `selected(i, snapshot)`: whether learner i takes part in the snapshot's round (client
    sampling): an unselected learner is neither made nor stepped for that round, and one
    never selected is never made (it is done when the federation finishes).
    `workers`: threads calling steps (the pool's only threads). `retry_interval`: how soon a
    learner whose step could not finish its round (the global model not in the store yet) is
    stepped again when nothing else happens. `keep_nodes=False` drops each node once it has
    done its round and makes it again with `make_node(i)` when it is next due (memory stays
    at `workers` learners; a LearnerNode reads what it already did from the chain).
    """

    def __init__(
        self,
        make_node: Callable[[int], LearnerNode],
        n: int,
        watcher: ChainWatcher,
        *,
        workers: int = DEFAULT_WORKERS,
        retry_interval: float = 1.0,
        keep_nodes: bool = True,
        max_outage: float = 600.0,
        selected: Callable[[int, Snapshot], bool] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError("a learner pool needs at least one learner")
        if workers < 1:
            raise ConfigError(f"a learner pool needs at least one worker, got {workers}")
        self.make_node = make_node
        self.n = n
        self.watcher = watcher
        self.workers = workers
        self.retry_interval = retry_interval
        self.keep_nodes = keep_nodes
        self.max_outage = max_outage
        self.selected = selected
        self._slots = [_Slot() for _ in range(n)]
        self._cond = threading.Condition()
        self._errors: list[BaseException] = []
        #: How many times make_node was called.
        self.created = 0
        #: Steps run, over all learners.
        self.steps = 0
        #: Most steps running at once (never more than `workers`).
        self.peak_running = 0
        self._running = 0

    # -- what callers look at ----------------------------------------------------------

    def node(self, i: int) -> LearnerNode | None:
        """Learner i's node, if it exists now (made, and kept)."""
        return self._slots[i].node

    @property
    def nodes(self) -> dict[int, LearnerNode]:
        """The nodes that exist now, by learner index."""
        return {i: s.node for i, s in enumerate(self._slots) if s.node is not None}

    @property
    def finished(self) -> int:
        """How many learners saw the federation finish."""
        return sum(s.done for s in self._slots)

    # -- running -----------------------------------------------------------------------

    def _due(self, snap: Snapshot, now: float) -> list[int]:
        """Learners with something to do at `snap`: a round they have not done yet, or the
        federation finished and they have not seen it."""
        if snap.round < 1 and not snap.finished:
            return []
        due = [
            i for i, s in enumerate(self._slots)
            if not s.done and not s.busy and s.retry_at <= now
            and (snap.finished or s.handled != snap.round)
        ]
        if self.selected is None:
            return due
        if snap.finished:
            for i in due:  # never selected, never made: nothing to evaluate or to finish
                if self._slots[i].node is None and self._slots[i].steps == 0:
                    self._slots[i].done = True
            return [i for i in due if not self._slots[i].done]
        return [i for i in due if self.selected(i, snap)]

    def _step(self, i: int, halt: threading.Event, snap: Snapshot) -> bool:
        slot = self._slots[i]
        with self._cond:
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
        try:
            node = slot.node
            if node is None:
                node = self.make_node(i)
                with self._cond:
                    self.created += 1
                slot.node = node
            going = ride_out(node.step, what=node.name, log=log, stop=halt,
                             max_outage=self.max_outage)
            handled = node.handled_round
        finally:
            with self._cond:
                self._running -= 1
        with self._cond:
            slot.steps += 1
            self.steps += 1
            slot.handled = handled
            if not going:
                slot.done = True
            elif handled < snap.round or snap.finished:
                # The step could not do its round yet (e.g. the global model is not in the
                # store yet): again after retry_interval, or at the next change.
                slot.retry_at = time.monotonic() + self.retry_interval
            if not self.keep_nodes and (slot.done or slot.retry_at <= time.monotonic()):
                slot.node = None
        return going

    def _finished_step(self, i: int, future: Future[bool]) -> None:
        with self._cond:
            slot = self._slots[i]
            slot.busy = False
            exc = future.exception()
            if exc is not None:
                self._errors.append(exc)
            if exc is not None or slot.done or slot.retry_at > time.monotonic():
                self._cond.notify_all()  # the loop has something to look at

    def run(self, stop: threading.Event | None = None, timeout: float | None = None) -> None:
        """Steps learners until every one has seen the federation finish. Raises the first
        error of a step (after the outages it rode out), FedChainError when `stop` is set or
        `timeout` seconds pass first, and the watcher's error if it gave up."""
        stop = stop or threading.Event()
        halt = threading.Event()  # ends the steps riding out an outage when the pool ends
        deadline = None if timeout is None else time.monotonic() + timeout

        def changed(snap: Snapshot, events: list[Event]) -> None:
            with self._cond:
                self._cond.notify_all()

        unsubscribe = self.watcher.subscribe(changed)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedchain-learner")
        try:
            while True:
                with self._cond:
                    if self._errors:
                        raise self._errors[0]
                    if all(s.done for s in self._slots):
                        return
                if stop.is_set():
                    raise FedChainError("learner pool stopped before the federation finished")
                if self.watcher.error is not None:
                    raise self.watcher.error
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise FedChainError(
                        f"learner pool: {self.n - self.finished} of {self.n} learners had not "
                        f"seen the federation finish within {timeout}s"
                    )
                snap = self.watcher.snapshot()
                with self._cond:
                    due = self._due(snap, now)
                    for i in due:
                        self._slots[i].busy = True
                for i in due:
                    future = pool.submit(self._step, i, halt, snap)
                    future.add_done_callback(partial(self._finished_step, i))
                with self._cond:
                    # Sleep until a step ends its round, the watcher sees a change, or a retry
                    # is due; a change that came since `snap` was read is not slept through.
                    if self.watcher.snapshot().version == snap.version and not self._errors:
                        self._cond.wait(self._wait_time(deadline))
        finally:
            unsubscribe()
            halt.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _wait_time(self, deadline: float | None) -> float:
        now = time.monotonic()
        waits = [self.retry_interval]
        retries = [s.retry_at - now for s in self._slots if not s.done and s.retry_at > now]
        if retries:
            waits.append(min(retries))
        if deadline is not None:
            waits.append(deadline - now)
        return max(0.0, min(waits))
