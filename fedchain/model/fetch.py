"""Fetching a model by CID: fetched, verified, decoded and validated, in one place.

Every party reads models through `fetch_model`: the aggregator (the round's updates, the
previous global model), learners (the global model), the restart replay and the audit. It
always takes a size limit (the plan's `max_model_bytes`: there is no default to forget) and
optionally one overall deadline, a `time.monotonic()` value, shared by every fetch that
must end by then (a round's updates, say): each fetch gets the time left as the store's
`timeout`, and the store raises FetchTimeout when it runs out. Without a deadline the
store's own default applies (see fedchain.storage.fetch). The plan is read with `fetch_bytes`
by `fedchain.protocol.params.fetch_plan`.

A model is read into one growing buffer (`fetch_buffer`), never as a list of chunks joined at
the end, so a fetch holds about one model's bytes, not two; `stop`, an Event another thread
may set, abandons a fetch between chunks (FetchCancelled), as the prefetching of a round's
updates does when its consumer stops early (fedchain.protocol.fetching).

`canonical_cid` names a model's content independently of how its bytes were laid out: the CID
`codec.encode` would give its weights. Two submissions of the same weights have the same
canonical CID even when one was re-encoded (extra metadata, another tensor layout) under
another CID; a submission encoded as fedchain encodes has its own CID as its canonical CID.

Errors: the store's (`StorageError`: InvalidCID, ContentNotFound, ContentMismatch,
ContentTooLarge, StoreUnavailable, FetchTimeout) and the codec's (`InvalidModel`), as raised.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from ..errors import FetchTimeout, StoreUnavailable
from ..progress import transfer
from ..storage import ContentStore
from ..storage.cid import CID
from ..storage.unixfs import CidBuilder
from .codec import _CODES, FORMAT, VERSION, ModelSpec, Weights, decode, spec

__all__ = [
    "FetchCancelled",
    "FetchTimeout",
    "canonical_cid",
    "canonical_header",
    "fetch_buffer",
    "fetch_bytes",
    "fetch_chunks",
    "fetch_model",
    "fetch_parked",
    "fetch_update",
    "unpark",
]


class FetchCancelled(Exception):  # noqa: N818 - not an error: the caller asked for it
    """A fetch abandoned because its `stop` event was set (the result was no longer wanted)."""


def remaining(deadline: float | None, cid: CID | str) -> float | None:
    """Seconds left until `deadline` (None: no deadline); FetchTimeout once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeout(f"{cid} not fetched: its deadline passed {-left:.3g}s ago")
    return left


def fetch_chunks(
    store: ContentStore, cid: CID | str, *, max_bytes: int, deadline: float | None = None
) -> Iterator[bytes]:
    """The content of `cid` in chunks, verified, at most `max_bytes`, all of it by `deadline`.

    As with `ContentStore.get_stream`, the data is good only once the iterator is exhausted.
    """
    return store.get_stream(cid, max_bytes, timeout=remaining(deadline, cid))


def fetch_bytes(
    store: ContentStore, cid: CID | str, *, max_bytes: int, deadline: float | None = None
) -> bytes:
    """The content of `cid`, verified, at most `max_bytes` of it, all of it by `deadline`."""
    return store.get(cid, max_bytes, timeout=remaining(deadline, cid))


