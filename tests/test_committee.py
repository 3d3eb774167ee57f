"""The contract's trust and protocol rules on every backend (embedded, Anvil, Ganache): a
committee of aggregators voting k of n, deadlines with anyone-can-close, client sampling,
commit-reveal, asynchronous staleness, disputes, and the run's last round.

Accounts: owner dev 0; committee dev 1, 6, 7 (quorum 2); learners dev 2..4; stranger dev 5.
Deadline tests move the dev chain's clock instead of sleeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from eth_utils import keccak
from fixtures.chains import NODE_PARAMS, dev

from fedchain.audit.read import read_federation
from fedchain.errors import (
    AlreadySubmitted,
    AlreadyVoted,
    CommitmentMismatch,
    CommitRequired,
    DuplicateMember,
    FederationFinished,
    InvalidCommittee,
    InvalidParams,
    NoCommitment,
    NoGlobalModel,
    NotSelected,
    RevealNotOpen,
    RoundNotExpired,
    SubmissionsClosed,
    UpdateDeadlinePassed,
    VoteDeadlinePassed,
    VotingNotOpen,
    WrongRound,
)
from fedchain.eth import events as ev
from fedchain.eth import gas as gas_module
from fedchain.eth.bitmap import from_bits, to_bits
from fedchain.eth.chain import Chain
from fedchain.eth.contract import FedChain, RoundParams
from fedchain.protocol.rules import commitment, is_selected, vote_digest


def cid(tag: str) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(tag.encode()).digest()


GENESIS, PLAN = cid("genesis"), cid("plan")
#: The digest of a vote to finish (the contract's FINISH).
FINISH = keccak(text="fedchain.finish")


@dataclass
class Committee:
    chain: Chain
    owner: FedChain
    members: list[FedChain]
    learners: list[FedChain]
    stranger: FedChain
    block: int

    def genesis(self, params: RoundParams) -> None:
        for m in self.members[:2]:
            m.set_genesis(GENESIS, PLAN, params)

    def addr(self, binding: FedChain) -> str:
        return binding.account.address


@pytest.fixture
def committee(chain: Chain) -> Committee:
    owner = dev(chain, 0)
    members = [dev(chain, i) for i in (1, 6, 7)]
    learners = [dev(chain, i) for i in (2, 3, 4)]
    chain.fund([a.address for a in members])
    contract, receipt = FedChain.deploy(chain, owner, [m.address for m in members], 2)
    contract.add_learners([a.address for a in learners])
    return Committee(
        chain,
        contract,
        [contract.with_account(m) for m in members],
        [contract.with_account(a) for a in learners],
        contract.with_account(dev(chain, 5)),
        receipt.block_number,
    )


def test_a_committee_needs_a_majority_quorum_of_distinct_members(chain: Chain) -> None:
    owner = dev(chain, 0)
    a, b, c = (dev(chain, i).address for i in (1, 6, 7))
    for members, quorum in (([a, b, c], 1), ([a, b, c], 4), ([a, b], 1), ([], 1), ([a], 0)):
        with pytest.raises(InvalidCommittee):
            FedChain.deploy(chain, owner, members, quorum)
    with pytest.raises(DuplicateMember):
        FedChain.deploy(chain, owner, [a, b, a], 2)
    contract, _ = FedChain.deploy(chain, owner, [a, b, c])  # default quorum: a majority
    assert contract.committee() == ([a, b, c], 2)


def test_one_member_alone_cannot_open_the_federation_or_close_a_round(
    committee: Committee,
) -> None:
    fed = committee
    m1, m2, m3 = fed.members
    m1.set_genesis(GENESIS, PLAN, RoundParams(10))
    assert fed.owner.current_round() == 0  # one vote of the two needed
    with pytest.raises(AlreadyVoted):
        m1.set_genesis(GENESIS, PLAN, RoundParams(10))
    m3.set_genesis(cid("tampered"), PLAN, RoundParams(10))  # disagrees: no quorum for either
    assert fed.owner.current_round() == 0
    m2.set_genesis(GENESIS, PLAN, RoundParams(10))
    assert fed.owner.current_round() == 1 and fed.owner.genesis() == GENESIS


def test_the_honest_majority_closes_the_round_and_the_tampered_vote_stays_as_evidence(
    committee: Committee,
) -> None:
    fed = committee
    m1, m2, m3 = fed.members
    fed.genesis(RoundParams(10))
    for n, learner in enumerate(fed.learners):
        learner.submit_update(1, cid(f"update {n}"), 10)
    everyone = [fed.addr(x) for x in fed.learners]
    honest, tampered = cid("honest average"), cid("average x 2")
    m1.publish_global(1, honest, everyone)
    digest = vote_digest(honest, b"", to_bits(fed.owner.indices(everyone), 1))
    assert fed.owner.votes(1, digest) == 1 and fed.owner.current_round() == 1
    with pytest.raises(AlreadyVoted):
        m1.publish_global(1, honest, everyone)
    m3.publish_global(1, tampered, everyone[:1])  # a cheating member: its own result
    assert fed.owner.current_round() == 1
    # The first vote closed the round's submissions: every member votes on the same set.
    with pytest.raises(SubmissionsClosed):
        fed.learners[0].submit_update(1, cid("late"), 10)
    m2.publish_global(1, honest, everyone)
    assert fed.owner.current_round() == 2 and fed.owner.global_model(1) == honest
    votes = [e for e in fed.owner.events("Voted", round=1) if isinstance(e, ev.Voted)]
    assert [(v.member, v.model_cid.raw) for v in votes] == [
        (fed.addr(m1), honest), (fed.addr(m3), tampered), (fed.addr(m2), honest)
    ]
    assert votes[1].included == (fed.addr(fed.learners[0]),)
    [published] = fed.owner.events("GlobalModelPublished", round=1)
    assert isinstance(published, ev.GlobalModelPublished) and published.model_cid.raw == honest
    with pytest.raises(WrongRound):
        m3.publish_global(1, honest, everyone)  # too late: the round is closed
    # The audit, from the chain alone, names the member whose vote disagreed.
    report = read_federation(fed.owner, gas=False)
    assert [(c.what, c.learner) for c in report.failures()] == [("vote", fed.addr(m3))]


def test_a_member_votes_once_per_round_and_cannot_back_two_results(
    committee: Committee,
) -> None:
    """Equivocation: a member that voted for one result may not vote for another in the same
    round (nor for the same twice), so with a majority quorum two results can never gather
    a quorum between them; a member's earlier vote stays its only one."""
    fed = committee
    m1, m2, m3 = fed.members
    m1.set_genesis(GENESIS, PLAN, RoundParams(10))
    with pytest.raises(AlreadyVoted):  # another genesis: a different digest
        m1.set_genesis(cid("other genesis"), PLAN, RoundParams(10))
    m2.set_genesis(GENESIS, PLAN, RoundParams(10))
    for n, learner in enumerate(fed.learners):
        learner.submit_update(1, cid(f"update {n}"), 10)
    everyone = [fed.addr(x) for x in fed.learners]
    honest, tampered = cid("honest average"), cid("average x 2")
    bits = to_bits(fed.owner.indices(everyone), 1)
    m3.publish_global(1, tampered, everyone)
    for model, included in ((honest, everyone), (tampered, everyone[:2]), (honest, [])):
        with pytest.raises(AlreadyVoted):
            m3.publish_global(1, model, included)
    assert fed.owner.votes(1, vote_digest(honest, b"", bits)) == 0
    assert fed.owner.votes(1, vote_digest(tampered, b"", bits)) == 1
    m1.publish_global(1, honest, everyone)
    m3.finish()  # a vote to finish is no result: it does not count as the round's vote
    m2.publish_global(1, honest, everyone)  # the honest majority closes the round
    assert fed.owner.current_round() == 2 and fed.owner.global_model(1) == honest
    votes = [(e.member, e.model_cid.raw) for e in fed.owner.events("Voted", round=1)
             if isinstance(e, ev.Voted) and e.digest != FINISH]
    assert votes == [(fed.addr(m3), tampered), (fed.addr(m1), honest), (fed.addr(m2), honest)]
    # The next round is a new vote for everyone, m3 included.
    m3.publish_global(2, cid("g2"), [])
    # A new committee epoch discards the votes cast under the old one: its members vote anew.
    fed.owner.set_committee([fed.addr(m) for m in fed.members], 2)
    m3.publish_global(2, cid("g2 again"), [])
    with pytest.raises(AlreadyVoted):
        m3.publish_global(2, cid("g2"), [])


