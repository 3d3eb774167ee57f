"""A slow-drip update costs its own deadline only: a committee of three, ten learners, one of
whose updates a node serves a byte now and then. Every honest update is included, the round
closes within the update's own deadline (plus slack for a loaded machine), the members report
the update unavailable on chain, and the audit passes even once the node serves it at once:
the reports excuse leaving it out.

The dripping node is simulated by a LocalStore subclass (DripStore), named as such: the store
API, the fetch deadlines and the committee are the real ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from fedmodels import LinearLearner

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import audit_federation
from fedchain.eth.events import UnavailableReported
from fedchain.federation.config import RunConfig
from fedchain.federation.simulation import simulate
from fedchain.model.codec import spec
from fedchain.protocol.rules import update_timeout
from fedchain.storage.cid import CID
from fedchain.storage.local import LocalStore

TRAIN = {"lr": 0.1, "steps": 3}
#: Slack past the slow update's own deadline for a loaded machine (nothing waits on it).
SLACK = 60.0


class DripStore(LocalStore):
    """A LocalStore that serves the updates learner 0 puts one byte every half second (a
    hostile node's slow drip, simulated); everything else as usual."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.slow: set[CID] = set()
        self._lock = threading.Lock()

    def put(self, data):  # type: ignore[no-untyped-def]
        cid = super().put(data)
        if threading.current_thread().name == "learner-0":
            with self._lock:
                self.slow.add(cid)
        return cid

    def _read(self, cid, deadline) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        chunks = super()._read(cid, deadline)
        if cid not in self.slow:
            return chunks

        def drip() -> Iterator[bytes]:
            for chunk in chunks:
                for i in range(len(chunk)):
                    time.sleep(0.5)
                    yield chunk[i : i + 1]

        return drip()


def test_a_slow_drip_update_costs_only_itself(tmp_path, own_clock_chain):
    store = DripStore(tmp_path / "store")
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=5, round_timeout=120.0)
    result = simulate(lambda i, n: LinearLearner(i), 10, config=config, store=store,
                      chain=own_clock_chain, train_config=TRAIN, aggregators=3, quorum=2,
                      engine="threads")  # a thread per learner: DripStore knows learner 0's

    contract = result.contract
    dripping = result.learners[0].address
    published = contract.published(1)
    assert published is not None
    assert sorted(published.included) == sorted(n.address for n in result.learners[1:])
    (round1,) = result.history.rounds
    (rejected,) = round1.rejected
    assert rejected.learner == dripping and "FetchTimeout" in rejected.reason
    genesis = spec(LinearLearner(0).get_weights())
    assert round1.seconds < update_timeout(genesis.nbytes) + SLACK

    # Each member that voted for the result recorded on chain, before the round closed, that
    # the update did not arrive within its deadline.
    voters = {v.member for v in contract.events("Voted")
              if v.digest == contract.result_digest(1)}
    reports = [e for e in contract.events("UnavailableReported")
               if isinstance(e, UnavailableReported)]
    assert len(voters) >= 2 and voters <= {e.member for e in reports}
    assert all(e.round == 1 and e.learners == (dripping,) for e in reports)

    # The attack's second half: the node now serves the update at once, so an audit could
    # fetch it and blame the committee for leaving a valid update out. The reports excuse it.
    store.slow.clear()
    report = audit_federation(contract, store)
    assert report.exit_status() == 0, report.failures()
    (left_out,) = [c for c in report.rounds[0].checks if c.what == "left-out update"]
    assert left_out.learner == dripping and "reported unavailable" in left_out.detail
