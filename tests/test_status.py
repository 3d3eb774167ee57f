"""`fedchain status` of a committee of 3 mid-round: members and quorum, who voted what,
deadlines on the chain's clock, disputes, learners by `--id`, and what the federation waits
for. On the embedded chain (the status code the CLI runs, in process: the CLI refuses a chain
that lives in one process) and on Anvil through the CLI."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from fixtures.chains import _session_chain, dev

from fedchain.cli import main
from fedchain.cli.status import print_status, read_status
from fedchain.eth.accounts import aggregator_index
from fedchain.eth.contract import FedChain, RoundParams
from fedchain.storage.cid import CID


def cid(tag: str) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(tag.encode()).digest()


def text(raw: bytes) -> str:
    return str(CID.from_bytes(raw))


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=[
    pytest.mark.anvil, pytest.mark.xdist_group("anvil")])])
def backend(request):
    return request.param, _session_chain(request, request.param)


def _status(backend_name, chain, address, capsys) -> str:
    if backend_name == "anvil":
        assert main(["status", "--chain", chain.url, "--contract", address]) == 0
        return capsys.readouterr().out
    from rich.console import Console

    out = io.StringIO()
    reader = FedChain.at(chain, address)
    print_status(reader, read_status(reader), Console(file=out, width=200))
    return out.getvalue()


def _line(out: str, start: str) -> str:
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(start)]
    assert lines, out
    return lines[0]


def test_status_of_a_committee_of_three_mid_round(backend, capsys):
    name, chain = backend
    owner = dev(chain, 0)
    members = [dev(chain, aggregator_index(k)) for k in range(3)]  # aggregator --id 0, 1, 2
    learners = [dev(chain, 2 + k) for k in range(3)]  # learner --id 0, 1, 2
    chain.fund([m.address for m in members])
    contract, _ = FedChain.deploy(chain, owner, [m.address for m in members], 2)
    contract.add_learners([a.address for a in learners])
    m0, m1, m2 = (contract.with_account(m) for m in members)
    l0, l1, l2 = (contract.with_account(a) for a in learners)
    address = contract.address

    before = _status(name, chain, address, capsys)
    assert "committee: 3 members, quorum 2" in before
    assert _line(before, "waiting for:").startswith(
        "waiting for: genesis: 0 of 2 needed votes of the committee (3 members)")

    params = RoundParams(5, update_window=600, vote_window=600)
    for m in (m0, m1):
        m.set_genesis(cid("genesis"), cid("plan"), params)
    for n, learner in enumerate((l0, l1, l2)):  # every learner in: votes open at once
        learner.submit_update(1, cid(f"round 1 update {n}"), 10)
    for m in (m0, m1):  # round 1 closes; learner 0 disputes it
        m.publish_global(1, cid("g1"), [a.address for a in learners])
    l0.dispute(1, cid("what learner 0 computed"))
    l0.submit_update(2, cid("update 0"), 10)
    l1.submit_update(2, cid("update 1"), 20)

    waiting = _status(name, chain, address, capsys)
    assert "state: round 2 open; 3 learners" in waiting
    assert re.search(r"deadlines \(chain time 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC, round "
                     r"opened \d+ s ago\): updates in (9 min \d+ s|10 min 0 s); votes in "
                     r"(19|20) min", waiting), waiting
    assert re.search(r"waiting for: submissions from 1 learners \(2 of 3 in; update deadline in "
                     r"(9|10) min", waiting), waiting
    assert re.search(r"round 1: 0x\w+ \(learner --id 0\) computed " +
                     re.escape(text(cid("what learner 0 computed"))[:12]), waiting), waiting
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"--id (\d)\s*│\s*0x\w+\s*│\s*(.+?)\s*│", waiting)}
    assert rows["0"].startswith(text(cid("update 0"))[:12]) and "(10 examples)" in rows["0"]
    assert "(20 examples)" in rows["1"] and rows["2"] == "not yet"
    assert "not voted yet" in _line(waiting, members[1].address)

    chain.advance_time(601)  # past the update deadline: the committee votes, split
    m0.publish_global(2, cid("g2"), [learners[0].address, learners[1].address])
    m2.publish_global(2, cid("g2 tampered"), [learners[0].address])

    voting = _status(name, chain, address, capsys)
    assert "state: round 2 frozen (voting)" in voting
    assert (f"{members[0].address} (aggregator --id 0)  voted {text(cid('g2'))[:12]}"
            in voting and "(2 included)" in _line(voting, members[0].address))
    assert f"voted {text(cid('g2 tampered'))[:12]}" in _line(voting, members[2].address)
    assert "(1 included)" in _line(voting, members[2].address)
    assert "not voted yet" in _line(voting, members[1].address)
    assert "updates passed" in voting
    assert re.search(r"--id 2\s*│\s*0x\w+\s*│\s*missed", voting), voting
    assert re.search(r"waiting for: votes: 1 of quorum 2 for one outcome \(2 of 3 members "
                     r"voted\), vote deadline in (9|10) min", voting), voting

    chain.advance_time(601)  # past the vote deadline: anyone may close the round
    l0.report_evaluation(1, 10, '{"loss":1.0}')  # a block at the chain's new time
    expired = _status(name, chain, address, capsys)
    assert re.search(r"waiting for: anyone to close round 2: its vote deadline passed \d+ s "
                     r"ago without a quorum", expired), expired
