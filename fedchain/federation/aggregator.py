"""The aggregator loop: genesis, then per round wait → fetch and check → aggregate → vote.

An aggregator is one member of the federation's committee (a committee of one by default).
Each member computes every round on its own — aggregation is deterministic — and votes for
the result: the round closes when a quorum voted for the same model, server state and
included set. A vote accounts for every submission of the round (the contract checks the
submissions it saw), so leaving an update out is always visible.

The aggregator keeps no state that the chain and the store do not: killed and restarted, it
reads the open round and its submissions from the chain, and the server-optimizer state from
the last round's state CID, and carries on without losing or double-counting an update.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TypeVar

from ..aggregation.strategy import strategy_from_plan
from ..errors import (
    ConfigError,
    ContractRevert,
    FedChainError,
    InvalidModel,
    PrivacyError,
    StorageError,
    StoreUnavailable,
    TransactionFailed,
)
from ..eth.bitmap import from_bits
from ..eth.contract import FedChain, RoundParams, require_signer
from ..eth.events import ChainCid, GlobalModelPublished, UpdateSubmitted
from ..eth.reverts import (
    AlreadyVoted,
    FederationFinished,
    GenesisAlreadySet,
    NotAggregator,
    RoundNotExpired,
    SeedNotReady,
    SubmissionsChanged,
    UpdateDeadlinePassed,
    VoteDeadlinePassed,
    VotingNotOpen,
    WrongRound,
)
from ..eth.watcher import ChainWatcher
from ..jsonsafe import loads
from ..model.codec import ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_model
from ..privacy.distributed import Noise
from ..privacy.dpsgd import PREFIX, budget_spent
from ..privacy.secagg import RoundKeys
from ..protocol.fetching import Outcome, Rejected, fetch_updates
from ..protocol.ledger import Ledger, RoundRecord
from ..protocol.params import Plan
from ..protocol.round import run_round
from ..protocol.rules import duplicates_without_commit_reveal, is_selected, update_timeout
from ..protocol.secure import (
    KEYS,
    REVEAL,
    SecureRound,
    holder_revelation,
    is_secagg,
    keys_message,
    master_secret,
    params_of,
    round_context,
    round_seed,
)
from ..storage import ContentStore
from ..storage.cid import CID
from .config import RunConfig
from .history import History, RoundResult
from .outage import ride_out

log = logging.getLogger("fedchain.aggregator")

T = TypeVar("T")

EvaluateFn = Callable[[int, Weights], tuple[float, Mapping[str, float]] | None]

#: Updates a committee member fetches (or holds) at once: while a slow one runs out its own
#: deadline, the next ones are fetched.
FETCH_IN_FLIGHT = 4

#: Blocks after a sampled round opened with no submission yet, after which a committee member
#: draws its seed itself (seedRound): the contract reaches the opening block's hash, which the
#: learners computed who is selected from, for 256 blocks only (SPEC §3.5).
SEED_NUDGE_BLOCKS = 128

#: How often a party still waiting on the chain says so again, in seconds.
WAIT_WARNING_INTERVAL = 60.0


class _Stale(Exception):
    """The round's submissions changed after they were read: compute the round again."""


