"""fedchain's exceptions: callers catch these, never a web3, HTTP or torch internal.

    FedChainError
    ├── ConfigError            a setting, flag, job file or account is missing or wrong
    ├── InvalidModel           model bytes or weights failed validation
    ├── DataError              a data set is missing, malformed or refused
    ├── AggregationError       updates cannot be aggregated
    ├── PrivacyError           secure aggregation: a share, ciphertext or mask is refused
    │   └── PrivacyBudgetExceeded  a DP learner's next round would pass its ε budget
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
        └── ContractRevert     one subclass per Solidity custom error (decoded in eth.reverts)
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


# --- the contract's custom errors ----------------------------------------------------
# One ContractRevert per Solidity custom error, named after it; its docstring is the message.
# fedchain.eth.reverts decodes them out of failed calls (and re-exports them).


class NotOwner(ContractRevert):
    """Only the contract owner may do this"""

    params = ("caller",)


class NotAggregator(ContractRevert):
    """Only a member of the committee of aggregators may do this"""

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


class InvalidCommittee(ContractRevert):
    """A committee needs 1 to 255 members and a quorum that is a majority of them"""

    params = ("size", "quorum")


class DuplicateMember(ContractRevert):
    """An account is listed twice in the committee"""

    params = ("member",)


class InvalidParams(ContractRevert):
    """The run's parameters are inconsistent"""

    params = ("reason",)


class SubmissionsClosed(ContractRevert):
    """A vote was cast in this round: its submissions are final"""

    params = ("round",)


class UpdateDeadlinePassed(ContractRevert):
    """The round's update deadline has passed"""

    params = ("round", "deadline")


class NotSelected(ContractRevert):
    """This learner was not sampled for the round"""

    params = ("round", "learner")


class SeedNotReady(ContractRevert):
    """The round opened in this very block: its sampling seed is this block's hash, known
    once the block is sealed; submit in a later block"""

    params = ("round",)


class CommitRequired(ContractRevert):
    """The federation runs in commit-reveal mode: commit, then reveal"""


class CommitRevealOff(ContractRevert):
    """The federation does not run in commit-reveal mode"""


class NoCommitment(ContractRevert):
    """This learner committed to no update in this round"""

    params = ("round", "learner")


class CommitmentMismatch(ContractRevert):
    """The revealed update is not the one committed to"""

    params = ("round", "learner")


class RevealNotOpen(ContractRevert):
    """Reveals open after the update deadline"""

    params = ("round", "opensAfter")


class RevealDeadlinePassed(ContractRevert):
    """The round's reveal deadline has passed"""

    params = ("round", "deadline")


class BitmapLength(ContractRevert):
    """A bitmap needs one word per 256 learner indices handed out"""

    params = ("given", "expected")


class SubmissionsChanged(ContractRevert):
    """The round's submissions changed since the vote read them: read them again"""

    params = ("round",)


class NotIncludable(ContractRevert):
    """An included learner did not submit in this round or is no longer registered"""

    params = ("round", "word", "bits")


class VotingNotOpen(ContractRevert):
    """Votes open at the update deadline, or once every learner (or the buffer) is in"""

    params = ("round", "opensAfter")


class VoteDeadlinePassed(ContractRevert):
    """The round's vote deadline has passed: anyone may close it (carried over)"""

    params = ("round", "deadline")


class AlreadyVoted(ContractRevert):
    """This member already voted in this round (for this, or for another result)"""

    params = ("round", "member")


class RoundNotExpired(ContractRevert):
    """The round's vote deadline has not passed (or it has none)"""

    params = ("round", "deadline")


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


class NotPendingOwner(ContractRevert):
    """Only the pending owner may accept the ownership"""

    params = ("caller",)


class NotLatestRound(ContractRevert):
    """Only the latest closed round can be voided"""

    params = ("given", "latest")


class NotVoidable(ContractRevert):
    """The round did not close on a committee vote (a timeout, or voided already)"""

    params = ("round",)


class TooFewDisputes(ContractRevert):
    """Voiding a round needs disputes from more than half of the active learners"""

    params = ("round", "disputes", "needed")


class NotTheResult(ContractRevert):
    """This digest is not the result the round closed on"""

    params = ("round", "digest")


class ChangeNotReady(ContractRevert):
    """After genesis this owner change needs an announcement ownerDelay seconds old, or the
    committee's approval"""

    params = ("change", "executableAt")


class SecaggMessage(ContractRevert):
    """A secure-aggregation message of an unknown kind, or of a length its kind cannot have"""

    params = ("kind", "length")


# --- data ----------------------------------------------------------------------------


class DataError(FedChainError):
    """A data set is missing, malformed, unreadable or refused (e.g. an unsafe pickle)."""


# --- aggregation ---------------------------------------------------------------------


class AggregationError(FedChainError):
    """Updates cannot be aggregated: out of order, bad num_examples, too few for the strategy."""


# --- privacy -------------------------------------------------------------------------


class PrivacyError(FedChainError):
    """Secure aggregation refused its input: a tampered share or ciphertext, a secret that does
    not match its commitment, too few shares, a sum that could wrap, a value out of range."""


class PrivacyBudgetExceeded(PrivacyError):
    """A learner with differential privacy refuses to train: the next round's DP-SGD steps
    would take its ε past its own budget (its DPConfig's epsilon_budget at delta)."""
