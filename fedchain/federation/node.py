"""LearnerNode: runs one Learner against a federation (train each round, evaluate each model).

A global model the store cannot serve yet is waited for, and one that is invalid is skipped
(the learner waits for the next round): neither ends an honest learner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..aggregation.strategy import Strategy, strategy_from_plan
from ..errors import (
    AggregationError,
    ConfigError,
    ContentTooLarge,
    FedChainError,
    InvalidCID,
    InvalidModel,
    PrivacyBudgetExceeded,
    PrivacyError,
    StorageError,
)
from ..eth.contract import FedChain, FedChainReader, require_signer
from ..eth.events import ChainCid, GlobalModelPublished, UpdateSubmitted
from ..eth.reverts import (
    AlreadyReported,
    AlreadySubmitted,
    FederationFinished,
    NoGlobalModel,
    NotLatestRound,
    NotSelected,
    NotVoidable,
    RevealDeadlinePassed,
    RevealNotOpen,
    RoundNotExpired,
    SeedNotReady,
    SubmissionsClosed,
    UpdateDeadlinePassed,
    WrongRound,
)
from ..jsonsafe import loads
from ..model.codec import ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_model
from ..privacy.distributed import Noise
from ..privacy.dpsgd import PrivacyLedger
from ..privacy.secagg import RoundContext, RoundKeys
from ..protocol.fetching import Outcome, fetch_updates
from ..protocol.ledger import Ledger, RoundRecord
from ..protocol.params import VERIFY_MODES, Plan
from ..protocol.round import differences, disputed_cid, run_round
from ..protocol.rules import commitment, update_timeout
from ..protocol.secure import (
    KEYS,
    MASKED_LAYER,
    SecureRound,
    dimension,
    is_secagg,
    keys_message,
    masked_update,
    master_secret,
    params_of,
    round_seed,
)
from ..storage import ContentStore
from ..storage.cid import CID
from .learner import Learner, TrainResult
from .outage import ride_out

#: The round moved on (or closed its submissions) before this learner's update landed.
TOO_LATE = (WrongRound, FederationFinished, SubmissionsClosed, UpdateDeadlinePassed,
            NotSelected, RevealDeadlinePassed)

log = logging.getLogger("fedchain.learner")
#: A secure round's phases are polled; a ledger read this recently (seconds) serves the poll.
POLL_SHARE = 0.25


#: The contract's limit on a metrics report.
MAX_METRICS_BYTES = 1024
#: A model refused for what it is: waiting will not make it usable.
REFUSED = (InvalidModel, InvalidCID, ContentTooLarge)
#: How often a learner still waiting for a global model says so again, in seconds.
WAIT_WARNING_INTERVAL = 60.0


@dataclass(frozen=True)
class LearnerFailure:
    """The learner's own code raised: which learner, in which round, doing what, and the
    error (results.json records these)."""

    learner: str
    round: int
    what: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"learner": self.learner, "round": self.round, "what": self.what,
                "error": self.error}


class Unusable(Enum):
    """Why a step could not use a round's global model."""

    NOT_YET = "not retrievable yet: tried again at the next step"
    REFUSED = "refused as invalid: the round is skipped"


def metrics_json(loss: float, metrics: Mapping[str, float],
                 privacy: Mapping[str, float] | None = None) -> bytes:
    """The compact, key-sorted JSON reported on chain, cut to the contract's 1 KiB limit.

    The loss and metrics are rounded to 6 decimals; the learner's privacy report (`privacy`,
    keys `dp_…`: see `privacy.dpsgd.REPORT_KEYS`) is written exactly (anyone recomputes ε
    from it) and always kept. When the metrics do not fit, the loss is kept and as many
    metrics as fit, in key order.
    """
    body: dict[str, float] = {"loss": round(float(loss), 6)}
    body.update({k: float(v) for k, v in (privacy or {}).items()})
    for k, v in sorted(metrics.items()):
        if k in body:
            continue
        candidate = {**body, k: round(float(v), 6)}
        if len(_compact(candidate)) > MAX_METRICS_BYTES:
            log.warning("evaluation metric %r and later ones dropped: the report is limited "
                        "to %d bytes on chain", k, MAX_METRICS_BYTES)
            break
        body = candidate
    return _compact(body)


