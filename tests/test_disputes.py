"""A colluding committee majority (2 of 3) on Anvil, and the learners that do not follow it.

Each learner re-runs the published round with `fedchain.protocol.round.run_round` and compares
the whole outcome (model, server state, included set, carried over or not): a round that
censors a valid update, closes below `min_updates`, carries the model over although valid
updates existed, or publishes a wrong server state is disputed on chain by every honest
learner, which does not train on it, and the audit fails the round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from cheats import Tampering
from fedmodels import LinearLearner, initial_weights
from fixtures.chains import dev

from fedchain.aggregation.strategy import FedAvg, FedAvgM
from fedchain.audit import audit_federation
from fedchain.cli import devnet
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain
from fedchain.eth.events import Disputed
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import LearnerNode
from fedchain.protocol.params import Plan
from fedchain.storage.cid import CID

pytestmark = [pytest.mark.anvil]


@pytest.fixture(scope="module")
def anvil_chain() -> Iterator[Chain]:
    """An Anvil node of this module's own: committees run with deadlines here, and the
    session's node has had its clock moved ahead by other tests (an idle chain whose latest
    block is stamped ahead of this machine's clock would hold a deadline back)."""
    node = devnet.start_anvil()
    try:
        yield connect(node.url)
    finally:
        node.stop()

TRAIN = {"lr": 0.1, "steps": 3}
#: Generous: a loaded machine may be slow, and nothing here waits for a deadline.
PATIENCE = 120.0


class Censoring(Aggregator):
    """Leaves the last learner's valid update out."""

    def fetch_round(self, usable: Any, deadline: float | None = None) -> Any:
        return super().fetch_round(sorted(usable, key=lambda u: u.learner.lower())[:-1],
                                   deadline)


class BelowQuorum(Aggregator):
    """Aggregates whatever arrived, below the plan's min_updates."""

    def _plan(self) -> Plan:
        return replace(super()._plan(), min_updates=0)


class CarryingOver(Aggregator):
    """Carries the model over although valid updates arrived."""

    def fetch_round(self, usable: Any, deadline: float | None = None) -> Any:
        return super().fetch_round([], deadline)


class WrongState(Aggregator):
    """Publishes the right model with a server state of its own making."""

    def _vote(self, round: int, cid: CID, learners: list[str], state_cid: CID | None,
              seen: list[int]) -> Any:
        forged = self.store.put(b"not the server state")
        return super()._vote(round, cid, learners, forged, seen)


def _in_threads(steps: list[Callable[[], Any]]) -> None:
    errors: list[BaseException] = []

    def run(step: Callable[[], Any]) -> None:
        try:
            step()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert not any(t.is_alive() for t in threads), "a committee member did not finish"
    assert not errors, errors


def _deploy(chain: Chain) -> tuple[FedChain, list[Any], list[Any]]:
    """A fresh FedChain with a committee of three (quorum 2) and three learners."""
    members = [dev(chain, i) for i in (1, 6, 7)]
    learners = [dev(chain, i) for i in (2, 3, 4)]
    chain.fund([m.address for m in members])
    contract, _ = FedChain.deploy(chain, dev(chain, 0), [m.address for m in members], 2)
    contract.add_learners([a.address for a in learners])
    return contract, members, learners


