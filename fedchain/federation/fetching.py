"""A round's updates, fetched: one typed outcome per submission, in learner order, streamed.

`fetch_updates` turns the round's UpdateSubmitted events into `Fetched` (the validated
update) or `Rejected` (the submission, and why its model could not be used) values, one model
in memory at a time. `RoundUpdates` hands a strategy the fetched updates as it pulls them and
keeps what was included and what was rejected for whoever runs the round: the aggregator, the
restart replay and the audit all read a round this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..aggregation.rules import Update
from ..errors import (
    ContentMismatch,
    ContentNotFound,
    FedChainError,
    FetchTimeout,
    InvalidModel,
    StorageError,
    StoreUnavailable,
)
from ..eth.accounts import learner_key
from ..eth.events import UpdateSubmitted
from ..model.codec import ModelSpec, Weights
from ..model.fetch import fetch_model
from ..storage import ContentStore

#: Failures of the store (the content may yet be served), not of the submitted content.
UNAVAILABLE: tuple[type[StorageError], ...] = (
    ContentNotFound,
    ContentMismatch,
    StoreUnavailable,
    FetchTimeout,
)


@dataclass(frozen=True)
class Fetched:
    """A submission whose model was fetched, verified and validated."""

    submission: UpdateSubmitted
    weights: Weights = field(repr=False)

    @property
    def learner(self) -> str:
        return self.submission.learner

    @property
    def cid(self) -> str:
        return self.submission.model_cid.text

    @property
    def update(self) -> Update:
        """The update as the aggregation rules take it, its weight discounted by staleness."""
        s = self.submission
        return Update(s.learner, staleness_weight(s.num_examples, s.staleness), self.weights)


def staleness_weight(num_examples: int, staleness: int) -> int:
    """The example count an update trained `staleness` rounds before the open one counts for
    (asynchronous rounds): halved per round of staleness, rounded down, at least 1, i.e.
    s(τ) = 2^−τ on integers, so aggregation stays exact and the audit re-derives it."""
    return max(1, num_examples >> staleness) if staleness else num_examples


@dataclass(frozen=True)
class Rejected:
    """A submission left out of a round, and why (results.json records these three fields)."""

    learner: str
    #: The submitted CID as text (0x-hex if the bytes recorded are not a CID).
    cid: str
    reason: str
    #: The submission (None for a rejection read back from an earlier results file).
    submission: UpdateSubmitted | None = field(default=None, compare=False, repr=False)
    #: The error that rejected it (None where it is not known).
    error: FedChainError | None = field(default=None, compare=False, repr=False)

    @classmethod
    def because(cls, submission: UpdateSubmitted, error: FedChainError) -> Rejected:
        """The rejection of `submission` by `error`."""
        # Without tracebacks, the error does not keep the failed fetch's frames (and the
        # model bytes in them) alive for as long as the rejection is recorded.
        chained: BaseException | None = error
        seen: set[int] = set()
        while chained is not None and id(chained) not in seen:
            seen.add(id(chained))
            chained.__traceback__ = None
            chained = chained.__cause__ or chained.__context__
        return cls(submission.learner, submission.model_cid.text,
                   f"{type(error).__name__}: {error}", submission, error)

    @property
    def unavailable(self) -> bool:
        """Whether the store failed to serve the model, rather than the model being bad."""
        return isinstance(self.error, UNAVAILABLE)

    def to_dict(self) -> dict[str, str]:
        return {"learner": self.learner, "cid": self.cid, "reason": self.reason}


Outcome = Fetched | Rejected


def fetch_updates(
    store: ContentStore,
    submissions: Iterable[UpdateSubmitted],
    *,
    max_bytes: int,
    reference: ModelSpec | None = None,
    deadline: float | None = None,
    copy: bool = False,
) -> Iterator[Outcome]:
    """Fetches each submission's model in ascending learner order, as the next one is asked for.

    Each model is fetched through `fetch_model` with `max_bytes` (the plan's limit), checked
    against `reference`, and must arrive by `deadline` (one for all of them); any failure is
    yielded as a Rejected value, never raised.
    """
    for s in sorted(submissions, key=lambda s: learner_key(s.learner)):
        try:
            weights = fetch_model(store, s.model_cid.require(), max_bytes=max_bytes,
                                  reference=reference, deadline=deadline, copy=copy)
        except (StorageError, InvalidModel) as exc:
            yield Rejected.because(s, exc)
            continue
        yield Fetched(s, weights)
        del weights  # release this model before the next one is fetched


class RoundUpdates:
    """A round's updates as a strategy consumes them, fetched one at a time; once iterated,
    `included` holds the submissions whose updates were handed out, `rejected` the others.

    Errors in `raise_errors` end the iteration by being raised instead of being recorded (the
    aggregator retries a round during a store outage; the replay takes no rejection at all).
    """

    def __init__(
        self, outcomes: Iterable[Outcome], *, raise_errors: tuple[type[Exception], ...] = ()
    ) -> None:
        self._outcomes = outcomes
        self._raise = raise_errors
        self.included: list[UpdateSubmitted] = []
        self.rejected: list[Rejected] = []

    def __iter__(self) -> Iterator[Update]:
        for outcome in self._outcomes:
            if isinstance(outcome, Rejected):
                if outcome.error is not None and isinstance(outcome.error, self._raise):
                    raise outcome.error
                self.rejected.append(outcome)
                continue
            self.included.append(outcome.submission)
            update = outcome.update
            del outcome
            yield update
            del update  # the strategy has folded it in: drop it before the next fetch
