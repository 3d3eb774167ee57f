"""ContentStore: what every store does (put bytes, get them back by CID, verified and bounded);
the stores themselves are in local.py and kubo.py, `open_store` in the package."""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

from ..errors import ContentMismatch, ContentTooLarge, FetchTimeout
from ..progress import transfer
from .cid import CID, RAW
from .fetch import (
    DEFAULT_DEADLINES,
    Deadline,
    DeadlinePolicy,
    check_limits,
    relay,
)
from .unixfs import CHUNK_SIZE, CidBuilder


def as_canonical(cid: CID | str) -> CID:
    """Parse `cid` and make sure it is in fedchain's canonical form (InvalidCID otherwise)."""
    return CID.parse(cid).require_canonical()


class ContentStore(ABC):
    """Bytes by CID: put, get (verified), pin, has; streaming variants for large models."""

    url: str

    @abstractmethod
    def put_stream(self, chunks: Iterable[bytes]) -> CID:
        """Store the concatenation of `chunks`; return its CID."""

    @abstractmethod
    def _read(self, cid: CID, deadline: Deadline) -> Iterator[bytes]:
        """The bytes the backend serves for `cid`, unverified.

        Network stores bound each request by `deadline.remaining()` and register on
        `deadline.on_abort` whatever closes the connection.
        """

    def _declared_size(self, cid: CID, deadline: Deadline) -> int | None:
        """The size the store says the content of `cid` has, read before the content itself
        (None if it cannot tell). Raises ContentMismatch if what it reads contradicts `cid`."""
        return None

    @abstractmethod
    def pin(self, cid: CID | str) -> None:
        """Keep the content of `cid` in this store (ContentNotFound if it is not there)."""

    @abstractmethod
    def has(self, cid: CID | str) -> bool:
        """Whether this store holds the content of `cid` without fetching it from elsewhere."""

    def put(self, data: bytes | bytearray | memoryview) -> CID:
        """Store `data`; return its CID."""
        view = memoryview(data)
        step = 4 * CHUNK_SIZE
        chunks = (bytes(view[i : i + step]) for i in range(0, len(view), step))
        if len(view) <= step:
            return self.put_stream([bytes(view)])
        return self.put_stream(transfer(chunks, f"upload to {self.url}", len(view)))

    #: How long a fetch may take when its caller names no timeout.
    deadlines: DeadlinePolicy = DEFAULT_DEADLINES
    #: Whether reads can block on the network, so fetches run in a worker thread (see fetch).
    _threaded_reads = True

    def get_stream(
        self, cid: CID | str, max_bytes: int | None = None, *, timeout: float | None = None
    ) -> Iterator[bytes]:
        """The content of `cid` in chunks, verified against the CID as it streams.

        The last chunk is held back until the whole content is verified: a mismatch raises
        ContentMismatch before the iterator ends, so treat the data as good only once the
        iterator is exhausted. Content larger than `max_bytes` (DEFAULT_MAX_BYTES, 2 GiB, if
        None) raises ContentTooLarge: before any of it is fetched when its declared size is
        larger, else as soon as the limit is passed. Content not all delivered within
        `timeout` seconds (by default `self.deadlines.seconds(size)`) raises FetchTimeout.
        The fetch, and its deadline, start at the first `next()`.
        """
        want = as_canonical(cid)
        limit, seconds = check_limits(max_bytes, timeout)
        return self._fetch(want, limit, seconds)

    def _fetch(self, want: CID, limit: int, timeout: float | None) -> Iterator[bytes]:
        deadline = Deadline(
            timeout if timeout is not None else self.deadlines.floor, fixed=timeout is not None
        )

        def produce() -> Iterator[bytes]:
            declared = self._declared_size(want, deadline)
            if declared is not None and declared > limit:
                raise ContentTooLarge(
                    f"{want} is {declared} bytes, more than the limit of {limit} bytes "
                    f"(declared by {self.url}; nothing fetched)"
                )
            # Content of a raw CID is one chunk at most: more cannot match it.
            bound = declared if declared is not None else CHUNK_SIZE if want.codec == RAW else None
            deadline.extend(self.deadlines.seconds(limit if bound is None else min(limit, bound)))
            yield from self._verified(want, self._read(want, deadline), limit, bound)

        def too_slow(received: int) -> Exception:
            return FetchTimeout(
                f"{self.url} did not deliver {want} within its deadline of "
                f"{deadline.seconds:.3g}s ({received} bytes arrived)"
            )

        return relay(produce, deadline, too_slow, threaded=self._threaded_reads)

    def _verified(
        self,
        want: CID,
        chunks: Iterator[bytes],
        max_bytes: int | None = None,
        expected: int | None = None,
    ) -> Iterator[bytes]:
        """`chunks`, checked against `want`: the last one only once the whole CID matches.

        More than `max_bytes` raises ContentTooLarge; more than `expected` (the size the
        store declared, or a raw CID's one chunk) raises ContentMismatch, both at once.
        """
        builder = CidBuilder()
        held: bytes | None = None
        for chunk in chunks:
            if not chunk:
                continue
            builder.update(chunk)
            if max_bytes is not None and builder.size > max_bytes:
                raise ContentTooLarge(f"{want} is larger than the limit of {max_bytes} bytes")
            if expected is not None and builder.size > expected:
                raise ContentMismatch(
                    f"{self.url} served more than the {expected} bytes {want} can hold"
                )
            if held is not None:
                yield held
            held = chunk
        got = builder.finish()
        if got != want:
            raise ContentMismatch(
                f"{self.url} served {builder.size} bytes for {want} whose CID is {got}"
            )
        if held is not None:
            yield held

    def get(
        self, cid: CID | str, max_bytes: int | None = None, *, timeout: float | None = None
    ) -> bytes:
        """The content of `cid`, verified against the CID, bounded as `get_stream` says."""
        chunks = self.get_stream(cid, max_bytes, timeout=timeout)
        return b"".join(transfer(chunks, f"download {str(cid)[:16]}…"))

    def put_file(self, path: str | Path) -> CID:
        """Store a file's contents, streamed; return its CID."""

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(4 * CHUNK_SIZE):
                    yield chunk

        return self.put_stream(chunks())

    def get_file(
        self,
        cid: CID | str,
        path: str | Path,
        max_bytes: int | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Write the content of `cid` to `path`, which appears only once it is verified."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.get_stream(cid, max_bytes, timeout=timeout):
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections or handles the store holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
