"""Many threads' transactions through one Chain in few requests: `SendBatcher` sends the
signed transactions of all threads in JSON-RPC batches, `ReceiptPoller` finds the receipts
all of them wait for, per new block. `Chain.share_receipt_polling` turns both on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from web3._utils.method_formatters import receipt_formatter
from web3.datastructures import AttributeDict
from web3.exceptions import Web3RPCError
from web3.types import RPCEndpoint, RPCResponse

from ..errors import ChainUnavailable, TransactionTimeout

if TYPE_CHECKING:
    from .chain import Chain

log = logging.getLogger("fedchain.chain")


class _Slot:
    """One waiting thread's answer, and the Event that wakes only that thread."""

    __slots__ = ("answer", "error", "done")

    def __init__(self) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class ReceiptPoller:
    """One thread finds the receipts every waiting thread of a Chain waits for, and wakes
    each (only it) when its receipt is there: a thousand learners waiting on their
    transactions cost a few requests per new block, not a thousand.

    A transaction is first looked up by its hash once (it may be mined already); after that
    the poller reads the receipts of each new block (eth_getBlockReceipts, one JSON-RPC batch
    for all new blocks) and matches them, so the node's work grows with the transactions
    mined, not with those pending. A node without eth_getBlockReceipts is asked for every
    pending hash instead, less often the more are pending. The thread starts with the first
    wait and ends once nothing was pending for a while; a node that cannot be reached fails
    the waiters (ChainUnavailable), not the poller."""

    def __init__(self, chain: Chain, interval: float = 0.02) -> None:
        self.chain, self.interval = chain, interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[str, _Slot] = {}
        self._fresh: set[str] = set()  # not looked up by hash yet
        self._thread: threading.Thread | None = None
        self._block: int | None = None  # the last block whose receipts were read
        self._by_block = True  # the node has eth_getBlockReceipts
        #: Batches sent (what the poller costs).
        self.requests = 0

    def wait(self, tx_hash: str, timeout: float) -> Any:
        """The receipt of `tx_hash` once mined, formatted as web3 formats one it fetched;
        TransactionTimeout after `timeout` seconds."""
        slot = _Slot()
        with self._lock:
            slot = self._pending.setdefault(tx_hash, slot)
            self._fresh.add(tx_hash)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fedchain-receipts",
                                                daemon=True)
                self._thread.start()
        self._wake.set()
        if not slot.done.wait(timeout):
            with self._lock:
                self._pending.pop(tx_hash, None)
                self._fresh.discard(tx_hash)
            raise TransactionTimeout(f"transaction {tx_hash} not mined within {timeout:.0f}s",
                                     url=self.chain.url, tx_hash=tx_hash)
        if slot.error is not None:
            raise slot.error
        # Formatted as web3 formats a receipt it fetched itself: the same Receipt either way.
        return AttributeDict.recursive(receipt_formatter(slot.answer))

    def _batch(self, calls: list[tuple[RPCEndpoint, Any]]) -> list[Any]:
        self.requests += 1
        return self.chain.rpc_batch(calls)

    def _receipts(self, pending: dict[str, _Slot], fresh: set[str]) -> list[Any]:
        """Receipts of pending transactions found now (in no particular order); an answer
        that is not one (a JSON-RPC error, a malformed result) raises ValueError."""
        if not self._by_block:
            calls = [(RPCEndpoint("eth_getTransactionReceipt"), [h]) for h in pending]
            return [_result(a) for a in self._batch(calls)]
        head = int(_result(self._batch([(RPCEndpoint("eth_blockNumber"), [])])[0]), 16)
        start = head + 1 if self._block is None else self._block + 1
        lookup = sorted(fresh)
        blocks = list(range(start, head + 1))
        if len(blocks) > MAX_BLOCKS_PER_POLL:
            # Far behind (a long outage, a fast chain): every pending hash asked by hash.
            lookup, blocks = sorted(pending), []
        calls = [(RPCEndpoint("eth_getTransactionReceipt"), [h]) for h in lookup]
        calls += [(RPCEndpoint("eth_getBlockReceipts"), [hex(b)]) for b in blocks]
        answers = self._batch(calls) if calls else []
        found = [_result(a) for a in answers[:len(lookup)]]
        by_block = answers[len(lookup):]
        if any(isinstance(a, dict) and "error" in a for a in by_block):
            self._by_block = False  # not on this node: by hash from now on
            with self._lock:
                self._fresh.update(pending)
            return found
        self._block = head
        for answer in by_block:
            found += _result(answer) or []
        return found

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                self._thread = None  # whatever ended it, the next wait starts another

    def _loop(self) -> None:
        while True:
            with self._lock:
                pending = dict(self._pending)
                fresh, self._fresh = self._fresh, set()
                if not pending:
                    self._wake.clear()
            if not pending:
                if not self._wake.wait(30.0):
                    with self._lock:
                        if not self._pending:
                            return  # idle
                continue
            try:
                receipts = self._receipts(pending, fresh)
            except ChainUnavailable as exc:
                with self._lock:
                    for h, slot in pending.items():
                        self._pending.pop(h, None)
                        slot.error = exc
                        slot.done.set()
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # An odd answer (e.g. a rate limit's JSON-RPC error): asked again shortly.
                log.warning("chain %s: receipts poll got %s: %s; asking again", self.chain.url,
                            type(exc).__name__, exc)
                with self._lock:
                    self._fresh.update(fresh)
                time.sleep(max(self.interval, 0.5))
                continue
            for raw in receipts:
                if not isinstance(raw, dict) or raw.get("blockNumber") is None:
                    continue
                h = str(raw.get("transactionHash", "")).lower()
                found = pending.get(h)
                if found is None:
                    continue
                with self._lock:
                    self._pending.pop(h, None)
                found.answer = raw
                found.done.set()
            # Many pending hashes asked by hash (no block receipts): ask less often.
            time.sleep(self.interval if self._by_block else
                       max(self.interval, len(pending) / 20_000))


