"""Federated rounds end to end on the embedded chain and a LocalStore (one process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fedmodels import LinearLearner, WrongShapeLearner, initial_weights

from fedchain.aggregation.strategy import FedAvg, Update
from fedchain.errors import WrongRound
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import LearnerNode
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode, encode
from fedchain.protocol.rules import learner_key
from fedchain.storage.cid import to_cid

TRAIN = {"lr": 0.1, "steps": 5}


def make_aggregator(contract, store, initial_weights=initial_weights, **kw):
    options = dict(strategy=FedAvg(), rounds=3, min_updates=3, round_timeout=10.0, train=TRAIN,
                   poll_interval=0.05)
    options.update(kw)
    weights = initial_weights() if callable(initial_weights) else initial_weights
    return Aggregator(contract, store, RunConfig(**options), initial_weights=weights)


def test_simulation_runs_rounds_and_records_history(tmp_path, store):
    result = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 3, store=store,
                      train_config=TRAIN, results_dir=tmp_path / "out")

    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert all(len(r.included) == 3 and not r.rejected for r in result.rounds)
    assert result.contract.finished()
    losses = [loss for _, loss in result.history.losses_distributed]
    assert [r for r, _ in result.history.losses_distributed] == [1, 2, 3]
    assert losses[2] < losses[0]  # the federation actually learns
    saved = json.loads(result.results_path.read_text())
    assert saved["contract"] == result.contract.address
    assert len(saved["metrics_distributed"]["mse"]) == 3
    assert result.plot_path.stat().st_size > 1000


def test_fedavg_trajectory_equals_in_memory_loop_bit_for_bit(store):
    result = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 3, store=store,
                      train_config=TRAIN)

    learners = [LinearLearner(i) for i in range(3)]
    addresses = sorted((n.address for n in result.learners), key=learner_key)
    by_address = {n.address: i for i, n in enumerate(result.learners)}
    weights = initial_weights()
    for round in (1, 2, 3):
        updates = []
        for address in addresses:
            trained = learners[by_address[address]].train(weights, {**TRAIN, "round": round})
            updates.append(Update(address, trained.num_examples, trained.weights))
        weights, _ = FedAvg().aggregate(weights, updates)
        published = decode(store.get(to_cid(result.contract.global_model(round))))
        assert encode(published) == encode(weights), f"round {round} differs"


def test_aggregator_restarted_mid_round_neither_loses_nor_double_counts(fed, store):
    chain, aggregator, learners = fed
    first = make_aggregator(aggregator, store)
    first.start()
    nodes = [LearnerNode(LinearLearner(i), c, store) for i, c in enumerate(learners)]
    nodes[0].step()
    nodes[1].step()  # two of three updates are on chain when the aggregator "dies"

    restarted = make_aggregator(aggregator, store, initial_weights=None, strategy=None)
    restarted.start()  # resumes from the chain: plan, strategy, open round
    assert restarted.plan == first.plan
    nodes[2].step()
    result = restarted.run_round(1)

    assert sorted(result.included) == sorted(n.address for n in nodes)
    assert aggregator.current_round() == 2
    nodes[0].step()  # evaluates round 1, trains round 2
    with pytest.raises(WrongRound):
        learners[0].submit_update(1, aggregator.global_model(1), 10)


def test_bad_updates_are_rejected_with_reasons_and_the_round_goes_on(fed, store):
    chain, aggregator, learners = fed
    agg = make_aggregator(aggregator, store, min_updates=1, round_timeout=0.5)
    agg.start()
    honest = LearnerNode(LinearLearner(0), learners[0], store)
    honest.step()
    garbage_cid = store.put(b"definitely not a safetensors file")
    learners[1].submit_update(1, garbage_cid, 50)
    nan = initial_weights()
    nan["linear.weight"][:] = np.nan
    learners[2].submit_update(1, store.put(_raw_encode(nan)), 50)

    result = agg.run_round(1)

    assert result.included == [learners[0].account.address]
    reasons = {r.learner: r.reason for r in result.rejected}
    assert "InvalidModel" in reasons[learners[1].account.address]
    assert "not finite" in reasons[learners[2].account.address] or "NaN" in reasons[
        learners[2].account.address]
    published = decode(store.get(to_cid(aggregator.global_model(1))))
    first = aggregator.updates(1)[0]
    honest_update = Update(first.learner, first.num_examples,
                           decode(store.get(first.model_cid.require())))
    expected, _ = FedAvg().aggregate(initial_weights(), [honest_update])
    assert encode(published) == encode(expected)  # only the honest update counted


def test_wrong_shape_update_is_rejected(fed, store):
    chain, aggregator, learners = fed
    agg = make_aggregator(aggregator, store, min_updates=1, round_timeout=0.5)
    agg.start()
    LearnerNode(LinearLearner(0), learners[0], store).step()
    rogue = WrongShapeLearner(1).train(initial_weights(), TRAIN)
    learners[1].submit_update(1, store.put(encode(rogue.weights)), 60)

    result = agg.run_round(1)

    assert [r.learner for r in result.rejected] == [learners[1].account.address]
    assert "shape" in result.rejected[0].reason


def test_silent_learner_round_closes_at_timeout_when_min_updates_met(fed, store):
    chain, aggregator, learners = fed
    agg = make_aggregator(aggregator, store, min_updates=2, round_timeout=0.5)
    agg.start()
    for i in (0, 1):
        LearnerNode(LinearLearner(i), learners[i], store).step()

    result = agg.run_round(1)  # learner 2 never answers

    assert len(result.included) == 2
    assert aggregator.current_round() == 2


def test_silent_learners_below_min_updates_carry_the_model_over(fed, store):
    chain, aggregator, learners = fed
    agg = make_aggregator(aggregator, store, min_updates=2, round_timeout=0.5)
    agg.start()
    LearnerNode(LinearLearner(0), learners[0], store).step()

    result = agg.run_round(1)

    assert result.included == []
    assert aggregator.global_model(1) == aggregator.global_model(0)
    assert aggregator.current_round() == 2  # the federation does not hang


def test_learner_restarted_mid_round_does_not_submit_twice(fed, store):
    chain, aggregator, learners = fed
    make_aggregator(aggregator, store).start()
    LearnerNode(LinearLearner(0), learners[0], store).step()
    again = LearnerNode(LinearLearner(0), learners[0], store)
    again.step()

    assert again.submitted == []
    assert len(aggregator.updates(1)) == 1


def test_late_learner_trains_on_the_current_global_model(fed, store):
    chain, aggregator, learners = fed
    agg = make_aggregator(aggregator, store, min_updates=2, round_timeout=0.5)
    agg.start()
    for i in (0, 1):
        LearnerNode(LinearLearner(i), learners[i], store).step()
    agg.run_round(1)

    late = LearnerNode(LinearLearner(2), learners[2], store, evaluate=False)
    late.step()

    assert late.submitted == [2]
    global1 = decode(store.get(to_cid(aggregator.global_model(1))))
    assert int(global1["steps"]) == 1
    submitted = decode(store.get(aggregator.updates(2)[0].model_cid.require()))
    assert int(submitted["steps"]) == 2  # trained from round 1's model, not genesis


def _raw_encode(weights):
    """Encodes without the codec's own finiteness check, as a rogue learner could."""
    from fedchain.model import codec

    check = codec._check_finite
    codec._check_finite = lambda name, array: None
    try:
        return encode(weights)
    finally:
        codec._check_finite = check


