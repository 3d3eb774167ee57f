"""fedchain: decentralized federated learning on Ethereum and IPFS.

The names below are imported lazily, so `import fedchain` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "simulate": "fedchain.simulation",
    "Learner": "fedchain.learner",
    "TorchLearner": "fedchain.learner",
    "TrainResult": "fedchain.learner",
    "EvalResult": "fedchain.learner",
    "LearnerNode": "fedchain.learner",
    "Aggregator": "fedchain.aggregator",
    "connect": "fedchain.chain",
    "FedChain": "fedchain.contract",
    "open_store": "fedchain.storage",
    "FedAvg": "fedchain.strategy",
    "FedMedian": "fedchain.strategy",
    "FedTrimmedAvg": "fedchain.strategy",
    "Krum": "fedchain.strategy",
    "FedAvgM": "fedchain.strategy",
    "FedAdam": "fedchain.strategy",
    "History": "fedchain.history",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedchain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
