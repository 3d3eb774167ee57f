"""Faults that must not stop a federation: lost receipts, node blips, hostile numbers.

Where a fault cannot be produced for real on demand (a connection dropped in the middle of
one particular request, a receipt that is mined but not seen), it is injected by wrapping
one method; each such stand-in is named for the fault it plays.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import requests
from fedmodels import LinearLearner, initial_weights

from fedchain.aggregation.strategy import FedAvg, Krum
from fedchain.errors import (
    ChainUnavailable,
    StoreUnavailable,
    TooManyExamples,
    TransactionTimeout,
)
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import MAX_METRICS_BYTES, LearnerNode, metrics_json
from fedchain.model.codec import decode, encode
from fedchain.storage.cid import to_cid


def _aggregator(contract, store, **kw):
    options = dict(strategy=FedAvg(), rounds=1, min_updates=1, round_timeout=0.3,
                   poll_interval=0.05, evaluation_timeout=0.1)
    options.update(kw)
    return Aggregator(contract, store, RunConfig(**options), initial_weights=initial_weights())


def _submit_all(learners, store):
    for i, c in enumerate(learners):
        LearnerNode(LinearLearner(i), c, store, evaluate=False).step()


@pytest.mark.xdist_group("anvil")
def test_a_send_lost_to_a_node_blip_does_not_wedge_later_transactions(anvil_node,
                                                                      monkeypatch):
    chain = connect(anvil_node.url)
    contract, _ = FedChain.deploy(chain, chain.account(0), chain.account(1).address)
    real_send = chain.w3.eth.send_raw_transaction
    blips = iter([True])

    def send_dropped_once(raw):  # stands in for a connection refused mid-request
        if next(blips, False):
            raise requests.ConnectionError("connection refused")
        return real_send(raw)

    monkeypatch.setattr(chain.w3.eth, "send_raw_transaction", send_dropped_once)
    with pytest.raises(ChainUnavailable):
        contract.add_learners([chain.account(6).address])

    contract.add_learners([chain.account(7).address])  # mines: the nonce was resynced
    contract.add_learners([chain.account(8).address])
    assert contract.is_learner(chain.account(8).address)


def test_published_round_whose_receipt_was_lost_is_not_published_twice(fed, store,
                                                                        monkeypatch, caplog):
    chain, aggregator, learners = fed
    agg = _aggregator(aggregator, store)
    agg.start()
    _submit_all(learners, store)
    real_publish = aggregator.publish_global
    lost = iter([True])

    def publish_receipt_lost_once(*args, **kw):  # mined, but the receipt never arrives
        receipt = real_publish(*args, **kw)
        if next(lost, False):
            raise TransactionTimeout(f"transaction {receipt.tx_hash} not mined within 120s")
        return receipt

    monkeypatch.setattr(aggregator, "publish_global", publish_receipt_lost_once)
    with caplog.at_level(logging.WARNING):
        agg.run()

    assert aggregator.finished()
    assert len(list(aggregator.events("GlobalModelPublished"))) == 1
    assert "TransactionTimeout" in caplog.text


def test_ipfs_blip_while_fetching_retries_the_round_instead_of_dropping_updates(
        fed, store, monkeypatch):
    chain, aggregator, learners = fed
    agg = _aggregator(aggregator, store, min_updates=3)
    agg.start()
    _submit_all(learners, store)
    real_read = store._read
    update_cids = {u.model_cid.cid for u in aggregator.updates(1)}
    blips = iter([True])

    def read_dropped_once(cid, *args, **kw):  # stands in for an IPFS node that drops a request
        if cid in update_cids and next(blips, False):
            raise StoreUnavailable("IPFS node at http://127.0.0.1:5001 is not reachable")
        return real_read(cid, *args, **kw)

    monkeypatch.setattr(store, "_read", read_dropped_once)
    agg.stop_event.wait = lambda timeout=None: False  # no real sleeping between retries
    agg.run()

    (result,) = agg.results
    assert len(result.included) == 3 and result.rejected == []
    assert next(blips, None) is None  # the blip did happen


def test_absurd_num_examples_is_refused_on_chain_and_the_round_goes_on(fed, store):
    chain, aggregator, learners = fed
    agg = _aggregator(aggregator, store)
    agg.start()
    LearnerNode(LinearLearner(0), learners[0], store, evaluate=False).step()
    with pytest.raises(TooManyExamples) as err:
        learners[1].submit_update(1, store.put(encode(initial_weights())), 2**200)
    assert err.value.fields == {"given": 2**200, "max": 2**40}

    result = agg.run_round(1)

    assert result.included == [learners[0].account.address]
    published = decode(store.get(to_cid(aggregator.global_model(1))))
    assert all(np.isfinite(a).all() for a in published.values())


def test_krum_without_enough_updates_carries_the_model_over(fed, store, caplog):
    chain, aggregator, learners = fed
    agg = _aggregator(aggregator, store, strategy=Krum(f=1))
    agg.start()
    _submit_all(learners, store)  # Krum(f=1) needs 5

    with caplog.at_level(logging.WARNING):
        result = agg.run_round(1)

    assert result.included == []
    assert aggregator.global_model(1) == aggregator.global_model(0)
    assert "needs at least 5 updates" in caplog.text


def test_metrics_beyond_the_chain_limit_are_cut_not_fatal():
    metrics = {f"class_{i:03d}_accuracy": 0.5 for i in range(200)}
    body = metrics_json(0.25, metrics)
    assert len(body) <= MAX_METRICS_BYTES
    assert body.startswith(b'{"class_000_accuracy":0.5') and b'"loss":0.25' in body