def test_restarted_aggregator_replays_server_optimizer_state(fed, store):
    from fedchain.aggregation.strategy import FedAvgM

    chain, aggregator, learners = fed
    nodes = [LearnerNode(LinearLearner(i), c, store, evaluate=False)
             for i, c in enumerate(learners)]
    first = make_aggregator(aggregator, store, strategy=FedAvgM(server_lr=1.0, momentum=0.9))
    first.start()
    for _ in range(2):
        for n in nodes:
            n.step()
        first.run_round(aggregator.current_round())

    restarted = make_aggregator(aggregator, store, initial_weights=None, strategy=None)
    restarted.start()

    assert restarted._state is not None
    assert set(restarted._state) == set(first._state)
    for name in first._state:
        assert np.array_equal(restarted._state[name], first._state[name]), name


class _Buggy(LinearLearner):
    """A learner whose own code raises: training in round 2, evaluating round 1's model."""

    def train(self, weights, config):  # type: ignore[no-untyped-def]
        if config["round"] == 2:
            raise RuntimeError("out of GPU memory (simulated)")
        return super().train(weights, config)

    def evaluate(self, weights, config):  # type: ignore[no-untyped-def]
        if config["round"] == 1:
            raise ValueError("corrupt test set (simulated)")
        return super().evaluate(weights, config)


def test_a_learner_that_raises_is_logged_and_recorded_and_the_federation_goes_on(tmp_path):
    result = simulate(lambda i, n: _Buggy(i) if i == 0 else LinearLearner(i), 3, FedAvg(), 3,
                      store=f"file://{tmp_path / 'store'}", min_updates=2, round_timeout=10.0,
                      train_config={"lr": 0.1, "steps": 3}, results_dir=tmp_path / "out")
    assert len(result.rounds) == 3  # every round ran
    buggy = result.learners[0].address
    assert buggy not in result.rounds[1].included and buggy in result.rounds[2].included
    assert [(f.round, f.what) for f in result.failures] == [(1, "evaluate"), (2, "train")]
    assert "RuntimeError: out of GPU memory" in result.failures[1].error
    recorded = json.loads((tmp_path / "out" / "results.json").read_text())["failures"]
    assert [(f["round"], f["what"], f["learner"]) for f in recorded] == [
        (1, "evaluate", "learner-0"), (2, "train", "learner-0")]