def _result(answer: Any) -> Any:
    """The result of one JSON-RPC answer; ValueError for an error or a malformed answer."""
    if not isinstance(answer, dict) or "result" not in answer:
        raise ValueError(f"not a JSON-RPC result: {answer!r:.200}")
    return answer["result"]


#: The most new blocks whose receipts one poll reads; further behind, it asks by hash.
MAX_BLOCKS_PER_POLL = 1_000


class SendBatcher:
    """Signed transactions from many threads go to the node together: each `send` queues its
    transaction and waits while one thread sends everything queued (after `linger` seconds
    for others to join) in one JSON-RPC batch. A node's error for one transaction is raised
    in its sender's thread as Web3RPCError, as a single send raises it."""

    def __init__(self, chain: Chain, linger: float = 0.002, max_batch: int = 500) -> None:
        self.chain, self.linger, self.max_batch = chain, linger, max_batch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: list[tuple[str, _Slot]] = []
        self._thread: threading.Thread | None = None
        #: Batches sent (what sending costs the node in requests).
        self.requests = 0

    def send(self, raw: bytes) -> str:
        slot = _Slot()
        with self._lock:
            self._queue.append(("0x" + raw.hex(), slot))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fedchain-sends",
                                                daemon=True)
                self._thread.start()
        self._wake.set()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        answer = slot.answer
        if not isinstance(answer, dict) or "result" not in answer:
            error = answer.get("error", answer) if isinstance(answer, dict) else answer
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise Web3RPCError(message, rpc_response=cast(RPCResponse, answer))
        return str(answer["result"])

    def _run(self) -> None:
        while True:
            if not self._wake.wait(30.0):
                with self._lock:
                    if not self._queue:
                        self._thread = None
                        return  # idle: the next send starts another
                continue
            time.sleep(self.linger)  # others signing now join this batch
            with self._lock:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                if not self._queue:
                    self._wake.clear()
            if not batch:
                continue
            calls = [(RPCEndpoint("eth_sendRawTransaction"), [raw]) for raw, _ in batch]
            answers: list[Any]
            error: BaseException | None = None
            try:
                answers = self.chain.rpc_batch(calls)
            except Exception as exc:  # every sender of the batch gets it
                answers, error = [None] * len(batch), exc
            self.requests += 1
            for (_, slot), answer in zip(batch, answers, strict=True):
                slot.answer, slot.error = answer, error
                slot.done.set()
