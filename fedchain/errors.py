"""fedchain's exceptions: callers catch these, never a web3, HTTP or torch internal."""

from __future__ import annotations

from typing import Any


class FedChainError(Exception):
    """Base class of every error fedchain raises on purpose."""


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
        self.args_decoded = args
        self.fields = dict(zip(self.params, args, strict=False))
        super().__init__(self._message())

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


class NotOwner(ContractRevert):
    """Only the contract owner may do this"""

    params = ("caller",)


class NotAggregator(ContractRevert):
    """Only the aggregator may do this"""

    params = ("caller",)


class NotLearner(ContractRevert):
    """The sender is not a registered learner"""

    params = ("caller",)


class ZeroAddress(ContractRevert):
    """The zero address is not allowed here"""


class AlreadyLearner(ContractRevert):
    """The address is already a registered learner"""

    params = ("learner",)


class UnknownLearner(ContractRevert):
    """The address is not a registered learner"""

    params = ("learner",)


class GenesisAlreadySet(ContractRevert):
    """The genesis model was already set"""


class NotStarted(ContractRevert):
    """The federation has not started: no genesis model yet"""


class FederationFinished(ContractRevert):
    """The federation has finished"""


class WrongRound(ContractRevert):
    """The round given is not the round open for updates"""

    params = ("given", "open")


class AlreadySubmitted(ContractRevert):
    """This learner already submitted an update in this round"""

    params = ("round", "learner")


class NotSubmitted(ContractRevert):
    """An included learner did not submit an update in this round"""

    params = ("round", "learner")


class IncludedNotAscending(ContractRevert):
    """Included learners must be listed in strictly ascending address order, once each"""

    params = ("index", "learner")


class EmptyCid(ContractRevert):
    """A CID must not be empty"""


class CidTooLong(ContractRevert):
    """The CID is longer than the contract stores"""

    params = ("length", "max")


class NoExamples(ContractRevert):
    """numExamples must be positive"""


class TooManyExamples(ContractRevert):
    """numExamples is above the contract's limit (2**40)"""

    params = ("given", "max")


class MetricsTooLarge(ContractRevert):
    """The metrics JSON is larger than the contract accepts"""

    params = ("size", "max")


class NoGlobalModel(ContractRevert):
    """No global model has been published for this round yet"""

    params = ("round",)


class AlreadyReported(ContractRevert):
    """This learner already reported an evaluation for this round"""

    params = ("round", "learner")


#: Solidity custom error name → exception class (kept in step with contracts/FedChain.sol).
REVERTS: dict[str, type[ContractRevert]] = {
    cls.__name__: cls
    for cls in (
        NotOwner,
        NotAggregator,
        NotLearner,
        ZeroAddress,
        AlreadyLearner,
        UnknownLearner,
        GenesisAlreadySet,
        NotStarted,
        FederationFinished,
        WrongRound,
        AlreadySubmitted,
        NotSubmitted,
        IncludedNotAscending,
        EmptyCid,
        CidTooLong,
        NoExamples,
        TooManyExamples,
        MetricsTooLarge,
        NoGlobalModel,
        AlreadyReported,
    )
}


# --- data ----------------------------------------------------------------------------


class DataError(FedChainError):
    """A data set is missing, malformed, unreadable or refused (e.g. an unsafe pickle)."""


# --- aggregation ---------------------------------------------------------------------


class AggregationError(FedChainError):
    """Updates cannot be aggregated: out of order, bad num_examples, too few for the strategy."""
