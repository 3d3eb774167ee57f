"""Virtual learners placed on Ray (the optional `fedchain[ray]` extra): a simulation past one
machine, as Flower's simulation engine spans a cluster.

The learners are split into shards; each shard is one Ray task, in a worker process on any
node of the Ray cluster, that runs what one process runs locally: its own ChainWatcher and a
LearnerPool stepping its learners. Nothing else is shared: every shard reaches the same chain
node (`chain_url`, e.g. a shared Anvil) and the same store (`store_url`: an IPFS node's Kubo
API, or a `file://` LocalStore directory on a file system every Ray node mounts). The
aggregator runs wherever the caller runs it, exactly as with threads; threads stay the default.

    deployed = ...  # FedChain deployed, learners registered, aggregator running elsewhere
    results = run_on_ray(make_learner, 100, chain_url="http://10.0.0.5:8545",
                         store_url="file:///shared/fedchain-store", contract=deployed.address,
                         shards=4)

`make_learner(i, n)` and `account(i)` are shipped to the workers by Ray (cloudpickle), so they
must be importable there or picklable by value; `account` defaults to dev account
`FIRST_LEARNER_INDEX + i` (dev chains only). Keys are derived in the workers, never shipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount

from ..errors import ConfigError
from ..eth.accounts import FIRST_LEARNER_INDEX, dev_account
from ..eth.chain import connect
from ..eth.contract import FedChain
from ..eth.watcher import ChainWatcher
from ..storage import open_store
from .driver import DEFAULT_WORKERS, LearnerPool, watched_bindings
from .learner import Learner
from .node import LearnerNode, SharedWork

INSTALL_HINT = "Ray is not installed: pip install 'fedchain[ray]'"


@dataclass
class ShardResult:
    """What one Ray task did."""

    learners: list[int]
    #: The worker process (and node) that ran it.
    pid: int
    node_id: str
    created: int
    steps: int
    #: Rounds each learner submitted an update for, by learner index.
    submitted: dict[int, list[int]] = field(default_factory=dict)


def default_account(i: int) -> LocalAccount:
    """Learner i's dev account (dev chains only), as `simulate` assigns them."""
    return dev_account(FIRST_LEARNER_INDEX + i)


def shard_indices(num_learners: int, shards: int) -> list[list[int]]:
    """Learners 0..n-1 dealt round-robin into `shards` non-empty shards."""
    shards = max(1, min(shards, num_learners))
    return [list(range(s, num_learners, shards)) for s in range(shards)]


def check_shared(chain_url: str, store_url: str) -> None:
    """Refuses what Ray workers in other processes cannot share with the caller."""
    if not chain_url.startswith(("http://", "https://")):
        raise ConfigError(f"learners on Ray need a chain node every worker reaches (http(s)://"
                          f"…), not {chain_url!r}: the embedded chain lives in one process")
    if not store_url.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"learners on Ray need a shared store (a Kubo API http://…, or a "
                          f"file:// directory on a shared file system), not {store_url!r}")


def run_shard(
    indices: Sequence[int],
    num_learners: int,
    make_learner: Callable[[int, int], Learner],
    account: Callable[[int], LocalAccount],
    chain_url: str,
    store_url: str,
    contract: str,
    workers: int,
    interval: float,
    timeout: float | None,
) -> ShardResult:
    """One shard's learners until the federation finishes: the body of a Ray task (and a
    plain function: it runs as well in the caller's process)."""
    chain = connect(chain_url)
    reader = FedChain.at(chain, contract)
    store = open_store(store_url)
    learners = list(indices)
    shared = SharedWork()  # the shard's learners share one process: see SharedWork

    with ChainWatcher(reader, interval=interval) as watcher:
        bind = watched_bindings(reader, watcher)

        def make_node(j: int) -> LearnerNode:
            i = learners[j]
            return LearnerNode(make_learner(i, num_learners), bind(account(i)), store,
                               name=f"learner-{i}", shared=shared)

        pool = LearnerPool(make_node, len(learners), watcher, workers=workers)
        pool.run(timeout=timeout)
    node_id = os.environ.get("RAY_NODE_ID", "")
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray worker
        pass
    return ShardResult(
        learners=learners, pid=os.getpid(), node_id=node_id, created=pool.created,
        steps=pool.steps,
        submitted={learners[j]: list(node.submitted) for j, node in pool.nodes.items()},
    )


def run_on_ray(
    make_learner: Callable[[int, int], Learner],
    num_learners: int,
    *,
    chain_url: str,
    store_url: str,
    contract: str,
    account: Callable[[int], LocalAccount] = default_account,
    shards: int = 2,
    workers: int = DEFAULT_WORKERS,
    interval: float = 0.2,
    num_cpus: float = 1.0,
    timeout: float | None = 3600.0,
    address: str | None = None,
) -> list[ShardResult]:
    """Runs learners 0..num_learners-1 of the FedChain at `contract` as `shards` Ray tasks
    (each `num_cpus` CPUs, `workers` threads) until the federation finishes.

    Connects to the Ray cluster at `address` (None: the one `ray.init` already made in this
    process, else a new local instance). The federation must be deployed with these learners
    registered, and its aggregator running (e.g. in a thread of the caller).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    check_shared(chain_url, store_url)
    if num_learners < 1:
        raise ConfigError("a federation needs at least one learner")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=num_cpus, max_retries=0)(run_shard)
    refs: list[Any] = [
        task.remote(part, num_learners, make_learner, account, chain_url, store_url, contract,
                    workers, interval, timeout)
        for part in shard_indices(num_learners, shards)
    ]
    return list(ray.get(refs))
