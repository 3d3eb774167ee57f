"""Exact duplicates in a round: a learner that resubmits another learner's update (the same
CID, or the same weights re-encoded under another CID) is left out, named as the duplicate of
the learner that submitted first on chain, who keeps its update; everyone else is untouched."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from fedchain.aggregation.rules import Update
from fedchain.aggregation.strategy import FedAvg
from fedchain.eth.events import ChainCid, UpdateSubmitted
from fedchain.model.codec import decode, encode
from fedchain.model.fetch import canonical_cid
from fedchain.protocol.fetching import (
    DuplicateUpdate,
    Fetched,
    Rejected,
    RoundUpdates,
    fetch_updates,
)
from fedchain.protocol.rules import learner_key
from fedchain.storage import cid_of
from fedchain.storage.local import LocalStore

LIMIT = 100_000


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(500, np.float32), "steps": np.array(3, np.int64)}


def previous() -> dict[str, np.ndarray]:
    return {"w": np.zeros(500, np.float32), "steps": np.array(2, np.int64)}


class CountingStore(LocalStore):
    """Counts the fetches of each CID."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.fetched: dict[str, int] = {}
        self._lock = threading.Lock()

    def get_stream(self, cid, max_bytes=None, **kw):
        with self._lock:
            self.fetched[str(cid)] = self.fetched.get(str(cid), 0) + 1
        return super().get_stream(cid, max_bytes, **kw)


def genesis(fed, store) -> None:
    """Opens round 1 of the `fed` federation."""
    _, aggregator, _ = fed
    aggregator.set_genesis(store.put(encode(previous())), cid_of(b"plan"), 10)


def learners_by_address(fed):
    """The three learner bindings, ascending by address (the order of aggregation)."""
    _, _, learners = fed
    return sorted(learners, key=lambda c: learner_key(c.account.address))


def run_round(store, events, exclude_duplicates=True, in_flight=2):
    """(global model bytes, included learners, rejections) of a FedAvg round over `events`."""
    updates = RoundUpdates(fetch_updates(store, events, max_bytes=LIMIT, in_flight=in_flight,
                                         exclude_duplicates=exclude_duplicates))
    new, _ = FedAvg().aggregate(previous(), updates)
    return encode(new), [e.learner for e in updates.included], updates.rejected


def fedavg_of(*pairs) -> bytes:
    """The FedAvg round of (learner, num_examples, weights), straight from the rules."""
    ups = sorted((Update(a, n, w) for a, n, w in pairs), key=lambda u: learner_key(u.learner))
    new, _ = FedAvg().aggregate(previous(), ups)
    return encode(new)


# --- the same CID ----------------------------------------------------------------------


@pytest.mark.parametrize("copier_first_by_address", [True, False])
def test_a_learner_resubmitting_anothers_cid_is_left_out_and_names_the_original(
    fed, tmp_path, copier_first_by_address
):
    store = CountingStore(tmp_path / "store")
    genesis(fed, store)
    low, mid, high = learners_by_address(fed)
    # the copier comes first in aggregation order or last; on chain it is always later
    copier, victim, other = (low, mid, high) if copier_first_by_address else (high, low, mid)
    victim_cid = store.put(encode(weights(1)))
    victim.submit_update(1, victim_cid, 100)
    other.submit_update(1, store.put(encode(weights(2))), 50)
    copier.submit_update(1, victim_cid, 5000)  # and claims many examples, to weigh more
    events = fed[1].updates(1)

    model, included, rejected = run_round(store, events)

    assert sorted(included, key=learner_key) == sorted(
        [victim.account.address, other.account.address], key=learner_key)
    (left_out,) = rejected
    assert left_out.learner == copier.account.address
    assert left_out.reason.startswith(
        f"DuplicateUpdate: duplicate of {victim.account.address}'s update: the same CID")
    assert isinstance(left_out.error, DuplicateUpdate) and left_out.error.same_cid
    assert left_out.error.original.learner == victim.account.address
    assert not left_out.unavailable
    assert store.fetched[str(victim_cid)] == 1  # the copy was not even downloaded
    # the global model is the round without the copy: the victim's update counts once
    assert model == fedavg_of((victim.account.address, 100, weights(1)),
                              (other.account.address, 50, weights(2)))

    # without the rule, the copy is aggregated and takes over the round
    plain, included_plain, _ = run_round(store, events, exclude_duplicates=False)
    assert copier.account.address in included_plain and plain != model


# --- the same weights under another CID --------------------------------------------------


@pytest.mark.parametrize("copier_first_by_address", [True, False])
def test_the_same_weights_re_encoded_under_another_cid_are_left_out(
    fed, tmp_path, copier_first_by_address
):
    store = CountingStore(tmp_path / "store")
    genesis(fed, store)
    low, mid, high = learners_by_address(fed)
    copier, victim, other = (low, mid, high) if copier_first_by_address else (high, low, mid)
    victim_bytes = encode(weights(1))
    victim_cid = store.put(victim_bytes)
    victim.submit_update(1, victim_cid, 100)
    other.submit_update(1, store.put(encode(weights(2))), 50)
    # the copier downloads the victim's model and re-encodes it: other bytes, another CID
    copied = encode(decode(victim_bytes), metadata={"trained_by": "me, honestly"})
    copy_cid = store.put(copied)
    assert copy_cid != victim_cid
    copier.submit_update(1, copy_cid, 100)
    events = fed[1].updates(1)

    model, included, rejected = run_round(store, events)

    assert copier.account.address not in included and len(included) == 2
    (left_out,) = rejected
    assert left_out.learner == copier.account.address and left_out.cid == str(copy_cid)
    assert f"duplicate of {victim.account.address}'s update" in left_out.reason
    assert f"the same weights as {victim_cid}" in left_out.reason
    assert isinstance(left_out.error, DuplicateUpdate) and not left_out.error.same_cid
    assert model == fedavg_of((victim.account.address, 100, weights(1)),
                              (other.account.address, 50, weights(2)))


