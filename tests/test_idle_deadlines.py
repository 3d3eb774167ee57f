"""Deadlines pass on an idle chain: a dev node that mines only when a transaction comes has a
latest block stamped long ago, so a call that is valid only after a deadline must not be
refused by a gas estimate taken at that old timestamp (issue: a dead committee, or one absent
learner, stalled the federation forever on automine Anvil)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fixtures.chains import dev

from fedchain.cli import devnet
from fedchain.errors import RoundNotExpired
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain, RoundParams

GENESIS = b"\x01\x55\x12\x20" + bytes(range(32))
PLAN = b"\x01\x55\x12\x20" + bytes(range(1, 33))
#: Seconds of block time each window lasts: short, as nothing is mined meanwhile.
WINDOW = 2
#: How long the chain's clock may take to pass a deadline on a loaded machine.
PATIENCE = 60.0


def _wait_past(contract: FedChain, deadline: int) -> None:
    """Waits (no transaction sent, nothing mined) until the next block would be past
    `deadline`."""
    end = time.monotonic() + PATIENCE
    while contract.block_time() <= deadline:
        assert time.monotonic() < end, "the chain's clock never passed the deadline"
        time.sleep(0.2)


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil),
                        pytest.param("ganache", marks=pytest.mark.ganache)])
def idle_chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    """A chain of its own whose clock no other test moved (the session's nodes have been
    `advance_time`d: their blocks are stamped ahead of this machine's clock)."""
    if request.param == "embedded":
        yield connect("embedded", fresh=True)
        return
    node = devnet.start_anvil() if request.param == "anvil" else devnet.start_ganache()
    try:
        yield connect(node.url)
    finally:
        node.stop()


def test_a_dead_committees_round_is_closed_and_late_votes_land_on_an_idle_chain(
        idle_chain: Chain) -> None:
    chain = idle_chain
    members = [dev(chain, i) for i in (1, 6, 7)]
    learners = [dev(chain, i) for i in (2, 3)]
    chain.fund([m.address for m in members])
    owner, _ = FedChain.deploy(chain, dev(chain, 0), [m.address for m in members], 2)
    owner.add_learners([a.address for a in learners])
    m1, m2 = (owner.with_account(m) for m in members[:2])
    for m in (m1, m2):
        m.set_genesis(GENESIS, PLAN, RoundParams(5, update_window=WINDOW, vote_window=WINDOW))
    learner = owner.with_account(learners[0])
    learner.submit_update(1, GENESIS, 10)  # one learner of two: the vote opens at the deadline
    info = owner.round_info()
    with pytest.raises(RoundNotExpired):
        learner.close_round(1)

    # Past the update deadline with nothing mined since: a vote is valid now.
    _wait_past(owner, info.update_deadline)
    m1.publish_global(1, GENESIS, [learners[0].address])
    # Past the vote deadline, nothing mined: anyone closes the round.
    _wait_past(owner, info.vote_deadline)
    learner.close_round(1)
    assert owner.current_round() == 2
    assert [e.round for e in owner.events("RoundTimedOut")] == [1]
