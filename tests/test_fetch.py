"""Fetching models by CID: one function (`fedchain.model.fetch`) on every path, always with the
plan's size limit and the round's deadline; typed outcomes; CIDs decoded once from the chain."""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from fedmodels import LinearLearner, initial_weights
from hostile_kubo import BLOCKS, HostileKubo

from fedchain.aggregation.strategy import FedAvg, FedAvgM
from fedchain.audit import audit_federation
from fedchain.errors import ConfigError, ContentTooLarge, FetchTimeout, InvalidCID, StorageError
from fedchain.eth.accounts import AGGREGATOR_INDEX
from fedchain.eth.events import ChainCid
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import LearnerNode
from fedchain.federation.simulation import simulate
from fedchain.model import codec
from fedchain.model.codec import encode
from fedchain.model.fetch import fetch_model
from fedchain.protocol.fetching import Fetched, Rejected, RoundUpdates, fetch_updates
from fedchain.protocol.params import MAX_PLAN_BYTES, Plan, fetch_plan
from fedchain.protocol.rules import learner_key
from fedchain.storage import CID, cid_of
from fedchain.storage.kubo import KuboStore
from fedchain.storage.local import LocalStore

TRAIN = {"lr": 0.1, "steps": 5}
#: A limit well above the test models (~100 bytes) and far below the 2 GiB default.
LIMIT = 10_000


