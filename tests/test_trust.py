"""No single party trusted, in one-process federations on the embedded chain: a committee
outvotes a tampering member, learners re-derive what they train on and dispute a wrong model,
the audit fails an aggregator that leaves valid updates out, server state is published per
round, commit-reveal runs end to end, a removed learner's update is excluded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from cheats import Tampering
from fedmodels import LinearLearner, initial_weights

from fedchain.aggregation.strategy import FedAvg, FedAvgM
from fedchain.audit import audit_federation
from fedchain.audit.report import OK
from fedchain.errors import ConfigError
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain, RoundParams
from fedchain.eth.events import ChainCid, Disputed
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import LearnerNode
from fedchain.federation.simulation import simulate
from fedchain.model.codec import Weights, decode, encode
from fedchain.storage import open_store
from fedchain.storage.cid import to_cid

TRAIN = {"lr": 0.1, "steps": 5}


def _learners(i: int, n: int) -> LinearLearner:
    return LinearLearner(i)


def test_a_committee_closes_every_round_on_the_honest_model_despite_a_tampering_member(store):
    result = simulate(_learners, 3, FedAvg(), 2, store=store, train_config=TRAIN,
                      aggregators=3, quorum=2, aggregator_types={1: Tampering})
    contract = result.contract
    members, quorum = contract.committee()
    assert quorum == 2 and len(members) == 3
    honest = simulate(_learners, 3, FedAvg(), 2, store=store, train_config=TRAIN)
    # The same federation with one honest aggregator publishes the same models, bit for bit.
    assert [r.global_cid for r in result.rounds] == [r.global_cid for r in honest.rounds]
    report = audit_federation(contract, store)
    # Tampered votes that made it on chain (those cast before the honest quorum closed the
    # round; the contract refuses later ones) are the audit's only failures, by member.
    assert {(c.what, c.learner) for c in report.failures()} <= {("vote", members[1])}
    assert all(c.status == OK for c in report.all_checks() if c.what == "global model")
    assert not any(n.disputed for n in result.learners)


def test_learners_dispute_a_tampered_model_and_do_not_train_on_it(fed, store):
    chain, aggregator, bindings = fed
    config = RunConfig(strategy=FedAvg(), rounds=3, min_updates=3, round_timeout=30.0,
                       train=TRAIN, poll_interval=0.05)
    agg = Tampering(aggregator, store, config, initial_weights=initial_weights())
    agg.start()
    nodes = [LearnerNode(LinearLearner(i), b, store, name=f"learner-{i}", poll_interval=0.05)
             for i, b in enumerate(bindings)]
    for n in nodes:
        n.step()  # round 1: train on the genesis model and submit
    agg.run_round(1)  # publishes the honest average × 2
    tampered = ChainCid(aggregator.global_model(1))
    for n in nodes:
        n.step()
    # Each learner re-derived round 1, found another model, said so on chain, did not train.
    # A majority of them disputed it (and so voided it: the model before it is back).
    disputes = [e for e in aggregator.events("Disputed") if isinstance(e, Disputed)]
    assert {d.round for d in disputes} == {1} and 2 * len(disputes) > len(nodes)
    assert all(d.computed_cid != tampered for d in disputes)
    assert not any(aggregator.has_submitted(2, n.address) for n in nodes)
    assert all(n.verified.get(1) is not True for n in nodes)
    assert [e.round for e in aggregator.events("RoundVoided")] == [1]
    # The audit agrees with the learners: round 1 fails, and the disputes stand.
    report = audit_federation(aggregator, store)
    assert any(c.what == "global model" and c.round == 1 for c in report.failures())


def test_a_plan_with_verify_off_does_not_switch_off_a_learners_own_check(fed, store):
    chain, aggregator, bindings = fed
    # A committee majority publishes a plan that asks nobody to check, then tampers.
    config = RunConfig(strategy=FedAvg(), rounds=3, min_updates=3, round_timeout=30.0,
                       train=TRAIN, poll_interval=0.05, verify="off")
    agg = Tampering(aggregator, store, config, initial_weights=initial_weights())
    assert agg.start().verify == "off"
    nodes = [LearnerNode(LinearLearner(i), b, store, poll_interval=0.05)
             for i, b in enumerate(bindings)]  # each learner's own choice: "full"
    for n in nodes:
        n.step()
    agg.run_round(1)
    for n in nodes:
        n.step()
    assert all(n.verified.get(1) is not True for n in nodes)
    assert 2 * sum(n.disputed == [1] for n in nodes) > len(nodes)
    assert not any(aggregator.has_submitted(2, n.address) for n in nodes)


def test_honest_rounds_are_verified_before_training(store):
    result = simulate(_learners, 3, FedAvg(), 3, store=store, train_config=TRAIN)
    for n in result.learners:
        assert n.verified == {1: True, 2: True} and not n.disputed
        assert n.verify_seconds > 0
    off = simulate(_learners, 3, FedAvg(), 3, store=store, train_config=TRAIN,
                   config=RunConfig(verify="off"))
    assert all(not n.verified for n in off.learners)


class LeavingOut(Aggregator):
    """An aggregator that aggregates only the first update of each round."""

    def fetch_round(self, usable: Any, deadline: float | None = None) -> Any:
        return super().fetch_round(usable[:1], deadline)


class DroppingAll(Aggregator):
    """An aggregator that drops every update and carries the old model over."""

    def fetch_round(self, usable: Any, deadline: float | None = None) -> Any:
        return super().fetch_round([], deadline)


@pytest.mark.parametrize("cheat", [LeavingOut, DroppingAll], ids=["one-of-three", "none"])
def test_the_audit_fails_valid_updates_left_out(fed, store, cheat):
    chain, aggregator, bindings = fed
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=1, round_timeout=30.0,
                       train=TRAIN, poll_interval=0.05)
    agg = cheat(aggregator, store, config, initial_weights=initial_weights())
    agg.start()
    nodes = [LearnerNode(LinearLearner(i), b, store, poll_interval=0.05)
             for i, b in enumerate(bindings)]
    for n in nodes:
        n.step()
    agg.run_round(1)
    report = audit_federation(aggregator, store)
    left_out = [c for c in report.failures() if c.what == "left-out update"]
    expected = 2 if cheat is LeavingOut else 3
    assert len(left_out) == expected, report.failures()
    assert report.exit_status() == 1


def test_a_stateful_round_publishes_its_server_state_and_verifies_on_its_own(store):
    result = simulate(_learners, 3, FedAvgM(momentum=0.9), 3, store=store,
                      train_config=TRAIN)
    contract = result.contract
    published = [next(contract.events("GlobalModelPublished", round=r)) for r in (1, 2, 3)]
    assert all(p.state_cid.raw for p in published)  # type: ignore[attr-defined]
    state = decode(store.get(to_cid(published[-1].state_cid.raw)))  # type: ignore[attr-defined]
    assert any(k.startswith("momentum/") for k in state)
    report = audit_federation(contract, store)
    assert report.exit_status() == 0, report.all_checks()
    # Round 2's update content gone from the store: rounds 2 fails to verify, but round 3
    # still does, from the state round 2 published.
    included = next(contract.events("GlobalModelPublished", round=2)).included
    update = next(u for u in contract.updates(2) if u.learner == included[0])
    store.path_of(update.model_cid.require()).unlink()
    report = audit_federation(contract, store)
    by_round = {r.round: r.status for r in report.rounds}
    assert by_round[3] == OK and by_round[2] != OK
    assert report.unverified_rounds() == [2] and report.exit_status() == 3


def test_commit_reveal_runs_a_federation_end_to_end(store):
    config = RunConfig(update_window=8, reveal_window=8, vote_window=60, round_timeout=120.0,
                       min_updates=3)
    result = simulate(_learners, 3, FedAvg(), 1, store=store, train_config=TRAIN,
                      config=config)
    contract = result.contract
    commits = list(contract.events("UpdateCommitted", round=1))
    assert len(commits) == 3
    assert len(result.rounds[0].included) == 3
    assert contract.finished()


def test_a_removed_learners_pending_update_is_excluded(fed, store):
    chain, aggregator, bindings = fed
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=2, round_timeout=30.0,
                       train=TRAIN, poll_interval=0.05)
    agg = Aggregator(aggregator, store, config, initial_weights=initial_weights())
    agg.start()
    nodes = [LearnerNode(LinearLearner(i), b, store, poll_interval=0.05)
             for i, b in enumerate(bindings)]
    for n in nodes:
        n.step()
    owner = aggregator.with_account(chain.account(0))
    owner.remove_learner(nodes[2].address)
    result = agg.run_round(1)
    assert sorted(result.included) == sorted(n.address for n in nodes[:2])
    assert [r.learner for r in result.rejected] == [nodes[2].address]
    assert "removed" in result.rejected[0].reason
    report = audit_federation(aggregator, store)
    assert report.exit_status() == 0, report.all_checks()


def test_a_global_model_is_never_non_finite(store):
    class Exploding(LinearLearner):
        def train(self, weights: Weights, config: Any) -> Any:
            result = super().train(weights, config)
            return replace(result, weights={k: np.full_like(v, 3e38) for k, v in
                                            result.weights.items()})

    result = simulate(lambda i, n: Exploding(i) if i == 0 else LinearLearner(i), 3, FedAvg(),
                      2, store=store, train_config=TRAIN, min_updates=2)
    for r in result.rounds:
        weights = decode(store.get(r.global_cid))
        assert all(np.isfinite(v).all() for v in weights.values())
    assert encode(weights)  # a model learners can use


def test_excluding_duplicates_needs_commit_reveal_so_a_front_runner_gains_nothing(fed, store):
    chain, aggregator, bindings = fed
    # Without commit-reveal a pending submission's CID is public: a copier with a higher tip
    # is mined first and the honest learner is left out as the duplicate. Refused outright.
    with pytest.raises(ConfigError, match="commit-reveal"):
        RunConfig(strategy=FedAvg(), exclude_duplicates=True)
    # A plan on chain that asks for it anyway is refused by the aggregator that would serve it.
    plan = replace(RunConfig(strategy=FedAvg(), rounds=1).plan(3), exclude_duplicates=True)
    aggregator.set_genesis(store.put(encode(initial_weights())), store.put(plan.to_json()), 1)
    with pytest.raises(ConfigError, match="front|copier"):
        Aggregator(aggregator, store, RunConfig(poll_interval=0.05)).start()


def test_colluders_submitting_one_update_count_once_under_commit_reveal(store):
    # Learners 0 and 1 share their data (and so their update, byte for byte): the first one
    # revealed keeps it, the other is left out as a duplicate, and the audit agrees.
    config = RunConfig(update_window=8, reveal_window=8, vote_window=60, round_timeout=120.0,
                       min_updates=2, exclude_duplicates=True)
    result = simulate(lambda i, n: LinearLearner(0 if i < 2 else i), 3, FedAvg(), 1,
                      store=store, train_config=TRAIN, config=config)
    contract = result.contract
    pair = {n.address for n in result.learners[:2]}
    (round1,) = result.rounds
    assert len(round1.included) == 2 and result.learners[2].address in round1.included
    (rejected,) = round1.rejected
    assert rejected.learner in pair and "duplicate of" in rejected.reason
    report = audit_federation(contract, store)
    assert report.exit_status() == 0, report.failures()
    assert any(c.what == "left-out update" and c.learner == rejected.learner
               and "duplicate" in c.detail for c in report.all_checks())


def test_the_audit_shows_a_replayed_update_and_a_resubmitted_global_model(fed, store):
    chain, aggregator, bindings = fed
    config = RunConfig(strategy=FedAvg(), rounds=2, min_updates=2, round_timeout=30.0,
                       train=TRAIN, poll_interval=0.05)
    agg = Aggregator(aggregator, store, config, initial_weights=initial_weights())
    agg.start()
    honest = [LearnerNode(LinearLearner(i), b, store, poll_interval=0.05)
              for i, b in enumerate(bindings[:2])]
    rider = bindings[2]
    # Round 1: the third learner submits the genesis model unchanged (a free-rider).
    for n in honest:
        n.step()
    rider.submit_update(1, aggregator.genesis(), 10)
    agg.run_round(1)
    # Round 2: it replays the first learner's round-1 update as its own.
    victim = next(u for u in aggregator.updates(1) if u.learner == honest[0].address)
    for n in honest:
        n.step()
    rider.submit_update(2, victim.model_cid.raw, victim.num_examples)
    agg.run_round(2)
    report = audit_federation(aggregator, store)
    assert report.exit_status() == 0, report.failures()  # shown, not failed: see SPEC §7.4
    copies = {c.round: c.detail for c in report.all_checks()
              if c.what == "copied update" and c.learner == rider.account.address}
    assert "the genesis model" in copies[1]
    assert f"the update {honest[0].address} submitted in round 1" in copies[2]


def test_a_committees_plan_has_deadlines_and_a_member_refuses_one_without(tmp_path):
    config = RunConfig(strategy=FedAvg(), round_timeout=90.0)
    assert (config.plan(5).update_window, config.plan(5).vote_window) == (0, 0)
    plan = config.plan(5, committee=3)
    assert (plan.update_window, plan.vote_window) == (90, 60)
    chosen = replace(config, update_window=30, vote_window=20).plan(5, committee=3)
    assert (chosen.update_window, chosen.vote_window) == (30, 20)

    # Two members of three set a genesis whose plan has no deadlines: the third refuses it.
    chain = connect("embedded", fresh=True)
    members = [chain.account(i) for i in (1, 6, 7)]
    chain.fund([m.address for m in members])
    owner, _ = FedChain.deploy(chain, chain.account(0), [m.address for m in members], 2)
    owner.add_learners([chain.account(i).address for i in (2, 3, 4)])
    store = open_store(f"file://{tmp_path / 'store'}")
    no_deadlines = config.plan(3)
    model, plan_cid = store.put(encode(initial_weights())), store.put(no_deadlines.to_json())
    for m in members[:2]:
        owner.with_account(m).set_genesis(model, plan_cid, RoundParams.from_plan(no_deadlines))
    honest = Aggregator(owner.with_account(members[2]), store, config,
                        initial_weights=initial_weights())
    with pytest.raises(ConfigError, match="no update and vote deadlines"):
        honest.start()
