"""The round: one pure function every role runs, and the comparison every role makes.

`run_round(plan, strategy, record, fetch, previous, state)` is the only place a round's
outcome is computed. The aggregator votes for it; a learner computes it for the published
round and disputes any difference (`differences`); the audit computes it and reports the
differences, or the rule that excuses what the committee left out.

The rule (SPEC.md § "The round"):

1. a round that passed its vote deadline without a quorum (RoundTimedOut) carries over;
2. submissions of learners the owner removed while the round was open are excluded;
3. fewer usable submissions than the plan's `min_updates`: carried over, nothing fetched;
4. the others are fetched in ascending learner order (`fetch`): one that cannot be fetched or
   validated, or an exact duplicate (plan.exclude_duplicates), is excluded with its reason;
   the plan's strategy aggregates the rest, each weighted by `staleness_weight`;
5. the strategy refuses the round (AggregationError, InvalidModel), or fewer than
   max(1, min_updates) updates were included: carried over;
6. carried over: the previous global model and server state, nothing included. Otherwise the
   new model, and the new server state if the strategy keeps one.

Fetching is the caller's (the aggregator fetches by its round deadline and retries an
outage; the learner and the audit fetch with no deadline): `fetch(submissions)` yields one
`Fetched` or `Rejected` per submission, in ascending learner order (`fetching.fetch_updates`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from ..aggregation.strategy import Strategy
from ..errors import AggregationError, FetchTimeout, InvalidModel, PrivacyError
from ..eth.events import GlobalModelPublished, UpdateSubmitted
from ..model.codec import Weights, encode
from ..storage import cid_of
from ..storage.cid import CID
from . import secure
from .fetching import Outcome, Rejected, RoundUpdates
from .ledger import RoundRecord
from .params import Plan
from .rules import too_few_included, too_few_submissions

#: Why a removed learner's update is excluded.
REMOVED = "the owner removed this learner"
#: Why a submission the closing voters all reported unavailable is left out unfetched.
REPORTED = ("reported unavailable within its deadline by every member whose vote closed the "
            "round (UnavailableReported)")
#: Why a timed-out round carried over.
NO_QUORUM = "the round closed without a quorum by its vote deadline"

#: Why a round carried over, as SPEC.md § "The round" names the cases (RoundOutcome.carried_over).
TIMED_OUT, BELOW_MIN_UPDATES, AGGREGATION_FAILED, TOO_FEW_VALID, VOIDED = (
    "timed-out", "below-min-updates", "aggregation-failed", "too-few-valid", "voided")
#: Why a round closed by the void of the round before it carried over.
VOID = "closed by the learners' void of the round before it: the model before that restored"

#: `fetch(submissions)` fetches updates as the plan's model; a secure-aggregation round calls
#: `fetch(submissions, reference=spec)` for the masked updates' model files (secure.py).
Fetch = Callable[..., Iterable[Outcome]]


@dataclass(frozen=True)
class RoundOutcome:
    """What round `round` must publish: the model, the server state, which updates it
    includes, which it excludes and why, and why it carried over (None: it aggregated)."""

    round: int
    model: Weights = field(repr=False)
    state: Weights | None = field(repr=False)
    included: tuple[UpdateSubmitted, ...]
    excluded: tuple[Rejected, ...]
    carried_over_because: str | None
    #: The case of carry-over (TIMED_OUT, BELOW_MIN_UPDATES, AGGREGATION_FAILED,
    #: TOO_FEW_VALID); None: the round aggregated.
    carried_over: str | None = None
    #: The CID the round republishes as it is (a timed-out round: closeRound keeps the
    #: previous model's recorded CID); None: the CID of the model's canonical encoding.
    kept_cid: CID | None = None
    #: Whether the server state is published with the model (a stateful strategy that
    #: aggregated): the state CID is then part of the outcome.
    publishes_state: bool = False

    @property
    def learners(self) -> tuple[str, ...]:
        """The included learners' addresses, in aggregation order."""
        return tuple(u.learner for u in self.included)

    @cached_property
    def model_bytes(self) -> bytes:
        """The global model, encoded (its CID is `model_cid`)."""
        return encode(self.model)

    @cached_property
    def model_cid(self) -> CID:
        return self.kept_cid if self.kept_cid is not None else cid_of(self.model_bytes)

    @cached_property
    def state_bytes(self) -> bytes | None:
        """The server state to publish, encoded; None when the round publishes none."""
        if not self.publishes_state or self.state is None:
            return None
        return encode(self.state)

    @cached_property
    def state_cid(self) -> CID | None:
        return None if self.state_bytes is None else cid_of(self.state_bytes)