def test_finishing_early_is_a_committee_vote_too(committee: Committee) -> None:
    fed = committee
    fed.genesis(RoundParams(10))
    fed.members[0].finish()
    assert not fed.owner.finished()
    fed.members[2].finish()
    assert fed.owner.finished()
    with pytest.raises(FederationFinished):
        fed.members[1].finish()


def test_closing_the_last_round_finishes_the_federation(committee: Committee) -> None:
    fed = committee
    fed.genesis(RoundParams(2))
    for r in (1, 2):
        for m in fed.members[:2]:
            m.publish_global(r, cid(f"g{r}"), [])
    assert fed.owner.finished() and fed.owner.current_round() == 3
    [done] = fed.owner.events("Finished")
    assert isinstance(done, ev.Finished) and done.last_round == 2


def test_deadlines_gate_updates_and_votes_and_anyone_closes_a_dead_round(
    committee: Committee,
) -> None:
    fed, chain = committee, committee.chain
    m1, m2, _ = fed.members
    a, b, _ = fed.learners
    fed.genesis(RoundParams(10, update_window=600, vote_window=600))
    info = fed.owner.round_info()
    assert info.update_deadline == info.opened_at + 600
    assert info.vote_deadline == info.opened_at + 1200
    a.submit_update(1, cid("a"), 10)
    # Before the update deadline, a vote would cut the round short (b and c are not in).
    with pytest.raises(VotingNotOpen):
        m1.publish_global(1, cid("g"), [fed.addr(a)])
    with pytest.raises(RoundNotExpired):
        fed.stranger.close_round(1)
    chain.advance_time(601)
    with pytest.raises(UpdateDeadlinePassed):
        b.submit_update(1, cid("b"), 10)
    m1.publish_global(1, cid("g"), [fed.addr(a)])  # one vote of two: the committee is split
    with pytest.raises(RoundNotExpired):
        fed.stranger.close_round(1)
    chain.advance_time(600)
    with pytest.raises(VoteDeadlinePassed):
        m2.publish_global(1, cid("g"), [fed.addr(a)])
    # No quorum in time: anyone moves the federation on, the genesis model carried over.
    fed.stranger.close_round(1)
    assert fed.owner.current_round() == 2 and fed.owner.global_model(1) == GENESIS
    [timed_out] = fed.owner.events("RoundTimedOut", round=1)
    assert isinstance(timed_out, ev.RoundTimedOut) and timed_out.closer == fed.addr(fed.stranger)
    [published] = fed.owner.events("GlobalModelPublished", round=1)
    assert isinstance(published, ev.GlobalModelPublished) and published.included == ()


