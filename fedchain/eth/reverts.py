"""The contract's custom errors as exceptions, and decoding them out of a failed call."""

from __future__ import annotations

import ast
import re
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector
from web3.exceptions import ContractCustomError, ContractLogicError

from ..errors import ContractRevert, TransactionFailed
from .events import convert_value


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
    """This member already voted for this in this round"""

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


#: Solidity custom error name → exception class (tests/test_artifact.py checks it against the ABI).
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
        InvalidCommittee,
        DuplicateMember,
        InvalidParams,
        SubmissionsClosed,
        UpdateDeadlinePassed,
        NotSelected,
        CommitRequired,
        CommitRevealOff,
        NoCommitment,
        CommitmentMismatch,
        RevealNotOpen,
        RevealDeadlinePassed,
        BitmapLength,
        SubmissionsChanged,
        NotIncludable,
        VotingNotOpen,
        VoteDeadlinePassed,
        AlreadyVoted,
        RoundNotExpired,
        EmptyCid,
        CidTooLong,
        NoExamples,
        TooManyExamples,
        MetricsTooLarge,
        NoGlobalModel,
        AlreadyReported,
        NotPendingOwner,
    )
}


def error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [i["type"] for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            table[function_signature_to_4byte_selector(sig)] = (item["name"], types)
    return table


def _revert_data(exc: Exception) -> bytes | None:
    """Digs the raw revert bytes out of whatever shape the node and web3 gave them."""
    candidates: list[Any] = []
    if isinstance(exc, ContractCustomError | ContractLogicError):
        candidates.append(exc.data)
    candidates.extend(exc.args)
    rpc = getattr(exc, "rpc_response", None)
    if isinstance(rpc, dict):
        candidates.append(rpc.get("error", {}).get("data"))
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        candidates.extend(cause.args)
        cause = cause.__cause__ or cause.__context__
    while candidates:
        c = candidates.pop(0)
        if isinstance(c, dict):
            candidates.extend(c.values())
        elif isinstance(c, list | tuple):
            candidates.extend(c)
        elif isinstance(c, bytes | bytearray) and len(c) >= 4:
            return bytes(c)
        elif isinstance(c, str) and re.search(r"reverted: b['\"]", c):
            # eth-tester's eth_call puts the revert bytes' repr into its message.
            try:
                literal = ast.literal_eval(c[c.index("reverted: ") + len("reverted: "):].strip())
            except (ValueError, SyntaxError):
                literal = None
            if isinstance(literal, bytes) and len(literal) >= 4:
                return literal
        elif isinstance(c, str):
            m = re.search(r"0x([0-9a-fA-F]{8}(?:[0-9a-fA-F]{2})*)", c)
            if m and (c.startswith("0x") or "revert" in c.lower() or "data" in c.lower()):
                return bytes.fromhex(m.group(1))
    return None


def decode_revert(errors: dict[bytes, tuple[str, list[str]]], exc: Exception) -> Exception:
    """The contract's custom error behind a failed call, decoded; else TransactionFailed."""
    data = _revert_data(exc)
    if data is not None and data[:4] in errors:
        name, types = errors[data[:4]]
        values = abi_decode(types, data[4:]) if types else ()
        return REVERTS[name](*(convert_value(v) for v in values))
    return TransactionFailed(f"transaction failed: {exc}")
