"""`fedchain audit --verify`: every published round re-run and compared, bit for bit.

`verify` walks the rounds in order holding one round's models at a time, fetches every model
through the store (bytes checked against the CID), decodes and validates it, re-runs the round
with the plan's strategy and compares the CID of the re-encoded result with the published
one. Every model is fetched through `fedchain.model.fetch` with the plan's `max_model_bytes`,
updates as the round's aggregation fetches them (`fedchain.federation.fetching`). Content the
store cannot serve is reported as unfetchable, never as tampering.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..aggregation.strategy import Strategy, strategy_from_plan
from ..errors import AggregationError, ConfigError, InvalidModel, StorageError
from ..eth.events import ChainCid
from ..federation.fetching import UNAVAILABLE, Rejected, RoundUpdates, fetch_updates
from ..model.codec import FORMAT, VERSION, ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_chunks, fetch_model, fetch_plan
from ..model.plan import Plan
from ..storage import ContentStore, cid_of
from .report import (
    FAILED,
    NOTE,
    OK,
    UNFETCHABLE,
    UNVERIFIABLE,
    AuditReport,
    Check,
    RoundAudit,
)


def describe_difference(expected: Weights, got: Weights) -> str:
    """How `got` differs from `expected`: layers, shapes, dtypes, max |Δ| per differing layer."""
    if list(expected) != list(got):
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing or extra:
            return f"layers differ: missing {missing}, unexpected {extra}"
        return "same layers in a different order"
    parts = []
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            parts.append(f"{name}: {have.dtype}{have.shape} instead of {want.dtype}{want.shape}")
            continue
        differ = want != have
        if differ.any():
            delta = np.abs(want.astype(np.float64) - have.astype(np.float64))
            parts.append(
                f"{name}: max |Δ| {float(delta.max()):.6g} "
                f"({int(differ.sum())} of {want.size} values differ)"
            )
    return "; ".join(parts) or "same values, different encoding"


def _fetch(store: ContentStore, cid: ChainCid, reference: ModelSpec | None,
           max_bytes: int) -> Weights:
    return fetch_model(store, cid.require(), max_bytes=max_bytes, reference=reference)


def _failure(exc: Exception) -> str:
    """A check status for a fetch error: the store's failure, or a bad CID or model."""
    return UNFETCHABLE if isinstance(exc, UNAVAILABLE) else FAILED


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plan(report: AuditReport, store: ContentStore) -> Plan | None:
    """Fetches the plan the genesis names into `report` (a check says why if it cannot)."""
    if report.genesis is None:
        return None
    try:
        plan = fetch_plan(store, report.genesis.plan_cid.require())
    except (StorageError, ConfigError) as exc:
        report.checks.append(Check(_failure(exc), "plan", f"{report.plan_cid}: {_error(exc)}"))
        return None
    report.plan = asdict(plan)
    return plan


@dataclass
class _Walk:
    """What verification carries from one round to the next."""

    plan: Plan
    strategy: Strategy
    reference: ModelSpec
    previous: Weights | None
    state: Weights | None = None
    stateful: bool = False
    #: The first round whose server-optimizer state could not be recomputed.
    state_lost: int | None = None


def verify(report: AuditReport, store: ContentStore, plan: Plan | None = None) -> None:
    """Re-checks every published round through `store` and the plan; adds checks in place."""
    started = time.monotonic()
    report.verified = True
    checks = report.checks
    if report.genesis is None:
        checks.append(Check(NOTE, "genesis", "no genesis on chain yet: nothing to verify"))
        return
    plan = plan or load_plan(report, store)
    if plan is None:
        return
    if plan.codec != {"format": FORMAT, "version": VERSION}:
        detail = f"models use codec {plan.codec}; this fedchain reads {FORMAT} {VERSION}"
        checks.append(Check(UNVERIFIABLE, "plan", detail))
        return
    try:
        strategy = strategy_from_plan(plan.strategy)
    except ConfigError as exc:
        checks.append(Check(FAILED, "plan", f"strategy: {exc}"))
        return
    detail = f"{plan.rounds} rounds, at least {plan.min_updates} updates, {strategy}"
    checks.append(Check(OK, "plan", detail))
    try:
        genesis = _fetch(store, report.genesis.model_cid, None, plan.max_model_bytes)
    except (StorageError, InvalidModel) as exc:
        checks.append(Check(_failure(exc), "genesis model", _error(exc)))
        return
    checks.append(Check(OK, "genesis model", f"valid, {len(genesis)} tensors"))
    walk = _Walk(plan, strategy, spec(genesis), genesis, stateful=strategy.stateful)
    for r in report.rounds:
        if r.published is not None:
            _verify_round(r, store, walk)
    report.seconds["verify"] = time.monotonic() - started


