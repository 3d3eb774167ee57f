"""Pipelined fetching of a round's updates: the next models are fetched while the strategy
folds the current one in, a bounded number at a time, and the round comes out exactly as the
sequential fetch makes it (same global model bit for bit, same rejections, same errors)."""

from __future__ import annotations

import gc
import math
import random
import threading
import time
import tracemalloc
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from eth_utils import to_checksum_address

from fedchain.aggregation.strategy import FedAvg
from fedchain.errors import ConfigError, StoreUnavailable
from fedchain.eth.events import ChainCid, UpdateSubmitted
from fedchain.model.codec import encode, spec
from fedchain.protocol.fetching import Fetched, Rejected, RoundUpdates, fetch_updates
from fedchain.protocol.rules import learner_key
from fedchain.storage import CID, cid_of
from fedchain.storage.local import LocalStore

SIZE = 2_000  # floats per layer
LIMIT = 100_000  # bytes: above every good model here


def previous_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(SIZE, np.float32), "b": np.zeros(8, np.float32),
            "steps": np.zeros((), np.int64)}


def trained(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(SIZE, np.float32), "b": rng.standard_normal(8, np.float32),
            "steps": np.array(seed, np.int64)}


def address(i: int) -> str:
    return to_checksum_address(f"0x{(i * 0x1F3A5B7C9D) % 2**160:040x}")


def submission(i: int, cid: CID | bytes, num_examples: int, block: int | None = None):
    return UpdateSubmitted(block=block if block is not None else 10 + i, tx=f"0x{i:064x}",
                           log_index=0, round=1, learner=address(i),
                           model_cid=ChainCid(bytes(cid)), num_examples=num_examples)


class ObservedStore(LocalStore):
    """A LocalStore that records when each fetch starts and ends, from which thread, with
    which limit and timeout; each read can be slowed down (per CID, or for all)."""

    def __init__(self, directory, delay: float = 0.0) -> None:
        super().__init__(directory)
        self.delay = delay
        self.delays: dict[str, float] = {}
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.closed: list[str] = []
        self.calls: list[tuple[str, int | None, float | None, str]] = []
        self.first_started = threading.Event()
        self.second_started = threading.Event()

    def get_stream(self, cid, max_bytes=None, *, timeout=None) -> Iterator[bytes]:
        with self.lock:
            self.calls.append((str(cid), max_bytes, timeout, threading.current_thread().name))
        return super().get_stream(cid, max_bytes, timeout=timeout)

    def _read(self, cid, deadline) -> Iterator[bytes]:
        with self.lock:
            self.started.append(str(cid))
            (self.second_started if len(self.started) == 2 else self.first_started).set()
        delay = self.delays.get(str(cid), self.delay)
        try:
            data = b"".join(super()._read(cid, deadline))
            pieces = max(8, math.ceil(delay / 0.02))  # never more than 20 ms without a chunk
            step = math.ceil(len(data) / pieces)
            for i in range(0, len(data), step):
                if delay:
                    time.sleep(delay * step / len(data))
                yield data[i : i + step]
        finally:
            with self.lock:
                self.closed.append(str(cid))


def round_of(store, models, extra=()):
    """Events of a round in which learner i submitted models[i] (with 10 + 7i examples)."""
    events = [submission(i, store.put(encode(w)), 10 + 7 * i) for i, w in enumerate(models)]
    return events + list(extra)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fedchain-prefetch")]