class RecordingStore(LocalStore):
    """A LocalStore that records every fetch: the CID, the limit, the thread, and whether it
    came through fedchain.model.fetch."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.fetches: list[tuple[str, int | None, str, bool]] = []
        self._lock = threading.Lock()

    def get_stream(self, cid, max_bytes=None, **kw) -> Iterator[bytes]:
        stack = traceback.extract_stack()
        through_fetch = any(f.filename.endswith("fedchain/model/fetch.py") for f in stack)
        with self._lock:
            self.fetches.append(
                (str(cid), max_bytes, threading.current_thread().name, through_fetch)
            )
        return super().get_stream(cid, max_bytes, **kw)

    def take(self) -> list[tuple[str, int | None, str, bool]]:
        with self._lock:
            taken, self.fetches = self.fetches, []
        return taken


def _check_limits(fetches, plan_cid: str) -> None:
    assert fetches, "nothing was fetched"
    for cid, max_bytes, thread, through_fetch in fetches:
        assert through_fetch, f"{cid} fetched from {thread} around fedchain.model.fetch"
        expected = MAX_PLAN_BYTES if cid == plan_cid else LIMIT
        assert max_bytes == expected, f"{cid} fetched from {thread} with max_bytes={max_bytes}"


def test_every_path_fetches_through_one_function_with_the_plans_limit(tmp_path):
    store = RecordingStore(tmp_path / "store")
    config = RunConfig(strategy=FedAvgM(), rounds=2, train=TRAIN, max_model_bytes=LIMIT)
    result = simulate(lambda i, n: LinearLearner(i), 3, store=store, config=config)
    contract = result.contract
    plan_cid = str(ChainCid(contract.plan()).require())

    run = store.take()  # the aggregator (main thread), the learners (their threads), the plan
    _check_limits(run, plan_cid)
    threads = {thread for _, _, thread, _ in run}
    assert threading.current_thread().name in threads
    assert {f"learner-{i}" for i in range(3)} <= threads
    assert any(cid == plan_cid for cid, *_ in run)

    report = audit_federation(contract, store)  # the audit: plan, genesis, updates, globals
    assert report.failures() == [] and [r.status for r in report.rounds] == ["ok", "ok"]
    _check_limits(store.take(), plan_cid)

    signer = contract.with_account(contract.chain.account(AGGREGATOR_INDEX))
    restarted = Aggregator(signer, store, RunConfig())
    restarted.start()  # resumes: loads the plan, replays the server-optimizer state
    assert restarted._state is not None
    _check_limits(store.take(), plan_cid)


def test_fetch_model_refuses_content_over_the_limit_and_a_passed_deadline(tmp_path):
    store = RecordingStore(tmp_path / "store")
    data = encode(initial_weights())
    cid = store.put(data)

    assert fetch_model(store, cid, max_bytes=len(data))["steps"] == 0
    with pytest.raises(ContentTooLarge):
        fetch_model(store, cid, max_bytes=len(data) - 1)
    store.take()
    with pytest.raises(FetchTimeout):
        fetch_model(store, cid, max_bytes=LIMIT, deadline=time.monotonic() - 1)
    assert store.take() == []  # nothing was even asked of the store


class TricklingStore(LocalStore):
    """A store that serves content a few bytes at a time, over `seconds`."""

    seconds = 3.0

    def _read(self, cid, *args, **kw) -> Iterator[bytes]:
        data = b"".join(super()._read(cid, *args, **kw))
        for i in range(0, len(data), 8):
            time.sleep(self.seconds * 8 / len(data))
            yield data[i : i + 8]


def test_fetch_model_hands_the_time_left_to_the_store_as_its_timeout(tmp_path):
    store = TricklingStore(tmp_path / "store")
    store.seconds = 120.0  # far longer than any loaded machine's slack past the deadline
    cid = store.put(encode(initial_weights()))

    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        fetch_model(store, cid, max_bytes=LIMIT, deadline=started + 0.3)
    assert time.monotonic() - started < 30.0  # the store gave up at the deadline


class EndlessStore(LocalStore):
    """A node that, asked for anything, streams zeros forever; counts what it served."""

    served = 0

    def _read(self, cid, *args, **kw) -> Iterator[bytes]:
        chunk = bytes(64 * 1024)
        while True:
            self.served += len(chunk)
            yield chunk


def test_plan_is_never_read_past_its_limit_even_from_an_endless_stream(tmp_path):
    store = EndlessStore(tmp_path / "store")
    cid = store.put(Plan(strategy=FedAvg().to_plan(), rounds=1).to_json())

    with pytest.raises((ConfigError, StorageError)):
        Plan.load(store, cid)
    assert store.served <= MAX_PLAN_BYTES + 64 * 1024
    with pytest.raises((ConfigError, StorageError)):
        fetch_plan(store, cid)


def test_plan_loads_by_cid_text_or_by_the_binary_cid_the_chain_records(tmp_path):
    store = LocalStore(tmp_path / "store")
    plan = Plan(strategy=FedAvg().to_plan(), rounds=2, max_model_bytes=LIMIT)
    cid = store.put(plan.to_json())
    assert Plan.load(store, cid) == Plan.load(store, str(cid)) == Plan.load(store, bytes(cid))
    assert fetch_plan(store, cid) == plan
    with pytest.raises(InvalidCID):
        Plan.load(store, b"\x07not a cid")


# --- typed outcomes -------------------------------------------------------------------


def _submitted(fed, store, bad_cid=None):
    """Round 1 open, every learner submitted (learner 1 a bad CID if given): the events."""
    chain, aggregator, learners = fed
    agg = Aggregator(aggregator, store, RunConfig(strategy=FedAvg(), rounds=2, min_updates=1,
                                                  round_timeout=0.3, poll_interval=0.05),
                     initial_weights=initial_weights())
    agg.start()
    for i, c in enumerate(learners):
        if i == 1 and bad_cid is not None:
            c.submit_update(1, bad_cid, 50)
        else:
            LearnerNode(LinearLearner(i), c, store, evaluate=False).step()
    return agg, aggregator.updates(1)


def test_a_round_fetches_into_typed_outcomes_one_model_at_a_time(fed, store):
    agg, events = _submitted(fed, store, bad_cid=store.put(b"not a model"))

    outcomes = list(fetch_updates(store, events, max_bytes=LIMIT))
    assert [o.learner for o in outcomes] == sorted(
        (e.learner for e in events), key=learner_key
    )
    kinds = {o.learner: type(o) for o in outcomes}
    assert sorted(k.__name__ for k in kinds.values()) == ["Fetched", "Fetched", "Rejected"]
    (rejected,) = [o for o in outcomes if isinstance(o, Rejected)]
    assert rejected.learner == fed[2][1].account.address
    assert "InvalidModel" in rejected.reason and not rejected.unavailable
    del outcomes, rejected

    round_updates = RoundUpdates(fetch_updates(store, events, max_bytes=LIMIT))
    alive: list[weakref.ref] = []
    for update in round_updates:
        # the previous model was released before this one was fetched
        assert all(ref() is None for ref in alive)
        alive.append(weakref.ref(update.weights["linear.weight"]))
        del update
    assert [e.learner for e in round_updates.included] == [
        o.learner for o in fetch_updates(store, events, max_bytes=LIMIT)
        if isinstance(o, Fetched)
    ]
    assert [r.learner for r in round_updates.rejected] == [fed[2][1].account.address]


def test_bytes_that_are_not_a_cid_are_rejected_and_audited_by_their_hex(fed, store):
    agg, events = _submitted(fed, store, bad_cid=b"\x07not a cid")

    (bad,) = [e for e in events if e.model_cid.cid is None]
    assert bad.model_cid.text == "0x" + b"\x07not a cid".hex()
    result = agg.run_round(1)

    assert len(result.included) == 2
    (rejected,) = result.rejected
    assert "InvalidCID" in rejected.reason and rejected.submission == bad
    assert rejected.cid == bad.model_cid.text
    assert result.to_dict()["rejected"][0]["cid"] == bad.model_cid.text
    report = audit_federation(agg.contract, store)
    assert report.failures() == []
    (note,) = [c for c in report.rounds[0].checks if c.what == "left-out update"]
    assert note.detail.startswith(bad.model_cid.text) and "InvalidCID" in note.detail


def test_chain_cid_keeps_the_bytes_and_the_cid():
    cid = cid_of(b"hello")
    recorded = ChainCid(bytes(cid))
    assert recorded.cid == cid and recorded.require() == cid and str(recorded) == str(cid)
    assert recorded == ChainCid(bytes(cid)) and bytes(recorded) == bytes(cid)
    for raw in (b"", b"\x01", b"\x12\x20short"):
        bad = ChainCid(raw)
        assert bad.cid is None and bad.text == "0x" + raw.hex()
        with pytest.raises(InvalidCID):
            bad.require()
    assert isinstance(ChainCid(bytes(CID.parse(str(cid)))).cid, CID)


# --- the round's deadline -------------------------------------------------------------


class SlowStore(LocalStore):
    """A store that takes `delay` seconds to serve the content of `slow` CIDs (or gives up
    with FetchTimeout at the timeout it is given, as a real store does)."""

    def __init__(self, directory, delay: float) -> None:
        super().__init__(directory)
        self.delay = delay
        self.slow: set[CID] = set()
        self.timeouts: list[float | None] = []

    def get_stream(self, cid, max_bytes=None, **kw) -> Iterator[bytes]:
        if CID.parse(cid) not in self.slow:
            return super().get_stream(cid, max_bytes, **kw)
        timeout = kw.get("timeout")
        self.timeouts.append(timeout)
        inner = super().get_stream(cid, max_bytes, **kw)

        def slowly() -> Iterator[bytes]:
            if timeout is not None and timeout < self.delay:
                time.sleep(timeout)
                raise FetchTimeout(f"{cid} not delivered within {timeout:.3g}s")
            data = b"".join(inner)
            step = max(1, len(data) // 20)
            for i in range(0, len(data), step):  # a trickle, over `delay` seconds
                time.sleep(self.delay * step / len(data))
                yield data[i : i + step]

        return slowly()


def test_an_update_not_fetched_by_the_rounds_deadline_is_left_out_and_the_round_goes_on(
        fed, tmp_path):
    chain, aggregator, learners = fed
    # Deadlines a loaded machine meets for the fast updates; a store far slower than them.
    store = SlowStore(tmp_path / "store", delay=120.0)
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=1, round_timeout=2.0,
                       fetch_timeout=4.0, poll_interval=0.05)
    agg = Aggregator(aggregator, store, config, initial_weights=initial_weights())
    agg.start()
    for i, c in enumerate(learners):
        LearnerNode(LinearLearner(i), c, store, evaluate=False).step()
    last = max(aggregator.updates(1), key=lambda e: learner_key(e.learner))  # fetched last
    store.slow.add(last.model_cid.require())

    started = time.monotonic()
    result = agg.run_round(1)

    assert time.monotonic() - started < 120.0  # did not wait for the slow store
    assert len(result.included) == 2 and last.learner not in result.included
    (rejected,) = result.rejected
    assert rejected.learner == last.learner and "FetchTimeout" in rejected.reason
    assert rejected.unavailable
    assert aggregator.current_round() == 2
    assert store.timeouts and all(t is not None and 0 < t <= 6.0 for t in store.timeouts)


# --- learners and the global model ----------------------------------------------------


def _started(fed, store):
    # These tests publish made-up global models to see how a learner waits and skips; a
    # learner that re-derives them would refuse them as disputed (tests/test_trust.py).
    chain, aggregator, learners = fed
    agg = Aggregator(aggregator, store, RunConfig(strategy=FedAvg(), rounds=3, min_updates=1,
                                                  train=TRAIN, round_timeout=0.2,
                                                  poll_interval=0.05, verify="off"),
                     initial_weights=initial_weights())
    agg.start()
    return agg


def test_learner_waits_for_a_global_model_not_in_the_store_yet(fed, store, caplog):
    chain, aggregator, learners = fed
    _started(fed, store)
    node = LearnerNode(LinearLearner(0), learners[0], store, verify="off")
    weights = initial_weights()
    weights["linear.weight"][:] = 0.5
    data = encode(weights)
    aggregator.publish_global(1, cid_of(data), [])  # published, but not stored anywhere yet

    with caplog.at_level("WARNING", logger="fedchain.learner"):
        assert node.step() is True
        assert node.step() is True  # still waiting, not crashed

    assert node.submitted == [] and node.reported == [] and node.skipped == []
    assert "waiting for the global model of round 1 since" in caplog.text
    assert "ContentNotFound" in caplog.text
    store.put(data)
    assert node.step() is True
    assert node.submitted == [2] and node.reported == [1]


def test_learner_skips_an_invalid_global_model_and_trains_on_the_next(fed, store, caplog,
                                                                     monkeypatch):
    chain, aggregator, learners = fed
    _started(fed, store)
    node = LearnerNode(LinearLearner(0), learners[0], store, verify="off")
    bad = initial_weights()
    bad["linear.weight"][:] = np.nan
    with monkeypatch.context() as m:  # encoded as a rogue aggregator could, NaN and all
        m.setattr(codec, "_check_finite", lambda name, array: None)
        aggregator.publish_global(1, store.put(encode(bad)), [])

    with caplog.at_level("WARNING", logger="fedchain.learner"):
        assert node.step() is True

    assert node.skipped == [1] and node.submitted == [] and node.reported == []
    assert "unusable" in caplog.text and "InvalidModel" in caplog.text
    assert node.step() is True and node.submitted == []  # the round is not retried
    aggregator.publish_global(2, store.put(encode(initial_weights())), [])
    assert node.step() is True
    assert node.submitted == [3] and node.reported == [2]


# --- a dedup bomb on every path -------------------------------------------------------


class BombRoutingStore(LocalStore):
    """A LocalStore that fetches the hostile node's dedup bomb (a valid CID of a 1.29 TiB
    file) from that node, as an IPFS node would from the network."""

    def __init__(self, directory, node_store) -> None:
        super().__init__(directory)
        self.node_store = node_store

    def get_stream(self, cid, max_bytes=None, **kw) -> Iterator[bytes]:
        if CID.parse(cid) == BLOCKS.bomb:
            return self.node_store.get_stream(cid, max_bytes, **kw)
        return super().get_stream(cid, max_bytes, **kw)


def test_a_dedup_bomb_is_refused_by_the_aggregator_and_the_audit_without_downloading_it(
        fed, tmp_path):
    chain, aggregator, learners = fed
    with HostileKubo("dedup") as node, KuboStore(node.url) as kubo:
        store = BombRoutingStore(tmp_path / "store", kubo)
        config = RunConfig(strategy=FedAvg(), rounds=3, min_updates=1, round_timeout=0.2,
                           poll_interval=0.05, max_model_bytes=LIMIT)
        agg = Aggregator(aggregator, store, config, initial_weights=initial_weights())
        agg.start()
        honest = LearnerNode(LinearLearner(0), learners[0], store, evaluate=False)
        honest.step()
        learners[1].submit_update(1, BLOCKS.bomb, 50)

        result = agg.run_round(1)  # the aggregator: the bomb is rejected, the round goes on

        assert result.included == [learners[0].account.address]
        (rejected,) = result.rejected
        assert "ContentTooLarge" in rejected.reason and f"limit of {LIMIT}" in rejected.reason
        honest.step()
        learners[1].submit_update(2, BLOCKS.bomb, 50)
        # A cheating aggregator includes it in round 2.
        agg.contract.publish_global(2, store.put(encode(initial_weights())),
                                    [learners[0].account.address, learners[1].account.address])

        report = audit_federation(agg.contract, store)  # left out in 1, included in 2

        assert "cat" not in node.requests  # not one leaf of the 1.29 TiB was asked for
    (left_out,) = [c for c in report.rounds[0].checks if c.what == "left-out update"]
    assert "ContentTooLarge" in left_out.detail and f"limit of {LIMIT}" in left_out.detail
    (failure,) = report.failures()
    assert (failure.round, failure.what) == (2, "included update")
    assert "ContentTooLarge" in failure.detail and f"limit of {LIMIT}" in failure.detail
