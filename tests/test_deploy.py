"""fedchain.eth.deploy on Anvil: the record, re-runs, fresh deploys, finding the contract, and
`fedchain deploy` from a built wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from eth_utils import to_checksum_address
from fixtures.chains import dev
from web3.types import RPCEndpoint

from fedchain.cli import devnet
from fedchain.errors import DeploymentNotFound
from fedchain.eth.artifact import load_artifact
from fedchain.eth.chain import Chain
from fedchain.eth.contract import FedChain
from fedchain.eth.deploy import deploy, find_contract

pytestmark = [pytest.mark.anvil, pytest.mark.xdist_group("anvil")]


def test_deploy_writes_a_record_for_the_chain(anvil_chain: Chain, tmp_path: Path) -> None:
    chain = anvil_chain
    learners: list[str] = [dev(chain, i).address for i in (2, 3)]
    contract, record, new = deploy(
        chain,
        dev(chain, 0),
        aggregator=dev(chain, 1).address,
        learners=learners,
        directory=tmp_path,
    )
    assert new
    on_disk = json.loads((tmp_path / "31337.json").read_text())
    assert on_disk == record
    assert record["chainId"] == 31337 and record["address"] == contract.address
    assert record["tx"].startswith("0x") and len(record["tx"]) == 66
    assert record["block"] == chain.w3.eth.get_transaction(record["tx"])["blockNumber"]
    assert record["artifactHash"] == load_artifact()["sourceHash"]
    assert record["learners"] == learners
    assert contract.aggregator() == dev(chain, 1).address
    assert sorted(contract.learners()) == sorted(learners)


def test_deploying_again_reports_the_existing_deployment(
    anvil_chain: Chain, tmp_path: Path
) -> None:
    first, record, _ = deploy(anvil_chain, dev(anvil_chain, 0), directory=tmp_path)
    block = anvil_chain.block_number()
    again, same, new = deploy(anvil_chain, dev(anvil_chain, 0), directory=tmp_path)
    assert not new and again.address == first.address and same == record
    assert anvil_chain.block_number() == block  # nothing was sent


def test_fresh_deploy_replaces_the_recorded_contract(anvil_chain: Chain, tmp_path: Path) -> None:
    first, _, _ = deploy(anvil_chain, dev(anvil_chain, 0), directory=tmp_path)
    second, record, new = deploy(anvil_chain, dev(anvil_chain, 0), fresh=True, directory=tmp_path)
    assert new and second.address != first.address
    assert json.loads((tmp_path / "31337.json").read_text())["address"] == second.address
    assert find_contract(anvil_chain, directory=tmp_path).address == second.address


def test_a_record_of_a_contract_that_is_gone_leads_to_a_new_deployment(
    anvil_chain: Chain, tmp_path: Path
) -> None:
    """What a restarted dev chain looks like: the recorded address holds no code any more."""
    gone = "0x" + "ab" * 20
    (tmp_path / "31337.json").write_text(json.dumps({"address": gone, "chainId": 31337}))
    contract, _, new = deploy(anvil_chain, dev(anvil_chain, 0), directory=tmp_path)
    assert new and contract.address.lower() != gone


def test_find_contract_finds_the_recorded_deployment(anvil_chain: Chain, tmp_path: Path) -> None:
    deployed, _, _ = deploy(anvil_chain, dev(anvil_chain, 0), directory=tmp_path)
    found = find_contract(anvil_chain, account=dev(anvil_chain, 0), directory=tmp_path)
    assert found.address == deployed.address and found.owner() == dev(anvil_chain, 0).address


def test_find_contract_without_a_record_says_how_to_deploy(
    anvil_chain: Chain, tmp_path: Path
) -> None:
    with pytest.raises(DeploymentNotFound) as err:
        find_contract(anvil_chain, directory=tmp_path)
    message = str(err.value)
    assert "chain 31337" in message and str(tmp_path / "31337.json") in message
    assert "fedchain deploy" in message and "--contract" in message


def test_an_address_without_code_is_not_a_deployment(anvil_chain: Chain) -> None:
    empty = to_checksum_address("0x" + "00" * 18 + "fe01")
    with pytest.raises(DeploymentNotFound, match=f"no contract at {empty} on chain 31337"):
        FedChain.at(anvil_chain, empty)


def test_an_address_with_other_code_is_not_a_deployment(anvil_chain: Chain) -> None:
    other = to_checksum_address("0x" + "00" * 18 + "fe02")
    # FedChain's creation code is not its runtime code: plant it as runtime code.
    anvil_chain.w3.provider.make_request(
        RPCEndpoint("anvil_setCode"), [other, load_artifact()["bytecode"]]
    )
    with pytest.raises(DeploymentNotFound, match="not this version of FedChain"):
        FedChain.at(anvil_chain, other)


# --- from a wheel --------------------------------------------------------------------------

CHECKOUT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp: Path) -> Path:
    """The wheel of this checkout, built offline with the running venv's pip and setuptools
    (from a copy of the sources, so the checkout gets no build/ or egg-info)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, src / name)
    shutil.copytree(CHECKOUT / "fedchain", src / "fedchain",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = out.glob("fedchain-*.whl")
    return wheel


@pytest.mark.slow
def test_fedchain_deploy_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fedchain/artifacts/FedChain.json", "fedchain/eth/migrations/001_deploy_fedchain.py",
            "fedchain/eth/migrations/002_register_learners.py"} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what installing it puts in site-packages
    work = tmp_path / "elsewhere"  # outside the checkout: nothing found relative to it
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FEDCHAIN_KEY", None)
    where = subprocess.run(
        [sys.executable, "-c", "import fedchain; print(fedchain.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    with devnet.start_anvil() as node:
        proc = subprocess.run(
            [sys.executable, "-m", "fedchain.cli", "deploy", "--chain", node.url,
             "--learners", "2"],
            cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deployed FedChain at" in proc.stdout
    record = json.loads((work / "deployments" / "31337.json").read_text())
    assert record["migrations"] == ["001_deploy_fedchain", "002_register_learners"]
    assert len(record["learners"]) == 2 and record["artifactHash"] == load_artifact()["sourceHash"]