def wait_for(condition, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# --- same round, whatever the pipeline depth -------------------------------------------


def test_a_pipelined_round_is_bit_identical_to_the_sequential_one(tmp_path):
    store = ObservedStore(tmp_path / "store")
    models = [trained(seed) for seed in range(7)]
    wrong_shape = {**trained(99), "w": np.zeros(SIZE + 1, np.float32)}
    bad = [
        submission(20, store.put(b"not a model at all"), 5),                 # InvalidModel
        submission(21, store.put(encode(wrong_shape)), 5),                   # wrong shape
        submission(22, store.put(encode({"w": np.zeros(40_000, np.float32)})), 5),  # too large
        submission(23, cid_of(b"never stored"), 5),                          # ContentNotFound
        submission(24, b"\x07not a cid", 5),                                 # InvalidCID
    ]
    events = round_of(store, models, bad)
    # fetches finish in a scrambled order: later learners' models often arrive first
    shuffle = random.Random(7)
    for e in events:
        store.delays[e.model_cid.text] = shuffle.choice([0.0, 0.01, 0.05])
    previous = previous_model()

    def run(in_flight: int):
        updates = RoundUpdates(fetch_updates(store, events, max_bytes=LIMIT,
                                             reference=spec(previous), in_flight=in_flight))
        new, _ = FedAvg().aggregate(previous, updates)
        return (encode(new), [e.learner for e in updates.included],
                [r.to_dict() for r in updates.rejected])

    sequential = run(1)
    assert len(sequential[1]) == 7 and len(sequential[2]) == 5
    reasons = " ".join(r["reason"] for r in sequential[2])
    for error in ("InvalidModel", "ContentTooLarge", "ContentNotFound", "InvalidCID"):
        assert error in reasons
    for in_flight in (2, 3, 8):
        assert run(in_flight) == sequential, f"in_flight={in_flight} changed the round"
    assert prefetch_threads() == []


def test_outcomes_come_in_learner_order_even_when_later_fetches_finish_first(tmp_path):
    store = ObservedStore(tmp_path / "store")
    events = round_of(store, [trained(s) for s in range(4)])
    order = sorted(events, key=lambda e: learner_key(e.learner))
    store.delays[order[0].model_cid.text] = 1.0  # the first learner's model is the slowest

    outcomes = list(fetch_updates(store, events, max_bytes=LIMIT, in_flight=4))
    assert [o.learner for o in outcomes] == [e.learner for e in order]
    assert all(isinstance(o, Fetched) for o in outcomes)
    assert store.closed[-1] == order[0].model_cid.text  # the later ones were done before it


# --- overlap and the bound ---------------------------------------------------------------


def test_the_next_update_is_fetched_while_the_current_one_is_folded_in(tmp_path):
    store = ObservedStore(tmp_path / "store")
    events = round_of(store, [trained(s) for s in range(3)])

    outcomes = fetch_updates(store, events, max_bytes=LIMIT)  # default in_flight
    first = next(outcomes)
    assert isinstance(first, Fetched)
    # while the consumer still holds the first update, the second is being fetched
    assert store.second_started.wait(10)
    outcomes.close()

    store.second_started.clear()
    store.started.clear()
    sequential = fetch_updates(store, events, max_bytes=LIMIT, in_flight=1)
    next(sequential)
    time.sleep(0.2)
    assert len(store.started) == 1 and not store.second_started.is_set()
    sequential.close()


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_never_more_than_in_flight_models_are_held_or_fetched(tmp_path, in_flight):
    store = ObservedStore(tmp_path / "store")
    events = round_of(store, [trained(s) for s in range(8)])
    n = len(events)

    handed: list[weakref.ref] = []
    for i, outcome in enumerate(fetch_updates(store, events, max_bytes=LIMIT,
                                              in_flight=in_flight)):
        assert isinstance(outcome, Fetched)
        # the models handed out before this one are gone: the consumer dropped them
        gc.collect()
        assert all(ref() is None for ref in handed)
        handed.append(weakref.ref(outcome.weights["w"]))
        # the fetches run ahead as far as allowed: this one and in_flight - 1 more...
        allowed = min(n, i + in_flight)
        assert wait_for(lambda a=allowed: len(store.started) >= a)
        time.sleep(0.05)
        # ...and no further
        assert len(store.started) == allowed
        del outcome
    assert prefetch_threads() == []


def test_models_fetched_ahead_wait_on_disk_not_in_memory(tmp_path):
    """Four in flight: while one model is folded in, three are fetched ahead, into temporary
    files. tracemalloc (which sees bytearrays and numpy's buffers) finds about one model in
    memory once they have arrived, not four."""
    store = ObservedStore(tmp_path / "store")
    size = 4 * 1_000_000
    events = [submission(i, store.put(encode({"w": np.full(size // 4, i, np.float32)})), 10)
              for i in range(6)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        seen = []
        for i, outcome in enumerate(fetch_updates(store, events, max_bytes=2 * size,
                                                  in_flight=4)):
            assert isinstance(outcome, Fetched) and outcome.weights["w"][0] == i
            ahead = min(len(events), i + 4)
            assert wait_for(lambda a=ahead: len(store.closed) >= a)
            # the ones fetched ahead are done: only this one stays in memory
            assert wait_for(lambda: tracemalloc.get_traced_memory()[0] - base < 1.5 * size), \
                f"{(tracemalloc.get_traced_memory()[0] - base) / size:.2f} models in memory"
            seen.append(i)
            del outcome
    finally:
        tracemalloc.stop()
    assert seen == list(range(6))
    assert prefetch_threads() == []


def test_a_fetched_ahead_model_is_not_timed_out_while_the_strategy_is_busy(tmp_path):
    store = ObservedStore(tmp_path / "store")
    events = round_of(store, [trained(s) for s in range(3)])
    deadline = time.monotonic() + 3.0

    outcomes = fetch_updates(store, events, max_bytes=LIMIT, deadline=deadline, in_flight=3)
    kinds = [type(next(outcomes)).__name__]
    assert wait_for(lambda: len(store.closed) == 3)  # all arrived before the deadline
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.2)  # a slow fold, past the deadline
    kinds += [type(o).__name__ for o in outcomes]
    assert kinds == ["Fetched"] * 3


# --- each fetch keeps its limit and deadline -------------------------------------------


def test_each_background_fetch_keeps_the_byte_limit_and_the_rounds_deadline(tmp_path):
    store = ObservedStore(tmp_path / "store", delay=0.05)
    events = round_of(store, [trained(s) for s in range(4)])
    start = time.monotonic()
    deadline = start + 30

    list(fetch_updates(store, events, max_bytes=LIMIT, deadline=deadline, in_flight=2))
    assert len(store.calls) == 4
    for _, max_bytes, timeout, thread in store.calls:
        assert thread.startswith("fedchain-prefetch")
        assert max_bytes == LIMIT
        assert timeout is not None and timeout <= deadline - start

    slow = ObservedStore(tmp_path / "slow", delay=60.0)
    events = round_of(slow, [trained(s) for s in range(4)])
    started = time.monotonic()
    outcomes = list(fetch_updates(slow, events, max_bytes=LIMIT, in_flight=2,
                                  deadline=started + 0.5))
    assert [type(o) for o in outcomes] == [Rejected] * 4
    assert all("FetchTimeout" in o.reason for o in outcomes)
    assert time.monotonic() - started < 30.0  # the round gives up at its deadline, not after 4 min


# --- failures and early stops --------------------------------------------------------------


class FailingStore(ObservedStore):
    """Fails the fetch of one CID with a given exception."""

    def __init__(self, directory, failing: str, error: BaseException) -> None:
        super().__init__(directory)
        self.failing, self.error = failing, error

    def _read(self, cid, deadline) -> Iterator[bytes]:
        if str(cid) == self.failing:
            raise self.error
        yield from super()._read(cid, deadline)


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_a_store_outage_is_raised_at_the_same_update_as_sequentially(tmp_path, in_flight):
    models = [trained(s) for s in range(8)]
    probe = LocalStore(tmp_path / "probe")
    order = sorted(round_of(probe, models), key=lambda e: learner_key(e.learner))
    store = FailingStore(tmp_path / "store", order[1].model_cid.text,
                         StoreUnavailable("node went away"))
    events = round_of(store, models)

    updates = RoundUpdates(fetch_updates(store, events, max_bytes=LIMIT, in_flight=in_flight),
                           raise_errors=(StoreUnavailable,))
    with pytest.raises(StoreUnavailable, match="node went away"):
        FedAvg().aggregate(previous_model(), updates)
    assert [e.learner for e in updates.included] == [order[0].learner]
    assert updates.rejected == []
    # the round is abandoned at once (the aggregator retries it): no fetch goes on in the
    # background, even while the caller still holds the round's updates
    assert wait_for(lambda: prefetch_threads() == [], 20)
    time.sleep(0.1)
    assert len(store.started) <= 1 + in_flight


def test_an_unexpected_error_reaches_the_consumer_at_that_learners_turn(tmp_path):
    models = [trained(s) for s in range(4)]
    probe = LocalStore(tmp_path / "probe")
    order = sorted(round_of(probe, models), key=lambda e: learner_key(e.learner))
    store = FailingStore(tmp_path / "store", order[1].model_cid.text, RuntimeError("bug"))
    events = round_of(store, models)

    outcomes = fetch_updates(store, events, max_bytes=LIMIT, in_flight=3)
    assert next(outcomes).learner == order[0].learner
    with pytest.raises(RuntimeError, match="bug"):
        next(outcomes)
    assert wait_for(lambda: prefetch_threads() == [], 20)


def test_a_consumer_that_stops_early_leaves_no_thread_and_no_fetch_behind(tmp_path):
    store = ObservedStore(tmp_path / "store", delay=30.0)  # each model takes 30 s to arrive
    events = round_of(store, [trained(s) for s in range(5)])
    store.delays[min(events, key=lambda e: learner_key(e.learner)).model_cid.text] = 0.0

    outcomes = fetch_updates(store, events, max_bytes=LIMIT, in_flight=3)
    first = next(outcomes)
    assert isinstance(first, Fetched)
    assert wait_for(lambda: len(store.started) == 3)  # two slow fetches under way
    stopped = time.monotonic()
    del outcomes  # the strategy gave up on the round (or the aggregator dropped it)
    gc.collect()
    assert prefetch_threads() == []
    assert time.monotonic() - stopped < 15.0  # not the 30 s the slow fetches take
    assert sorted(store.closed) == sorted(store.started)  # every stream was ended
    assert len(store.started) == 3  # and nothing more was started


def test_an_update_iterator_never_iterated_fetches_nothing(tmp_path):
    store = ObservedStore(tmp_path / "store")
    events = round_of(store, [trained(s) for s in range(3)])
    RoundUpdates(fetch_updates(store, events, max_bytes=LIMIT, in_flight=3))
    time.sleep(0.1)
    assert store.calls == [] and prefetch_threads() == []


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_in_flight_must_be_a_whole_number_of_at_least_one(tmp_path, bad):
    with pytest.raises(ConfigError, match="in_flight"):
        fetch_updates(LocalStore(tmp_path / "store"), [], max_bytes=LIMIT, in_flight=bad)