def run_round(
    plan: Plan,
    strategy: Strategy,
    record: RoundRecord,
    fetch: Fetch,
    previous: Weights,
    state: Weights | None = None,
    *,
    raise_errors: tuple[type[Exception], ...] = (),
    excused: Collection[str] | None = None,
) -> RoundOutcome:
    """Round `record.round`'s outcome under `plan`, from the previous global model and server
    state. Errors of the types in `raise_errors` end the fetch by being raised (the aggregator
    retries a round through a store outage); every other fetch error excludes its update.
    `excused`: the learners whose submissions are unavailable by the closing voters' reports
    (default `record.excused`; SPEC.md §7.3 step 4)."""
    removed = [Rejected.because_of(s, REMOVED) for s in record.submissions
               if s.learner in record.removed]
    usable = record.usable

    def carried(case: str, why: str, rejected: Sequence[Rejected] = (),
                left: Sequence[UpdateSubmitted] = ()) -> RoundOutcome:
        out = [*removed, *rejected, *(Rejected.because_of(s, why) for s in left)]
        return RoundOutcome(record.round, previous, state, (), tuple(out), why, case)

    if record.restored is not None:
        # voidRound closed it on the restored model (`previous` is that model, the ledger's
        # model in force after a voided round), nothing judged.
        return RoundOutcome(record.round, previous, state, (),
                            tuple(Rejected.because_of(s, VOID) for s in record.submissions),
                            VOID, VOIDED, kept_cid=record.restored.cid)
    if record.timed_out:
        # Closed by closeRound: the recorded previous CID, nothing judged.
        return RoundOutcome(record.round, previous, state, (),
                            tuple(Rejected.because_of(s, NO_QUORUM) for s in record.submissions),
                            NO_QUORUM, TIMED_OUT, kept_cid=record.previous_model.cid)
    why = too_few_submissions(len(usable), plan.min_updates)
    if why is not None:
        return carried(BELOW_MIN_UPDATES, why, left=usable)
    if secure.is_secagg(plan):
        return _secure_round(plan, record, fetch, previous, state, raise_errors,
                             record.excused if excused is None else frozenset(excused),
                             removed, carried)
    # Submissions every member whose vote closed the round reported unavailable within
    # their deadlines (UnavailableReported) are unavailable here too, and not fetched: what
    # a slow-drip node serves later cannot turn the committee's evidence into a fault.
    excused = record.excused if excused is None else frozenset(excused)
    reported = [Rejected.because(s, FetchTimeout(REPORTED)) for s in usable
                if s.learner in excused]
    fetched = [s for s in usable if s.learner not in excused] if excused else usable
    updates = RoundUpdates(fetch(fetched), raise_errors=raise_errors)
    updates.rejected[:0] = reported
    try:
        new, new_state = strategy.aggregate(previous, updates, state)
    except (AggregationError, InvalidModel) as exc:
        why = f"the plan's strategy refused the round ({type(exc).__name__}: {exc})"
        rejected = {id(r.submission) for r in updates.rejected}
        return carried(AGGREGATION_FAILED, why, updates.rejected,
                       [s for s in usable if id(s) not in rejected])
    why = too_few_included(len(updates.included), plan.min_updates)
    if why is not None:
        return carried(TOO_FEW_VALID, why, updates.rejected, updates.included)
    return RoundOutcome(record.round, new, new_state, tuple(updates.included),
                        (*removed, *updates.rejected), None,
                        publishes_state=strategy.stateful and new_state is not None)


