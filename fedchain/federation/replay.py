"""Re-running rounds from the chain and a store: what a published global model should have been.

`recompute_round` re-runs one round's aggregation from its included updates; the aggregator
uses it, through `rebuild_state`, to recover server-optimizer state after a restart. Every
model is fetched through `fedchain.model.fetch` with the plan's `max_model_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..aggregation.strategy import Strategy
from ..errors import ConfigError, InvalidModel, StorageError
from ..eth.contract import FedChainReader
from ..eth.events import ChainCid, GlobalModelPublished, UpdateSubmitted
from ..model.codec import ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_model, fetch_plan
from ..storage import ContentStore, cid_of
from ..storage.cid import CID
from .fetching import RoundUpdates, fetch_updates


def included_updates(contract: FedChainReader, round: int) -> list[UpdateSubmitted]:
    """The submissions of the learners whose updates `round`'s published global model included."""
    published = [
        e
        for e in contract.events("GlobalModelPublished", round=round)
        if isinstance(e, GlobalModelPublished)
    ]
    if not published:
        raise ConfigError(f"round {round} has no published global model")
    included = set(published[-1].included)
    return [u for u in contract.updates(round) if u.learner in included]


def state_cid_after(contract: FedChainReader, round: int) -> ChainCid | None:
    """The CID of the server-optimizer state after `round`: the last state a round up to it
    published (carried-over rounds publish none: the state is unchanged). None if none did."""
    found: ChainCid | None = None
    for e in contract.events("GlobalModelPublished"):
        if isinstance(e, GlobalModelPublished) and e.round <= round and e.state_cid.raw:
            found = e.state_cid
    return found


def state_after(
    contract: FedChainReader, store: ContentStore, round: int, *, max_bytes: int
) -> Weights | None:
    """The server-optimizer state after `round`, fetched from its published CID (O(1) in the
    number of rounds); None when no round published one."""
    cid = state_cid_after(contract, round)
    if cid is None:
        return None
    return fetch_model(store, cid.require(), max_bytes=max_bytes)


def rederive(
    contract: FedChainReader,
    store: ContentStore,
    strategy: Strategy,
    round: int,
    *,
    max_bytes: int,
    reference: ModelSpec | None = None,
    exclude_duplicates: bool = False,
) -> tuple[CID, GlobalModelPublished]:
    """The CID `round`'s global model should have, re-derived from the chain and the store —
    the previous global model, the server state published after the round before, the
    included updates — and the event that published the round (to compare with).

    Errors fetching or validating any input are raised as they are: a round whose inputs
    cannot be had cannot be verified."""
    published = contract.published(round)
    if published is None:
        raise ConfigError(f"round {round} has no published global model")
    previous_cid = ChainCid(contract.global_model(round - 1)).require()
    if not published.included and published.model_cid.cid == previous_cid:
        return previous_cid, published  # carried over: nothing to recompute
    previous = fetch_model(store, previous_cid, max_bytes=max_bytes, reference=reference)
    state = None
    if strategy.stateful and round > 1:
        state_cid = state_cid_after(contract, round - 1)
        if state_cid is not None:
            state = fetch_model(store, state_cid.require(), max_bytes=max_bytes)
    included = [u for u in contract.updates(round) if u.learner in set(published.included)]
    new, _ = recompute_round(contract, store, strategy, round, previous, state, included,
                             reference=reference or spec(previous), max_bytes=max_bytes,
                             exclude_duplicates=exclude_duplicates)
    return cid_of(encode(new)), published


def plan_limit(contract: FedChainReader, store: ContentStore) -> int:
    """The plan's `max_model_bytes`, from the plan the chain names."""
    return fetch_plan(store, ChainCid(contract.plan()).require()).max_model_bytes


def recompute_round(
    contract: FedChainReader,
    store: ContentStore,
    strategy: Strategy,
    round: int,
    previous: Weights,
    state: Weights | None = None,
    included_events: Iterable[UpdateSubmitted] | None = None,
    *,
    reference: ModelSpec | None = None,
    max_bytes: int | None = None,
    exclude_duplicates: bool = False,
) -> tuple[Weights, Weights | None]:
    """(global model, server-optimizer state) of `round`, re-run from its included updates.

    `previous` is round−1's published global model and `state` the strategy's state after
    round−1. `included_events` defaults to the included learners' submissions read from the
    chain; `max_bytes` to the plan's limit. Updates are streamed; a fetch or validation error
    is raised as is.
    """
    events = included_updates(contract, round) if included_events is None else included_events
    limit = plan_limit(contract, store) if max_bytes is None else max_bytes
    outcomes = fetch_updates(store, events, reference=reference or spec(previous), max_bytes=limit,
                             exclude_duplicates=exclude_duplicates)
    updates = RoundUpdates(outcomes, raise_errors=(StorageError, InvalidModel))
    return strategy.aggregate(previous, updates, state)


def rebuild_state(
    contract: FedChainReader,
    store: ContentStore,
    strategy: Strategy,
    through_round: int,
    *,
    max_bytes: int | None = None,
) -> Weights | None:
    """The strategy's server-optimizer state after `through_round`, replayed from the chain.

    `max_bytes` defaults to the plan's limit.
    """
    limit = plan_limit(contract, store) if max_bytes is None else max_bytes
    state: Weights | None = None
    reference: ModelSpec | None = None
    for r in range(1, through_round + 1):
        cid = ChainCid(contract.global_model(r - 1)).require()
        previous = fetch_model(store, cid, max_bytes=limit, reference=reference)
        reference = reference or spec(previous)
        _, state = recompute_round(
            contract, store, strategy, r, previous, state, reference=reference, max_bytes=limit
        )
    return state