Add = Callable[..., None]


def _check_counts(r: RoundAudit, plan: Plan, add: Add) -> None:
    if r.round > plan.rounds:
        add(NOTE, "round", f"beyond the plan's {plan.rounds} rounds")
    if r.included and len(r.included) < plan.min_updates:
        add(
            FAILED,
            "included updates",
            f"{len(r.included)} included, the plan requires at "
            f"least {plan.min_updates}: the model should have been carried over",
        )


def _check_left_out(r: RoundAudit, store: ContentStore, walk: _Walk, add: Add) -> None:
    """Notes whether each update left out of the round was valid (leaving one out may be fair:
    it may have landed after the aggregator read the round)."""
    left_out = [s.event for s in r.left_out]
    for outcome in fetch_updates(store, left_out, max_bytes=walk.plan.max_model_bytes,
                                 reference=walk.reference):
        learner = outcome.learner
        detail = (
            f"{outcome.cid}: {outcome.reason}"
            if isinstance(outcome, Rejected)
            else f"{outcome.cid} is a valid update but was not included"
        )
        del outcome  # release this model before the next one is fetched
        add(NOTE, "left-out update", detail, learner)


def _recompute(
    r: RoundAudit, store: ContentStore, walk: _Walk, add: Add
) -> tuple[Weights | None, Weights | None]:
    """(the round's global model as the plan says, state), or (None, _) if it cannot be known."""
    if walk.previous is None:
        add(UNVERIFIABLE, "global model", "not recomputed: the previous global model is unknown")
        return None, None
    included = [s.event for s in r.submissions if s.included]
    updates = RoundUpdates(fetch_updates(store, included, max_bytes=walk.plan.max_model_bytes,
                                         reference=walk.reference))
    new: Weights | None = None
    try:
        new, state = walk.strategy.aggregate(walk.previous, updates, walk.state)
    except (AggregationError, InvalidModel) as exc:
        add(FAILED, "global model", f"recomputation failed: {exc}")
    for rejected in updates.rejected:
        status = UNFETCHABLE if rejected.unavailable else FAILED
        add(status, "included update", f"{rejected.cid}: {rejected.reason}", rejected.learner)
    return (None, None) if new is None or updates.rejected else (new, state)


def _verify_round(r: RoundAudit, store: ContentStore, walk: _Walk) -> None:
    """Checks one round's updates and global model; advances `walk` to the next round."""
    assert r.published is not None  # only published rounds are verified
    published_cid = r.published.model_cid
    limit = walk.plan.max_model_bytes

    def add(status: str, what: str, detail: str, learner: str | None = None) -> None:
        r.checks.append(Check(status, what, detail, r.round, learner))

    _check_counts(r, walk.plan, add)
    _check_left_out(r, store, walk, add)
    new, new_state = _recompute(r, store, walk, add)
    recomputed = None if new is None else cid_of(encode(new))
    if recomputed is not None and recomputed == published_cid.cid:
        add(
            OK,
            "global model",
            "bit-identical to the recomputation" + ("" if r.included else " (carried over)"),
        )
        try:  # learners need the published model: check the store can serve it
            for _ in fetch_chunks(store, recomputed, max_bytes=limit):
                pass
        except StorageError as exc:
            add(UNFETCHABLE, "global model", f"matches, but cannot be fetched: {_error(exc)}")
        walk.previous, walk.state = new, new_state
        return
    published: Weights | None = None
    try:
        published = _fetch(store, published_cid, walk.reference, limit)
    except (StorageError, InvalidModel) as exc:
        if recomputed is not None:
            add(
                FAILED,
                "global model",
                f"global model differs from recomputation: published {published_cid}, "
                f"recomputed {recomputed}; the published content: {_error(exc)}",
            )
        else:
            add(_failure(exc), "global model", f"published {published_cid}: {_error(exc)}")
    if new is not None and published is not None:
        if walk.state_lost is not None and walk.stateful:
            add(
                UNVERIFIABLE,
                "global model",
                "differs from a recomputation without the "
                f"server-optimizer state, unknown since round {walk.state_lost}",
            )
        else:
            add(
                FAILED,
                "global model",
                "global model differs from recomputation: "
                f"{describe_difference(new, published)}; included learners: "
                f"{', '.join(r.included) or 'none'}",
            )
    # Learners train on what was published, so the next round is checked against that.
    walk.previous = published
    if new is None:
        walk.state_lost = walk.state_lost or r.round
    else:
        walk.state = new_state
