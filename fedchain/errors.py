"""fedchain's exceptions: callers catch these, never a web3, HTTP or torch internal.

    FedChainError
    ├── ConfigError            a setting, flag, job file or account is missing or wrong
    ├── InvalidModel           model bytes or weights failed validation
    ├── DataError              a data set is missing, malformed or refused
    ├── AggregationError       updates cannot be aggregated
    ├── StorageError           content stores                              (.url)
    │   ├── InvalidCID
    │   ├── ContentNotFound
    │   ├── ContentMismatch
    │   ├── ContentTooLarge
    │   └── StoreUnavailable
    └── ChainError             chain nodes and the contract                (.url)
        ├── ChainUnavailable
        ├── TransactionFailed                                          (.tx_hash)
        │   └── TransactionTimeout
        ├── DeploymentNotFound
        └── ContractRevert     one subclass per Solidity custom error, in fedchain.eth.reverts
            ├── NotOwner, NotAggregator, NotLearner, WrongRound, AlreadySubmitted, …

`url` (already stripped of credentials) and `tx_hash` are None where they do not apply.
"""

from __future__ import annotations

from typing import Any


class FedChainError(Exception):
    """Base class of every error fedchain raises on purpose."""

    def __init__(self, *args: Any, url: str | None = None, tx_hash: str | None = None) -> None:
        super().__init__(*args)
        self.url = url
        self.tx_hash = tx_hash


class ConfigError(FedChainError):
    """A setting, flag, job file or account option is missing or wrong."""


# --- models --------------------------------------------------------------------------


class InvalidModel(FedChainError):
    """Model bytes or weights failed validation (format, size, dtype, shape, values)."""


# --- storage -------------------------------------------------------------------------


class StorageError(FedChainError):
    """Base class of content-store errors."""


class InvalidCID(StorageError):
    """A CID could not be parsed, or is not in fedchain's canonical form."""


class ContentNotFound(StorageError):
    """The store does not have (and could not find) the content of a CID."""


class ContentMismatch(StorageError):
    """Bytes served for a CID do not hash to that CID."""


class ContentTooLarge(StorageError):
    """Content is larger than the caller's limit (e.g. the plan's max_model_bytes)."""


class StoreUnavailable(StorageError):
    """The content store (IPFS node, directory) cannot be reached."""


class FetchTimeout(StorageError):
    """Content did not arrive within its overall deadline (one slow CID, not an outage)."""


# --- chain ---------------------------------------------------------------------------


class ChainError(FedChainError):
    """Base class of chain errors."""


class ChainUnavailable(ChainError):
    """The chain node cannot be reached."""


class TransactionFailed(ChainError):
    """A transaction was rejected or reverted without a known reason, or timed out."""


class TransactionTimeout(TransactionFailed):
    """A transaction was sent but not mined (or not confirmed) in time."""


class DeploymentNotFound(ChainError):
    """No FedChain contract is known at the given address or for this chain."""


class ContractRevert(ChainError):
    """A FedChain custom error; subclasses are named after the Solidity errors."""

    #: Solidity parameter names, in order, for the decoded arguments.
    params: tuple[str, ...] = ()

    def __init__(self, *args: Any) -> None:
        self.url = None
        self.tx_hash = None
        self.args_decoded = args
        self.fields = dict(zip(self.params, args, strict=False))
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        what = doc[0] if doc else type(self).__name__
        if not self.fields:
            return what
        parts = ", ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        return f"{what} ({parts})"


def _fmt(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


# --- data ----------------------------------------------------------------------------


class DataError(FedChainError):
    """A data set is missing, malformed, unreadable or refused (e.g. an unsafe pickle)."""


# --- aggregation ---------------------------------------------------------------------


class AggregationError(FedChainError):
    """Updates cannot be aggregated: out of order, bad num_examples, too few for the strategy."""


def __getattr__(name: str) -> Any:
    # The contract's revert classes live beside the binding (fedchain.eth.reverts); they stay
    # importable from here, where users have always caught them.
    from .eth import reverts

    try:
        return getattr(reverts, name)
    except AttributeError:
        raise AttributeError(f"module 'fedchain.errors' has no attribute {name!r}") from None
