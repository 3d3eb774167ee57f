"""Compile contracts/FedChain.sol into fedchain/artifacts/FedChain.json (developers only).

The artifact ships in the wheel, so users never need a compiler. Developers regenerate it with
`fedchain compile` (or `npx hardhat compile`), which runs the pinned solcjs from node_modules,
or a native solc of the same version through py-solc-x when one is installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..npm import node24, node_bin
from .artifact import ARTIFACT_PATH, CONTRACT, PACKAGE_DIR

SOLC_VERSION = "0.8.28"
#: Paris: the newest EVM that Ganache 7.9 runs (it predates PUSH0), and py-evm and Anvil accept.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    # The IR pipeline keeps deployment under 1.4M gas (legacy codegen: 1.52M).
    "viaIR": True,
    "evmVersion": "paris",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}



def source_path() -> Path:
    """contracts/FedChain.sol in the checkout this package was installed from."""
    path = PACKAGE_DIR.parent / "contracts" / f"{CONTRACT}.sol"
    if not path.exists():
        raise ConfigError(f"{path} not found: compiling needs a fedchain source checkout")
    return path


def source_hash(source: str) -> str:
    return "sha256:" + hashlib.sha256(source.encode()).hexdigest()


def _standard_input(source: str) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {f"{CONTRACT}.sol": {"content": source}},
        "settings": SETTINGS,
    }


def _solcjs(std_input: dict[str, Any]) -> tuple[dict[str, Any], str]:
    solc_dir = node_bin("solc")
    node = shutil.which("node")
    if node is None:
        node = str(node24())
    script = (
        "const solc = require(process.argv[1]);"
        "let input = '';"
        "process.stdin.on('data', d => input += d);"
        "process.stdin.on('end', () => process.stdout.write(JSON.stringify("
        "{version: solc.version(), output: JSON.parse(solc.compile(input))})));"
    )
    proc = subprocess.run(
        [node, "-e", script, str(solc_dir)],
        input=json.dumps(std_input).encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(f"solcjs failed: {proc.stderr.decode(errors='replace')}")
    result = json.loads(proc.stdout)
    return result["output"], result["version"]


def _native(std_input: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    try:
        import solcx
    except ImportError:
        return None
    try:
        solcx.set_solc_version(SOLC_VERSION, silent=True)
    except Exception:
        return None
    output = solcx.compile_standard(std_input)
    return output, str(solcx.get_solc_version(with_commit_hash=True))


def compile_source(source: str) -> dict[str, Any]:
    """The artifact dict for a FedChain.sol source text."""
    std_input = _standard_input(source)
    result = _native(std_input) or _solcjs(std_input)
    output, version = result
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ConfigError("solc: " + "\n".join(e["formattedMessage"] for e in errors))
    if not version.startswith(SOLC_VERSION):
        raise ConfigError(f"solc {SOLC_VERSION} expected, got {version}")
    contract = output["contracts"][f"{CONTRACT}.sol"][CONTRACT]
    return {
        "contractName": CONTRACT,
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
        "compiler": {"name": "solc", "version": version, "settings": SETTINGS},
        "sourceHash": source_hash(source),
    }


def write_artifact(path: Path = ARTIFACT_PATH) -> dict[str, Any]:
    """Compiles contracts/FedChain.sol and writes the artifact JSON."""
    artifact = compile_source(source_path().read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact, indent=2) + "\n")
    return artifact
