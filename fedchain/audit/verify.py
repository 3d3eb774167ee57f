"""`fedchain audit --verify`: every published round re-run and compared, bit for bit.

`verify` walks the rounds in order holding one round's models at a time, fetches every model
through the store (bytes checked against the CID), decodes and validates it, re-runs the round
with the plan's strategy and compares the CID of the re-encoded result with the published
one. Every model is fetched through `fedchain.model.fetch` with the plan's `max_model_bytes`,
updates as the round's aggregation fetches them (`fedchain.protocol.fetching`). Content the
store cannot serve is reported as unfetchable, never as tampering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..aggregation.strategy import Strategy, strategy_from_plan
from ..errors import (
    AggregationError,
    ConfigError,
    FedChainError,
    InvalidModel,
    PrivacyError,
    StorageError,
)
from ..eth.events import ChainCid, UpdateSubmitted
from ..model.codec import FORMAT, VERSION, ModelSpec, Weights, encode, spec
from ..model.fetch import fetch_chunks, fetch_model
from ..privacy.distributed import DistributedLedger, Noise, distributed_ledger
from ..privacy.secagg import SELF
from ..protocol.fetching import UNAVAILABLE, Outcome, fetch_updates
from ..protocol.ledger import RoundRecord
from ..protocol.params import Plan, fetch_plan
from ..protocol.round import REMOVED, REPORTED, Fetch, RoundOutcome, run_published, run_round
from ..protocol.rules import update_timeout
from ..protocol.secure import SecureRound, keyless, learner_key, params_of
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
    #: (previous model, state) the last round checked started from: what a void restores.
    prior: tuple[Weights | None, Weights | None] = (None, None)


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
    if plan.privacy == "secagg":
        detail += f", secure aggregation {plan.secagg} (SPEC.md §14: updates masked)"
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


def _record(r: RoundAudit) -> RoundRecord:
    """The round as the protocol's rule reads it."""
    return RoundRecord(r.round, ChainCid(b""), submissions=[s.event for s in r.submissions],
                       removed=set(r.removed), published=r.published, timed_out=r.timed_out,
                       restored=r.restored, votes=list(r.votes),
                       unavailable={m: set(ls) for m, ls in r.unavailable.items()},
                       secagg=list(r.secagg), facts=r.facts, seed=r.seed)


def _fetcher(store: ContentStore, walk: _Walk) -> Fetch:
    plan = walk.plan

    def fetch(usable: Sequence[UpdateSubmitted],
              reference: ModelSpec | None = None) -> Iterable[Outcome]:
        ref = reference or walk.reference
        return fetch_updates(store, usable, max_bytes=plan.max_model_bytes,
                             reference=ref,
                             exclude_duplicates=plan.exclude_duplicates,
                             timeout=update_timeout(ref.nbytes))

    return fetch


def _check_outcome(r: RoundAudit, outcome: RoundOutcome, min_updates: int, add: Add) -> None:
    """What the committee included and left out, against the round's outcome under the plan:
    an update left out by a rule of the plan is a note (the rule named), one left out although
    no rule excludes it a failure, and so is one included that a rule excludes."""
    assert r.published is not None
    published = set(r.published.included)
    why = outcome.carried_over_because
    for x in outcome.excluded:
        if x.learner in published:
            if x.unavailable:
                add(UNFETCHABLE, "included update", "the committee included content the "
                    f"store cannot serve: {x.cid}: {x.reason}", x.learner)
            else:
                add(FAILED, "included update", f"{x.cid}: {x.reason}", x.learner)
        elif x.reason == REMOVED:
            add(NOTE, "left-out update", f"excluded: {REMOVED}", x.learner)
        elif x.reason == why:
            add(NOTE, "left-out update", f"{x.cid} left out: {why}: carried over", x.learner)
        elif x.reason == REPORTED:
            # Not fetched: the members whose votes closed the round all recorded on chain,
            # before the round closed, that it was not served to them within its deadline.
            add(NOTE, "left-out update", f"{x.cid}: {REPORTED}; not judged by this audit",
                x.learner)
        elif x.unavailable:
            # Left out, and not served within its deadline to this audit either: what the
            # committee did is what the rule gives (an update unavailable to all is excused).
            add(NOTE, "left-out update", f"{x.cid}: unavailable within its deadline to the "
                f"committee and to this audit: {x.reason}", x.learner)
        else:
            add(NOTE, "left-out update", f"{x.cid}: {x.reason}", x.learner)
    for u in outcome.included:
        if u.learner not in published:
            add(FAILED, "left-out update", f"{u.model_cid} is a valid update the round left "
                "out: no rule of the plan excludes it", u.learner)
    if r.included and len(r.included) < min_updates:
        add(FAILED, "included updates", f"{len(r.included)} included, the plan requires at "
            f"least {min_updates}: the model should have been carried over")