CASES = {
    "censored-update": (Censoring, FedAvg(), 1, 3),
    "below-min-updates": (BelowQuorum, FedAvg(), 3, 2),
    "carried-over-with-valid-updates": (CarryingOver, FedAvg(), 1, 3),
    "wrong-state-cid": (WrongState, FedAvgM(momentum=0.9), 1, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_learners_dispute_what_a_colluding_majority_publishes(anvil_chain: Chain, store,
                                                              case: str) -> None:
    cheat, strategy, min_updates, submitting = CASES[case]
    contract, members, learners = _deploy(anvil_chain)
    # With fewer than every learner in, votes open at the update deadline: a short one.
    windows = {} if submitting == 3 else {"update_window": 2, "vote_window": 120}
    config = RunConfig(strategy=strategy, rounds=2, min_updates=min_updates, train=TRAIN,
                       round_timeout=PATIENCE if submitting == 3 else 2.0, poll_interval=0.05,
                       **windows)
    # Members 1 and 2 collude (same cheat, same votes: a quorum); member 3 is not needed.
    colluders = [cheat(contract.with_account(m), store, config,
                       initial_weights=initial_weights()) for m in members[:2]]
    _in_threads([a.start for a in colluders])
    nodes = [LearnerNode(LinearLearner(i), contract.with_account(a), store,
                         name=f"learner-{i}", poll_interval=0.05)
             for i, a in enumerate(learners)]
    for n in nodes[:submitting]:
        n.step()  # round 1: train on the genesis model and submit
    _in_threads([lambda a=a: a.run_round(1) for a in colluders])
    published = contract.published(1)
    assert published is not None

    for n in nodes:
        n.step()  # round 2: re-derive round 1 before training on it

    disputes = _disputed_and_voided(contract, nodes)
    if case == "wrong-state-cid":
        # The model is right: the dispute names the state the learners re-derived.
        assert all(d.computed_cid.raw != published.state_cid.raw for d in disputes)
    else:
        assert all(d.computed_cid.raw != published.model_cid.raw for d in disputes)
    report = audit_federation(contract, store)
    assert report.rounds[0].status == "failed", report.rounds[0].checks
    assert report.exit_status() == 1


def test_an_honest_committee_is_followed(anvil_chain: Chain, store) -> None:
    contract, members, learners = _deploy(anvil_chain)
    config = RunConfig(strategy=FedAvgM(momentum=0.9), rounds=2, min_updates=3, train=TRAIN,
                       round_timeout=PATIENCE, poll_interval=0.05)
    committee = [Aggregator(contract.with_account(m), store, config,
                            initial_weights=initial_weights()) for m in members]
    _in_threads([a.start for a in committee])
    nodes = [LearnerNode(LinearLearner(i), contract.with_account(a), store, poll_interval=0.05)
             for i, a in enumerate(learners)]
    for n in nodes:
        n.step()
    _in_threads([lambda a=a: a.run_round(1) for a in committee])
    for n in nodes:
        n.step()
    assert all(n.verified == {1: True} and not n.disputed for n in nodes)
    assert all(contract.has_submitted(2, n.address) for n in nodes)


def _disputed_and_voided(contract: FedChain, nodes: list[LearnerNode]) -> list[Disputed]:
    """Round 1's disputes, after checking that a majority of the learners disputed it and the
    one whose dispute made the majority voided it: nobody trained on its model."""
    disputes = [e for e in contract.events("Disputed") if isinstance(e, Disputed)]
    assert {d.round for d in disputes} == {1}
    assert 2 * len(disputes) > len(nodes)
    assert {d.learner for d in disputes} <= {n.address for n in nodes}
    assert [e.round for e in contract.events("RoundVoided")] == [1]
    assert not any(contract.has_submitted(2, n.address) for n in nodes)
    assert all(n.verified.get(1) is not True for n in nodes)
    return disputes


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_audit_names_the_colluding_majority_and_marks_the_honest_minority(
        anvil_chain: Chain, store) -> None:
    contract, members, learners = _deploy(anvil_chain)
    config = RunConfig(strategy=FedAvg(), rounds=2, min_updates=1, train=TRAIN,
                       round_timeout=PATIENCE, poll_interval=0.05)
    honest = Aggregator(contract.with_account(members[2]), store, config,
                        initial_weights=initial_weights())
    colluders = [Censoring(contract.with_account(m), store, config,
                           initial_weights=initial_weights()) for m in members[:2]]
    _in_threads([a.start for a in [*colluders, honest]])
    nodes = [LearnerNode(LinearLearner(i), contract.with_account(a), store, poll_interval=0.05)
             for i, a in enumerate(learners)]
    for n in nodes:
        n.step()
    # The honest member votes first (its vote stays on chain), then the colluders close.
    thread = threading.Thread(target=honest.run_round, args=(1,), daemon=True)
    thread.start()
    _wait_for(lambda: any(True for _ in contract.events("Voted", round=1)), "the honest vote")
    _in_threads([lambda a=a: a.run_round(1) for a in colluders])
    thread.join(PATIENCE)
    assert not thread.is_alive()

    report = audit_federation(contract, store)
    votes = {c.learner: c for c in report.rounds[0].checks if c.what == "vote"}
    colluding = {m.address for m in members[:2]}
    assert {a for a, c in votes.items() if c.status == "failed"} == colluding
    assert votes[members[2].address].status == "note"
    assert "honest minority" in votes[members[2].address].detail
    assert report.exit_status() == 1


def test_the_audit_shows_a_genesis_dissent_and_a_committee_swapped_mid_round(
        anvil_chain: Chain, store) -> None:
    contract, members, learners = _deploy(anvil_chain)
    genesis, plan = (b"\x01\x55\x12\x20" + bytes([i]) * 32 for i in (1, 2))
    other_plan = b"\x01\x55\x12\x20" + bytes([3]) * 32
    m1, m2, m3 = (contract.with_account(m) for m in members)
    m3.set_genesis(genesis, other_plan, 5)  # the dissenter votes first, for another plan
    m1.set_genesis(genesis, plan, 5)
    m2.set_genesis(genesis, plan, 5)
    assert contract.current_round() == 1
    # While round 1 is open the owner hands the committee to the first member alone.
    contract.set_committee([members[0].address], 1)

    report = audit_federation(contract, None)
    dissent = [c for c in report.checks if c.what == "genesis vote"]
    assert [c.learner for c in dissent] == [members[2].address]
    (swap,) = [c for c in report.all_checks() if c.what == "committee"]
    assert swap.round == 1 and members[0].address in swap.detail


def test_learners_void_a_round_a_colluding_majority_tampered_and_learning_resumes(
        anvil_chain: Chain, store) -> None:
    contract, members, learners = _deploy(anvil_chain)
    config = RunConfig(strategy=FedAvg(), rounds=3, min_updates=1, train=TRAIN,
                       round_timeout=PATIENCE, poll_interval=0.05)
    colluders = [Tampering(contract.with_account(m), store, config,
                           initial_weights=initial_weights()) for m in members[:2]]
    _in_threads([a.start for a in colluders])
    nodes = [LearnerNode(LinearLearner(i), contract.with_account(a), store, poll_interval=0.05)
             for i, a in enumerate(learners)]
    for n in nodes:
        n.step()
    _in_threads([lambda a=a: a.run_round(1) for a in colluders])
    genesis, tampered = contract.global_model(0), contract.global_model(1)

    for n in nodes:
        n.step()  # each disputes round 1; the one that makes it a majority voids it

    (voided,) = list(contract.events("RoundVoided"))
    assert voided.round == 1 and voided.restored_cid.raw == genesis
    assert sorted(voided.evicted) == sorted(m.address for m in members[:2])
    assert contract.committee()[0] == [members[2].address]
    assert contract.current_round() == 3 and contract.global_model(2) == genesis != tampered
    for n in nodes:
        n.step()  # round 3: round 2 (closed by the void) re-derives; train on the restored model
    assert all(contract.has_submitted(3, n.address) for n in nodes)
    assert all(n.verified.get(2) is True for n in nodes)
    report = audit_federation(contract, store)
    statuses = {r.round: r.status for r in report.rounds}
    assert statuses[1] == "failed" and statuses[2] == "ok"
    assert any(c.what == "void" for c in report.rounds[0].checks)
