"""Gas policy: every gas limit and fee fedchain picks for a transaction, in one place.

Gas limits, in the order `Chain.transact` tries them:

1. A transaction's own `gas` field is used as given (e.g. TRANSFER_GAS for a plain transfer).
2. Opt-in (`Chain.gas_policy`): the learners' calls whose cost is flat get a fixed limit from
   FLAT_GAS (`flat_gas_policy`), instead of an eth_estimateGas each; a call that reverts is
   then found when it is mined, and pays for its gas.
3. Otherwise the backend finds one: a JSON-RPC node's eth_estimateGas × ESTIMATE_FACTOR +
   ESTIMATE_MARGIN (`estimate_limit`); the embedded chain, where gas costs nothing,
   EMBEDDED_GAS_LIMIT (py-evm's estimator is slow). On top of either comes the headroom of
   the contract function called (GAS_HEADROOM, `headroom`), for calls whose cost depends on
   what other senders' transactions mined before them do.

A transaction whose limit was not its own and that runs out of gas (`ran_out_of_gas`: the
state it was estimated on changed before its block) is estimated again, on the new state and
without the flat limits, and sent OUT_OF_GAS_RESENDS more time(s). Gas a transaction does not
use is not paid for, so the margins cost nothing but block space.

Fees: EIP-1559 where the head block has a base fee, `eip1559_fees`: at most twice the base fee
plus the tip, the tip being the node's suggestion or DEFAULT_TIP; legacy chains pay the node's
gas price. Registrations are split into LEARNER_BATCH learners per transaction, so any number
of learners fits a block's gas limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contract import FedChainReader

#: eth_estimateGas × ESTIMATE_FACTOR + ESTIMATE_MARGIN is the limit of an estimated transaction.
ESTIMATE_FACTOR = 1.2
ESTIMATE_MARGIN = 10_000

#: Gas limit of transactions on the embedded chain (deploying FedChain takes about 4.9M).
EMBEDDED_GAS_LIMIT = 6_000_000

#: Gas limit of a plain ETH transfer (funding dev accounts).
TRANSFER_GAS = 21_000

#: Gas added to a transaction's estimate where what it costs depends on what other senders do
#: between the estimate and the block: a committee member's vote is estimated as one vote
#: among others, yet when another member's vote is mined first it is the deciding one and
#: closes the round (for the genesis: stores the model, the plan of up to 63 bytes, the
#: round's parameters and the second model slot voidRound restores from, about 150k more at
#: 36-byte CIDs, 225k at 63-byte ones). Unused gas is not paid for.
GAS_HEADROOM: Mapping[str, int] = MappingProxyType({
    "setGenesis": 250_000,
    "publishGlobal": 60_000,
    "finish": 30_000,
    # A stale asynchronous update lands in the open round's bitmap: maybe its word's first.
    "submitUpdate": 20_000,
    "revealUpdate": 20_000,
})

#: Gas limits of the learners' calls whose cost is flat (bench/gas.py on Anvil: submitUpdate
#: 55,274 when first of its round, else 38,174; reportEvaluation about 36,000 plus up to
#: 1 KiB of metrics; commitUpdate 52,110; revealUpdate 58,020), with a wide margin.
FLAT_GAS: Mapping[str, int] = MappingProxyType({
    "submitUpdate": 120_000, "reportEvaluation": 150_000,
    "commitUpdate": 120_000, "revealUpdate": 150_000, "seedRound": 80_000,
})

#: Gas limits of the calls that are valid only once a deadline has passed: a dev node that
#: mines only when a transaction comes estimates them at its latest block, stamped before the
#: deadline, and refuses them (RoundNotExpired, VotingNotOpen, RevealNotOpen) although the
#: block that would include them is past it. Refused so at estimation while this machine's
#: clock says the deadline passed, such a call is sent once with this limit instead; if the
#: chain still says not yet, it reverts when mined, paying for the gas it used. A vote's limit
#: grows with the words of its bitmaps (TIME_GATED_PER_WORD each).
TIME_GATED_GAS: Mapping[str, int] = MappingProxyType({
    "closeRound": 250_000, "publishGlobal": 500_000, "revealUpdate": FLAT_GAS["revealUpdate"],
})
TIME_GATED_PER_WORD = 25_000


def time_gated_limit(function: str, args: tuple[Any, ...]) -> int | None:
    """The fixed gas limit of a call to `function` that is valid only after a deadline (None:
    `function` is not one); list arguments (bitmaps) add TIME_GATED_PER_WORD per word."""
    base = TIME_GATED_GAS.get(function)
    if base is None:
        return None
    words = sum(len(a) for a in args if isinstance(a, list | tuple))
    return base + TIME_GATED_PER_WORD * words


#: How many times a transaction that ran out of gas on a stale estimate is estimated again
#: and sent once more.
OUT_OF_GAS_RESENDS = 1

#: Priority fee (wei) where the node does not suggest one: 1 gwei.
DEFAULT_TIP = 10**9
#: An EIP-1559 transaction pays at most this many times the base fee, plus its tip.
BASE_FEE_MULTIPLIER = 2

#: Learners registered per transaction (one block has a gas limit).
LEARNER_BATCH = 200


def estimate_limit(estimate: int) -> int:
    """The gas limit of a transaction the node estimated at `estimate`."""
    return int(estimate * ESTIMATE_FACTOR) + ESTIMATE_MARGIN


def headroom(function: str) -> int:
    """Gas added to the estimate of a call to the contract's `function` (GAS_HEADROOM)."""
    return GAS_HEADROOM.get(function, 0)


def ran_out_of_gas(gas_used: int, limit: int) -> bool:
    """Whether a mined transaction with gas limit `limit` used all of it."""
    return gas_used >= limit > 0


def eip1559_fees(base_fee: int, tip: int) -> dict[str, int]:
    """The fee fields of an EIP-1559 transaction sent on a block with `base_fee`."""
    return {"maxFeePerGas": BASE_FEE_MULTIPLIER * base_fee + tip, "maxPriorityFeePerGas": tip}


def flat_gas_policy(contract: FedChainReader) -> Callable[[dict[str, Any]], int | None]:
    """A `Chain.gas_policy` giving the learners' flat-gas calls to `contract` a fixed limit
    (FLAT_GAS) instead of an eth_estimateGas each. The price: a call that reverts is found
    when it is mined (and pays for its gas) instead of at estimation."""
    functions = contract.contract.functions
    selectors = {
        functions.submitUpdate(1, b"", 0)._encode_transaction_data()[:10]: FLAT_GAS["submitUpdate"],
        functions.reportEvaluation(1, 0, b"")._encode_transaction_data()[:10]:
            FLAT_GAS["reportEvaluation"],
        functions.commitUpdate(1, bytes(32))._encode_transaction_data()[:10]:
            FLAT_GAS["commitUpdate"],
        functions.revealUpdate(1, b"", 0, bytes(32))._encode_transaction_data()[:10]:
            FLAT_GAS["revealUpdate"],
    }
    target = contract.address.lower()

    def policy(tx: dict[str, Any]) -> int | None:
        if str(tx.get("to", "")).lower() != target:
            return None
        return selectors.get(str(tx.get("data", ""))[:10])

    return policy
