"""fedchain: decentralized federated learning on Ethereum and IPFS.

Layers, each importing only from those below it:

    cli         the `fedchain` command, job files, dev nodes
    audit       round history from the chain, re-verified, rendered
    federation  learner API and node, aggregator, replay, history, simulation
    aggregation the pure aggregation rules and the strategies
    eth         chain backends, accounts, the FedChain binding, events, reverts, deploy
    model       weights codec, torch conversion, the plan
    storage     CIDs and content stores (embedded, file://, Kubo RPC)
    errors, progress, npm   the exception tree and small utilities

The names below are imported lazily, so `import fedchain` stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__version__ = "0.1.0"

# Keccak for every hash web3 and eth-account compute: pysha3 (a dependency) is 7x faster than
# eth-hash's first choice, pycryptodome. Chosen only if the user has not chosen one.
if importlib.util.find_spec("sha3") is not None:
    os.environ.setdefault("ETH_HASH_BACKEND", "pysha3")

_EXPORTS = {
    "simulate": "fedchain.federation.simulation",
    "Learner": "fedchain.federation.learner",
    "TorchLearner": "fedchain.federation.learner",
    "TrainResult": "fedchain.federation.learner",
    "EvalResult": "fedchain.federation.learner",
    "LearnerNode": "fedchain.federation.node",
    "Aggregator": "fedchain.federation.aggregator",
    "Termination": "fedchain.federation.config",
    "RunConfig": "fedchain.federation.config",
    "History": "fedchain.federation.history",
    "connect": "fedchain.eth.chain",
    "FedChain": "fedchain.eth.contract",
    "FedChainReader": "fedchain.eth.contract",
    "open_store": "fedchain.storage",
    "Plan": "fedchain.protocol.params",
    "FedAvg": "fedchain.aggregation.strategy",
    "FedMedian": "fedchain.aggregation.strategy",
    "FedTrimmedAvg": "fedchain.aggregation.strategy",
    "Krum": "fedchain.aggregation.strategy",
    "FedAvgM": "fedchain.aggregation.strategy",
    "FedAdam": "fedchain.aggregation.strategy",
    "FedAdagrad": "fedchain.aggregation.strategy",
    "FedYogi": "fedchain.aggregation.strategy",
    "FedProx": "fedchain.aggregation.strategy",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedchain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