def fetch_buffer(
    store: ContentStore,
    cid: CID | str,
    *,
    max_bytes: int,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> bytearray:
    """The content of `cid`, as `fetch_bytes`, in one buffer grown chunk by chunk (no second
    copy of the content while it is assembled). FetchCancelled once `stop` is set."""
    chunks = fetch_chunks(store, cid, max_bytes=max_bytes, deadline=deadline)
    shown = transfer(chunks, f"download {str(cid)[:16]}…")
    buffer = bytearray()
    try:
        for chunk in shown:
            if stop is not None and stop.is_set():
                raise FetchCancelled(f"fetch of {cid} cancelled after {len(buffer)} bytes")
            buffer += chunk
    finally:
        for iterator in (shown, chunks):  # ends the store's fetch (and its connection) now
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
    return buffer


def fetch_parked(
    store: ContentStore,
    cid: CID | str,
    *,
    max_bytes: int,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> BinaryIO | bytearray:
    """The content of `cid`, as `fetch_buffer` fetches it, but written to an unnamed temporary
    file as it arrives: a model fetched ahead of its use waits on disk (the page cache), not in
    the process's memory; `unpark` reads it back. Where no temporary file can be written (a
    full disk), the content is fetched into memory instead, as `fetch_buffer` does."""
    try:
        parked: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - the caller's to close
    except OSError:
        return fetch_buffer(store, cid, max_bytes=max_bytes, deadline=deadline, stop=stop)
    chunks = fetch_chunks(store, cid, max_bytes=max_bytes, deadline=deadline)
    shown = transfer(chunks, f"download {str(cid)[:16]}…")
    size = 0
    disk_failed = False
    try:
        for chunk in shown:
            if stop is not None and stop.is_set():
                raise FetchCancelled(f"fetch of {cid} cancelled after {size} bytes")
            parked.write(chunk)
            size += len(chunk)
        parked.flush()
    except OSError:  # the disk, not the store: fetch it again, into memory
        parked.close()
        disk_failed = True
    except BaseException:
        parked.close()
        raise
    finally:
        for iterator in (shown, chunks):  # ends the store's fetch (and its connection) now
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
    if disk_failed:
        return fetch_buffer(store, cid, max_bytes=max_bytes, deadline=deadline, stop=stop)
    return parked


def unpark(parked: BinaryIO | bytearray) -> bytearray:
    """The bytes `fetch_parked` fetched, in one buffer of exactly their size; closes the file.
    StoreUnavailable if the temporary file cannot be read back."""
    if isinstance(parked, bytearray):
        return parked
    try:
        with parked:
            size = os.fstat(parked.fileno()).st_size
            buffer = bytearray(size)
            view = memoryview(buffer)
            parked.seek(0)
            done = 0
            while done < size:
                got = parked.readinto(view[done:])  # type: ignore[attr-defined]
                if not got:
                    raise OSError(f"the file ended {size - done} bytes early")
                done += got
            return buffer
    except OSError as exc:
        raise StoreUnavailable(f"a fetched model could not be read back from its "
                               f"temporary file: {exc}") from None


def fetch_model(
    store: ContentStore,
    cid: CID | str,
    *,
    max_bytes: int,
    reference: ModelSpec | None = None,
    deadline: float | None = None,
    copy: bool = True,
    stop: threading.Event | None = None,
) -> Weights:
    """The weights behind `cid`: fetched by `deadline`, verified against the CID, at most
    `max_bytes`, decoded and validated (finite values; the names, shapes and dtypes of
    `reference` when given).

    `copy=False` leaves the arrays as read-only views into the fetched bytes (see `decode`),
    for a model that is only read, as the aggregator reads updates. `stop`: see fetch_buffer.
    """
    data = fetch_buffer(store, cid, max_bytes=max_bytes, deadline=deadline, stop=stop)
    return decode(memoryview(data).toreadonly(), reference, max_bytes, copy=copy)


def fetch_update(
    store: ContentStore,
    cid: CID,
    *,
    max_bytes: int,
    reference: ModelSpec | None = None,
    deadline: float | None = None,
    copy: bool = True,
    stop: threading.Event | None = None,
) -> tuple[Weights, CID]:
    """(the weights behind `cid`, as `fetch_model` gives them; their `canonical_cid`)."""
    data = fetch_buffer(store, cid, max_bytes=max_bytes, deadline=deadline, stop=stop)
    view = memoryview(data).toreadonly()
    weights = decode(view, reference, max_bytes, copy=copy)
    return weights, canonical_cid(weights, view, cid)


# --- canonical content ------------------------------------------------------------------


def canonical_header(model: ModelSpec) -> bytes:
    """The bytes `codec.encode` writes before the tensor data of weights of `model` (without
    caller metadata): the 8-byte length, then the JSON header padded with spaces."""
    meta = {"format": FORMAT, "version": VERSION, "order": json.dumps(model.names)}
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    offset = 0
    for t in model.tensors:
        size = math.prod(t.shape) * np.dtype(t.dtype).itemsize
        header[t.name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def canonical_cid(
    weights: Weights, data: bytes | bytearray | memoryview | None = None, cid: CID | None = None
) -> CID:
    """The CID of `codec.encode(weights)`, computed without building those bytes.

    `data`, the bytes `weights` were decoded from, and `cid`, their CID, are a shortcut: when
    the bytes are already the canonical encoding (as every fedchain learner writes them) the
    answer is `cid`, and only the header is compared. Otherwise the canonical bytes are
    hashed as they would be written, tensor by tensor, in place.
    """
    header = canonical_header(spec(weights))
    if data is not None and cid is not None:
        view = memoryview(data).cast("B")
        body = sum(a.nbytes for a in weights.values())
        if len(view) == len(header) + body and view[: len(header)] == header:
            return cid
    builder = CidBuilder()
    builder.update(header)
    for array in weights.values():
        if array.nbytes:
            little = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
            builder.update(little.reshape(-1).view(np.uint8).data)
    return builder.finish()