def _compact(body: Mapping[str, float]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class SharedWork:
    """Work shared by the learners of one process (a pool of virtual learners on one
    machine): the federation's plan, read once, and re-derivations: the first learner that
    needs round r's published model re-derives it, the others wait for its verdict instead
    of repeating the same work. Each learner still acts on the verdict itself (refuses the
    model, records its own dispute). Learners in different processes never share one: each
    machine checks for itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[int, bytes], Future[Any]] = {}
        self._plan: Plan | None = None
        self._models: dict[bytes, Future[Weights]] = {}
        self._ledger: Ledger | None = None

    def ledger(self, contract: FedChainReader) -> Ledger:
        """The federation's ledger, read once for every learner of the process."""
        with self._lock:
            if self._ledger is None:
                self._ledger = Ledger(contract)
            return self._ledger

    def model(self, cid: bytes, fetch: Callable[[], Weights]) -> Weights:
        """A global model's weights (content-addressed, so the same for every learner),
        fetched by the first learner that asks; each caller gets its own arrays."""
        with self._lock:
            future = self._models.get(cid)
            mine = future is None
            if future is None:
                future = self._models[cid] = Future()
                while len(self._models) > 2:  # the latest models only
                    self._models.pop(next(iter(self._models)))
        if mine:
            try:
                future.set_result(fetch())
            except BaseException as exc:
                with self._lock:
                    self._models.pop(cid, None)
                future.set_exception(exc)
                raise
        return {k: v.copy() for k, v in future.result().items()}

    def plan(self, load: Callable[[], Plan]) -> Plan:
        """The plan (fixed at genesis), loaded by the first learner that asks."""
        with self._lock:
            if self._plan is None:
                self._plan = load()
            return self._plan

    def rederive(self, round: int, published: bytes, compute: Callable[[], Any]) -> Any:
        """`compute()` for (round, published CID), once per process; an error is raised to
        every learner waiting, and forgotten (the next learner tries again)."""
        key = (round, published)
        with self._lock:
            future = self._results.get(key)
            mine = future is None
            if future is None:
                future = self._results[key] = Future()
        if not mine:
            return future.result()
        try:
            result = compute()
        except BaseException as exc:
            with self._lock:
                self._results.pop(key, None)
            future.set_exception(exc)
            raise
        future.set_result(result)
        return result


@dataclass
class _SecaggPending:
    """A learner's secure round in progress."""

    round: int
    weights: Weights
    keys: tuple[RoundKeys, RoundContext] | None = None
    result: TrainResult | None = None


class LearnerNode:
    """Runs one learner against a federation: train each open round, evaluate each global model.

    Stateless across restarts: what was already submitted or reported is read from the chain,
    so a restarted learner never submits twice. A learner that joins late trains on the
    current global model.
    """

    def __init__(
        self,
        learner: Learner,
        contract: FedChain,
        store: ContentStore,
        *,
        name: str | None = None,
        poll_interval: float = 0.2,
        evaluate: bool = True,
        stop: threading.Event | None = None,
        max_outage: float = 600.0,
        shared: SharedWork | None = None,
        verify: str = "full",
        verify_rate: float = 0.25,
        verify_max_bytes: int | None = None,
    ) -> None:
        require_signer(contract, "the learner")
        if verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
        #: How this learner checks each round before training on it ("full", "sampled",
        #: "off"), at least as strictly as the plan asks; `verify_rate` for "sampled";
        #: `verify_max_bytes` raises the plan's size limit of "full".
        self.verify, self.verify_rate = verify, verify_rate
        self.verify_max_bytes = verify_max_bytes
        #: Re-derivations shared with the other learners of this process (a pool), if any.
        self.shared = shared
        self.max_outage = max_outage
        self.learner = learner
        self.contract = contract
        self.store = store
        self.address = contract.account.address
        self.name = name or self.address[:10]
        self.poll = poll_interval
        self.evaluate_models = evaluate
        self.stop_event = stop or threading.Event()
        self._plan: Plan | None = None
        self._spec: ModelSpec | None = None
        self.submitted: list[int] = []
        self.reported: list[int] = []
        #: Rounds whose global model was refused (invalid): neither evaluated nor trained on.
        self.skipped: list[int] = []
        self._handled_round = -1
        #: (what is waited for, since when (wall clock), when last said) while waiting.
        self._waiting: tuple[str, float, float] | None = None
        #: Commit-reveal mode: (round, CID, examples, salt) committed and not yet revealed.
        self._pending_reveal: tuple[int, str, int, bytes] | None = None
        #: Rounds whose global model this learner re-derived: round → whether it matched.
        self.verified: dict[int, bool] = {}
        #: Rounds this learner disputed on chain (its re-derivation differed).
        self.disputed: list[int] = []
        #: Seconds spent re-deriving global models (the price of not trusting the committee).
        self.verify_seconds = 0.0
        self._strategy: Strategy | None = None
        self._disputed_cids: set[bytes] = set()
        self._ledger: Ledger | None = None
        #: Failures of the learner's own code (train, evaluate), in order.
        self.failures: list[LearnerFailure] = []
        #: The round in which the learner refused to train, its privacy budget spent (it
        #: trains no more, and goes on evaluating and reporting), or None.
        self.budget_spent: int | None = None
        self._privacy_restored = False
        #: Secure aggregation: the round in progress (keys posted, waiting to mask).
        self._secagg: _SecaggPending | None = None

    @property
    def handled_round(self) -> int:
        """The latest round whose work this learner has done (-1: none yet; a secure round
        in progress is not done)."""
        if self._secagg is not None:
            return min(self._handled_round, self._secagg.round - 1)
        return self._handled_round

    # -- helpers -----------------------------------------------------------------------

    def plan(self) -> Plan:
        if self._plan is None:
            def load() -> Plan:
                return Plan.load(self.store, ChainCid(self.contract.plan()).require())

            self._plan = load() if self.shared is None else self.shared.plan(load)
        return self._plan

    def global_weights(self, round: int) -> Weights:
        """The verified, validated global model of `round` (0 = genesis)."""
        recorded = ChainCid(self.contract.global_model(round))
        if not recorded.raw:
            raise NoGlobalModel(round)

        def fetch() -> Weights:
            return fetch_model(self.store, recorded.require(),
                               max_bytes=self.plan().max_model_bytes, reference=self._spec)

        weights = fetch() if self.shared is None else self.shared.model(recorded.raw, fetch)
        if self._spec is None:
            self._spec = spec(weights)
        return weights

    def _usable_plan(self) -> Plan | None:
        """The plan, or None (with a warning) while it cannot be fetched yet."""
        try:
            plan = self.plan()
        except (InvalidCID, ContentTooLarge):
            raise  # a plan that is not one: no round can be run, waiting will not help
        except StorageError as exc:
            self._wait("the federation's plan", exc)
            return None
        self._waited()
        return plan

    def _usable_global(self, round: int) -> Weights | Unusable:
        """`round`'s global model, or why it cannot be used now (with a warning)."""
        try:
            weights = self.global_weights(round)
        except REFUSED as exc:
            self._waiting = None
            self.skipped.append(round)
            log.warning("%s: the global model of round %d is unusable (%s: %s): not training "
                        "on it; waiting for the next round", self.name, round,
                        type(exc).__name__, exc)
            return Unusable.REFUSED
        except StorageError as exc:  # not found, not served in time, store down: wait
            self._wait(f"the global model of round {round}", exc)
            return Unusable.NOT_YET
        self._waited()
        return weights

    def _waited(self) -> None:
        """Says that what the learner waited for has arrived."""
        if self._waiting is not None:
            what, since, _ = self._waiting
            log.info("%s: %s arrived after %.0fs", self.name, what, time.time() - since)
            self._waiting = None

    def _wait(self, what: str, exc: Exception) -> None:
        """Says (now and then) that the learner waits for `what`, and since when."""
        now = time.time()
        if self._waiting is None or self._waiting[0] != what:
            self._waiting = (what, now, 0.0)
        what, since, said = self._waiting
        if now - said >= WAIT_WARNING_INTERVAL:
            started = time.strftime("%H:%M:%S", time.localtime(since))
            log.warning("%s: waiting for %s since %s (%.0fs): %s: %s", self.name, what, started,
                        now - since, type(exc).__name__, exc)
            self._waiting = (what, since, now)

    # -- trust, but verify ---------------------------------------------------------------

    def _wants_verification(self, round: int) -> bool:
        """Whether to re-derive `round` before training on its model: the stricter of this
        learner's own choice (`verify`, `verify_rate`) and the plan's. A plan may ask for more
        checking, never for less: how a learner protects its own data is its own choice, so a
        committee majority that publishes a plan with verify = "off" switches nobody's check
        off. "full" re-derives models up to verify_max_bytes (bigger: as "sampled")."""
        plan = self.plan()
        if round < 1:
            return False
        mode = max(self.verify, plan.verify, key=VERIFY_MODES[::-1].index)
        if mode == "off":
            return False
        size = self._spec.nbytes if self._spec is not None else 0
        limit = max(plan.verify_max_bytes, self.verify_max_bytes or 0)
        if mode == "full" and size <= limit:
            return True
        return random.random() < max(plan.verify_rate, self.verify_rate)

    def verify_global(self, round: int) -> bool | None:
        """Re-derives `round`'s global model from the chain and the store, bit for bit.

        True: it matches. False: it does not — the learner records a dispute on chain and
        will not train on it. None: it cannot be re-derived now (an input the store cannot
        serve, or that is invalid): the learner does not train on it either."""
        if round in self.verified:
            return self.verified[round]
        recorded = ChainCid(self.contract.global_model(round))
        if recorded.raw in self._disputed_cids:
            # A round that carried a disputed model over still hands out that model.
            log.warning("%s: round %d carries over a global model this learner disputed: not "
                        "training on it", self.name, round)
            self.verified[round] = False
            return False
        started = time.monotonic()
        try:
            found = (self._rederive(round) if self.shared is None else
                     self.shared.rederive(round, recorded.raw, lambda: self._rederive(round)))
        except (StorageError, InvalidModel, AggregationError, ConfigError, LookupError) as exc:
            log.warning("%s: cannot re-derive round %d (%s: %s): not training on its global "
                        "model", self.name, round, type(exc).__name__, exc)
            return None
        finally:
            self.verify_seconds += time.monotonic() - started
        if found is None:
            return None
        problems, computed, published = found
        ok = not problems
        self.verified[round] = ok
        if ok:
            log.info("%s: re-derived the global model of round %d from the chain and the "
                     "store: it matches, and so do the server state and the included updates "
                     "(%.2fs)", self.name, round, time.monotonic() - started)
            return True
        self._disputed_cids.add(published.model_cid.raw)
        log.error("%s: round %d as published differs from its re-derivation under the plan: "
                  "%s; disputing it, not training on it", self.name, round,
                  "; ".join(problems))
        try:
            self.contract.dispute(round, computed)
            self.disputed.append(round)
        except FedChainError as exc:
            log.warning("%s: could not record the dispute of round %d: %s", self.name,
                        round, exc)
        self._void_if_disputed(round)
        return False

    def _void_if_disputed(self, round: int) -> None:
        """The learners have the last word: once more than half of them disputed `round`
        (the latest closed one), anyone voids it: the model before it is restored, the
        members who voted for it lose their seats, and learning resumes."""
        try:
            if not self.contract.voidable(round):
                return
            self.contract.void_round(round)
        except (NotLatestRound, NotVoidable):
            return  # another learner voided it first, or it cannot be voided
        except FedChainError as exc:
            log.warning("%s: could not void round %d: %s", self.name, round, exc)
            return
        log.warning("%s: more than half of the learners disputed round %d: voided it, the "
                    "model before it restored and its voters evicted from the committee",
                    self.name, round)

    def _rederive(self, round: int) -> tuple[list[str], CID, GlobalModelPublished] | None:
        """Round `round` re-run under the plan from the chain and the store, compared whole
        with what was published: (the differences, the CID to dispute with, the published
        event); None when an update the committee included cannot be fetched now."""
        plan = self.plan()
        if self._strategy is None:
            self._strategy = strategy_from_plan(plan.strategy)
        ledger = self.shared.ledger(self.contract) if self.shared else self._own_ledger()
        record = ledger.record(round)
        published = record.published
        if published is None:
            raise ConfigError(f"round {round} has no published global model")
        limit = plan.max_model_bytes
        previous = fetch_model(self.store, record.previous_model.require(), max_bytes=limit,
                               reference=self._spec)
        reference = self._spec or spec(previous)
        state = None
        if self._strategy.stateful and record.previous_state is not None:
            state = fetch_model(self.store, record.previous_state.require(), max_bytes=limit)

        def fetch(usable: Sequence[UpdateSubmitted],
                  reference: ModelSpec = reference) -> Iterable[Outcome]:
            return fetch_updates(self.store, usable, max_bytes=limit, reference=reference,
                                 exclude_duplicates=plan.exclude_duplicates,
                                 timeout=update_timeout(reference.nbytes))

        outcome = run_round(plan, self._strategy, record, fetch, previous, state)
        unfetched = {r.learner for r in outcome.excluded if r.unavailable}
        if unfetched & set(published.included):
            log.warning("%s: round %d included updates this learner cannot fetch now: %s",
                        self.name, round, ", ".join(sorted(unfetched & set(published.included))))
            return None
        return differences(outcome, published), disputed_cid(outcome, published), published

    def _own_ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.contract)
        return self._ledger

    def _reveal_due(self, round: int) -> bool:
        """Commit-reveal mode: reveals the update committed in `round` once its update deadline
        has passed; True while a reveal is still pending."""
        if self._pending_reveal is None:
            return False
        committed, cid, examples, salt = self._pending_reveal
        if committed != round:
            log.warning("%s: round %d closed before this learner could reveal its update",
                        self.name, committed)
            self._pending_reveal = None
            return False
        info = self.contract.round_info()
        if self.contract.block_time() <= info.update_deadline:
            return True
        try:
            self.contract.reveal_update(round, cid, examples, salt)
        except RevealNotOpen:
            return True  # the chain's clock is behind this one's: next step
        except TOO_LATE as exc:
            log.warning("%s: could not reveal the update of round %d: %s", self.name, round, exc)
        else:
            self.submitted.append(round)
            log.info("[ROUND %d] %s revealed %s (%d examples)", round, self.name, cid, examples)
        self._pending_reveal = None
        return False

    def _close_if_expired(self, round: int) -> None:
        """Anyone may close a round past its vote deadline (the previous model carried over):
        a learner does, so a dead committee does not stall the federation."""
        if not self.plan().vote_window:
            return
        info = self.contract.round_info()
        if info.round != round or not info.vote_deadline:
            return
        if self.contract.block_time() <= info.vote_deadline:
            return
        try:
            self.contract.close_round(round)
            log.warning("%s: round %d passed its vote deadline without a quorum: closed it, "
                        "the previous global model carried over", self.name, round)
        except (RoundNotExpired, WrongRound, FederationFinished):
            pass  # someone else closed it first

    def _secagg_due(self, round: int) -> bool:
        """Secure aggregation (SPEC.md §14): drives this learner's round through its phases;
        True while it is still in progress. Keys: once the committee's keys are in (all of
        them, or the threshold past half the key window), posts its keys and dealing, then
        trains. Updates: past the key deadline, masks its difference from the global model
        for the round's set and submits it."""
        p = self._secagg
        if p is None:
            return False
        if p.round != round:
            log.warning("%s: round %d closed before this learner's masked update was in",
                        self.name, p.round)
            self._secagg = None
            return False
        plan = self.plan()
        ledger = self.shared.ledger(self.contract) if self.shared else self._own_ledger()
        # Polled about once a second by every learner of a pool: one chain read serves them.
        record = ledger.record(round, facts=True, max_age=POLL_SHARE)
        now = self.contract.block_time()
        try:
            if p.keys is None:
                return self._secagg_keys(p, plan, record, now)
            view = SecureRound.of(plan, record, seed=p.keys[1].seed)
            if not view.keys_final(record, now):
                return True
            if p.result is None:
                self._secagg = None
                return False
            masked = masked_update(view, p.keys[0], p.result.weights, p.weights)
        except PrivacyError as exc:
            log.warning("[ROUND %d] %s leaves the secure round: %s", round, self.name, exc)
            self._secagg = None
            return False
        except TOO_LATE as exc:
            log.warning("%s: round %d moved on before this learner's keys landed (%s)",
                        self.name, round, exc)
            self._secagg = None
            return False
        cid = self.store.put(encode(masked))
        self._secagg = None
        # A secure round weighs learners alike; with learner-level DP the record count is
        # not published at all (it would be outside the ε, SPEC.md §14.16.5).
        examples = 1 if view.params.dp is not None else p.result.num_examples
        try:
            self.contract.submit_update(round, cid, examples)
        except TOO_LATE as exc:
            log.warning("%s: round %d closed before the masked update landed (%s)", self.name,
                        round, exc)
            return False
        except AlreadySubmitted:
            return False
        self.submitted.append(round)
        log.info("[ROUND %d] %s submitted its masked update %s (%d values of %d bits)", round,
                 self.name, cid, masked[MASKED_LAYER].size, view.bits)
        return False

    def _secagg_keys(self, p: _SecaggPending, plan: Plan, record: RoundRecord,
                     now: int) -> bool:
        seed = round_seed(plan, record)
        if seed is None:  # sampling, and nobody drew the seed yet: draw it
            with contextlib.suppress(SeedNotReady):
                self.contract.seed_round(p.round)
            return True
        view = SecureRound.of(plan, record, seed=seed)
        members = len(record.facts.committee) if record.facts else 0
        half = view.key_deadline - view.params.key_window // 2
        if now >= view.key_deadline or (len(view.holders) < view.threshold
                                        and now >= view.key_deadline - 1):
            raise PrivacyError(f"the key deadline passed with {len(view.holders)} holders' "
                               f"keys in, {view.threshold} needed")
        if len(view.holders) < max(1, view.threshold) or (len(view.holders) < members
                                                          and now < half):
            return True  # the committee's keys are not all in yet
        keys = RoundKeys.derive(master_secret(bytes(self.contract.account.key)),
                                self.address, view.ctx)
        message = keys_message(keys, view.ctx, view.holders, view.threshold)
        self.contract.post_secagg(p.round, KEYS, message)
        p.keys = (keys, view.ctx)
        log.info("[ROUND %d] %s posted its round keys and shares for %d holders", p.round,
                 self.name, len(view.holders))
        p.result = self._train(p.round, p.weights)
        return True

    def restore_privacy(self) -> int:
        """A learner with differential privacy started again (an empty ledger, while the chain
        holds its earlier reports): its ledger takes back the DP-SGD steps its latest report
        counts (`dp_total_steps`), so its budget and later reports go on from there. Returns
        the steps restored (0: nothing to restore). Training whose report never landed
        before the restart is not on chain, and not counted."""
        self._privacy_restored = True
        privacy = getattr(self.learner, "privacy", None)
        if not isinstance(privacy, PrivacyLedger) or privacy.steps:
            return 0
        ledger = self.shared.ledger(self.contract) if self.shared else self._own_ledger()
        ledger.refresh()
        spent, last = 0, 0
        for record in ledger.records():
            for e in record.evaluations:
                if e.learner.lower() != self.address.lower():
                    continue
                try:
                    body = loads(e.metrics)
                except (ValueError, RecursionError):
                    continue
                total = body.get("dp_total_steps") if isinstance(body, dict) else None
                if (isinstance(total, int | float) and not isinstance(total, bool)
                        and float(total).is_integer() and total >= spent):
                    spent, last = int(total), record.round
        if spent:
            privacy.record(0, spent)
            log.warning("%s: restored its privacy ledger from its reports on chain: %d DP-SGD "
                        "steps by round %d, epsilon %.4g", self.name, spent, last,
                        privacy.epsilon())
        return spent

    # -- steps -------------------------------------------------------------------------

    def _learner_failed(self, round: int, what: str, exc: Exception) -> None:
        """Records that the learner's own `what` (train, evaluate) raised in `round` (Flower's
        accept_failures): logged with the learner and the round, the federation goes on."""
        error = f"{type(exc).__name__}: {exc}"
        self.failures.append(LearnerFailure(self.name, round, what, error))
        log.error("[ROUND %d] %s: the learner's %s raised %s; the round goes on without it",
                  round, self.name, what, error, exc_info=log.isEnabledFor(logging.DEBUG))

    def _train(self, round: int, weights: Weights) -> TrainResult | None:
        """The learner's training on `weights` for `round`; None if it refused (its privacy
        budget spent) or raised (its failure recorded; the federation goes on)."""
        try:
            result = self.learner.train(weights, self.plan().train_config(round))
            if self._spec is not None:
                self._spec.check(spec(result.weights))
        except PrivacyBudgetExceeded as exc:
            self.budget_spent = round
            log.warning("[ROUND %d] %s refuses to train: %s; it goes on evaluating, and the "
                        "federation goes on without its updates", round, self.name, exc)
            return None
        except Exception as exc:  # the learner's own code: its failure ends only its round
            self._learner_failed(round, "train", exc)
            return None
        return result

    def _distributed_budget_spent(self, round: int, weights: Weights) -> bool:
        """With distributed DP and a budget (SPEC.md §14.16): whether this learner already took
        part in as many rounds as the plan's budget allows (each counted at the worst a
        released sum allows, so its recomputed ε stays within the budget); then it stops
        taking part, and says so once."""
        p = params_of(self.plan())
        dp = p.dp
        if dp is None or dp.budget is None:
            return False
        try:
            allowed = Noise.of(dp, p.clip, p.range, dimension(weights)).max_rounds()
        except PrivacyError as exc:  # the plan's dp does not fit the model: no round can
            log.warning("[ROUND %d] %s cannot take part: %s", round, self.name, exc)
            return True
        if allowed is None or round - 1 < allowed:  # too few rounds yet: no need to count
            return False
        ledger = self.shared.ledger(self.contract) if self.shared else self._own_ledger()
        ledger.refresh()
        me = self.address.lower()
        taken = sum(1 for record in ledger.records() if record.round < round and any(
            s.learner.lower() == me for s in record.submissions))
        if taken < allowed:
            return False
        self.budget_spent = round
        log.warning("[ROUND %d] %s stops taking part: %d rounds taken, the most its privacy "
                    "budget (epsilon %g at delta %g) allows; the federation goes on without "
                    "its updates", round, self.name, taken, dp.budget, dp.delta)
        return True

    def train_round(self, round: int, weights: Weights | None = None) -> bool:
        """Trains on the global model before `round` (`weights`, else fetched) and submits;
        False if the round moved on. With secure aggregation the round's key phase starts
        here, and the masked update is submitted after the key deadline (`_secagg_due`)."""
        if weights is None:
            weights = self.global_weights(round - 1)
        if is_secagg(self.plan()):
            if self._distributed_budget_spent(round, weights):
                return False
            self._secagg = _SecaggPending(round, weights)
            self._secagg_due(round)
            return True
        result = self._train(round, weights)
        if result is None:
            return False
        cid = self.store.put(encode(result.weights))
        try:
            if self.plan().reveal_window:
                salt = os.urandom(32)
                self.contract.commit_update(round, commitment(
                    self.address, round, bytes(cid), result.num_examples, salt))
                self._pending_reveal = (round, str(cid), result.num_examples, salt)
                log.info("[ROUND %d] %s committed to its update (revealed after the update "
                         "deadline)", round, self.name)
                return True
            self.contract.submit_update(round, cid, result.num_examples)
        except TOO_LATE as exc:
            log.warning("%s: round %d closed before the update landed (%s)", self.name, round, exc)
            return False
        except AlreadySubmitted:
            return False
        self.submitted.append(round)
        train_info = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info(
            "[ROUND %d] %s submitted %s (%d examples) %s",
            round, self.name, cid, result.num_examples, train_info,
        )
        return True

    def evaluate_round(self, round: int, weights: Weights | None = None) -> None:
        """Evaluates `round`'s global model (`weights`, else fetched) on local test data and
        reports it on chain."""
        if weights is None:
            weights = self.global_weights(round)
        try:
            result = self.learner.evaluate(weights, self.plan().eval_config(round))
            privacy = self.learner.privacy_report(round)
        except Exception as exc:  # the learner's own code: its failure ends only this report
            self._learner_failed(round, "evaluate", exc)
            return
        try:
            self.contract.report_evaluation(
                round, result.num_examples, metrics_json(result.loss, result.metrics, privacy)
            )
        except AlreadyReported:
            return
        self.reported.append(round)
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info("[ROUND %d] %s evaluated global model: loss=%.4f %s", round, self.name,
                 result.loss, shown)

    def step(self) -> bool:
        """Does whatever is due now; returns False when the federation has finished.

        A global model that cannot be fetched yet is waited for (the next step tries again);
        one that is refused as invalid is neither evaluated nor trained on, and the learner
        waits for the next round. Neither ends the learner.
        """
        c = self.contract
        # Finished first: a finished federation's round no longer moves, so the round read
        # next is its last one (read the other way round, the last round could close, and
        # finish the federation, in between: its model would go unevaluated).
        finished = c.finished()
        round = c.current_round()
        if round == 0:
            return True
        if self._reveal_due(round):
            return True
        if self._secagg_due(round):
            return True
        if round == self._handled_round:
            # Nothing new to do until the round moves on or the federation finishes. (The
            # `finished` read before the round: a round closing in between, and finishing the
            # federation, is seen at the next step, its model evaluated.)
            if finished:
                return False
            self._close_if_expired(round)
            return True
        plan = self._usable_plan()
        if plan is None:
            return True  # try again at the next step
        if not self._privacy_restored:
            self.restore_privacy()
        last_published = round - 1
        evaluate = (
            self.evaluate_models
            and last_published >= 1
            and not c.has_reported(last_published, self.address)
        )
        # Past the plan's last round only finish() is due: training would be wasted.
        train = (not finished and round <= plan.rounds and self.budget_spent is None
                 and not c.has_submitted(round, self.address)
                 and not (plan.reveal_window and c.commitment(round, self.address) != bytes(32))
                 and (plan.fraction >= 1.0 or c.is_selected(self.address)))
        if evaluate or train:
            weights = self._usable_global(last_published)
            if weights is Unusable.NOT_YET:
                return True  # try again at the next step
            if train and not isinstance(weights, Unusable) and self._wants_verification(
                    last_published) and not self.verify_global(last_published):
                train = False
                self.skipped.append(last_published)
            if not isinstance(weights, Unusable):
                # The update first: it is what the round waits for (a report is not).
                if train:
                    # A learner may change the arrays it is given: evaluation gets its own.
                    copy = {k: v.copy() for k, v in weights.items()} if evaluate else weights
                    self.train_round(round, copy)
                if evaluate:
                    self.evaluate_round(last_published, weights)
        if finished:
            return False
        self._handled_round = round
        return True

    def run(self, timeout: float | None = None) -> None:
        """Loops until the federation finishes (or `timeout` seconds, or stop is set)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if not ride_out(self.step, what=self.name, log=log, stop=self.stop_event,
                            max_outage=self.max_outage):
                log.info("%s: federation finished", self.name)
                return
            if deadline is not None and time.monotonic() > deadline:
                raise FedChainError(f"{self.name}: federation did not finish within {timeout}s")
            self.stop_event.wait(self.poll)
