"""voidRound: when more than half of the active learners dispute the latest closed round, anyone
voids its result. The model before it is restored, the members that voted for the result lose
their seats, the open round closes carried over on the restored model and learning resumes.
On every backend (embedded, Anvil, Ganache).

Accounts: owner dev 0; committee dev 1, 8, 9 (quorum 2); learners dev 2..6; stranger dev 10.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from fixtures.chains import dev

from fedchain.errors import (
    NoGlobalModel,
    NotAggregator,
    NotLatestRound,
    NotTheResult,
    NotVoidable,
    TooFewDisputes,
)
from fedchain.eth import events as ev
from fedchain.eth.chain import Chain
from fedchain.eth.contract import ZERO_ADDRESS, FedChain, RoundParams
from fedchain.protocol.rules import vote_digest


def cid(tag: str) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(tag.encode()).digest()


GENESIS, PLAN = cid("genesis"), cid("plan")


@dataclass
class Fed:
    owner: FedChain
    members: list[FedChain]
    learners: list[FedChain]
    stranger: FedChain

    def addr(self, binding: FedChain) -> str:
        return binding.account.address

    def everyone(self) -> list[str]:
        return [self.addr(x) for x in self.learners]

    def submit_all(self, round: int) -> None:
        for n, learner in enumerate(self.learners):
            learner.submit_update(round, cid(f"{round}/{n}"), 10)


def deploy(chain: Chain, members: int = 3, rounds: int = 10, **params: int) -> Fed:
    owner = dev(chain, 0)
    seats = [dev(chain, i) for i in (1, 8, 9)[:members]]
    learners = [dev(chain, i) for i in range(2, 7)]
    chain.fund([a.address for a in (*seats, *learners, dev(chain, 10))])
    contract, _ = FedChain.deploy(chain, owner, [a.address for a in seats])
    contract.add_learners([a.address for a in learners])
    fed = Fed(contract, [contract.with_account(a) for a in seats],
              [contract.with_account(a) for a in learners], contract.with_account(dev(chain, 10)))
    for m in fed.members[: len(seats) // 2 + 1]:
        m.set_genesis(GENESIS, PLAN, RoundParams(rounds, **params))
    return fed


def test_learners_void_a_colluding_majoritys_round_and_learning_resumes(chain: Chain) -> None:
    fed = deploy(chain)
    honest_member, colluder_a, colluder_b = fed.members
    c = fed.owner
    fed.submit_all(1)
    for m in (honest_member, colluder_a):
        m.publish_global(1, cid("g1"), fed.everyone())
    # Round 2: two of the three members publish a tampered model over the honest vote.
    fed.submit_all(2)
    honest_member.publish_global(2, cid("g2 honest"), fed.everyone())
    colluder_b.publish_global(2, cid("g2 tampered"), fed.everyone()[:1])
    colluder_a.publish_global(2, cid("g2 tampered"), fed.everyone()[:1])
    assert c.latest_global() == (2, cid("g2 tampered"))
    fed.learners[4].submit_update(3, cid("trained on the tampered model"), 10)

    # Disputes: counted once per learner; 2 of 5 are not enough, 3 are.
    for learner in fed.learners[:2]:
        learner.dispute(2, cid("g2 honest"))
    fed.learners[0].dispute(2, cid("g2 honest"))  # again: recorded, not counted twice
    assert c.dispute_count(2) == 2 and not c.voidable(2)
    assert c.has_disputed(2, fed.addr(fed.learners[0]))
    assert not c.has_disputed(2, fed.addr(fed.learners[2]))
    with pytest.raises(TooFewDisputes) as refused:
        fed.stranger.void_round(2)
    assert refused.value.fields == {"round": 2, "disputes": 2, "needed": 3}
    with pytest.raises(NoGlobalModel):
        fed.learners[2].dispute(3, cid("round 3 is open"))
    fed.learners[2].dispute(2, cid("g2 honest"))
    assert c.dispute_count(2) == 3 and c.voidable(2)

    # Only the result the round closed on evicts its voters: not the honest minority's vote.
    honest_digest = vote_digest(cid("g2 honest"), b"", c.bitmaps(2, fed.everyone(), [31])[0])
    with pytest.raises(NotTheResult):
        fed.stranger.void_round(2, honest_digest)
    with pytest.raises(NotLatestRound):
        fed.stranger.void_round(1)
    receipt = fed.stranger.void_round(2)  # anyone; the digest read from the round's event

    # The model of round 1 is back, round 3 closed carried over on it, round 4 is open.
    [voided] = [e for e in c.events("RoundVoided") if isinstance(e, ev.RoundVoided)]
    assert (voided.round, voided.restored_cid.raw, voided.disputes, voided.evicted) == (
        2, cid("g1"), 3, (fed.addr(colluder_a), fed.addr(colluder_b)))
    assert voided.block == receipt.block_number
    closed = c.published(3)
    assert closed is not None and closed.model_cid.raw == cid("g1") and closed.included == ()
    assert closed.tx == voided.tx
    assert c.latest_global() == (3, cid("g1")) and c.current_round() == 4
    assert c.global_model(3) == cid("g1")
    # The colluders lost their seats: a new epoch of the honest member alone.
    assert c.committee() == ([fed.addr(honest_member)], 1)
    assert not c.is_aggregator(fed.addr(colluder_a)) and not c.is_aggregator(fed.addr(colluder_b))
    changed = [e for e in c.events("CommitteeChanged") if isinstance(e, ev.CommitteeChanged)]
    assert (changed[-1].members, changed[-1].quorum) == ((fed.addr(honest_member),), 1)
    with pytest.raises(NotVoidable):  # round 3 closed on the void, not on a vote
        fed.stranger.void_round(3)

    # Learning resumes: the learners train on the restored model, the honest member decides.
    fed.submit_all(4)
    with pytest.raises(NotAggregator):
        colluder_a.publish_global(4, cid("g4 tampered"), [])
    honest_member.publish_global(4, cid("g4"), fed.everyone())
    assert c.latest_global() == (4, cid("g4")) and c.current_round() == 5
    with pytest.raises(NotLatestRound):
        fed.stranger.void_round(2)
    with pytest.raises(TooFewDisputes):
        fed.stranger.void_round(4)


def test_only_a_round_closed_by_a_vote_can_be_voided(chain: Chain) -> None:
    fed = deploy(chain, update_window=60, vote_window=60)
    fed.owner.chain.advance_time(121)
    fed.stranger.close_round(1)  # nobody voted: carried over, past the deadline
    for learner in fed.learners[:3]:
        learner.dispute(1, cid("anything"))
    with pytest.raises(NotVoidable):
        fed.stranger.void_round(1)


def test_a_voided_last_round_ends_the_federation_on_the_model_before_it(chain: Chain) -> None:
    fed = deploy(chain, rounds=2)
    c = fed.owner
    honest_member, colluder_a, colluder_b = fed.members
    for m in (honest_member, colluder_a):
        m.publish_global(1, cid("g1"), [])
    colluder_a.publish_global(2, cid("g2 tampered"), [])
    colluder_b.publish_global(2, cid("g2 tampered"), [])
    assert c.finished() and c.latest_global() == (2, cid("g2 tampered"))
    for learner in fed.learners[:3]:
        learner.dispute(2, cid("g2 honest"))
    fed.stranger.void_round(2)
    assert c.finished() and c.latest_global() == (2, cid("g1")) and c.current_round() == 3
    assert c.published(3) is None  # no round opens after the last
    assert c.committee() == ([fed.addr(honest_member)], 1)
    with pytest.raises(NotVoidable):
        fed.stranger.void_round(2)


def test_a_committee_all_evicted_leaves_no_seat_until_the_owner_names_one(chain: Chain) -> None:
    fed = deploy(chain, members=1)
    c = fed.owner
    [aggregator] = fed.members
    aggregator.publish_global(1, cid("g1 tampered"), [])
    for learner in fed.learners[:3]:
        learner.dispute(1, cid("g1 honest"))
    fed.stranger.void_round(1, bytes(32))  # a committee of one: its only member voted
    assert c.committee() == ([], 0) and c.aggregator() == ZERO_ADDRESS
    assert c.latest_global() == (2, GENESIS) and c.current_round() == 3
    with pytest.raises(NotAggregator):
        aggregator.publish_global(3, cid("g3"), [])
    # The owner seats a new aggregator and the federation goes on.
    newcomer = dev(c.chain, 11)
    c.chain.fund([newcomer.address])
    c.set_aggregator(newcomer.address)
    c.with_account(newcomer).publish_global(3, cid("g3"), [])
    assert c.latest_global() == (3, cid("g3"))


def test_a_committee_the_owner_replaced_since_keeps_its_seats(chain: Chain) -> None:
    fed = deploy(chain)
    c = fed.owner
    honest_member, colluder_a, colluder_b = fed.members
    colluder_a.publish_global(1, cid("g1 tampered"), [])
    colluder_b.publish_global(1, cid("g1 tampered"), [])
    # The owner already replaced the committee: the void restores the model, evicts nobody.
    c.set_committee([fed.addr(honest_member), fed.addr(fed.stranger)], 2)
    for learner in fed.learners[:3]:
        learner.dispute(1, cid("g1 honest"))
    fed.stranger.void_round(1)
    [voided] = [e for e in c.events("RoundVoided") if isinstance(e, ev.RoundVoided)]
    assert voided.evicted == () and voided.restored_cid.raw == GENESIS
    assert c.committee() == ([fed.addr(honest_member), fed.addr(fed.stranger)], 2)
    assert c.latest_global() == (2, GENESIS) and c.current_round() == 3
