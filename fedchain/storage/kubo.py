"""KuboStore: an IPFS node through the Kubo RPC API (`/api/v0`), over HTTP with httpx.

Commands used: `add` (cid-version=1, raw leaves, 256 KiB chunks, sha2-256, pinned), `cat`,
`block/get` (a file's root block, for its declared size), `pin/add`, `block/stat` (for `has`,
asked offline) and `version`. Uploads and downloads stream; connection failures are retried
with exponential backoff; Kubo's JSON error bodies become fedchain exceptions. Works with Kubo
and with scripts/ipfs-devnode.mjs.

`put` also computes the CID itself while uploading and raises ContentMismatch if the node
answers another one (a node configured with other import settings would).

A node is not trusted (see fedchain.storage.fetch for the bounds of a fetch):

- `get` of a dag-pb CID first reads the root block (`block/get`), checks it hashes to the CID
  and is the root `ipfs add` builds, and refuses a file whose declared size is over the limit
  with ContentTooLarge before any leaf is fetched; then `cat` may not stream more than that;
- every fetch has one overall deadline (FetchTimeout), enforced from outside the thread that
  reads, which tears the connection down (a node dripping a byte every few seconds never
  trips a per-read timeout);
- every other reply (JSON, lines, error bodies) is read up to MAX_REPLY bytes, decompressed
  incrementally: a gzip bomb is a StorageError, not gigabytes of memory. Replies are asked
  for uncompressed (`Accept-Encoding: identity`); gzip and deflate are still decoded, anything
  else is refused.

Credentials: the URL may carry them (`https://user:pass@host:5001`, `…?token=…`, a key in its
path); they go to the node (basic auth, query parameters, base URL) but `self.url`, which
messages and results show, is the redacted form (`https://host:5001/…`), and the URL is
registered with fedchain.redact so that log records (httpx's included) are scrubbed of it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ..errors import (
    ContentMismatch,
    ContentNotFound,
    FetchTimeout,
    InvalidCID,
    StorageError,
    StoreUnavailable,
)
from ..jsonsafe import loads
from ..redact import redact_url, register, scrub
from .cid import CID, DAG_PB
from .dagpb import MAX_BLOCK, MalformedBlock, declared_size
from .fetch import DEFAULT_DEADLINES, Deadline, DeadlinePolicy
from .store import ContentStore, as_canonical
from .unixfs import CHUNK_SIZE, CidBuilder

#: `ipfs add` options giving fedchain's canonical CIDs (what `--cid-version=1` implies).
ADD_PARAMS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": f"size-{CHUNK_SIZE}",
    "hash": "sha2-256",
    "pin": "true",
}

#: The most bytes (decompressed) fedchain reads of a JSON or line reply.
MAX_REPLY = 1024 * 1024
#: The most bytes of an error reply kept for its message.
MAX_ERROR_REPLY = 64 * 1024

# Errors after which the request never reached the node, so sending it again is safe.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)
# Commands that fetch content, where a timeout before the answer means "not found (yet)".
_FETCHES = ("cat", "block/get")


class _TooLong(Exception):
    """A reply went past its byte limit."""


def _decoded(response: httpx.Response, chunk: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The body of a streaming response, decompressed `chunk` bytes at most at a time."""
    if response.is_stream_consumed:  # already in memory (a transport built it from bytes)
        content = response.content
        for start in range(0, len(content), chunk):
            yield content[start : start + chunk]
        return
    header = response.headers.get("content-encoding", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    raw = response.iter_raw(chunk)
    if not codings:
        yield from raw
        return
    if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
        raise StorageError(f"the node answered with Content-Encoding {header!r}, not supported")
    decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    try:
        for data in raw:
            while True:
                out = decoder.decompress(data, chunk)
                if out:
                    yield out
                data = decoder.unconsumed_tail
                if decoder.eof or (not data and len(out) < chunk):
                    break
            if decoder.eof:
                break
        if not decoder.eof:
            raise StorageError("the node's compressed reply ends before its compressed stream")
    except zlib.error as exc:
        raise StorageError(f"the node's {codings[0]} reply does not decompress: {exc}") from None


def _read_limited(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The whole decoded body; past `limit` bytes _TooLong, or the first `limit` bytes if
    `truncate`. Closes the response."""
    parts: list[bytes] = []
    size = 0
    try:
        for part in _decoded(response, min(CHUNK_SIZE, limit + 1)):
            size += len(part)
            if size > limit:
                if truncate:
                    parts.append(part[: len(part) - (size - limit)])
                    break
                raise _TooLong(f"more than {limit} bytes")
            parts.append(part)
    finally:
        response.close()
    return b"".join(parts)


def _shutdown(response: httpx.Response) -> None:
    """Tear down an open response's connection from another thread (wakes a blocked read)."""
    if response.is_closed:
        return
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class KuboStore(ContentStore):
    """A ContentStore backed by an IPFS node's RPC API, e.g. `http://127.0.0.1:5001`."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:5001",
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
        deadlines: DeadlinePolicy = DEFAULT_DEADLINES,
        max_reply: int = MAX_REPLY,
    ) -> None:
        """`timeout`: per read or write (httpx); `deadlines`: of a whole `get` (see fetch)."""
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        path = parts.path.rstrip("/").removesuffix("/api/v0")
        self._secret_url = url  # scrubbed from messages
        secret = host != parts.netloc or path or parts.query or parts.fragment
        self.url = redact_url(url) if secret else f"{parts.scheme}://{host}"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.deadlines = deadlines
        self.max_reply = max_reply
        auth = None
        if parts.username is not None:
            auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        register(url)
        self._client = httpx.Client(
            base_url=f"{parts.scheme}://{host}{path}/api/v0",
            params=httpx.QueryParams(parts.query),
            auth=auth,
            headers={"Accept-Encoding": "identity"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    def _say(self, exc: BaseException) -> str:
        """An exception's text without this store's credentials."""
        return scrub(str(exc), self._secret_url)

    def _overdue(self, cmd: str, deadline: Deadline) -> FetchTimeout:
        """The error of a request that `deadline` ended, in one wording whichever layer
        noticed first (the relay's check, the request's timeout, a broken-off stream)."""
        return FetchTimeout(f"IPFS node {self.url}: {cmd} did not finish within its deadline "
                            f"of {deadline.seconds:.3g}s")

    def _send(
        self,
        cmd: str,
        params: dict[str, str],
        body: Callable[[], Iterable[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        deadline: Deadline | None = None,
    ) -> httpx.Response:
        """POST a command and return the streaming 200 response; errors become fedchain's.

        With a `deadline`, the request's timeouts shrink to the time left, and an abort of the
        deadline tears the response's connection down.
        """
        for attempt in range(self.retries + 1):
            timeout: httpx.Timeout | None = None
            if deadline is not None:
                left = deadline.remaining()
                if left <= 0 or deadline.aborted.is_set():
                    raise self._overdue(cmd, deadline)
                timeout = httpx.Timeout(
                    min(self.timeout, left), connect=min(self.connect_timeout, left)
                )
            request = self._client.build_request(
                "POST", "/" + cmd, params=params, headers=headers,
                content=body() if body is not None else None,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )  # fmt: skip
            try:
                response = self._client.send(request, stream=True)
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise StoreUnavailable(
                        f"IPFS node {self.url} cannot be reached "
                        f"({type(exc).__name__}: {self._say(exc)}) after {self.retries + 1} "
                        "attempts"
                    ) from None
                time.sleep(self.backoff * 2**attempt)
                continue
            except httpx.TimeoutException as exc:
                if deadline is not None and deadline.expired():
                    raise self._overdue(cmd, deadline) from None
                if cmd in _FETCHES:
                    raise ContentNotFound(
                        f"IPFS node {self.url} did not start serving {params.get('arg')} "
                        f"within {self.timeout:g}s (it may still be searching the network)"
                    ) from None
                raise StoreUnavailable(
                    f"IPFS node {self.url} did not answer {cmd} within {self.timeout:g}s"
                ) from exc
            except httpx.HTTPError as exc:
                raise StoreUnavailable(
                    f"IPFS node {self.url}: {cmd} failed: {self._say(exc)}"
                ) from None
            if deadline is not None:
                deadline.on_abort(functools.partial(_shutdown, response))
            if response.status_code != 200:
                raise self._error(cmd, response)
            return response
        raise AssertionError("unreachable")

    def _error(self, cmd: str, response: httpx.Response) -> StorageError:
        """The fedchain exception of a non-200 answer (its body read up to a limit)."""
        try:
            text = _read_limited(response, MAX_ERROR_REPLY, truncate=True).decode(
                "utf-8", "replace"
            )
        except (_TooLong, StorageError, httpx.HTTPError):
            text = ""
        try:
            message = str(loads(text)["Message"])
        except (ValueError, KeyError, TypeError, RecursionError):
            message = text.strip()[:300] or response.reason_phrase
        message = scrub(message, self._secret_url)[:300]
        where = f"IPFS node {self.url}: {cmd}"
        if response.status_code in (404, 405):
            return StoreUnavailable(
                f"{where} answered HTTP {response.status_code} ({message}): is this the RPC API "
                "port (5001), not the gateway?"
            )
        lowered = message.lower()
        if "not found" in lowered or "could not find" in lowered:
            return ContentNotFound(f"{where}: {message}")
        return StorageError(f"{where} failed (HTTP {response.status_code}): {message}")

    def _reply(
        self,
        cmd: str,
        response: httpx.Response,
        limit: int | None = None,
        deadline: Deadline | None = None,
        too_long: Callable[[int], StorageError] | None = None,
    ) -> bytes:
        """A whole reply body, at most `limit` (max_reply) bytes decompressed."""
        limit = self.max_reply if limit is None else limit
        try:
            return _read_limited(response, limit)
        except _TooLong:
            if too_long is not None:
                raise too_long(limit) from None
            raise StorageError(
                f"IPFS node {self.url}: {cmd} answered more than {limit} bytes"
            ) from None
        except httpx.HTTPError as exc:
            if deadline is not None and deadline.expired():
                raise self._overdue(cmd, deadline) from None
            raise StoreUnavailable(
                f"IPFS node {self.url}: {cmd} broke off: {self._say(exc)}"
            ) from None

    def _json(self, cmd: str, params: dict[str, str]) -> dict[str, Any]:
        data = self._reply(cmd, self._send(cmd, params))
        try:
            answer = loads(data)
        except (ValueError, RecursionError) as exc:
            raise StorageError(
                f"IPFS node {self.url}: {cmd} answered no JSON: {str(exc)[:100]}"
            ) from None
        if not isinstance(answer, dict):
            raise StorageError(f"IPFS node {self.url}: {cmd} answered JSON that is no object")
        return answer

    def version(self) -> str:
        """The node's version string (Kubo's, or the dev node's)."""
        version = self._json("version", {}).get("Version")
        if not isinstance(version, str) or not version:
            raise StorageError(f"IPFS node {self.url}: version answered no Version string")
        return version[:100]

    def put(self, data: bytes | bytearray | memoryview) -> CID:
        # Unlike a one-shot stream, whole bytes can be re-sent on a retry.
        return self._add(lambda: [bytes(data)])

    def put_stream(self, chunks: Iterable[bytes]) -> CID:
        used = False

        def once() -> Iterable[bytes]:
            nonlocal used
            if used:
                raise StoreUnavailable(f"IPFS node {self.url}: upload failed part-way")
            used = True
            return chunks

        return self._add(once)

    def _add(self, source: Callable[[], Iterable[bytes]]) -> CID:
        boundary = uuid.uuid4().hex
        builder = CidBuilder()
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="model"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            nonlocal builder
            builder = CidBuilder()
            chunks = source()
            yield head
            for chunk in chunks:
                builder.update(chunk)
                yield chunk
            yield tail

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        reply = self._reply("add", self._send("add", ADD_PARAMS, body, headers))
        lines = [line for line in reply.splitlines() if line.strip()]
        try:
            answer = CID.parse(loads(lines[-1])["Hash"])
        except (IndexError, ValueError, KeyError, TypeError, RecursionError, InvalidCID) as exc:
            shown = scrub(repr(lines[-1:])[:200], self._secret_url)
            raise StorageError(f"IPFS node {self.url}: add answered {shown}") from exc
        ours = builder.finish()
        if answer != ours:
            raise ContentMismatch(
                f"IPFS node {self.url} stored {builder.size} bytes as {answer}, but their CID "
                f"is {ours}: is the node importing with other settings than {ADD_PARAMS}?"
            )
        return ours

    def _declared_size(self, cid: CID, deadline: Deadline) -> int | None:
        if cid.codec != DAG_PB:
            return None  # a raw CID is its single block: nothing to read before the data
        response = self._send("block/get", {"arg": str(cid)}, deadline=deadline)

        def too_long(limit: int) -> StorageError:
            return ContentMismatch(
                f"IPFS node {self.url} served a root block of {cid} larger than {limit} bytes, "
                "which no canonical file has"
            )

        block = self._reply("block/get", response, MAX_BLOCK, deadline, too_long)
        if hashlib.sha256(block).digest() != cid.digest:
            raise ContentMismatch(
                f"IPFS node {self.url} served a root block for {cid} that does not hash to it"
            )
        try:
            return declared_size(block)
        except MalformedBlock as exc:
            raise InvalidCID(
                f"{cid} is not a file as `ipfs add --cid-version=1` builds it: its root {exc}"
            ) from None

    def _read(self, cid: CID, deadline: Deadline) -> Iterator[bytes]:
        response = self._send("cat", {"arg": str(cid)}, deadline=deadline)
        return self._stream(response, deadline)

    def _stream(self, response: httpx.Response, deadline: Deadline) -> Iterator[bytes]:
        try:
            yield from _decoded(response)
        except httpx.TimeoutException:
            if deadline.expired():
                raise self._overdue("cat", deadline) from None
            raise FetchTimeout(
                f"IPFS node {self.url} stalled for {self.timeout:g}s while serving content"
            ) from None
        except httpx.HTTPError as exc:
            if deadline.expired():
                raise self._overdue("cat", deadline) from None
            raise StoreUnavailable(
                f"IPFS node {self.url}: cat broke off: {self._say(exc)}"
            ) from None
        finally:
            response.close()

    def pin(self, cid: CID | str) -> None:
        self._json("pin/add", {"arg": str(as_canonical(cid))})

    def has(self, cid: CID | str) -> bool:
        try:
            self._json("block/stat", {"arg": str(as_canonical(cid)), "offline": "true"})
        except ContentNotFound:
            return False
        return True

    def close(self) -> None:
        self._client.close()
