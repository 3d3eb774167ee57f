"""The owner's powers (issue 18 item 7): after genesis, changes of the learners and the
committee take effect only `ownerDelay` seconds of block time after being announced, or once
a committee quorum approves them; renounceOwnership gives the ownership up. On every backend;
the deadline tests move the dev chain's clock instead of sleeping.

Accounts: owner dev 0; committee dev 1, 8, 9 (quorum 2); learners dev 2..4; newcomer dev 5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fixtures.chains import dev

from fedchain.cli import main
from fedchain.errors import ChangeNotReady, NotAggregator, NotOwner, NotPendingOwner
from fedchain.eth import events as ev
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import ZERO_ADDRESS, FedChain, RoundParams

DELAY = 600


def cid(tag: str) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(tag.encode()).digest()


def deploy(chain: Chain, delay: int = DELAY) -> tuple[FedChain, list[FedChain]]:
    owner = dev(chain, 0)
    seats = [dev(chain, i) for i in (1, 8, 9)]
    chain.fund([a.address for a in seats])
    contract, _ = FedChain.deploy(chain, owner, [a.address for a in seats], 2, owner_delay=delay)
    return contract, [contract.with_account(a) for a in seats]


def genesis(members: list[FedChain]) -> None:
    for m in members[:2]:
        m.set_genesis(cid("genesis"), cid("plan"), RoundParams(10))


def test_after_genesis_an_owner_change_waits_for_its_announcement_to_mature(
    chain: Chain,
) -> None:
    contract, members = deploy(chain)
    learners = [dev(chain, i).address for i in (2, 3, 4)]
    assert contract.owner_delay() == DELAY
    contract.add_learners(learners[:2])  # before genesis: at once
    contract.remove_learner(learners[1])
    genesis(members)

    change = contract.change_hash("removeLearner", learners[0])
    with pytest.raises(ChangeNotReady) as refused:
        contract.remove_learner(learners[0])
    assert refused.value.fields == {"change": change, "executableAt": 0}
    receipt = contract.announce_change("removeLearner", learners[0].lower())  # same change
    [announced] = contract.events("ChangeAnnounced")
    assert isinstance(announced, ev.ChangeAnnounced) and announced.change == change
    at = announced.executable_at
    assert at == chain.w3.eth.get_block(receipt.block_number)["timestamp"] + DELAY
    assert contract.change_ready_at(change) == at
    with pytest.raises(ChangeNotReady):
        contract.remove_learner(learners[0])
    with pytest.raises(ChangeNotReady):  # another change was not announced
        contract.add_learners([learners[2]])
    chain.advance_time(DELAY + 1)
    contract.remove_learner(learners[0])
    assert not contract.is_learner(learners[0]) and contract.change_ready_at(change) == 0
    with pytest.raises(ChangeNotReady):  # used up: a change runs once per announcement
        contract.add_learners([learners[0]])

    # A withdrawn announcement never matures.
    contract.announce_change("addLearners", [learners[2]])
    contract.cancel_change("addLearners", [learners[2]])
    chain.advance_time(DELAY + 1)
    with pytest.raises(ChangeNotReady):
        contract.add_learners([learners[2]])
    assert isinstance(list(contract.events("ChangeCancelled"))[-1], ev.ChangeCancelled)
    # Only the owner announces.
    with pytest.raises(NotOwner):
        members[0].announce_change("addLearners", [learners[2]])


def test_a_committee_quorum_approves_an_owner_change_at_once(chain: Chain) -> None:
    contract, members = deploy(chain)
    genesis(members)
    newcomer = dev(chain, 5).address
    seats = [m.account.address for m in members]
    new_committee = (seats[:2] + [newcomer], 2)
    members[0].approve_change("setCommittee", *new_committee)
    with pytest.raises(ChangeNotReady):  # one approval of the two needed
        contract.set_committee(*new_committee)
    with pytest.raises(NotAggregator):
        contract.with_account(dev(chain, 5)).approve_change("setCommittee", *new_committee)
    members[2].approve_change("setCommittee", *new_committee)
    change = contract.change_hash("setCommittee", *new_committee)
    [approved] = contract.events("ChangeApproved")
    assert isinstance(approved, ev.ChangeApproved) and approved.change == change
    assert contract.change_ready_at(change) == 1
    contract.set_committee(*new_committee)  # no waiting
    assert contract.committee() == ([*seats[:2], newcomer], 2)


def test_without_a_delay_the_owner_changes_at_once(chain: Chain) -> None:
    contract, members = deploy(chain, delay=0)
    genesis(members)
    learner = dev(chain, 2).address
    contract.add_learners([learner])
    contract.remove_learner(learner)
    contract.set_aggregator(members[0].account.address)
    assert contract.committee() == ([members[0].account.address], 1)


def test_renouncing_the_ownership_leaves_nobody_in_charge(chain: Chain) -> None:
    contract, members = deploy(chain, delay=0)
    heir = dev(chain, 5)
    contract.transfer_ownership(heir.address)
    owner = contract.owner()
    contract.renounce_ownership()
    assert contract.owner() == ZERO_ADDRESS and contract.pending_owner() is None
    transferred = [e for e in contract.events("OwnershipTransferred")
                   if isinstance(e, ev.OwnershipTransferred)]
    assert [(e.previous_owner, e.new_owner) for e in transferred] == [(owner, ZERO_ADDRESS)]
    with pytest.raises(NotPendingOwner):  # the offer went with the ownership
        contract.with_account(heir).accept_ownership()
    with pytest.raises(NotOwner):
        contract.add_learners([dev(chain, 2).address])
    with pytest.raises(NotOwner):
        contract.renounce_ownership()


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_deploy_fixes_the_owner_delay(anvil_node, tmp_path: Path, capsys) -> None:
    records = tmp_path / "deployments"
    assert main(["deploy", "--chain", anvil_node.url, "--deployments", str(records),
                 "--dev-learners", "2", "--owner-delay", "3600"]) == 0
    assert "announced 3600 s ahead, or approved by the committee" in capsys.readouterr().out
    [path] = records.glob("*.json")
    record = json.loads(path.read_text())
    assert record["ownerDelay"] == 3600
    assert FedChain.at(connect(anvil_node.url), record["address"]).owner_delay() == 3600
