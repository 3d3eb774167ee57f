"""KuboStore against the IPFS dev node (Kubo RPC subset), and against nodes that misbehave."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fedchain.cli.devnet import DevNode, free_port
from fedchain.errors import (
    ContentMismatch,
    ContentNotFound,
    InvalidCID,
    StorageError,
    StoreUnavailable,
)
from fedchain.storage import open_store
from fedchain.storage.kubo import KuboStore
from fedchain.storage.local import LocalStore
from fedchain.storage.unixfs import CHUNK_SIZE, cid_of

pytestmark = [pytest.mark.ipfs, pytest.mark.xdist_group("ipfs")]

BIG = bytes(range(256)) * (175 * CHUNK_SIZE // 256) + b"+1"  # two DAG levels


@pytest.fixture
def kubo(ipfs_node: DevNode) -> Iterator[KuboStore]:
    with KuboStore(ipfs_node.url) as store:
        yield store


class Rewriting(httpx.BaseTransport):
    """Passes requests to the node, letting a test rewrite one command's answer."""

    def __init__(self, cmd: str, rewrite: Callable[[bytes], bytes]) -> None:
        self.inner = httpx.HTTPTransport()
        self.cmd, self.rewrite = cmd, rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != f"/api/v0/{self.cmd}":
            return response
        body = response.read()
        response.close()
        return httpx.Response(response.status_code, content=self.rewrite(body))


class Flaky(httpx.BaseTransport):
    """Refuses the first `failures` connections, then passes requests to the node."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.failures = failures
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_open_store_gives_a_kubo_store_that_reports_the_node_version(ipfs_node: DevNode) -> None:
    store = open_store(ipfs_node.url)
    assert isinstance(store, KuboStore)
    assert store.version()


@pytest.mark.parametrize("data", [b"", b"hello world\n", BIG], ids=["empty", "small", "2-level"])
def test_node_cids_equal_local_store_cids(kubo: KuboStore, tmp_path: Path, data: bytes) -> None:
    cid = kubo.put(data)
    assert cid == LocalStore(tmp_path).put(data) == cid_of(data)
    assert kubo.get(cid) == data
    assert kubo.has(cid)


def test_streaming_put_and_get(kubo: KuboStore) -> None:
    data = BIG[: 3 * CHUNK_SIZE + 5]
    cid = kubo.put_stream(data[i : i + 70_000] for i in range(0, len(data), 70_000))
    assert cid == cid_of(data)
    assert b"".join(kubo.get_stream(cid)) == data


def test_pin_and_has(kubo: KuboStore) -> None:
    cid = kubo.put(b"pin me")
    kubo.pin(cid)
    absent = cid_of(b"never added to the node")
    assert not kubo.has(absent)
    with pytest.raises(ContentNotFound, match=str(absent)):
        kubo.pin(absent)


def test_missing_content_is_not_found(kubo: KuboStore) -> None:
    absent = cid_of(b"nobody added this")
    with pytest.raises(ContentNotFound, match=str(absent)):
        kubo.get(absent)


def test_non_canonical_cid_is_refused_without_asking_the_node() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"the node was asked {request.url}")

    store = KuboStore("http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(InvalidCID, match="CIDv0"):
        store.get("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")


def test_node_serving_wrong_bytes_raises_mismatch(ipfs_node: DevNode) -> None:
    honest = KuboStore(ipfs_node.url)
    cid = honest.put(b"the real model")
    lying = KuboStore(ipfs_node.url, transport=Rewriting("cat", lambda b: b"a poisoned model"))
    with pytest.raises(ContentMismatch, match=f"{cid} whose CID is {cid_of(b'a poisoned model')}"):
        lying.get(cid)


def test_node_answering_another_cid_on_add_raises_mismatch(ipfs_node: DevNode) -> None:
    other = str(cid_of(b"something else"))

    def swap(body: bytes) -> bytes:
        return json.dumps({**json.loads(body), "Hash": other}).encode()

    store = KuboStore(ipfs_node.url, transport=Rewriting("add", swap))
    with pytest.raises(ContentMismatch, match=f"as {other}, but their CID is {cid_of(b'x')}"):
        store.put(b"x")


def test_node_that_is_down_is_unavailable_after_retries() -> None:
    store = KuboStore(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    with pytest.raises(StoreUnavailable, match="cannot be reached .* after 3 attempts"):
        store.put(b"x")
    with pytest.raises(StoreUnavailable):
        store.get(cid_of(b"x"))


def test_connection_failures_are_retried(ipfs_node: DevNode) -> None:
    transport = Flaky(failures=2)
    store = KuboStore(ipfs_node.url, retries=3, backoff=0.01, transport=transport)
    assert store.get(store.put(b"after two refusals")) == b"after two refusals"
    assert transport.attempts == 4


def test_kubo_json_errors_become_storage_errors() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            500, json={"Message": "pin: context canceled", "Code": 0, "Type": "error"}
        )

    store = KuboStore("http://node:5001", transport=httpx.MockTransport(fail))
    with pytest.raises(StorageError, match="pin/add failed \\(HTTP 500\\): pin: context canceled"):
        store.pin(cid_of(b"x"))


def test_gateway_port_instead_of_rpc_port_is_explained() -> None:
    store = KuboStore(
        "http://node:8080", transport=httpx.MockTransport(lambda r: httpx.Response(404))
    )
    with pytest.raises(StoreUnavailable, match="RPC API port"):
        store.version()
