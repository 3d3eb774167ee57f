"""Long-running loops ride out nodes that are down for a while, then carry on."""

from __future__ import annotations

import logging
import threading

import pytest

from fedchain.cli import devnet
from fedchain.errors import ChainUnavailable, FedChainError, StoreUnavailable
from fedchain.eth.chain import connect
from fedchain.federation.outage import ride_out
from fedchain.storage import cid_of, open_store

log = logging.getLogger("test.outage")


def _start_later(start, delay: float, started: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: (threading.Event().wait(delay),
                                              started.append(start())))
    thread.start()
    return thread


def test_upload_waits_out_an_ipfs_node_that_comes_up_late(caplog):
    port = devnet.free_port()
    store = open_store(f"http://127.0.0.1:{port}")
    started: list = []
    thread = _start_later(lambda: devnet.start_ipfs_devnode(port), 1.0, started)
    try:
        with caplog.at_level(logging.WARNING):
            cid = ride_out(lambda: store.put(b"global model"), what="learner-0", log=log,
                           stop=threading.Event(), first_delay=0.5, max_delay=1.0)
    finally:
        thread.join()
        for node in started:
            node.stop()
    assert cid == cid_of(b"global model")
    assert "StoreUnavailable" in caplog.text and "retrying" in caplog.text


def test_chain_node_that_comes_up_late_is_waited_for(caplog):
    port = devnet.free_port()
    url = f"http://127.0.0.1:{port}"
    started: list = []
    thread = _start_later(lambda: devnet.start_anvil(port), 1.0, started)
    try:
        with caplog.at_level(logging.WARNING):
            chain_id = ride_out(lambda: connect(url).chain_id, what="aggregator", log=log,
                                stop=threading.Event(), first_delay=0.5, max_delay=1.0)
    finally:
        thread.join()
        for node in started:
            node.stop()
    assert chain_id == 31337
    assert "ChainUnavailable" in caplog.text


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
