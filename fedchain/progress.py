"""Progress bars for local training and model transfers (tqdm), shown only on a terminal,
and the progress lines `simulate` prints when called from Python without logging set up.

Set FEDCHAIN_PROGRESS=0 to turn the bars off, =1 to force them (e.g. in a notebook).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Transfers smaller than this finish too fast for a bar to help.
MIN_TRANSFER_BYTES = 16 * 1024 * 1024


def enabled() -> bool:
    setting = os.environ.get("FEDCHAIN_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """`iterable`, with a progress bar while it is consumed (e.g. batches of an epoch)."""
    if not enabled():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def transfer(chunks: Iterable[bytes], desc: str, total: int | None = None) -> Iterator[bytes]:
    """Byte chunks passed through, counted on a bar once the transfer proves large."""
    if not enabled() or (total is not None and total < MIN_TRANSFER_BYTES):
        yield from chunks
        return
    bar: tqdm | None = None
    seen = 0
    try:
        for chunk in chunks:
            seen += len(chunk)
            if bar is None and seen >= MIN_TRANSFER_BYTES:
                bar = tqdm(desc=desc, total=total, unit="B", unit_scale=True,
                           unit_divisor=1024, leave=False, dynamic_ncols=True)
                bar.update(seen - len(chunk))
            if bar is not None:
                bar.update(len(chunk))
            yield chunk
    finally:
        if bar is not None:
            bar.close()


#: The loggers whose INFO lines are a run's progress (a line a round, not one per learner).
PROGRESS_LOGGERS = ("fedchain.aggregator", "fedchain.simulation")
_default_handler: logging.Handler | None = None


class _ProgressOnly(logging.Filter):
    """A run's progress and every warning, until the program sets up logging itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().handlers:  # logging set up since: it prints, not us
            return False
        return record.levelno >= logging.WARNING or record.name.startswith(PROGRESS_LOGGERS)


def default_logging() -> bool:
    """When neither the root logger nor fedchain's has a handler (a script or notebook that
    never set up logging), prints fedchain's progress to stderr: the aggregator's line a round
    and warnings. Does nothing once logging is set up (the CLI does, `logging.basicConfig`
    does). Returns whether it added the handler (once per process)."""
    global _default_handler
    library = logging.getLogger("fedchain")
    if _default_handler is not None or logging.getLogger().handlers or library.handlers:
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_ProgressOnly())
    library.addHandler(handler)
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)
    _default_handler = handler
    return True
