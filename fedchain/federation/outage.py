"""Riding out outages: the long-running loops retry when a node is briefly unreachable.

A chain node or IPFS node that is down, or a transaction that is not mined in time, is
logged and retried with exponential backoff instead of ending the federation; only an
outage longer than `max_outage` seconds is raised to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import ChainUnavailable, FedChainError, StoreUnavailable, TransactionTimeout

T = TypeVar("T")

#: Errors that say "try again later", not "this is wrong".
TRANSIENT = (ChainUnavailable, StoreUnavailable, TransactionTimeout)


def ride_out(
    step: Callable[[], T],
    *,
    what: str,
    log: logging.Logger,
    stop: threading.Event,
    max_outage: float = 600.0,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> T:
    """Runs `step`, retrying transient failures with backoff for up to `max_outage` seconds."""
    delay = first_delay
    started: float | None = None
    while True:
        try:
            return step()
        except TRANSIENT as exc:
            now = time.monotonic()
            started = now if started is None else started
            if now - started >= max_outage:
                raise
            log.warning("%s: %s: %s; retrying in %.0fs", what, type(exc).__name__, exc, delay)
            if stop.wait(delay):
                raise FedChainError(f"{what}: stopped during an outage ({exc})") from exc
            delay = min(delay * 2, max_delay)