def _as_published(r: RoundAudit, store: ContentStore, walk: _Walk,
                  outcome: RoundOutcome, add: Add) -> RoundOutcome | None:
    """The round re-run over exactly the updates the committee included (the outcome itself
    when the committee included what the rule does), to check its arithmetic apart from its
    choice; None when an included update cannot be used, or no model can be recomputed."""
    assert r.published is not None
    if set(outcome.learners) == set(r.included):
        return outcome
    try:
        found = run_published(walk.plan, walk.strategy, _record(r),
                              _fetcher(store, walk), walk.previous or {}, walk.state)
    except (AggregationError, InvalidModel) as exc:
        add(FAILED, "global model", f"recomputation failed: {exc}")
        return None
    if {x.learner for x in found.excluded} & set(r.included):
        return None  # each reported by _check_outcome
    return found


def _verify_round(r: RoundAudit, store: ContentStore, walk: _Walk) -> None:
    """Checks one round's updates and global model, then who voted for what; advances `walk`
    to the next round."""
    outcome = _check_round(r, store, walk)
    _judge_votes(r, outcome)


def _judge_votes(r: RoundAudit, outcome: RoundOutcome | None) -> None:
    """A round that fails verification names the members whose votes closed it (they voted
    for what the plan's rule does not give), and marks the dissenters who voted for the
    re-derived outcome as the honest minority, instead of failing them as dissenters."""
    assert r.published is not None
    if len({v.member for v in r.votes}) < 2:
        return  # one voter (a committee of one): the round's own checks say it all
    if not any(c.status == FAILED and c.what != "vote" for c in r.checks):
        return
    closing = (r.published.model_cid, r.published.state_cid, set(r.published.included))
    honest = None if outcome is None else (outcome.model_cid, set(outcome.learners))
    for v in r.votes:
        if v.model_cid.raw == b"" and not v.bits:
            continue  # a vote to finish the federation
        if (v.model_cid, v.state_cid, set(v.included)) == closing:
            r.checks.append(Check(FAILED, "vote", "voted for the result that closed the round, "
                                  "which does not verify under the plan", r.round, v.member))
        elif honest is not None and (v.model_cid.cid, set(v.included)) == honest:
            r.checks[:] = [c for c in r.checks if not (c.what == "vote" and c.learner == v.member
                                                        and c.status == FAILED)]
            r.checks.append(Check(NOTE, "vote", "voted for the re-derived outcome: the honest "
                                  "minority, outvoted", r.round, v.member))


def _check_round(r: RoundAudit, store: ContentStore, walk: _Walk) -> RoundOutcome | None:
    """The checks of one round's updates and global model; the round's outcome under the
    plan (None when it cannot be computed)."""
    assert r.published is not None  # only published rounds are verified
    published_cid = r.published.model_cid
    limit = walk.plan.max_model_bytes

    def add(status: str, what: str, detail: str, learner: str | None = None) -> None:
        r.checks.append(Check(status, what, detail, r.round, learner))

    if r.round > walk.plan.rounds:
        add(NOTE, "round", f"beyond the plan's {walk.plan.rounds} rounds")
    if r.restored is not None:
        # The round before was voided: this one starts from what that one started from.
        walk.previous, walk.state = walk.prior
        walk.state_lost = None
    walk.prior = (walk.previous, walk.state)
    new: Weights | None = None
    new_state: Weights | None = None
    outcome: RoundOutcome | None = None
    if walk.previous is None:
        add(UNVERIFIABLE, "global model", "not recomputed: the previous global model is unknown")
    else:
        outcome = run_round(walk.plan, walk.strategy, _record(r), _fetcher(store, walk),
                            walk.previous, walk.state)
        _check_outcome(r, outcome, walk.plan.min_updates, add)
        found = _as_published(r, store, walk, outcome, add)
        if found is not None:
            new, new_state = found.model, found.state
    recomputed = None if new is None else cid_of(encode(new))
    if recomputed is not None and recomputed == published_cid.cid:
        add(
            OK,
            "global model",
            "bit-identical to the recomputation" + ("" if r.included else " (carried over)"),
        )
        _check_state(r, store, new_state, add)
        for d in r.disputes:
            add(NOTE, "dispute", f"refuted: the recomputation matches the published model, "
                f"not {d.computed_cid}", d.learner)
        try:  # learners need the published model: check the store can serve it
            for _ in fetch_chunks(store, recomputed, max_bytes=limit):
                pass
        except StorageError as exc:
            add(UNFETCHABLE, "global model", f"matches, but cannot be fetched: {_error(exc)}")
        walk.previous, walk.state = new, new_state
        return outcome
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
    _adopt_published_state(r, store, walk, add)
    return outcome


