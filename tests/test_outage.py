"""Long-running loops ride out nodes that are down for a while, then carry on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from fedchain.cli import devnet
from fedchain.errors import ChainUnavailable, FedChainError, StoreUnavailable
from fedchain.eth.chain import connect
from fedchain.federation.outage import ride_out
from fedchain.storage import cid_of, open_store

log = logging.getLogger("test.outage")

T = TypeVar("T")

#: How long anything here may take on a slow or busy machine; never reached when all is well.
PATIENCE = 120.0


class LateNode:
    """A dev node that starts, in a thread, only once the test has seen an attempt fail.

    Which attempt first meets the node then depends on that order alone, not on how fast
    this machine starts a node or on how long a client's own retries last.
    """

    def __init__(self, start: Callable[[], devnet.DevNode], stop: threading.Event) -> None:
        self.down_seen = threading.Event()
        self.outcomes: list[str] = []  # "down" or "up", one per attempt
        self.nodes: list[devnet.DevNode] = []
        self.errors: list[BaseException] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, args=(start, stop), daemon=True)
        self._thread.start()

    def _run(self, start: Callable[[], devnet.DevNode], stop: threading.Event) -> None:
        try:
            if self.down_seen.wait(PATIENCE) and not self._closing:
                self.nodes.append(start())
        except BaseException as exc:  # surfaced by close()
            self.errors.append(exc)
        finally:
            if not self.nodes:
                stop.set()  # ends the ride-out rather than leaving it waiting for nothing

    def attempts(self, step: Callable[[], T], failure: type[Exception]) -> Callable[[], T]:
        """`step`, recording each attempt's outcome; the first `failure` lets the node start."""

        def attempt() -> T:
            try:
                value = step()
            except failure:
                self.outcomes.append("down")
                self.down_seen.set()
                raise
            self.outcomes.append("up")
            return value

        return attempt

    def close(self) -> None:
        self._closing = not self.down_seen.is_set()  # failed early: start nothing
        self.down_seen.set()
        self._thread.join(PATIENCE + 60)
        for node in self.nodes:
            node.stop()
        assert not self.errors, f"the node did not start: {self.errors[0]!r}"


def _ride_out_with_late_node(
    start: Callable[[], devnet.DevNode],
    step: Callable[[], Any],
    failure: type[Exception],
    what: str,
) -> tuple[Any, list[str]]:
    stop = threading.Event()
    late = LateNode(start, stop)
    try:
        value = ride_out(late.attempts(step, failure), what=what, log=log, stop=stop,
                         max_outage=PATIENCE, first_delay=0.5, max_delay=1.0)
    finally:
        late.close()
    return value, late.outcomes


def test_upload_waits_out_an_ipfs_node_that_comes_up_late(caplog):
    port = devnet.free_port()
    store = open_store(f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING):
        cid, outcomes = _ride_out_with_late_node(
            lambda: devnet.start_ipfs_devnode(port), lambda: store.put(b"global model"),
            StoreUnavailable, what="learner-0")
    assert cid == cid_of(b"global model")
    # retried while the node was down, and succeeded once it was up
    assert outcomes[0] == "down" and outcomes[-1] == "up" and outcomes.count("up") == 1
    assert "learner-0: StoreUnavailable" in caplog.text and "retrying" in caplog.text


def test_chain_node_that_comes_up_late_is_waited_for(caplog):
    port = devnet.free_port()
    url = f"http://127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING):
        chain_id, outcomes = _ride_out_with_late_node(
            lambda: devnet.start_anvil(port), lambda: connect(url).chain_id,
            ChainUnavailable, what="aggregator")
    assert chain_id == 31337
    assert outcomes[0] == "down" and outcomes[-1] == "up" and outcomes.count("up") == 1
    assert "aggregator: ChainUnavailable" in caplog.text and "retrying" in caplog.text


def test_an_outage_longer_than_allowed_is_raised():
    url = f"http://127.0.0.1:{devnet.free_port()}"
    with pytest.raises(ChainUnavailable, match=url):
        ride_out(lambda: connect(url).chain_id, what="aggregator", log=log,
                 stop=threading.Event(), max_outage=1.0, first_delay=0.3)


def test_stopping_during_an_outage_ends_the_wait():
    stop = threading.Event()
    stop.set()
    store = open_store(f"http://127.0.0.1:{devnet.free_port()}")
    with pytest.raises(FedChainError, match="stopped during an outage") as err:
        ride_out(lambda: store.put(b"x"), what="learner-1", log=log, stop=stop)
    assert isinstance(err.value.__cause__, StoreUnavailable)
