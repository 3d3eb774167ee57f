"""`fedchain deploy --aggregator ADDR` (repeated): a committee named by address, on Anvil."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from fedchain.cli import main
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fedchain ")]
    assert lines, err
    return lines[-1]


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_deploy_names_a_committee_of_three_by_address(anvil_node, tmp_path, capsys):
    records = tmp_path / "deployments"
    # Accounts of no dev role: three explicit addresses, one given in lower case.
    members = [Account.create().address for _ in range(3)]
    argv = ["deploy", "--chain", anvil_node.url, "--deployments", str(records),
            "--dev-learners", "2", "--aggregator", members[0],
            "--aggregator", members[1].lower(), "--aggregator", members[2]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "committee  2 of 3: " + ", ".join(
        f"--id {k} {m}" for k, m in enumerate(members)) in out

    [path] = Path(records).glob("*.json")
    record = json.loads(path.read_text())
    assert record["committee"] == members and record["quorum"] == 2
    contract = FedChain.at(connect(anvil_node.url), record["address"])
    assert contract.committee() == (members, 2)
    assert all(contract.is_aggregator(m) for m in members)
    assert not contract.is_aggregator(contract.owner())

    # With --quorum 3 (all of them) and the same address twice (counted once).
    assert main([*argv[:-2], "--aggregator", members[0], "--quorum", "3", "--fresh"]) == 2
    assert "--quorum 3 must be a majority of the 2 aggregators" in _error_line(capsys)
    assert main([*argv, "--quorum", "3", "--fresh"]) == 0
    capsys.readouterr()
    record = json.loads(path.read_text())
    assert FedChain.at(connect(anvil_node.url), record["address"]).committee() == (members, 3)


@pytest.mark.parametrize("argv, message", [
    (["--aggregator", "0x1234"], "--aggregator '0x1234' is not an address"),
    (["--aggregator", "0x" + "11" * 20, "--aggregator", "nope"],
     "--aggregator 'nope' is not an address"),
    (["--aggregator", "0x" + "11" * 20, "--aggregators", "3"],
     "--aggregators 3 disagrees with the 1 --aggregator address(es)"),
])
def test_deploy_refuses_a_bad_aggregator_option_before_connecting(argv, message, tmp_path,
                                                                  capsys):
    # Port 1: nothing listens there, so a check that came after connecting would fail otherwise.
    assert main(["deploy", "--chain", "http://127.0.0.1:1", "--deployments",
                 str(tmp_path), *argv]) == 2
    assert message in _error_line(capsys)