def _check_state(r: RoundAudit, store: ContentStore, state: Weights | None, add: Add) -> None:
    """The server-optimizer state the round published is the recomputed one."""
    assert r.published is not None
    published = r.published.state_cid
    if not published.raw:
        return
    if state is None:
        add(FAILED, "server state", f"published {published}, but the plan's strategy keeps none")
        return
    recomputed = cid_of(encode(state))
    if recomputed != published.cid:
        add(FAILED, "server state", f"published {published}, recomputed {recomputed}")


def _adopt_published_state(r: RoundAudit, store: ContentStore, walk: _Walk, add: Add) -> None:
    """A round whose state could not be recomputed: later rounds go on from the state it
    published (its own CID), so one unverifiable round does not make every later one so."""
    assert r.published is not None
    if walk.state_lost is None or not r.published.state_cid.raw:
        return
    try:
        walk.state = fetch_model(store, r.published.state_cid.require(),
                                 max_bytes=walk.plan.max_model_bytes)
    except (StorageError, InvalidModel, ValueError) as exc:
        add(_failure(exc), "server state", f"{r.published.state_cid}: {_error(exc)}")
        return
    walk.state_lost = None


def distributed_privacy(report: AuditReport, plan: Plan) -> list[DistributedLedger]:
    """With the plan's distributed DP (SPEC.md §14.16): every learner's ε after each secure
    round it finished, recomputed from the plan and the rounds' records (the groups of
    finished learners each round's public view gives); a learner past the plan's budget,
    a round whose view cannot be read, or a plan without its dimension fail a check.
    Sets `report.distributed` and returns it."""
    report.distributed = []
    if plan.privacy != "secagg":
        return []
    dp = params_of(plan).dp
    if dp is None:
        return []
    if not dp.dimension:
        report.checks.append(Check(FAILED, "privacy", "the plan's secagg.dp has no dimension: "
                                   "its noise and sensitivity cannot be recomputed"))
        return []
    p = params_of(plan)
    try:
        noise = Noise.of(dp, p.clip, p.range, dp.dimension)
    except PrivacyError as exc:
        report.checks.append(Check(FAILED, "privacy", f"the plan's secagg.dp: {exc}"))
        return []
    names: dict[str, str] = {}
    rounds: list[tuple[int, list[list[str]], list[int]]] = []
    for r in report.rounds:
        for s in r.submissions:
            names.setdefault(learner_key(s.learner), s.learner)
        record = _record(r)
        try:
            if keyless(record):
                continue
            view = SecureRound.of(plan, record)
        except FedChainError as exc:
            report.checks.append(Check(FAILED, "privacy", f"cannot read the round's secure-"
                                       f"aggregation view: {exc}", r.round))
            continue
        done = set(view.finished(record))
        exposed = []
        for j in sorted(view.short_groups(done)):
            # Honest holders reveal no key of a group below min_learners (§14.16.4): any
            # key revealed for one of its dealers is misconduct, and once t holders revealed
            # every finished learner's self-mask share its sum may be public: counted.
            group = view.groups[j]
            culprits = sorted(h for h, by in view.revealed.items()
                              if any(a in by for a in group))
            if not culprits:
                continue
            report.checks.append(Check(FAILED, "privacy", f"holder(s) {', '.join(culprits)} "
                                       f"revealed keys of group {j}, which had fewer than "
                                       f"min_learners ({dp.min_learners}) finished learners",
                                       r.round))
            if all(sum(1 for by in view.revealed.values()
                       if by.get(a, ("", b""))[0] == SELF) >= view.threshold
                   for a in group if a in done):
                exposed.append(j)
        rounds.append((r.round, [[a for a in g if a in done] for g in view.groups], exposed))
    report.distributed = distributed_ledger(noise, rounds, names)
    for ledger in report.distributed:
        for e in ledger.entries:
            for problem in e.problems:
                report.checks.append(Check(FAILED, "privacy", problem, e.round, ledger.learner))
            if not e.released:
                report.checks.append(Check(NOTE, "privacy", f"its group had {e.group} finished "
                                           f"learners, fewer than min_learners "
                                           f"({dp.min_learners}): not unmasked, not counted",
                                           e.round, ledger.learner))
    return report.distributed
