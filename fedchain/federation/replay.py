"""Re-running rounds from the chain and a store: what a published global model should have been.

`recompute_round` re-runs one round's aggregation from its included updates; the aggregator
uses it, through `rebuild_state`, to recover server-optimizer state after a restart, and the
audit to verify every round.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..aggregation.rules import Update
from ..aggregation.strategy import Strategy
from ..errors import ConfigError, InvalidModel, StorageError
from ..eth.accounts import learner_key
from ..eth.contract import FedChainReader
from ..eth.events import GlobalModelPublished, UpdateSubmitted
from ..model.codec import DEFAULT_MAX_BYTES, ModelSpec, Weights, decode, spec
from ..storage.cid import to_cid


def load_updates(
    store: Any,
    events: Iterable[UpdateSubmitted],
    *,
    reference: ModelSpec | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    problems: list[tuple[UpdateSubmitted, Exception]] | None = None,
) -> Iterator[Update]:
    """The updates behind `events`, fetched one at a time in ascending learner order.

    A fetch or validation error is raised, or, given `problems`, recorded there and skipped.
    """
    for e in sorted(events, key=lambda e: learner_key(e.learner)):
        try:
            weights = decode(store.get(to_cid(e.model_cid)), reference, max_bytes)
        except (StorageError, InvalidModel) as exc:
            if problems is None:
                raise
            problems.append((e, exc))
            continue
        yield Update(e.learner, e.num_examples, weights)


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


def recompute_round(
    contract: FedChainReader,
    store: Any,
    strategy: Strategy,
    round: int,
    previous: Weights,
    state: Weights | None = None,
    included_events: Iterable[UpdateSubmitted] | None = None,
    *,
    reference: ModelSpec | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Weights, Weights | None]:
    """(global model, server-optimizer state) of `round`, re-run from its included updates.

    `previous` is round−1's published global model and `state` the strategy's state after
    round−1. `included_events` defaults to the included learners' submissions read from the
    chain. Updates are streamed; a fetch or validation error is raised as is.
    """
    events = included_updates(contract, round) if included_events is None else included_events
    updates = load_updates(
        store, events, reference=reference or spec(previous), max_bytes=max_bytes
    )
    return strategy.aggregate(previous, updates, state)


def rebuild_state(
    contract: FedChainReader, store: Any, strategy: Strategy, through_round: int
) -> Weights | None:
    """The strategy's server-optimizer state after `through_round`, replayed from the chain."""
    state: Weights | None = None
    for r in range(1, through_round + 1):
        previous = decode(store.get(to_cid(contract.global_model(r - 1))))
        _, state = recompute_round(contract, store, strategy, r, previous, state)
    return state