def test_the_first_submitter_on_chain_keeps_the_update_whatever_the_encoding(fed, tmp_path):
    store = CountingStore(tmp_path / "store")
    genesis(fed, store)
    low, mid, high = learners_by_address(fed)
    canonical = encode(weights(1))
    # the lowest address submits first, its weights in fedchain's encoding; the highest
    # re-encodes them later
    low.submit_update(1, store.put(canonical), 10)
    high.submit_update(1, store.put(encode(weights(1), metadata={"x": "y"})), 10)
    mid.submit_update(1, store.put(encode(weights(3))), 10)

    _, included, rejected = run_round(store, fed[1].updates(1))
    assert included == [low.account.address, mid.account.address]
    assert [r.learner for r in rejected] == [high.account.address]


# --- different content -------------------------------------------------------------------


def test_updates_that_differ_in_a_single_value_are_all_kept(fed, tmp_path):
    store = CountingStore(tmp_path / "store")
    genesis(fed, store)
    a, b, c = learners_by_address(fed)
    base = weights(1)
    nudged = {**base, "w": base["w"].copy()}
    nudged["w"][123] = np.nextafter(nudged["w"][123], np.float32(np.inf))
    a.submit_update(1, store.put(encode(base)), 10)
    b.submit_update(1, store.put(encode(nudged)), 10)
    c.submit_update(1, store.put(encode({**base, "steps": np.array(4, np.int64)})), 10)

    _, included, rejected = run_round(store, fed[1].updates(1))
    assert len(included) == 3 and rejected == []


# --- determinism -----------------------------------------------------------------------


def submission(i: int, cid, block: int, log_index: int = 0, n: int = 10) -> UpdateSubmitted:
    learner = "0x" + f"{(i + 1) * 0x1111111111:040x}"
    return UpdateSubmitted(block=block, tx=f"0x{i:064x}", log_index=log_index, round=1,
                           learner=learner, model_cid=ChainCid(bytes(cid)), num_examples=n)


def test_duplicate_verdicts_are_the_same_however_and_whenever_the_round_is_read(tmp_path):
    store = LocalStore(tmp_path / "store")
    a = store.put(encode(weights(1)))
    a_meta = store.put(encode(weights(1), metadata={"note": "copy"}))
    b = store.put(encode(weights(2)))
    c = store.put(encode(weights(3)))
    d = store.put(encode(weights(4)))
    d_meta = store.put(encode(weights(4), metadata={"note": "first"}))
    events = [
        submission(0, b, block=7),
        submission(1, a_meta, block=5, log_index=3),  # the copy comes later: same block
        submission(2, a, block=5, log_index=1),
        submission(3, c, block=4),
        submission(4, a, block=9),
        submission(5, c, block=6),
        submission(6, b, block=3),  # earlier than learner 0's b
        submission(7, d_meta, block=2),  # re-encoded, but the first: never a duplicate
        submission(8, d, block=8),
    ]

    def verdicts(order, in_flight):
        outcomes = list(fetch_updates(store, order, max_bytes=LIMIT, in_flight=in_flight,
                                      exclude_duplicates=True))
        return [(o.learner, type(o).__name__, o.reason if isinstance(o, Rejected) else "")
                for o in outcomes]

    first = verdicts(events, 1)
    kept = [learner for learner, kind, _ in first if kind == "Fetched"]
    names = {i: submission(i, a, 0).learner for i in range(9)}
    assert {names[2], names[3], names[6], names[7]} <= set(kept)
    assert not {names[0], names[1], names[4], names[5]} & set(kept)
    reasons = {learner: reason for learner, _, reason in first}
    assert f"duplicate of {names[6]}'s update" in reasons[names[0]]
    assert f"duplicate of {names[2]}'s update" in reasons[names[1]]
    assert f"duplicate of {names[2]}'s update" in reasons[names[4]]
    assert f"duplicate of {names[3]}'s update" in reasons[names[5]]
    shuffle = random.Random(3)
    for in_flight in (1, 2, 3, 7):
        for _ in range(3):
            order = events[:]
            shuffle.shuffle(order)
            assert verdicts(order, in_flight) == first
    assert all(isinstance(o, Fetched) for o in fetch_updates(store, events, max_bytes=LIMIT))


def test_any_model_re_encoded_is_recognised_as_the_same_weights():
    """Every dtype, scalars, empty and non-ASCII layers: the weights' canonical CID is the CID
    fedchain's own encoding gives them, however the bytes submitted were laid out."""
    rng = np.random.default_rng(5)
    model = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float16),
        "fc.weight": rng.standard_normal((10, 7)),  # float64
        "bn.num_batches_tracked": np.array(17, np.int64),
        "mask": rng.random(9) > 0.5,
        "empty": np.zeros((0, 5), np.float32),
        "quantized": rng.integers(-128, 127, 11).astype(np.int8),
        "poids_é": rng.integers(0, 255, (2, 2)).astype(np.uint8),
        "counts": rng.integers(0, 1000, 3).astype(np.int32),
        "small": rng.integers(0, 1000, 3).astype(np.int16),
    }
    original = encode(model)
    for metadata in ({"a": "b"}, {"zz": "é" * 300}):
        copy = encode(decode(original), metadata=metadata)
        assert cid_of(copy) != cid_of(original)
        assert canonical_cid(decode(copy), copy, cid_of(copy)) == cid_of(original)
    assert canonical_cid(decode(original), original, cid_of(original)) == cid_of(original)