def test_every_learner_in_opens_the_vote_before_the_deadline(committee: Committee) -> None:
    fed = committee
    fed.genesis(RoundParams(10, update_window=600, vote_window=600))
    for n, learner in enumerate(fed.learners):
        learner.submit_update(1, cid(f"u{n}"), 10)
    everyone = [fed.addr(x) for x in fed.learners]
    for m in fed.members[:2]:
        m.publish_global(1, cid("g1"), everyone)
    assert fed.owner.current_round() == 2


def test_a_removed_learners_pending_update_cannot_be_included(committee: Committee) -> None:
    fed = committee
    fed.genesis(RoundParams(10))
    a, b, _ = fed.learners
    a.submit_update(1, cid("a"), 10)
    b.submit_update(1, cid("b"), 10)
    fed.owner.remove_learner(fed.addr(b))
    from fedchain.errors import NotIncludable

    with pytest.raises(NotIncludable):
        fed.members[0].publish_global(1, cid("g"), [fed.addr(a), fed.addr(b)])
    assert from_bits(fed.owner.active_bits()) == [1, 3]


def test_sampling_selects_learners_from_the_rounds_seed(chain: Chain) -> None:
    owner = dev(chain, 0)
    learners = [dev(chain, i) for i in range(2, 14)]
    chain.fund([a.address for a in learners])
    contract, _ = FedChain.deploy(chain, owner, dev(chain, 1).address)
    contract.add_learners([a.address for a in learners])
    agg = contract.with_account(dev(chain, 1))
    agg.set_genesis(GENESIS, PLAN, RoundParams(10, select_ppm=500_000))
    seed = contract.round_seed()  # from the opening block's hash, before anyone drew it
    assert not list(contract.events("RoundSeeded"))
    chosen = [is_selected(seed, i, 500_000) for i in range(1, 13)]
    assert [contract.is_selected(a.address) for a in learners] == chosen
    assert sum(chosen) == 6  # exactly half of the 12, every round
    picked = learners[chosen.index(True)]
    skipped = learners[chosen.index(False)]
    contract.with_account(picked).submit_update(1, cid("in"), 10)
    [seeded] = contract.events("RoundSeeded")  # the round's first submission drew it
    assert isinstance(seeded, ev.RoundSeeded) and (seeded.round, seeded.seed) == (1, seed)
    with pytest.raises(NotSelected):
        contract.with_account(skipped).submit_update(1, cid("out"), 10)
    agg.publish_global(1, cid("g1"), [picked.address])
    assert contract.round_seed() != seed  # each round draws anew


