"""Bounds of one fetch: how many bytes (`max_bytes`) and how long (an overall deadline).

Every `ContentStore.get`/`get_stream` is bounded twice:

- in bytes: by `max_bytes` (DEFAULT_MAX_BYTES, 2 GiB, when the caller gives none). A store
  that can read a file's declared size before its data (an IPFS node: the UnixFS root block;
  a directory: the file's size) refuses content declared larger than the limit with
  ContentTooLarge before fetching any of it; the bytes streamed are counted as well, since a
  node can lie about its DAG.
- in time: by one deadline for the whole fetch, however the bytes trickle in. Past it the
  fetch raises FetchTimeout (that one CID is too slow; the store is not "unavailable"). With
  `timeout=None` the deadline is `DeadlinePolicy.seconds(size)`: the declared size (or else
  the byte limit) at a minimum throughput, between a floor and a cap; by default
  `min(3600 s, max(30 s, size / 1 MiB/s))`, so 30 s for anything up to 30 MiB, 2048 s for
  2 GiB. Until the declared size is known (reading the root block), the floor applies.

A store whose reads can block on the network (KuboStore) runs each fetch in a worker thread
and hands chunks over through a small queue, so the caller gets FetchTimeout on time even if
the node never sends another byte; the store registers an abort callback that tears down the
connection so that the worker ends too.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ConfigError

#: The byte limit of a fetch whose caller gives none.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Deadline floor (s): even a tiny fetch gets this long.
DEADLINE_FLOOR = 30.0
#: Minimum throughput (bytes/s) the default deadline allows for.
MIN_THROUGHPUT = 1024**2
#: Deadline cap (s): no fetch runs longer by default, however large.
DEADLINE_CAP = 3600.0


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    """How long a fetch of `size` bytes may take when its caller names no timeout."""

    floor: float = DEADLINE_FLOOR
    rate: float = MIN_THROUGHPUT
    cap: float = DEADLINE_CAP

    def seconds(self, size: int) -> float:
        """`min(cap, max(floor, size / rate))`."""
        return min(self.cap, max(self.floor, size / self.rate))


DEFAULT_DEADLINES = DeadlinePolicy()


def check_limits(max_bytes: object, timeout: object) -> tuple[int, float | None]:
    """(max_bytes, timeout) validated; None max_bytes is DEFAULT_MAX_BYTES."""
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        raise ConfigError(f"max_bytes must be a byte count (an int >= 0), not {max_bytes!r}")
    if timeout is not None:
        if (
            not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not 0 < timeout < float("inf")
        ):  # fmt: skip
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        timeout = float(timeout)
    return max_bytes, timeout


class Deadline:
    """The end of one fetch: a start, a length (extensible unless fixed), abort callbacks."""

    def __init__(self, seconds: float, *, fixed: bool) -> None:
        self.start = time.monotonic()
        self.seconds = seconds
        self.fixed = fixed
        self.aborted = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.start + self.seconds - time.monotonic()

    def expired(self) -> bool:
        return self.aborted.is_set() or self.remaining() <= 0

    def extend(self, seconds: float) -> None:
        """Make the deadline `seconds` after the start, unless the caller fixed it."""
        if not self.fixed:
            self.seconds = seconds

    def on_abort(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` on abort (at once if already aborted); returns an unregister."""
        with self._lock:
            self._callbacks.append(callback)
            now = self.aborted.is_set()
        if now:
            with contextlib.suppress(Exception):
                callback()

        def unregister() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unregister

    def abort(self) -> None:
        """Stop the fetch: set the flag and run the callbacks (each at most once)."""
        with self._lock:
            self.aborted.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()


def relay(
    produce: Callable[[], Iterator[bytes]],
    deadline: Deadline,
    too_slow: Callable[[int], Exception],
    *,
    threaded: bool,
) -> Iterator[bytes]:
    """The chunks of `produce()`, ending with `too_slow(bytes so far)` once `deadline` passes.

    `threaded`: produce in a worker thread, so that a blocked read cannot hold the caller past
    the deadline; otherwise the deadline is checked between chunks.
    """
    received = 0
    if not threaded:
        try:
            for chunk in produce():
                if deadline.expired():
                    raise too_slow(received)
                received += len(chunk)
                yield chunk
        finally:
            deadline.abort()
        return

    items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=2)

    def put(item: tuple[str, object]) -> bool:
        while not deadline.aborted.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in produce():
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the caller, who re-raises it
            put(("error", exc))

    worker = threading.Thread(target=work, name="fedchain-fetch", daemon=True)
    worker.start()
    try:
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise too_slow(received)
            try:
                kind, value = items.get(timeout=remaining)
            except queue.Empty:
                continue  # the deadline may have been extended meanwhile: look again
            if kind == "chunk":
                assert isinstance(value, bytes)
                received += len(value)
                yield value
            elif kind == "end":
                return
            else:
                assert isinstance(value, BaseException)
                raise value
    finally:
        deadline.abort()