def _secure_round(plan: Plan, record: RoundRecord, fetch: Fetch, previous: Weights,
                  state: Weights | None, raise_errors: tuple[type[Exception], ...],
                  excused: frozenset[str], removed: list[Rejected],
                  carried: Callable[..., RoundOutcome]) -> RoundOutcome:
    """Step 4-6 of a secure-aggregation round (SPEC.md §14.7): the finished learners' masked
    updates are fetched, each group's sum unmasked from the revealed keys, the groups
    combined; a group that cannot be unmasked is left out, with why."""
    if secure.keyless(record):  # nobody posted keys: U is empty, every submission outside
        return carried(AGGREGATION_FAILED,
                       f"secure aggregation unmasked nothing: {secure.NONE_FINISHED}",
                       [secure.outsider(s, secure.NO_KEYS) for s in record.usable])
    view = secure.SecureRound.of(plan, record)
    try:
        view = view.for_model(previous)
    except PrivacyError as exc:  # a plan's dp that does not fit the model (§14.16.2)
        return carried(AGGREGATION_FAILED, f"secure aggregation: {exc}",
                       [Rejected.because_of(s, str(exc)) for s in record.usable])
    vectors, rejected, finished, outsiders = secure.gather(view, record, fetch, previous,
                                                           excused, raise_errors)
    by_key = {secure.learner_key(s.learner): s for s in finished}
    result = secure.aggregate(view, vectors, by_key)
    out = {r.learner for r in rejected}
    left = [Rejected.because_of(by_key[a], why) for a, why in sorted(result.left_out.items())
            if by_key[a].learner not in out]
    dropped = [*outsiders, *rejected, *left]
    if result.delta is None:
        return carried(AGGREGATION_FAILED,
                       f"secure aggregation unmasked nothing: {result.reason}", dropped)
    included = [by_key[a] for a in sorted(result.included)]
    few = too_few_included(len(included), plan.min_updates)
    if few is not None:
        return carried(TOO_FEW_VALID, few, dropped, included)
    try:
        new = secure.apply_delta(previous, result.delta)
    except InvalidModel as exc:
        return carried(AGGREGATION_FAILED, f"secure aggregation: {exc}", dropped, included)
    return RoundOutcome(record.round, new, state, tuple(included), (*removed, *dropped), None)


def differences(outcome: RoundOutcome, published: GlobalModelPublished) -> list[str]:
    """How the published round differs from its outcome under the plan (empty: it matches):
    the model, the server state, the included set, carried over or not."""
    found = []
    carried = not published.included
    if carried and outcome.carried_over_because is None:
        found.append(f"carried over, although {len(outcome.included)} valid updates "
                     "were to be aggregated")
    elif not carried and outcome.carried_over_because is not None:
        found.append(f"aggregated, although the round should have carried over: "
                     f"{outcome.carried_over_because}")
    mine, theirs = set(outcome.learners), set(published.included)
    reasons = {r.learner: r.reason for r in outcome.excluded}
    for learner in sorted(mine - theirs):
        found.append(f"left out the valid update of {learner}: no rule of the plan "
                     "excludes it")
    for learner in sorted(theirs - mine):
        found.append(f"included {learner}, whose update the plan excludes: "
                     f"{reasons.get(learner, 'it submitted none')}")
    if published.model_cid.cid != outcome.model_cid:
        found.append(f"global model {published.model_cid}, re-derived {outcome.model_cid}")
    theirs_state = published.state_cid.cid if published.state_cid.raw else None
    if theirs_state != outcome.state_cid:
        found.append(f"server state {published.state_cid.text or 'none'}, re-derived "
                     f"{outcome.state_cid or 'none'}")
    return found


def disputed_cid(outcome: RoundOutcome, published: GlobalModelPublished) -> CID:
    """The CID a learner records in its dispute of `published`: the model it re-derived, or
    the server state it re-derived when the models agree and the states do not."""
    if published.model_cid.cid == outcome.model_cid and outcome.state_cid is not None:
        return outcome.state_cid
    return outcome.model_cid


def run_published(
    plan: Plan,
    strategy: Strategy,
    record: RoundRecord,
    fetch: Fetch,
    previous: Weights,
    state: Weights | None = None,
    *,
    raise_errors: tuple[type[Exception], ...] = (),
) -> RoundOutcome:
    """The round as the committee published it: `run_round` over exactly the updates it
    included, whatever the plan's quorum (so the published model's arithmetic is checked
    apart from the committee's choice of updates). The audit checks a round whose included
    set differs from the rule's this way, and a restarted aggregator rebuilds its server
    state from the rounds the committee closed."""
    included = set(record.included)
    only = replace(record, submissions=[s for s in record.usable if s.learner in included],
                   timed_out=False)
    return run_round(replace(plan, min_updates=0), strategy, only, fetch, previous, state,
                     raise_errors=raise_errors)
