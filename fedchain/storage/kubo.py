"""KuboStore: an IPFS node through the Kubo RPC API (`/api/v0`), over HTTP with httpx.

Commands used: `add` (cid-version=1, raw leaves, 256 KiB chunks, sha2-256, pinned), `cat`,
`pin/add`, `block/stat` (for `has`, asked offline) and `version`. Uploads and downloads
stream; connection failures are retried with exponential backoff; Kubo's JSON error bodies
become fedchain exceptions. Works with Kubo and with scripts/ipfs-devnode.mjs.

`put` also computes the CID itself while uploading and raises ContentMismatch if the node
answers another one (a node configured with other import settings would).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from ..errors import ContentMismatch, ContentNotFound, StorageError, StoreUnavailable
from . import ContentStore, as_canonical
from .cid import CID
from .unixfs import CHUNK_SIZE, CidBuilder

#: `ipfs add` options giving fedchain's canonical CIDs (what `--cid-version=1` implies).
ADD_PARAMS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": f"size-{CHUNK_SIZE}",
    "hash": "sha2-256",
    "pin": "true",
}

# Errors after which the request never reached the node, so sending it again is safe.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)


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
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/api/v0")
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=self.url + "/api/v0",
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    def _send(
        self,
        cmd: str,
        params: dict[str, str],
        body: Callable[[], Iterable[bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a command and return the streaming 200 response; errors become fedchain's."""
        for attempt in range(self.retries + 1):
            request = self._client.build_request(
                "POST", "/" + cmd, params=params, headers=headers,
                content=body() if body is not None else None,
            )  # fmt: skip
            try:
                response = self._client.send(request, stream=True)
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    raise StoreUnavailable(
                        f"IPFS node {self.url} cannot be reached ({type(exc).__name__}: {exc}) "
                        f"after {self.retries + 1} attempts"
                    ) from exc
                time.sleep(self.backoff * 2**attempt)
                continue
            except httpx.TimeoutException as exc:
                if cmd == "cat":
                    raise ContentNotFound(
                        f"IPFS node {self.url} did not start serving {params.get('arg')} "
                        f"within {self.timeout:g}s (it may still be searching the network)"
                    ) from exc
                raise StoreUnavailable(
                    f"IPFS node {self.url} did not answer {cmd} within {self.timeout:g}s"
                ) from exc
            except httpx.HTTPError as exc:
                raise StoreUnavailable(f"IPFS node {self.url}: {cmd} failed: {exc}") from exc
            if response.status_code != 200:
                try:
                    response.read()
                finally:
                    response.close()
                raise self._error(cmd, response)
            return response
        raise AssertionError("unreachable")

    def _error(self, cmd: str, response: httpx.Response) -> StorageError:
        try:
            message = str(response.json()["Message"])
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:300] or response.reason_phrase
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

    def _json(self, cmd: str, params: dict[str, str]) -> Any:
        response = self._send(cmd, params)
        try:
            response.read()
            return response.json()
        except (ValueError, httpx.HTTPError) as exc:
            raise StorageError(f"IPFS node {self.url}: {cmd} answered no JSON: {exc}") from exc
        finally:
            response.close()

    def version(self) -> str:
        """The node's version string (Kubo's, or the dev node's)."""
        return str(self._json("version", {})["Version"])

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
        response = self._send("add", ADD_PARAMS, body, headers)
        try:
            lines = [line for line in response.iter_lines() if line.strip()]
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"IPFS node {self.url}: add failed: {exc}") from exc
        finally:
            response.close()
        try:
            answer = CID.parse(json.loads(lines[-1])["Hash"])
        except (IndexError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"IPFS node {self.url}: add answered {lines[-1:]!r}") from exc
        ours = builder.finish()
        if answer != ours:
            raise ContentMismatch(
                f"IPFS node {self.url} stored {builder.size} bytes as {answer}, but their CID "
                f"is {ours}: is the node importing with other settings than {ADD_PARAMS}?"
            )
        return ours

    def _read(self, cid: CID) -> Iterator[bytes]:
        response = self._send("cat", {"arg": str(cid)})
        return self._stream(response)

    def _stream(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(CHUNK_SIZE)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"IPFS node {self.url}: cat broke off: {exc}") from exc
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
