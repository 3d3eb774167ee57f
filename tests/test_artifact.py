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