def test_commit_reveal_keeps_updates_secret_until_the_deadline(committee: Committee) -> None:
    fed, chain = committee, committee.chain
    a, b, c = fed.learners
    fed.genesis(RoundParams(10, update_window=600, reveal_window=600, vote_window=600))
    with pytest.raises(CommitRequired):
        a.submit_update(1, cid("a"), 10)
    salt = hashlib.sha256(b"a's salt").digest()
    a.commit_update(1, commitment(fed.addr(a), 1, cid("a"), 10, salt))
    b.commit_update(1, commitment(fed.addr(b), 1, cid("b"), 5, salt))
    with pytest.raises(AlreadySubmitted):
        a.commit_update(1, commitment(fed.addr(a), 1, cid("a2"), 10, salt))
    with pytest.raises(RevealNotOpen):
        a.reveal_update(1, cid("a"), 10, salt)
    chain.advance_time(601)
    # Too late to commit: a copier who sees a's reveal cannot join the round with it.
    with pytest.raises(UpdateDeadlinePassed):
        c.commit_update(1, commitment(fed.addr(c), 1, cid("a"), 10, salt))
    with pytest.raises(NoCommitment):
        c.reveal_update(1, cid("a"), 10, salt)
    with pytest.raises(CommitmentMismatch):
        b.reveal_update(1, cid("a"), 10, salt)  # b cannot reveal a's update as its own
    a.reveal_update(1, cid("a"), 10, salt)
    b.reveal_update(1, cid("b"), 5, salt)
    updates = fed.owner.updates(1)
    assert [(u.learner, u.model_cid.raw, u.num_examples) for u in updates] == [
        (fed.addr(a), cid("a"), 10), (fed.addr(b), cid("b"), 5)
    ]
    with pytest.raises(VotingNotOpen):  # reveals still open
        fed.members[0].publish_global(1, cid("g"), [fed.addr(a), fed.addr(b)])
    chain.advance_time(600)
    for m in fed.members[:2]:
        m.publish_global(1, cid("g"), [fed.addr(a), fed.addr(b)])
    assert fed.owner.current_round() == 2


def test_asynchronous_rounds_accept_updates_up_to_the_staleness_bound(
    committee: Committee,
) -> None:
    fed = committee
    a, b, c = fed.learners
    fed.genesis(RoundParams(10, buffer_size=1, max_staleness=1))
    a.submit_update(1, cid("a1"), 10)
    for m in fed.members[:2]:
        m.publish_global(1, cid("g1"), [fed.addr(a)])
    b.submit_update(1, cid("b trained on genesis"), 10)  # one round stale: accepted
    with pytest.raises(WrongRound):
        c.submit_update(0, cid("older"), 10)
    with pytest.raises(WrongRound):
        c.submit_update(3, cid("future"), 10)
    [u] = fed.owner.updates(2)
    assert (u.learner, u.staleness, u.trained_for) == (fed.addr(b), 1, 1)


def test_a_learner_records_a_dispute_about_a_published_round(committee: Committee) -> None:
    fed = committee
    fed.genesis(RoundParams(10))
    for m in fed.members[:2]:
        m.publish_global(1, cid("g1"), [])
    fed.learners[0].dispute(1, cid("what I computed"))
    with pytest.raises(NoGlobalModel):
        fed.learners[0].dispute(2, cid("not published yet"))
    [d] = fed.owner.events("Disputed")
    assert isinstance(d, ev.Disputed)
    assert (d.round, d.learner, d.computed_cid.raw) == (1, fed.addr(fed.learners[0]),
                                                        cid("what I computed"))


