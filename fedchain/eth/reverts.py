"""Decoding the contract's custom errors out of a failed call, as the exceptions fedchain.errors
defines for them (one per Solidity error, re-exported here)."""

from __future__ import annotations

import ast
import re
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector
from web3.exceptions import ContractCustomError, ContractLogicError

from ..errors import (
    AlreadyLearner,
    AlreadyReported,
    AlreadySubmitted,
    AlreadyVoted,
    BitmapLength,
    ChangeNotReady,
    CidTooLong,
    CommitmentMismatch,
    CommitRequired,
    CommitRevealOff,
    ContractRevert,
    DuplicateMember,
    EmptyCid,
    FederationFinished,
    GenesisAlreadySet,
    InvalidCommittee,
    InvalidParams,
    MetricsTooLarge,
    NoCommitment,
    NoExamples,
    NoGlobalModel,
    NotAggregator,
    NotIncludable,
    NotLatestRound,
    NotLearner,
    NotOwner,
    NotPendingOwner,
    NotSelected,
    NotStarted,
    NotTheResult,
    NotVoidable,
    RevealDeadlinePassed,
    RevealNotOpen,
    RoundNotExpired,
    SecaggMessage,
    SeedNotReady,
    SubmissionsChanged,
    SubmissionsClosed,
    TooFewDisputes,
    TooManyExamples,
    TransactionFailed,
    UnknownLearner,
    UpdateDeadlinePassed,
    VoteDeadlinePassed,
    VotingNotOpen,
    WrongRound,
    ZeroAddress,
)
from .events import convert_value

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
        SeedNotReady,
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
        NotLatestRound,
        NotVoidable,
        TooFewDisputes,
        NotTheResult,
        ChangeNotReady,
        SecaggMessage,
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
