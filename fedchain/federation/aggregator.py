"""The aggregator loop: genesis, then per round wait → fetch and check → aggregate → publish.

The aggregator keeps no state that the chain and the store do not: killed and restarted, it
reads the open round and its submissions from the chain and carries on, without losing or
double-counting an update.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

from ..aggregation.strategy import strategy_from_plan
from ..errors import (
    AggregationError,
    ConfigError,
    FedChainError,
    InvalidModel,
    StorageError,
    StoreUnavailable,
)
from ..eth.contract import FedChain, require_signer
from ..eth.events import ChainCid, UpdateSubmitted
from ..model.codec import ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_model
from ..model.plan import Plan
from ..storage import ContentStore
from .config import RunConfig
from .fetching import RoundUpdates, fetch_updates
from .history import History, RoundResult
from .outage import ride_out
from .replay import rebuild_state

log = logging.getLogger("fedchain.aggregator")

T = TypeVar("T")

EvaluateFn = Callable[[int, Weights], tuple[float, Mapping[str, float]] | None]


class Aggregator:
    """Drives a federation from the aggregator's account."""

    def __init__(
        self,
        contract: FedChain,
        store: ContentStore,
        config: RunConfig | None = None,
        *,
        initial_weights: Weights | None = None,
        evaluate_fn: EvaluateFn | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        require_signer(contract, "the aggregator")
        self.contract = contract
        self.store = store
        self.config = config or RunConfig()
        self.strategy = self.config.strategy
        self.initial_weights = initial_weights
        self.evaluate_fn = evaluate_fn
        self.termination = self.config.termination()
        self.stop_event = stop or threading.Event()
        self.history = History()
        self.plan: Plan | None = None
        self._spec: ModelSpec | None = None
        self._state: Weights | None = None
        # Where to start scanning for the open round's updates (0 after a restart).
        self._round_block = 0

    @property
    def results(self) -> list[RoundResult]:
        """The rounds this aggregator ran, in order."""
        return self.history.rounds

    # -- genesis -----------------------------------------------------------------------

    def start(self) -> Plan:
        """Publishes the genesis model and plan, or resumes a federation already started."""
        c = self.contract
        if c.current_round() == 0:
            if self.strategy is None or self.initial_weights is None:
                raise ConfigError("genesis needs a strategy and initial weights")
            plan = self.config.plan(c.learner_count())
            model_cid = self.store.put(encode(self.initial_weights))
            plan_cid = self.store.put(plan.to_json())
            receipt = c.set_genesis(model_cid, plan_cid)
            self._round_block = receipt.block_number
            log.info("genesis model %s, plan %s (%s): round 1 open", model_cid, plan_cid,
                     plan.strategy["name"])
            self.plan = plan
        else:
            self.plan = Plan.load(self.store, ChainCid(c.plan()).require())
            log.info("resuming federation at round %d (%s)", c.current_round(),
                     self.plan.strategy["name"])
            opened = [e.block for e in c.events("GenesisSet", "GlobalModelPublished")]
            self._round_block = opened[-1] if opened else 0
            for note in self._disagreements(self.plan):
                log.warning("%s", note)
        learners = c.learner_count()
        if self.plan.min_updates > learners:
            log.warning("min_updates is %d but only %d learners are registered: rounds will "
                        "close without aggregation until more learners join",
                        self.plan.min_updates, learners)
        self.strategy = strategy_from_plan(self.plan.strategy)
        open_round = c.current_round()
        if self.strategy.stateful and open_round > 1:
            # Server-optimizer state lives nowhere but in the history: replay it.
            self._state = rebuild_state(c, self.store, self.strategy, open_round - 1,
                                        max_bytes=self.plan.max_model_bytes)
            log.info("rebuilt %s state from rounds 1-%d", self.strategy.name, open_round - 1)
        self.termination.rounds = self.plan.rounds
        return self.plan

    def _disagreements(self, plan: Plan) -> list[str]:
        """What this aggregator's config asks for that the plan on chain overrides."""
        wanted = {
            "rounds": self.config.rounds,
            "min_updates": self.config.min_updates,
            "max_model_bytes": self.config.max_model_bytes,
            "strategy": self.strategy.to_plan() if self.strategy is not None else None,
        }
        notes = []
        for key, value in wanted.items():
            on_chain = getattr(plan, key)
            if value is not None and value != on_chain:
                notes.append(
                    f"the plan published at genesis says {key} = {on_chain}; the configured "
                    f"{key} = {value} is ignored: the plan on chain binds every party"
                )
        return notes

    def _plan(self) -> Plan:
        if self.plan is None:
            raise ConfigError("the aggregator has not started: call start() first")
        return self.plan

    # -- one round ---------------------------------------------------------------------

    def wait_for_updates(self, round: int) -> list[UpdateSubmitted]:
        """Waits for `min_updates` updates (or every learner, or the timeout); returns them."""
        deadline = time.monotonic() + self.config.round_timeout
        learners = max(1, self.contract.learner_count())
        while True:
            updates = self.contract.updates(round, from_block=self._round_block)
            enough = len(updates) >= max(self._plan().min_updates, 1)
            if len(updates) >= learners or (enough and time.monotonic() >= deadline):
                return updates
            if time.monotonic() >= deadline:
                log.warning("[ROUND %d] timeout after %.0fs with %d of %d updates needed", round,
                            self.config.round_timeout, len(updates), self._plan().min_updates)
                return updates
            if self.stop_event.wait(self.config.poll_interval):
                raise FedChainError("aggregator stopped")

    def round_updates(self, updates: list[UpdateSubmitted],
                      deadline: float | None = None) -> RoundUpdates:
        """The round's updates, fetched in learner order as the strategy pulls them (with the
        plan's size limit, by `deadline`); a store outage is raised, so the round is retried."""
        assert self._spec is not None
        outcomes = fetch_updates(self.store, updates, max_bytes=self._plan().max_model_bytes,
                                 reference=self._spec, deadline=deadline, copy=False)
        return RoundUpdates(outcomes, raise_errors=(StoreUnavailable,))

    def previous_global(self, round: int) -> Weights:
        """The global model published before `round` (the genesis model before round 1)."""
        cid = ChainCid(self.contract.global_model(round - 1)).require()
        weights = fetch_model(self.store, cid, max_bytes=self._plan().max_model_bytes,
                              reference=self._spec)
        if self._spec is None:
            self._spec = spec(weights)
        return weights

    def _pin(self, round: int, included: list[UpdateSubmitted]) -> None:
        """Keeps the included updates: audits and restarts of stateful strategies fetch them."""
        for u in included:
            try:
                self.store.pin(u.model_cid.require())
            except StoreUnavailable:
                raise  # an outage: the round is retried
            except StorageError as exc:
                log.warning("[ROUND %d] could not pin the update of %s (%s): %s", round,
                            u.learner, u.model_cid, exc)

    def run_round(self, round: int) -> RoundResult:
        """Aggregates and publishes `round` (which must be the open round)."""
        assert self.strategy is not None
        started = time.monotonic()
        # Fetching ends by the round's own deadline: what has not arrived by then is left out.
        deadline = started + self.config.round_timeout + self.config.fetch_timeout
        submitted = self.wait_for_updates(round)
        previous = self.previous_global(round)
        fetched = self.round_updates(submitted, deadline)
        included: list[UpdateSubmitted] = []
        encoded: bytes | None = None
        if len(submitted) < self._plan().min_updates:
            # Below the plan's minimum the round closes without aggregating: the global model
            # carries over and learners train again, instead of the federation hanging.
            new, state = previous, self._state
            log.warning("[ROUND %d] only %d of %d required updates: round closed without "
                        "aggregation, global model carried over", round, len(submitted),
                        self._plan().min_updates)
        else:
            try:
                new, state = self.strategy.aggregate(previous, fetched, self._state)
                included, encoded = fetched.included, encode(new)
            except (AggregationError, InvalidModel) as exc:
                # No input may crash the aggregator (it would crash again on restart).
                log.warning("[ROUND %d] aggregation failed (%s: %s): global model carried over",
                            round, type(exc).__name__, exc)
                new, state = previous, self._state
            for r in fetched.rejected:
                log.warning("[ROUND %d] rejected update of %s (%s): %s", round, r.learner, r.cid,
                            r.reason)
            if len(included) < max(1, self._plan().min_updates):
                log.warning("[ROUND %d] %d valid updates, %d required: global model carried "
                            "over", round, len(included), self._plan().min_updates)
                new, state, included, encoded = previous, self._state, [], None
        self._pin(round, included)
        cid = self.store.put(encoded if encoded is not None else encode(new))
        learners = [u.learner for u in included]
        receipt = self.contract.publish_global(round, cid, learners)
        self._round_block = receipt.block_number
        self._state = state
        result = RoundResult(round, str(cid), learners, fetched.rejected, len(submitted),
                             time.monotonic() - started)
        log.info("[ROUND %d] received %d updates, %d rejected, aggregated %d, published %s",
                 round, len(submitted), len(fetched.rejected), len(included), cid)
        if self.evaluate_fn is not None:
            outcome = self.evaluate_fn(round, new)
            if outcome is not None:
                loss, metrics = outcome
                result.centralized = (float(loss), {k: float(v) for k, v in metrics.items()})
                self.history.add_centralized(round, float(loss), metrics)
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                log.info("[ROUND %d] centralized evaluation: loss=%.4f %s", round, loss, shown)
        self.history.add_round(result)
        return result

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> History:
        """Runs rounds until a termination signal, then calls finish()."""
        if self.plan is None:
            self._ride_out(self.start)
        started = time.monotonic()
        c = self.contract
        while not self._ride_out(c.finished):
            round = self._ride_out(c.current_round)
            if round > self._plan().rounds:
                break
            result = self._ride_out(partial(self._run_if_open, round))
            if result is None:
                continue  # an earlier attempt published it (its receipt was lost)
            value = None
            if self.termination.metric and result.centralized is not None:
                value = result.centralized[1].get(self.termination.metric)
            reason = self.termination.reached(round, started, value)
            if reason:
                log.info("stopping: %s", reason)
                break
        if not self._ride_out(c.finished):
            self._ride_out(self._finish)
            log.info("federation finished after round %d", c.current_round() - 1)
        self._ride_out(lambda: self.wait_for_evaluations(c.current_round() - 1))
        return self.history

    def _finish(self) -> None:
        if not self.contract.finished():  # a retried attempt may have finished already
            self.contract.finish()

    def _run_if_open(self, round: int) -> RoundResult | None:
        """run_round, unless a retried attempt already published the round."""
        if self.contract.finished() or self.contract.current_round() != round:
            return None
        return self.run_round(round)

    def _ride_out(self, step: Callable[[], T]) -> T:
        return ride_out(step, what="aggregator", log=log, stop=self.stop_event,
                        max_outage=self.config.max_outage)

    def wait_for_evaluations(self, round: int) -> int:
        """Waits (up to `evaluation_timeout`) for every learner's report on `round`'s model."""
        deadline = time.monotonic() + self.config.evaluation_timeout
        learners = self.contract.learner_count()
        while True:
            reports = len(list(self.contract.events("EvaluationReported", round=round,
                                                    from_block=self._round_block)))
            if reports >= learners or time.monotonic() >= deadline:
                return reports
            if self.stop_event.wait(self.config.poll_interval):
                return reports
