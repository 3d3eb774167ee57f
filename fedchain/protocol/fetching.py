"""A round's updates, fetched: one typed outcome per submission, in learner order, streamed.

`fetch_updates` turns the round's UpdateSubmitted events into `Fetched` (the validated
update) or `Rejected` (the submission, and why its model could not be used) values.
`RoundUpdates` hands a strategy the fetched updates as it pulls them and keeps what was
included and what was rejected for whoever runs the round: the aggregator, the restart
replay and the audit all read a round this way.

Pipelined: while the strategy folds one update in, the next ones are fetched (and verified
against their CIDs) by `in_flight − 1` background threads, each into an unnamed temporary
file (`model.fetch.fetch_parked`); at its turn a model is read back into one buffer of its
exact size, decoded and validated. At most `in_flight` models are held or being fetched at
once, the one being folded in included, and only that one is in memory: the ones fetched
ahead wait in the page cache, not in the process (where no temporary file can be written,
in memory). The default, 2, fetches the next model while the current one is folded in: the
downloads follow each other without a gap (`in_flight=1`: in the caller's thread, into
memory, each model fetched only once the previous one was consumed). Larger values run
several downloads at once, for stores whose throughput grows with parallel requests, or
slow learners' deadlines run out while the next ones are fetched. Outcomes still come in
ascending learner order, so aggregation is bit-identical whatever `in_flight` is. Each fetch
keeps the plan's byte limit and the round's deadline; a model fetched ahead waits on disk,
not on the network, so its deadline cannot pass while the strategy is busy. When the
consumer stops early (an exception, a `break`, the iterator dropped), the fetches in progress
are abandoned and their threads end.

Exact duplicates (`exclude_duplicates=True`): a submission whose content another learner
submitted earlier in the round (chain order: block, then log index) is rejected with
`DuplicateUpdate`, naming that learner; the first submitter keeps its update. Two tests,
both decided from the chain's CIDs and the submission's own content only, so the aggregator
and an audit re-deriving the round reach the same verdict:

- the same CID as the earlier submission (`rules.find_duplicates` over the CIDs' multihashes;
  the duplicate is not even fetched);
- weights whose canonical encoding (`model.fetch.canonical_cid`: the bytes `codec.encode`
  writes) is the earlier submission's CID: the same weights re-encoded, e.g. with extra
  metadata, under another CID.

The second test protects an original encoded as fedchain learners encode (canonically); two
non-canonical encodings of the same weights are not compared with each other, since that
would need every earlier submission's content before the first update could be handed out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Generic, TypeVar

from ..aggregation.rules import Update
from ..errors import (
    ConfigError,
    ContentMismatch,
    ContentNotFound,
    FedChainError,
    FetchTimeout,
    InvalidModel,
    StorageError,
    StoreUnavailable,
)
from ..eth.events import UpdateSubmitted
from ..model.codec import ModelSpec, Weights, decode
from ..model.fetch import canonical_cid, fetch_model, fetch_parked, fetch_update, unpark
from ..storage import ContentStore
from ..storage.cid import CID
from .rules import Submission, find_duplicates, learner_key, staleness_weight

log = logging.getLogger("fedchain.fetching")

#: How many updates `fetch_updates` holds or fetches at once by default (the one being
#: folded in included): one folded in while the next one is fetched.
DEFAULT_IN_FLIGHT = 2
#: How long closing a round's prefetching waits for each fetch thread to end (s). A thread
#: blocked on a node that sends nothing ends at its fetch's own deadline instead.
CLOSE_GRACE = 5.0

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

    @classmethod
    def because_of(cls, submission: UpdateSubmitted, reason: str) -> Rejected:
        """`submission` left out by a rule of the round (not by what its model is)."""
        return cls(submission.learner, submission.model_cid.text, reason, submission)

    @property
    def unavailable(self) -> bool:
        """Whether the store failed to serve the model, rather than the model being bad."""
        return isinstance(self.error, UNAVAILABLE)

    def to_dict(self) -> dict[str, str]:
        return {"learner": self.learner, "cid": self.cid, "reason": self.reason}


class DuplicateUpdate(FedChainError):
    """A submission whose content another learner submitted earlier in the round."""

    def __init__(self, message: str, *, original: UpdateSubmitted, same_cid: bool) -> None:
        super().__init__(message)
        #: The earlier submission of that content.
        self.original = original
        #: True: the very same CID; False: the same weights, encoded otherwise.
        self.same_cid = same_cid


Outcome = Fetched | Rejected


def fetch_updates(
    store: ContentStore,
    submissions: Iterable[UpdateSubmitted],
    *,
    max_bytes: int,
    reference: ModelSpec | None = None,
    deadline: float | None = None,
    copy: bool = False,
    in_flight: int = DEFAULT_IN_FLIGHT,
    exclude_duplicates: bool = False,
    timeout: float | None = None,
) -> Iterator[Outcome]:
    """Each submission's outcome in ascending learner order, fetched `in_flight` at a time
    (the ones fetched ahead wait in temporary files: see the module's docstring).

    Each model is fetched through `fedchain.model.fetch` with `max_bytes` (the plan's limit),
    checked against `reference`, and must arrive within `timeout` seconds of its own start
    (`rules.update_timeout`: a slow update costs its own time only) and by `deadline` (one for
    all of them), whichever comes first; any
    failure is yielded as a Rejected value, never raised. At most `in_flight` models (>= 1)
    are held or being fetched at once, counting the last one yielded until the next one is
    asked for. `exclude_duplicates` rejects exact duplicates (see the module's docstring).
    Nothing is fetched before the first outcome is asked for.
    """
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ConfigError(f"in_flight must be a whole number >= 1, not {in_flight!r}")
    return _outcomes(store, submissions, max_bytes, reference, deadline, copy, in_flight,
                     exclude_duplicates, timeout)


def _outcomes(
    store: ContentStore,
    submissions: Iterable[UpdateSubmitted],
    max_bytes: int,
    reference: ModelSpec | None,
    deadline: float | None,
    copy: bool,
    in_flight: int,
    exclude_duplicates: bool,
    timeout: float | None = None,
) -> Iterator[Outcome]:
    ordered = sorted(submissions, key=lambda s: learner_key(s.learner))
    duplicates = _Duplicates(ordered) if exclude_duplicates else None

    def fetch(s: UpdateSubmitted, stop: threading.Event) -> _Result:
        canonical: CID | None = None
        own = None if timeout is None else time.monotonic() + timeout
        ends = own if deadline is None else deadline if own is None else min(own, deadline)
        try:
            cid = s.model_cid.require()
            if duplicates is None:
                weights = fetch_model(store, cid, max_bytes=max_bytes, reference=reference,
                                      deadline=ends, copy=copy, stop=stop)
            else:
                weights, canonical = fetch_update(
                    store, cid, max_bytes=max_bytes, reference=reference, deadline=ends,
                    copy=copy, stop=stop)  # fmt: skip
        except (StorageError, InvalidModel) as exc:
            return Rejected.because(s, exc), None
        return Fetched(s, weights), canonical

    def fetch_ahead(s: UpdateSubmitted, stop: threading.Event) -> _Result | _Parked:
        """A background fetch: the content, verified, waits in a temporary file; it is decoded
        and validated (`unparked`) when its turn comes."""
        own = None if timeout is None else time.monotonic() + timeout
        ends = own if deadline is None else deadline if own is None else min(own, deadline)
        try:
            cid = s.model_cid.require()
            return _Parked(s, cid, fetch_parked(store, cid, max_bytes=max_bytes, deadline=ends,
                                                stop=stop))
        except StorageError as exc:
            return Rejected.because(s, exc), None

    def unparked(parked: _Parked) -> _Result:
        s = parked.submission
        try:
            view = memoryview(unpark(parked.content)).toreadonly()
            weights = decode(view, reference, max_bytes, copy=copy)
            canonical = None if duplicates is None else canonical_cid(weights, view, parked.cid)
        except (StorageError, InvalidModel) as exc:
            return Rejected.because(s, exc), None
        return Fetched(s, weights), canonical

    results: Iterator[_Result | _Parked]
    jobs: list[Callable[[threading.Event], _Result | _Parked]] = []
    if in_flight == 1 or len(ordered) <= 1:
        for s in ordered:
            found = duplicates.same_cid(s) if duplicates is not None else None
            jobs.append(_known((found, None)) if found is not None else _bind(fetch, s))
        results = (job(_NEVER) for job in jobs)
    else:
        # Fetched ahead of their turn: the models wait on disk, not in memory.
        for s in ordered:
            found = duplicates.same_cid(s) if duplicates is not None else None
            jobs.append(_known((found, None)) if found is not None else _bind(fetch_ahead, s))
        results = iter(_Prefetcher(jobs, in_flight, heavy=lambda r: isinstance(r, _Parked),
                                   discard=_discard))
    try:
        for result in results:
            outcome, canonical = unparked(result) if isinstance(result, _Parked) else result
            del result
            if duplicates is not None and isinstance(outcome, Fetched) and canonical is not None:
                outcome = duplicates.same_content(outcome, canonical)
            yield outcome
            del outcome  # consumed: release this model, its place goes to the next fetch
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _discard(result: _Result | _Parked) -> None:
    """Deletes the temporary file of a model fetched ahead that nobody will take."""
    if isinstance(result, _Parked) and not isinstance(result.content, bytearray):
        result.content.close()


@dataclass
class _Parked:
    """A model fetched ahead and verified against its CID, waiting in a temporary file (or,
    where none could be written, in memory) to be decoded at its turn."""

    submission: UpdateSubmitted
    cid: CID
    content: BinaryIO | bytearray = field(repr=False)


#: (the outcome, the canonical CID of a fetched model's weights).
_Result = tuple[Outcome, CID | None]
#: The stop event of fetches that nobody cancels (in_flight=1: they run in the caller).
_NEVER = threading.Event()


R = TypeVar("R")


def _bind(
    fetch: Callable[[UpdateSubmitted, threading.Event], R], s: UpdateSubmitted
) -> Callable[[threading.Event], R]:
    return lambda stop: fetch(s, stop)


def _known(result: _Result) -> Callable[[threading.Event], _Result]:
    return lambda stop: result


class _Duplicates:
    """The round's exact-duplicate rule (see the module's docstring)."""

    def __init__(self, submissions: Sequence[UpdateSubmitted]) -> None:
        kept, duplicates = find_duplicates(Submission.of(s) for s in submissions)
        #: content (CID multihash) → the round's first submission of it
        self._first: dict[Hashable, Submission] = {k.content: k for k in kept}
        self._of: dict[int, Submission] = {id(k.ref): k for k in kept}
        self._duplicates = {id(d.submission.ref): d for d in duplicates}

    def same_cid(self, s: UpdateSubmitted) -> Rejected | None:
        """The rejection of `s` if an earlier submission had its CID."""
        found = self._duplicates.get(id(s))
        if found is None:
            return None
        original: UpdateSubmitted = found.original.ref
        return self._reject(s, original, True, "the same CID, submitted earlier in the round")

    def same_content(self, fetched: Fetched, canonical: CID) -> Outcome:
        """`fetched`, or its rejection if its weights are an earlier submission's CID."""
        s = fetched.submission
        mine = self._of[id(s)]
        first = self._first.get(canonical.multihash)
        if first is None or first.order >= mine.order or first.learner == s.learner:
            return fetched
        original: UpdateSubmitted = first.ref
        return self._reject(
            s, original, False,
            f"the same weights as {original.model_cid.text}, submitted earlier in the round, "
            "encoded differently")  # fmt: skip

    @staticmethod
    def _reject(
        s: UpdateSubmitted, original: UpdateSubmitted, same_cid: bool, how: str
    ) -> Rejected:
        message = (
            f"duplicate of {original.learner}'s update: {how} "
            f"(block {original.block}, log {original.log_index})"
        )
        return Rejected.because(s, DuplicateUpdate(message, original=original, same_cid=same_cid))


T = TypeVar("T")


class _Prefetcher(Generic[T]):
    """Runs `jobs` on `limit − 1` background threads; yields their results in the jobs' order.

    At most `limit` results are alive at once, counting the one last yielded until the next
    is asked for; a result that is not `heavy` (holds no model) frees its place as soon as it
    is handed out. Jobs start in order, so the next result the consumer waits for is always
    running or done. A job's exception is raised to the consumer at that job's turn. Closing
    the iterator (or dropping it) sets `stop`, which every job is given, and joins the threads.

    One thread fewer than places: while the consumer waits it holds no result, and `limit`
    downloads at once would all grow towards full size together, for no gain in time when
    the store serves one stream as fast as several.
    """

    def __init__(
        self,
        jobs: Sequence[Callable[[threading.Event], T]],
        limit: int,
        *,
        heavy: Callable[[T], bool],
        discard: Callable[[T], None] = lambda result: None,
    ) -> None:
        self._jobs = jobs
        self._heavy = heavy
        self._discard = discard  # what to do with a result nobody will take
        self._free = limit
        self._next = 0  # the next job to start
        self._done: dict[int, tuple[bool, T | BaseException]] = {}
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"fedchain-prefetch-{i}", daemon=True)
            for i in range(max(1, min(limit - 1, len(jobs))))
        ]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.stop.is_set() and self._next < len(self._jobs) and not self._free:
                    self._cond.wait()
                if self.stop.is_set() or self._next >= len(self._jobs):
                    return
                index = self._next
                self._next += 1
                self._free -= 1
            result: tuple[bool, T | BaseException]
            try:
                result = (True, self._jobs[index](self.stop))
            except BaseException as exc:  # handed to the consumer, who raises it
                result = (False, exc)
            with self._cond:
                kept = not self.stop.is_set()
                if kept:
                    self._done[index] = result
                    self._cond.notify_all()
            if not kept and result[0]:
                self._discard(result[1])  # type: ignore[arg-type]
            del result

    def __iter__(self) -> Iterator[T]:
        for thread in self._threads:
            thread.start()
        try:
            for index in range(len(self._jobs)):
                with self._cond:
                    while index not in self._done:
                        self._cond.wait()
                    ok, value = self._done.pop(index)
                if not ok:
                    assert isinstance(value, BaseException)
                    raise value
                heavy = self._heavy(value)  # type: ignore[arg-type]
                if not heavy:
                    self._release()
                yield value  # type: ignore[misc]
                del value  # consumed: its place goes to the next fetch
                if heavy:
                    self._release()
        finally:
            self.close()

    def _release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Abandon the jobs still running or waiting; wait (a while) for the threads to end."""
        self.stop.set()
        with self._cond:
            dropped = [value for ok, value in self._done.values() if ok]
            self._done.clear()
            self._cond.notify_all()
        for value in dropped:
            self._discard(value)  # type: ignore[arg-type]
        for thread in self._threads:
            if thread.is_alive():
                thread.join(CLOSE_GRACE)
                if thread.is_alive():
                    log.debug("%s still waits on its store; it ends at its fetch deadline",
                              thread.name)


class RoundUpdates:
    """A round's updates as a strategy consumes them, fetched as it pulls them; once iterated,
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
        try:
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
                del update  # the strategy has folded it in: its place goes to the next fetch
        finally:
            # However the iteration ends (done, raised, abandoned by the strategy), the
            # fetches still under way stop now, not when this object is collected.
            close = getattr(self._outcomes, "close", None)
            if close is not None:
                close()