class Patience:
    """Says what a loop waits for and since when: once at first, then every `interval`."""

    def __init__(self, name: str, logger: logging.Logger,
                 interval: float = WAIT_WARNING_INTERVAL) -> None:
        self.name, self.log, self.interval = name, logger, interval
        self._what: str | None = None
        self._since = self._said = 0.0

    def waiting(self, what: str, why: str = "") -> None:
        now = time.time()
        if self._what != what:
            self._what, self._since, self._said = what, now, 0.0
        if now - self._said >= self.interval:
            since = time.strftime("%H:%M:%S", time.localtime(self._since))
            # Said quietly at first (waiting is normal), loudly once it lasts.
            level = logging.WARNING if self._said else logging.INFO
            self.log.log(level, "%s: waiting for %s since %s (%.0fs)%s", self.name, what, since,
                         now - self._since, f": {why}" if why else "")
            self._said = now

    def done(self) -> None:
        if self._what is not None and self._said:
            self.log.info("%s: %s arrived after %.0fs", self.name, self._what,
                          time.time() - self._since)
        self._what = None


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
        watcher: ChainWatcher | None = None,
    ) -> None:
        require_signer(contract, "the aggregator")
        #: The process's chain watcher, if any: waits end at its next block instead of
        #: polling every `poll_interval`.
        self.watcher = watcher
        self._version = 0
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
        self.patience = Patience("aggregator", log)
        self._events: Ledger | None = None
        #: DP-SGD privacy reports read so far (learner → [(round, report)]), and the events
        #: already read (block, log index): `_privacy_spent`.
        self._dp_reports: dict[str, list[tuple[int, Mapping[str, object]]]] = {}
        self._dp_read: set[tuple[int, int]] = set()
        #: Rounds this aggregator's vote lost: (round, our CID, the published CID).
        self.outvoted: list[tuple[int, str, str]] = []

    def _idle(self) -> bool:
        """Waits for the chain to move (the watcher's next block, else `poll_interval`);
        True when the aggregator was stopped."""
        if self.watcher is None:
            return self.stop_event.wait(self.config.poll_interval)
        self._version = self.watcher.wait(self._version, timeout=1.0).version
        return self.stop_event.is_set()

    @property
    def results(self) -> list[RoundResult]:
        """The rounds this aggregator ran, in order."""
        return self.history.rounds

    # -- genesis -----------------------------------------------------------------------

    def start(self) -> Plan:
        """Publishes the genesis model and plan, or resumes a federation already started."""
        c = self.contract
        if c.current_round() == 0:
            self._vote_genesis()
        if self.plan is None:
            self.plan = Plan.load(self.store, ChainCid(c.plan()).require())
            log.info("resuming federation at round %d (%s)", c.current_round(),
                     self.plan.strategy["name"])
            opened = [e.block for e in c.events("GenesisSet", "GlobalModelPublished")]
            self._round_block = opened[-1] if opened else 0
            for note in self._disagreements(self.plan):
                log.warning("%s", note)
        members, _ = c.committee()
        if len(members) > 1 and not (self.plan.update_window and self.plan.vote_window):
            raise ConfigError(
                f"the plan on chain has no update and vote deadlines, and a committee of "
                f"{len(members)} runs it: without them one member's early vote freezes a "
                "round's submissions; this member refuses to serve it (deploy again with a "
                "plan that sets update_window and vote_window)")
        why = duplicates_without_commit_reveal(self.plan.exclude_duplicates,
                                               self.plan.reveal_window)
        if why is not None:
            raise ConfigError(f"the plan on chain is unsafe: {why}; this member refuses to "
                              "serve it")
        learners = c.learner_count()
        if self.plan.min_updates > learners:
            log.warning("min_updates is %d but only %d learners are registered: rounds will "
                        "close without aggregation until more learners join",
                        self.plan.min_updates, learners)
        self.strategy = strategy_from_plan(self.plan.strategy)
        open_round = c.current_round()
        if self.strategy.stateful and open_round > 1:
            self._state = self._restore_state(open_round - 1)
        self.termination.rounds = self.plan.rounds
        return self.plan

    def _restore_state(self, through: int) -> Weights | None:
        """The server-optimizer state after round `through`: fetched from the last state CID
        published (O(1)), else re-run from the chain's rounds (a chain that published none)."""
        assert self.strategy is not None and self.plan is not None
        plan, ledger = self.plan, Ledger(self.contract)
        ledger.refresh()
        limit = plan.max_model_bytes
        cid = ledger.state_after(through)
        if cid is not None:
            log.info("resumed %s state published after round %d", self.strategy.name, through)
            return fetch_model(self.store, cid.require(), max_bytes=limit)
        state: Weights | None = None
        reference: ModelSpec | None = None
        for r in range(1, through + 1):
            record = ledger.record(r, refresh=False)
            if record.published is None or not record.included or record.voided is not None:
                continue  # carried over, or its result voided: the state is unchanged
            # The committee's published round binds: re-run it over the updates it included.
            record.submissions = [s for s in record.usable if s.learner in record.included]
            previous = fetch_model(self.store, ledger.global_model(r - 1).require(),
                                   max_bytes=limit, reference=reference)
            reference = reference or spec(previous)

            def fetch(subs: Sequence[UpdateSubmitted], ref: ModelSpec = reference) -> \
                    Iterable[Outcome]:
                return fetch_updates(self.store, subs, max_bytes=limit, reference=ref,
                                     exclude_duplicates=plan.exclude_duplicates)

            state = run_round(plan, self.strategy, record, fetch, previous, state,
                              raise_errors=(StorageError, InvalidModel)).state
        log.info("rebuilt %s state from rounds 1-%d", self.strategy.name, through)
        return state

    def _vote_genesis(self) -> None:
        """Votes for the genesis model, plan and round parameters; waits for the quorum."""
        c = self.contract
        if self.strategy is None or self.initial_weights is None:
            raise ConfigError("genesis needs a strategy and initial weights")
        members, _ = c.committee()
        plan = self.config.plan(c.learner_count(), committee=len(members),
                                model=self.initial_weights)
        if len(members) > 1 and plan.update_window != self.config.update_window:
            log.info("a committee of %d: the plan's rounds take updates for %d s and votes for "
                     "%d s more (set update_window / vote_window to choose)", len(members),
                     plan.update_window, plan.vote_window)
        self._warn_budget(plan)
        model_cid = self.store.put(encode(self.initial_weights))
        plan_cid = self.store.put(plan.to_json())
        try:
            receipt = c.set_genesis(model_cid, plan_cid, RoundParams.from_plan(plan))
            self._round_block = receipt.block_number
        except GenesisAlreadySet:
            return  # another member's vote completed it: resume on the plan on chain
        except AlreadyVoted:
            pass  # a restart: this member's vote is on chain
        while c.current_round() == 0:
            self.patience.waiting("a quorum of the committee to vote for the genesis",
                                  f"this member voted for model {model_cid}, plan {plan_cid}")
            if self._idle():
                raise FedChainError("aggregator stopped")
        self.patience.done()
        if ChainCid(c.plan()).cid == plan_cid:
            self.plan = plan
            log.info("genesis model %s, plan %s (%s): round 1 open", model_cid, plan_cid,
                     plan.strategy["name"])

    @staticmethod
    def _warn_budget(plan: Plan) -> None:
        """Says at genesis when learner-level DP's budget ends every learner's part before
        the plan's last round (SPEC.md §14.16.5: K rounds each)."""
        if not is_secagg(plan):
            return
        p = params_of(plan)
        if p.dp is None or p.dp.budget is None or not p.dp.dimension:
            return
        rounds = Noise.of(p.dp, p.clip, p.range, p.dp.dimension).max_rounds()
        if rounds is not None and rounds < plan.rounds:
            log.warning("secagg.dp: a learner's budget (epsilon %g at delta %g) lets it take part "
                        "in at most %d of the plan's %d rounds; a learner that took part in "
                        "every round posts no keys after round %d", p.dp.budget, p.dp.delta,
                        rounds, plan.rounds, rounds)

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

    def expected_learners(self, round: int) -> set[int]:
        """The learner indices that may submit in open `round`: active, and sampled."""
        c = self.contract
        active = from_bits(c.active_bits())
        fraction = self._plan().fraction
        if fraction >= 1.0:
            return set(active)
        seed, ppm = c.round_seed(), c.params().select_ppm
        return {i for i in active if is_selected(seed, i, ppm)}

    def wait_for_updates(self, round: int) -> tuple[list[UpdateSubmitted], list[int]]:
        """Waits until the round's updates are in; returns them and the submitted bitmap they
        are (what the vote accounts for).

        With an update deadline on chain: until it passes, or every expected learner (the
        buffer, asynchronously) is in. Without: until every expected learner is in, or the
        round timeout once `min_updates` are."""
        c, plan = self.contract, self._plan()
        info = c.round_info()
        chain_deadline = info.reveal_deadline or info.update_deadline
        expected = self.expected_learners(round)
        needed = plan.buffer_size or max(1, len(expected))
        deadline = time.monotonic() + self.config.round_timeout
        seed_block = c.seed_block() if plan.fraction < 1.0 else 0
        spent_check = 0.0
        while True:
            if not plan.buffer_size and time.monotonic() >= spent_check:
                # A learner whose DP-SGD reports say its budget is spent trains no more:
                # the round does not wait for it (its reports come in as the round runs).
                spent_check = time.monotonic() + 1.0
                spent = self._privacy_spent(round)
                if spent & expected:
                    expected = expected - spent
                    needed = max(1, len(expected))
            if seed_block and self._head() >= seed_block + SEED_NUDGE_BLOCKS:
                seed_block = self._draw_seed(round)
            if self.watcher is not None and not chain_deadline:
                # The chain's bitmap is read once the watcher has seen enough submissions.
                known = self.watcher.updates(round)
                if known is not None and len(known) < needed and \
                        time.monotonic() < deadline and not self._idle():
                    continue
            seen = c.submitted_bits(round)
            arrived = set(from_bits(seen))
            count = len(arrived & expected) if not plan.buffer_size else len(arrived)
            if count >= needed:
                break
            if chain_deadline:
                if c.block_time() > chain_deadline:
                    break
            elif time.monotonic() >= deadline:
                if count < plan.min_updates:
                    log.warning("[ROUND %d] timeout after %.0fs with %d of %d updates needed",
                                round, self.config.round_timeout, count, plan.min_updates)
                break
            if self._idle():
                raise FedChainError("aggregator stopped")
        return self._updates_in(round, seen), seen

    def _privacy_spent(self, round: int) -> set[int]:
        """The learner indices whose latest DP-SGD privacy reports on chain say they cannot
        train another round within their own budget (`privacy.dpsgd.budget_spent`). Reads the
        reports of the rounds before `round` that this aggregator saw come in (the last two:
        a learner reports a round during the next one); older ones stay from earlier calls."""
        ledger = self._events_ledger()
        ledger.refresh()
        for r in (round - 2, round - 1):
            if r < 1:
                continue
            for e in ledger.record(r, refresh=False).evaluations:
                if (e.block, e.log_index) in self._dp_read:
                    continue
                self._dp_read.add((e.block, e.log_index))
                try:
                    body = loads(e.metrics)
                except (ValueError, RecursionError):
                    continue
                if isinstance(body, dict) and any(str(k).startswith(PREFIX) for k in body):
                    self._dp_reports.setdefault(e.learner, []).append((e.round, body))
        out = set()
        for learner, reports in self._dp_reports.items():
            ordered = [body for _, body in sorted(reports, key=lambda x: x[0])]
            if learner in ledger.indices and budget_spent(ordered):
                out.add(ledger.indices[learner])
        return out

    # -- secure aggregation (SPEC.md §14) ----------------------------------------------

    def _events_ledger(self) -> Ledger:
        """This aggregator's own reader of the chain's events (secure rounds' messages and
        facts; the learners' privacy reports), made once."""
        if self._events is None:
            self._events = Ledger(self.contract)
        return self._events

    def _secure_phases(self, round: int) -> tuple[list[UpdateSubmitted], list[int]]:
        """This member's part of a secure round: posts its round keys, waits for the update
        deadline, reveals its share keys (unless that would expose a small group's sum), and
        waits for the other holders' revelations or the reveal deadline. Returns the round's
        submissions and bitmap, as wait_for_updates does."""
        c, plan = self.contract, self._plan()
        ledger = self._events_ledger()
        keys: RoundKeys | None = None
        while keys is None:
            record = ledger.record(round, facts=True)
            seed = round_seed(plan, record)
            if seed is not None:
                ctx = round_context(plan, record, seed)
                keys = RoundKeys.derive(master_secret(bytes(c.account.key)), c.account.address,
                                        ctx)
                me = keys.learner
                if not any(m.kind == KEYS and m.sender.lower() == me for m in record.secagg):
                    try:
                        c.post_secagg(round, KEYS, keys_message(keys, ctx, None))
                        log.info("[ROUND %d] posted this member's round keys", round)
                    except (UpdateDeadlinePassed, WrongRound, FederationFinished) as exc:
                        log.warning("[ROUND %d] could not post this member's keys: %s", round,
                                    exc)
                        break
                    except SeedNotReady:
                        keys = None
            elif c.seed_block():
                with contextlib.suppress(SeedNotReady):
                    c.seed_round(round)
            if keys is None and self._idle():
                raise FedChainError("aggregator stopped")
        info = c.round_info()
        while True:
            record = ledger.record(round, facts=True)
            now = c.block_time()
            if now > info.update_deadline or (keys is not None and SecureRound.of(
                    plan, record, seed=ctx.seed).updates_final(record, now)):
                break
            self.patience.waiting(f"round {round}'s masked updates, or its update deadline "
                                  f"(block time {info.update_deadline})")
            if self._idle():
                raise FedChainError("aggregator stopped")
        self.patience.done()
        seen = c.submitted_bits(round)
        submitted = self._updates_in(round, seen)
        record = replace(ledger.record(round, facts=True), submissions=submitted)
        if keys is not None and record.facts is not None and \
                keys.learner in {m.lower() for m in record.facts.committee}:
            view = SecureRound.of(plan, record, seed=ctx.seed)
            mine = [m for m in record.secagg if m.kind == REVEAL and m.sender.lower() ==
                    keys.learner]
            if keys.learner in view.holders and not mine:
                try:
                    c.post_secagg(round, REVEAL, holder_revelation(view, keys, record))
                    log.info("[ROUND %d] revealed this member's share keys of %d learners",
                             round, len(view.dealings))
                except PrivacyError as exc:
                    log.warning("[ROUND %d] reveals nothing: %s", round, exc)
                except (WrongRound, FederationFinished) as exc:
                    log.warning("[ROUND %d] could not reveal: %s", round, exc)
            while True:
                record = ledger.record(round, facts=True)
                view = SecureRound.of(plan, record, seed=view.ctx.seed)
                if set(view.revealed) >= set(view.holders) or \
                        c.block_time() > view.reveal_deadline:
                    break
                self.patience.waiting(f"the holders' revelations of round {round} "
                                      f"({len(view.revealed)} of {len(view.holders)})")
                if self._idle():
                    raise FedChainError("aggregator stopped")
            self.patience.done()
        return submitted, seen

    def _head(self) -> int:
        """The chain's head block (the watcher's, where there is one: no request)."""
        if self.watcher is not None:
            return self.watcher.snapshot().block
        return self.contract.chain.block_number()

    def _draw_seed(self, round: int) -> int:
        """Draws the round's sampling seed on chain if no submission did yet (`seedRound`),
        so that it stays the one the learners computed from the opening block's hash: past
        256 blocks the contract could no longer reach that hash. Returns 0 (done)."""
        c = self.contract
        if c.seed_block() == 0:
            return 0
        try:
            c.seed_round(round)
            log.info("[ROUND %d] no submission for %d blocks: drew the sampling seed",
                     round, SEED_NUDGE_BLOCKS)
        except (WrongRound, FederationFinished):
            pass  # the round closed meanwhile
        except (ContractRevert, TransactionFailed) as exc:  # not worth failing the round over
            log.warning("[ROUND %d] could not draw the sampling seed: %s", round, exc)
        return 0

    def _updates_in(self, round: int, seen: list[int]) -> list[UpdateSubmitted]:
        """The UpdateSubmitted events of the learners set in `seen`, in chain order."""
        wanted = set(self.contract.addresses(from_bits(seen)))
        for _ in range(50):
            known = self.watcher.updates(round) if self.watcher is not None else None
            updates = [u for u in (known if known is not None else
                                   self.contract.updates(round, from_block=self._round_block))
                       if u.learner in wanted]
            if len(updates) == len(wanted):
                return updates
            self._idle()  # a node's logs lag its state
        raise FedChainError(f"round {round}: the chain's submission events do not match its "
                            "submitted bitmap")

    def fetch_round(self, usable: Sequence[UpdateSubmitted], deadline: float | None = None,
                    reference: ModelSpec | None = None) -> Iterable[Outcome]:
        """The round's updates, fetched in learner order as the strategy pulls them, up to
        FETCH_IN_FLIGHT at once: each within its own `rules.update_timeout` (so a slow update
        costs its own time only), all by `deadline` (the config's fetch_timeout past the round
        timeout), with the plan's size limit."""
        assert self._spec is not None
        plan = self._plan()
        reference = reference or self._spec
        return fetch_updates(self.store, usable, max_bytes=plan.max_model_bytes,
                             exclude_duplicates=plan.exclude_duplicates,
                             reference=reference, deadline=deadline, copy=False,
                             timeout=update_timeout(reference.nbytes),
                             in_flight=FETCH_IN_FLIGHT)

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
        """Aggregates `round` (which must be the open round), votes for the result and waits
        for the round to close; computed again when a submission lands before the vote."""
        while True:
            try:
                return self._run_round(round)
            except _Stale:
                log.info("[ROUND %d] a submission landed before the vote: computing again",
                         round)

    def _run_round(self, round: int) -> RoundResult:
        assert self.strategy is not None
        started = time.monotonic()
        # Fetching ends by the round's own deadline: what has not arrived by then is left out.
        deadline = started + self.config.round_timeout + self.config.fetch_timeout
        secure = is_secagg(self._plan())
        submitted, seen = (self._secure_phases(round) if secure
                           else self.wait_for_updates(round))
        active = set(self.contract.addresses(from_bits(self.contract.active_bits())))
        record = RoundRecord(round, ChainCid(self.contract.global_model(round - 1)),
                             submissions=submitted,
                             removed={u.learner for u in submitted if u.learner not in active})
        if secure:
            # The rule reads the round's keys, dealings and revelations, and their blocks.
            record = replace(self._events_ledger().record(round, facts=True), submissions=submitted,
                             removed=record.removed)
        previous = self.previous_global(round)
        # A store outage is raised, so the round is retried; other failures exclude an update.
        outcome = run_round(self._plan(), self.strategy, record,
                            partial(self.fetch_round, deadline=deadline), previous,
                            self._state, raise_errors=(StoreUnavailable,))
        why = outcome.carried_over_because
        rejected = [r for r in outcome.excluded if r.reason != why]
        for r in rejected:
            log.warning("[ROUND %d] rejected update of %s (%s): %s", round, r.learner, r.cid,
                        r.reason)
        if why is not None:
            # The round closes without aggregating: the global model carries over and
            # learners train again, instead of the federation hanging.
            log.warning("[ROUND %d] global model carried over: %s", round, why)
        self._pin(round, list(outcome.included))
        cid = self.store.put(outcome.model_bytes)
        state_cid = None
        if outcome.state_bytes is not None:
            state_cid = self.store.put(outcome.state_bytes)
        new, state = outcome.model, outcome.state
        learners = list(outcome.learners)
        self._report_unavailable(round, [r for r in rejected if r.unavailable], seen)
        published = self._vote(round, cid, learners, state_cid, seen)
        if published.model_cid.cid != cid or set(published.included) != set(learners):
            self.outvoted.append((round, str(cid), published.model_cid.text))
            log.warning("[ROUND %d] the committee closed the round on %s (%d included), not on "
                        "this member's %s (%d included)", round, published.model_cid,
                        len(published.included), cid, len(learners))
            new, state = self._adopt(round, published, previous)
            learners = list(published.included)
        self._round_block = published.block
        self._state = state
        result = RoundResult(round, published.model_cid.text, learners, rejected,
                             len(submitted), time.monotonic() - started)
        log.info("[ROUND %d] received %d updates, %d rejected, aggregated %d, published %s",
                 round, len(submitted), len(rejected), len(learners), published.model_cid)
        if self.evaluate_fn is not None:
            evaluated = self.evaluate_fn(round, new)
            if evaluated is not None:
                loss, metrics = evaluated
                result.centralized = (float(loss), {k: float(v) for k, v in metrics.items()})
                self.history.add_centralized(round, float(loss), metrics)
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                log.info("[ROUND %d] centralized evaluation: loss=%.4f %s", round, loss, shown)
        self.history.add_round(result)
        return result

    def _report_unavailable(self, round: int, unavailable: list[Rejected],
                            seen: list[int]) -> None:
        """Records on chain, before the vote, the submissions this member could not fetch
        within their deadlines (UnavailableReported): the evidence that excuses leaving them
        out when a slow node serves them later (SPEC.md §7.4)."""
        if not unavailable:
            return
        learners = [r.learner for r in unavailable]
        try:
            self.contract.report_unavailable(round, learners, seen=seen)
        except (WrongRound, FederationFinished) as exc:
            log.info("[ROUND %d] unavailable updates not reported: %s", round, exc)
            return
        log.warning("[ROUND %d] reported %d update(s) unavailable within their deadlines: %s",
                    round, len(learners), ", ".join(learners))

    def _vote(self, round: int, cid: CID, learners: list[str], state_cid: CID | None,
              seen: list[int]) -> GlobalModelPublished:
        """Votes for the round's result, then waits for the round to close (a quorum, or
        past the vote deadline: closed by this member, carried over); returns how it closed."""
        c = self.contract
        while True:
            try:
                c.publish_global(round, cid, learners, state_cid=state_cid, seen=seen)
                break
            except SubmissionsChanged:
                raise _Stale() from None
            except VotingNotOpen as exc:
                # The chain's clock lags this one: wait for the block time to pass it.
                opens = int(exc.fields.get("opensAfter", 0))
                self.patience.waiting(f"round {round}'s votes to open (block time {opens})")
                if self.stop_event.wait(max(self.config.poll_interval, 0.5)):
                    raise FedChainError("aggregator stopped") from None
            except (VoteDeadlinePassed, WrongRound, FederationFinished, AlreadyVoted):
                break  # too late to vote, or closed already, or voted before a restart
        self.patience.done()
        while True:
            published = c.published(round)
            if published is not None:
                self.patience.done()
                return published
            info = c.round_info()
            if info.vote_deadline and c.block_time() > info.vote_deadline:
                try:
                    c.close_round(round)
                    log.warning("[ROUND %d] no quorum by the vote deadline: closed, the "
                                "previous global model carried over", round)
                except (RoundNotExpired, WrongRound, FederationFinished):
                    pass  # closed by someone else meanwhile, or the clock said otherwise
                continue
            self.patience.waiting(f"a quorum of the committee to close round {round}",
                                  f"this member voted for {cid}")
            if self._idle():
                raise FedChainError("aggregator stopped")

    def _adopt(self, round: int, published: GlobalModelPublished,
               previous: Weights) -> tuple[Weights, Weights | None]:
        """The model and server state the committee published instead of this member's."""
        new = (previous if published.model_cid.cid is None else
               fetch_model(self.store, published.model_cid.require(),
                           max_bytes=self._plan().max_model_bytes, reference=self._spec))
        state = self._state
        if published.state_cid.raw:
            state = fetch_model(self.store, published.state_cid.require(),
                                max_bytes=self._plan().max_model_bytes)
        elif self.strategy is not None and self.strategy.stateful and any(
                True for _ in self.contract.events("RoundVoided", round=round - 1)):
            # The learners voided the round before: its server state is void too.
            state = self._restore_state(round)
        return new, state

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
            try:
                result = self._ride_out(partial(self._run_if_open, round))
            except NotAggregator:
                log.warning("this account is no longer on the committee (the learners voided "
                            "a round it voted for, or the owner changed the committee): "
                            "stopping")
                return self.history
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
            self._ride_out(self._finish)  # stopping early: closing the last round finishes
        log.info("federation finished after round %d", c.current_round() - 1)
        self._ride_out(lambda: self.wait_for_evaluations(c.current_round() - 1))
        return self.history

    def _finish(self) -> None:
        """Votes to end the federation early (closing the plan's last round ends it)."""
        c = self.contract
        if c.finished():  # a retried attempt, or the committee, finished it already
            return
        try:
            c.finish()
        except (FederationFinished, AlreadyVoted):
            return
        while not c.finished():
            self.patience.waiting("a quorum of the committee to finish the federation")
            if self._idle():
                return
        self.patience.done()

    def _run_if_open(self, round: int) -> RoundResult | None:
        """run_round, unless a retried attempt already published the round."""
        if self.contract.finished() or self.contract.current_round() != round:
            return None
        return self.run_round(round)

    def _ride_out(self, step: Callable[[], T]) -> T:
        return ride_out(step, what="aggregator", log=log, stop=self.stop_event,
                        max_outage=self.config.max_outage)

    def wait_for_evaluations(self, round: int) -> int:
        """Waits (up to `evaluation_timeout`) for every learner's report on `round`'s model;
        with client sampling, for the reports of the learners that took part in the round
        (others may never be asked to evaluate)."""
        deadline = time.monotonic() + self.config.evaluation_timeout
        learners = self.contract.learner_count()
        if self.plan is not None and self.plan.fraction < 1.0 and round >= 1:
            took_part = len(from_bits(self.contract.submitted_bits(round)))
            learners = max(1, min(learners, took_part))
        while True:
            known = self.watcher.reports(round) if self.watcher is not None else None
            reports = known if known is not None else len(list(self.contract.events(
                "EvaluationReported", round=round, from_block=self._round_block)))
            if reports >= learners or time.monotonic() >= deadline:
                return reports
            if self._idle():
                return reports
