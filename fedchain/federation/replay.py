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
from ..model.codec import ModelSpec, Weights, spec
from ..model.fetch import fetch_model, fetch_plan
from ..storage import ContentStore
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
) -> tuple[Weights, Weights | None]:
    """(global model, server-optimizer state) of `round`, re-run from its included updates.

    `previous` is round−1's published global model and `state` the strategy's state after
    round−1. `included_events` defaults to the included learners' submissions read from the
    chain; `max_bytes` to the plan's limit. Updates are streamed; a fetch or validation error
    is raised as is.
    """
    events = included_updates(contract, round) if included_events is None else included_events
    limit = plan_limit(contract, store) if max_bytes is None else max_bytes
    outcomes = fetch_updates(store, events, reference=reference or spec(previous), max_bytes=limit)
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
