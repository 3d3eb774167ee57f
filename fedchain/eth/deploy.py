"""Deploy FedChain by running the steps in fedchain/eth/migrations/ and record it in
deployments/<chainId>.json.

The migrations ship inside the package, so `fedchain deploy` works from an installed wheel.
Each migration is a Python file `migrations/NNN_name.py` with `migrate(ctx: Migration)`; they run
in file-name order. Later commands find the contract in the record; running deploy again
reports the existing deployment unless `fresh=True`.
"""

from __future__ import annotations

import importlib.util
import json
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from ..errors import ConfigError, DeploymentNotFound
from .artifact import load_artifact
from .chain import Chain
from .contract import FedChain, FedChainReader

DEFAULT_DIR = Path("deployments")


@dataclass
class Migration:
    """What a migration step gets: the chain, the deployer, the options, and the record."""

    chain: Chain
    account: LocalAccount
    aggregator: str
    learners: list[str]
    #: The committee of aggregators (the first is `aggregator`) and its quorum (None: majority).
    committee: list[str] = field(default_factory=list)
    quorum: int | None = None
    #: Seconds between announcing an owner change after genesis and making it (0: none).
    owner_delay: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    contract: FedChain | None = None
    log: list[str] = field(default_factory=list)


def migrations_dir() -> Path:
    """The deploy steps, shipped in the package next to this module."""
    return Path(__file__).resolve().parent / "migrations"


def _steps() -> list[tuple[str, Any]]:
    steps = []
    for file in sorted(migrations_dir().glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(f"fedchain_migration_{file.stem}", file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        steps.append((file.stem, module.migrate))
    return steps


def record_path(chain: Chain, directory: Path = DEFAULT_DIR) -> Path:
    return directory / f"{chain.chain_id}.json"


def load_record(chain: Chain, directory: Path = DEFAULT_DIR) -> dict[str, Any] | None:
    """The deployment record of this chain, if any: from `directory`, or from this process for
    a chain that lives in it (the embedded one)."""
    if chain.backend.keeps_records_in_process:
        return _IN_PROCESS_RECORDS.get(chain)
    path = record_path(chain, directory)
    return json.loads(path.read_text()) if path.exists() else None


#: Records of chains that live and die with this process, kept no longer than their Chain.
_IN_PROCESS_RECORDS: weakref.WeakKeyDictionary[Chain, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def deploy(
    chain: Chain,
    account: LocalAccount,
    *,
    aggregator: str | list[str] | None = None,
    quorum: int | None = None,
    learners: list[str] | None = None,
    owner_delay: int = 0,
    fresh: bool = False,
    directory: Path = DEFAULT_DIR,
) -> tuple[FedChain, dict[str, Any], bool]:
    """Runs the migrations unless a live deployment is recorded; returns (contract, record, new)."""
    existing = load_record(chain, directory)
    if existing and not fresh:
        try:
            contract = FedChain.at(chain, existing["address"], account)
            return contract, existing, False
        except DeploymentNotFound:
            pass  # the chain was reset since (a dev chain restarted): deploy anew
    committee = [aggregator] if isinstance(aggregator, str) else list(aggregator or [])
    committee = committee or [account.address]
    ctx = Migration(chain, account, committee[0], list(learners or []), committee, quorum,
                    owner_delay)
    for name, migrate in _steps():
        migrate(ctx)
        ctx.log.append(name)
    if ctx.contract is None:
        raise ConfigError("the migrations did not deploy FedChain")
    artifact = load_artifact()
    record = {
        "contract": "FedChain",
        "chainId": chain.chain_id,
        "address": ctx.contract.address,
        "owner": account.address,
        "aggregator": ctx.aggregator,
        "committee": ctx.committee,
        "quorum": ctx.contract.committee()[1],
        "ownerDelay": owner_delay,
        "learners": ctx.learners,
        "artifactHash": artifact["sourceHash"],
        "compiler": artifact["compiler"]["version"],
        "migrations": ctx.log,
        "deployedAt": int(time.time()),
        **ctx.record,
    }
    if chain.backend.keeps_records_in_process:
        _IN_PROCESS_RECORDS[chain] = record
    else:
        directory.mkdir(parents=True, exist_ok=True)
        record_path(chain, directory).write_text(json.dumps(record, indent=2) + "\n")
    return ctx.contract, record, True


def find_contract(
    chain: Chain,
    address: str | None = None,
    account: LocalAccount | None = None,
    directory: Path = DEFAULT_DIR,
) -> FedChainReader:
    """The FedChain at `address`, or the one recorded for this chain (signing if given an
    account)."""
    if address is None:
        record = load_record(chain, directory)
        if record is None:
            where = (
                "this process" if chain.backend.keeps_records_in_process
                else str(record_path(chain, directory))
            )
            raise DeploymentNotFound(
                f"no FedChain deployment recorded for chain {chain.chain_id} in {where}: "
                "run `fedchain deploy` or pass --contract ADDRESS",
                url=chain.url,
            )
        address = record["address"]
    return FedChain.at(chain, address, account)
