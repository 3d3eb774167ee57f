"""The committed fedchain/artifacts/FedChain.json is what contracts/FedChain.sol compiles to.

Both compilers run offline from node_modules: fedchain's own solcjs driver and Hardhat 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from fedchain.cli.devnet import node24, node_bin, project_root
from fedchain.eth.artifact import load_artifact
from fedchain.eth.compile import compile_source, source_path
from fedchain.eth.events import EVENT_TYPES, _snake
from fedchain.eth.reverts import REVERTS


def without_metadata(code: str) -> bytes:
    """Bytecode without its trailing CBOR metadata, which hashes the compiler's file paths."""
    raw = bytes.fromhex(code.removeprefix("0x"))
    return raw[: -(int.from_bytes(raw[-2:], "big") + 2)]


def test_the_artifact_records_the_hash_of_the_current_source() -> None:
    digest = hashlib.sha256(source_path().read_bytes()).hexdigest()
    assert load_artifact()["sourceHash"] == f"sha256:{digest}", (
        "contracts/FedChain.sol changed since the artifact was built: run `fedchain compile`"
    )


def test_recompiling_the_source_reproduces_the_artifact() -> None:
    committed = load_artifact()
    fresh = compile_source(source_path().read_text())
    assert fresh["abi"] == committed["abi"]
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh["compiler"] == committed["compiler"]


def _abi(kind: str) -> dict[str, list[str]]:
    """name → parameter names of the artifact ABI's items of `kind` (error, event)."""
    return {
        item["name"]: [i["name"] for i in item["inputs"]]
        for item in load_artifact()["abi"]
        if item["type"] == kind
    }


def test_every_contract_error_has_its_exception_and_every_exception_its_error() -> None:
    errors = _abi("error")
    assert sorted(REVERTS) == sorted(errors)
    for name, params in errors.items():
        assert REVERTS[name].__name__ == name
        assert list(REVERTS[name].params) == params, name


def test_every_contract_event_has_its_record_and_every_record_its_event() -> None:
    events = _abi("event")
    assert sorted(EVENT_TYPES) == sorted(events)
    for name, params in events.items():
        # A field that is another form of an ABI value (the bitmap behind `included`) says so.
        fields = [n for n, f in EVENT_TYPES[name].__dataclass_fields__.items()
                  if n not in ("block", "tx", "log_index") and "abi" not in f.metadata]
        assert fields == [_snake(p) for p in params], name


#: The interface clients rely on (the committee contract's), with the two-step owner transfer
#: under OpenZeppelin Ownable2Step's names: nothing here may disappear or change its signature.
RELEASED_ABI = {
    "addLearners(address[])", "removeLearner(address)", "setAggregator(address)",
    "setCommittee(address[],uint256)", "committee()", "isAggregator(address)",
    "isLearner(address)", "learnerCount()", "learnerIndex(address)", "aggregator()", "owner()",
    "setGenesis(bytes,bytes,(uint32,uint24,uint24,uint24,uint24,uint16,uint8))",
    "submitUpdate(uint256,bytes,uint256)", "commitUpdate(uint256,bytes32)",
    "revealUpdate(uint256,bytes,uint256,bytes32)",
    "publishGlobal(uint256,bytes,bytes,uint256[],uint256[])", "closeRound(uint256)",
    "dispute(uint256,bytes)", "reportEvaluation(uint256,uint256,bytes)",
    "finish()", "currentRound()", "finished()", "roundInfo()", "params()", "plan()",
    "latestGlobal()", "submittedBits(uint256)", "activeBits()", "isSelected(address)",
    "roundSeed()", "votes(uint256,bytes32)", "hasSubmitted(uint256,address)",
    "hasReported(uint256,address)", "MAX_CID_LENGTH()", "MAX_METRICS_LENGTH()",
    "MAX_EXAMPLES()",
    "event LearnerAdded(address,uint256)", "event LearnerRemoved(address)",
    "event CommitteeChanged(uint256,address[],uint256)",
    "event GenesisSet(bytes,bytes,uint256,uint256,uint256,uint256,uint256,uint256,uint256)",
    "event UpdateSubmitted(uint256,address,bytes,uint256,uint256)",
    "event Voted(uint256,address,bytes32,bytes,bytes,uint256[])",
    "event GlobalModelPublished(uint256,bytes,bytes,uint256[])",
    "event RoundTimedOut(uint256,address)", "event Disputed(uint256,address,bytes)",
    "event EvaluationReported(uint256,address,uint256,bytes)", "event Finished(uint256)",
    "event OwnershipTransferStarted(address,address)",
    "event OwnershipTransferred(address,address)",
    "transferOwnership(address)", "acceptOwnership()", "pendingOwner()",
    # The sampling seed, drawn from the round's opening block in a later block (issue 18).
    "seedRound(uint256)", "seedBlock()", "samplePosition(bytes32,uint256)",
    "event RoundSeeded(uint256,bytes32)",
}


def _type(item: dict) -> str:
    """An ABI input's canonical type (a struct as the tuple of its components)."""
    if item["type"] == "tuple":
        return f"({','.join(_type(c) for c in item['components'])})"
    return str(item["type"])


def test_the_released_interface_is_still_there() -> None:
    have = set()
    for item in load_artifact()["abi"]:
        if item["type"] in ("function", "event"):
            sig = f"{item['name']}({','.join(_type(i) for i in item['inputs'])})"
            have.add(sig if item["type"] == "function" else f"event {sig}")
    assert not RELEASED_ABI - have, RELEASED_ABI - have


@pytest.mark.slow
def test_hardhat_compiles_the_same_contract_offline() -> None:
    root = project_root()
    # Any download attempt goes to a closed local port and fails, so the test fails too.
    blocked = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "HTTP_PROXY": blocked,
        "HTTPS_PROXY": blocked,
        "http_proxy": blocked,
        "https_proxy": blocked,
        "NODE_USE_ENV_PROXY": "1",
        "CI": "true",
    }
    cli = node_bin("hardhat/dist/src/cli.js")
    proc = subprocess.run(
        [str(node24()), str(cli), "compile", "--quiet"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "download" not in (proc.stdout + proc.stderr).lower()
    built = json.loads((root / "artifacts/contracts/FedChain.sol/FedChain.json").read_text())
    committed = load_artifact()
    assert built["abi"] == committed["abi"]
    assert without_metadata(built["bytecode"]) == without_metadata(committed["bytecode"])
    assert without_metadata(built["deployedBytecode"]) == without_metadata(
        committed["deployedBytecode"]
    )
