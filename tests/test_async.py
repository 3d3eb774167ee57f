"""Asynchronous (FedBuff) rounds on the embedded chain: a round closes once `buffer_size`
updates are in, a slow learner's update lands in a later round with its staleness recorded,
counts for less, and the audit re-derives exactly that."""

from __future__ import annotations

import threading
from typing import Any

from fedmodels import LinearLearner

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import audit_federation
from fedchain.federation.config import RunConfig
from fedchain.federation.simulation import simulate
from fedchain.protocol.rules import staleness_weight

TRAIN = {"lr": 0.1, "steps": 5}
ROUNDS = 3


def test_staleness_halves_the_weight_per_round_and_never_reaches_zero():
    assert [staleness_weight(100, t) for t in range(4)] == [100, 50, 25, 12]
    assert staleness_weight(1, 5) == 1


#: The highest round a fast learner has started training for, shared with the slow one.
_progress = threading.Condition()
_fast_round = 0


class Fast(LinearLearner):
    def train(self, weights: Any, config: Any) -> Any:
        global _fast_round
        with _progress:
            _fast_round = max(_fast_round, int(config["round"]))
            _progress.notify_all()
        return super().train(weights, config)


class Slow(LinearLearner):
    """Finishes training for round r only once a fast learner trains for a later round, i.e.
    once round r has closed without it: its update always lands late (but not in the last
    round, which no later round follows)."""

    def train(self, weights: Any, config: Any) -> Any:
        result = super().train(weights, config)
        r = int(config["round"])
        with _progress:
            _progress.wait_for(lambda: _fast_round > r or r >= ROUNDS, timeout=120)
        return result


def test_a_stale_update_is_accepted_discounted_and_verifiable(store):
    config = RunConfig(buffer_size=2, max_staleness=2, min_updates=1, round_timeout=120.0)

    def make(i: int, n: int) -> LinearLearner:
        return Slow(i) if i == 2 else Fast(i)

    result = simulate(make, 3, FedAvg(), ROUNDS, store=store, train_config=TRAIN,
                      config=config)
    contract = result.contract
    updates = [u for r in range(1, 4) for u in contract.updates(r)]
    stale = [u for u in updates if u.staleness > 0]
    assert stale, "the slow learner's update never landed late"
    assert all(u.staleness <= 2 for u in updates)
    included = {(p.round, a) for r in range(1, 4)
                for p in contract.events("GlobalModelPublished", round=r)
                for a in p.included}  # type: ignore[attr-defined]
    assert any((u.round, u.learner) in included for u in stale)
    # The audit re-derives every round, the stale update's discounted weight included.
    report = audit_federation(contract, store)
    assert report.exit_status() == 0, [c for c in report.all_checks() if c.status != "ok"]


def test_the_default_quorum_of_asynchronous_rounds_is_at_most_the_buffer():
    # Five learners' default quorum is 4: with a buffer of 3, rounds that closed on the
    # buffer alone would carry the model over instead of aggregating it.
    assert RunConfig(strategy=FedAvg()).plan(5).min_updates == 4
    assert RunConfig(strategy=FedAvg(), buffer_size=3, max_staleness=2).plan(5).min_updates == 3
    assert RunConfig(strategy=FedAvg(), buffer_size=8).plan(5).min_updates == 4
    assert RunConfig(strategy=FedAvg(), buffer_size=3, min_updates=4).plan(5).min_updates == 4


def test_the_default_quorum_of_sampled_rounds_is_two_thirds_of_the_sample():
    # 1,000 learners sampled at 10 %: about 100 a round, so 67 (not 667, which no round of
    # 100 could ever reach: every round would carry the model over).
    assert RunConfig(strategy=FedAvg(), fraction=0.1).plan(1000).min_updates == 67
    assert RunConfig(strategy=FedAvg(), fraction=0.1, min_updates=5).plan(1000).min_updates == 5