def test_inconsistent_round_parameters_are_refused(committee: Committee) -> None:
    m1 = committee.members[0]
    with pytest.raises(InvalidParams, match="update window"):
        m1.set_genesis(GENESIS, PLAN, RoundParams(10, reveal_window=60))
    with pytest.raises(InvalidParams, match="selectPpm"):
        m1.set_genesis(GENESIS, PLAN, RoundParams(10, select_ppm=1_000_001))
    with pytest.raises(InvalidParams, match="rounds"):
        m1.set_genesis(GENESIS, PLAN, RoundParams(0))


@contextmanager
def _one_block(chain: Chain, expected: int) -> Iterator[None]:
    """Transactions sent inside are mined together in one block, once `expected` of them wait
    in the node's pool (automine paused meanwhile)."""
    rpc = chain.w3.provider.make_request
    anvil = "anvil" in str(rpc("web3_clientVersion", []).get("result", "")).lower()
    rpc("evm_setAutomine" if anvil else "miner_stop", [False] if anvil else [])
    try:
        yield
        deadline = time.monotonic() + 120
        while sum(len(by_nonce) for by_nonce in
                  rpc("txpool_content", [])["result"]["pending"].values()) < expected:
            assert time.monotonic() < deadline, "the votes never reached the node's pool"
            time.sleep(0.05)
    finally:
        rpc("evm_setAutomine" if anvil else "miner_start", [True] if anvil else [])
    if anvil:
        rpc("evm_mine", [])


@pytest.mark.parametrize("chain", NODE_PARAMS, indirect=True)  # mining paused: a real node
def test_votes_estimated_before_either_is_mined_both_land_and_the_later_one_decides(
    committee: Committee,
) -> None:
    """Two members estimate their votes while neither vote is mined: each is priced as a
    vote that leaves the round open, but the one mined second closes it (for the genesis it
    also stores the model, plan and parameters, three times the gas). It must still fit."""
    fed = committee
    m1, m2, _ = fed.members
    with ThreadPoolExecutor(max_workers=2) as pool:
        with _one_block(fed.chain, 2):
            votes = [pool.submit(m.set_genesis, GENESIS, PLAN, RoundParams(10)) for m in (m1, m2)]
        receipts = [v.result(timeout=120) for v in votes]
        assert [r.status for r in receipts] == [1, 1]
        assert receipts[0].block_number == receipts[1].block_number
        assert fed.owner.current_round() == 1 and fed.owner.genesis() == GENESIS
        everyone = [fed.addr(x) for x in fed.learners]
        for n, learner in enumerate(fed.learners):
            learner.submit_update(1, cid(f"update {n}"), 10)
        with _one_block(fed.chain, 2):
            votes = [pool.submit(m.publish_global, 1, cid("g1"), everyone) for m in (m1, m2)]
        assert [v.result(timeout=120).status for v in votes] == [1, 1]
    assert fed.owner.current_round() == 2 and fed.owner.global_model(1) == cid("g1")


@pytest.mark.parametrize("chain", NODE_PARAMS, indirect=True)  # mining paused: a real node
def test_a_vote_out_of_gas_at_a_stale_estimate_is_estimated_again_and_lands(
    committee: Committee, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the votes' headroom, the genesis vote mined second runs out of gas: it is
    estimated again on the state it met (the other vote in) and sent once more."""
    monkeypatch.setattr(gas_module, "GAS_HEADROOM", {})
    fed = committee
    m1, m2, _ = fed.members
    with ThreadPoolExecutor(max_workers=2) as pool:
        with _one_block(fed.chain, 2):
            votes = [pool.submit(m.set_genesis, GENESIS, PLAN, RoundParams(10)) for m in (m1, m2)]
        receipts = sorted((v.result(timeout=120) for v in votes), key=lambda r: r.block_number)
    assert [r.status for r in receipts] == [1, 1]
    assert fed.owner.current_round() == 1 and fed.owner.genesis() == GENESIS
    # The vote that ran out of gas is on chain, in the block with the first vote.
    w3 = fed.chain.w3
    block = w3.eth.get_block(receipts[0].block_number)
    statuses = sorted(w3.eth.get_transaction_receipt(h)["status"] for h in block["transactions"])
    assert statuses == [0, 1] and receipts[1].block_number > receipts[0].block_number
