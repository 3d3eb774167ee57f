"""KuboStore against a hostile node (tests/hostile_kubo.py): every attack ends in a fedchain
exception, within its deadline, in bounded memory, and no credential reaches any output.

Bounds are generous (the machine may be loaded): a fetch with a deadline of D seconds must end
before D + 10 s, and take less than 256 MiB more memory, where the unbounded code it replaces
took gigabytes or never ended.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import pytest
from hostile_kubo import BLOCKS, LEAF, HostileKubo, PeakRSS, RateLimited

from fedchain.cli.devnet import free_port
from fedchain.errors import (
    ChainUnavailable,
    ContentMismatch,
    ContentNotFound,
    ContentTooLarge,
    FetchTimeout,
    StorageError,
    StoreUnavailable,
)
from fedchain.storage import DEFAULT_MAX_BYTES, DeadlinePolicy
from fedchain.storage.fetch import check_limits
from fedchain.storage.kubo import MAX_REPLY, KuboStore
from fedchain.storage.local import LocalStore
from fedchain.storage.unixfs import CHUNK_SIZE, cid_of

MiB = 1024**2
MEMORY_BOUND = 256 * MiB
SLACK = 10.0  # seconds allowed past a deadline on a loaded machine
SMALL = BLOCKS.small  # a 10-chunk file the hostile node really holds
LEAF_CID = BLOCKS.leaf  # a raw CID (one chunk)


def run(fn: object) -> tuple[BaseException | None, PeakRSS]:
    """(the exception `fn()` raised, its time and memory)."""
    assert callable(fn)
    with PeakRSS() as peak:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            return exc, peak
    return None, peak


def test_the_fake_node_is_realistic_when_honest() -> None:
    with HostileKubo("honest") as node, KuboStore(node.url) as store:
        assert store.get(SMALL) == LEAF * 10
        assert store.get(LEAF_CID) == LEAF
        assert store.version() == "0.0.1-hostile"
        assert node.requests == ["block/get", "cat", "cat", "version"]


def test_dedup_bomb_is_refused_from_its_root_block_before_any_leaf() -> None:
    declared = BLOCKS.sizes[str(BLOCKS.bomb)]
    assert declared > 2**40  # 1.29 TiB in 3 dag-pb blocks over one leaf
    with HostileKubo("dedup") as node, KuboStore(node.url) as store:
        exc, peak = run(lambda: store.get(BLOCKS.bomb))
        assert isinstance(exc, ContentTooLarge), exc
        assert f"is {declared} bytes, more than the limit of {DEFAULT_MAX_BYTES}" in str(exc)
        exc, _ = run(lambda: store.get(BLOCKS.bomb, max_bytes=100 * MiB))
        assert isinstance(exc, ContentTooLarge), exc
        assert node.requests == ["block/get", "block/get"]  # no cat: no leaf fetched
    assert peak.seconds < SLACK
    assert peak.extra < MEMORY_BOUND


@pytest.mark.parametrize("cid", [LEAF_CID, SMALL], ids=["raw", "dag-pb"])
def test_endless_body_stops_at_what_the_cid_can_hold(cid: object) -> None:
    with HostileKubo("endless") as node, KuboStore(node.url) as store:
        exc, peak = run(lambda: store.get(cid))
    assert isinstance(exc, ContentMismatch), exc
    assert "served more than" in str(exc)
    assert peak.seconds < SLACK and peak.extra < MEMORY_BOUND


def test_endless_body_is_stopped_by_max_bytes_too() -> None:
    with HostileKubo("endless") as node, KuboStore(node.url) as store:
        exc, _ = run(lambda: store.get(SMALL, max_bytes=CHUNK_SIZE))
    assert isinstance(exc, ContentTooLarge), exc


@pytest.mark.parametrize("mode", ["drip", "silent"])
@pytest.mark.parametrize("cid", [LEAF_CID, SMALL], ids=["raw-cat", "dag-pb-block-get"])
def test_slow_node_ends_in_fetch_timeout_within_the_deadline(mode: str, cid: object) -> None:
    deadline = 2.0
    # Per-read timeouts far longer than the deadline: only the overall deadline can end it.
    with HostileKubo(mode, interval=0.5) as node, KuboStore(node.url, timeout=120) as store:
        exc, peak = run(lambda: store.get(cid, timeout=deadline))
    assert isinstance(exc, FetchTimeout), exc
    assert not isinstance(exc, StoreUnavailable)  # one slow CID is not an outage
    assert "within its deadline of 2s" in str(exc)
    assert deadline * 0.9 <= peak.seconds < deadline + SLACK


def test_default_deadline_comes_from_the_store_policy() -> None:
    policy = DeadlinePolicy(floor=1.5, rate=MiB, cap=2.0)
    with HostileKubo("drip", interval=0.3) as node, KuboStore(node.url, deadlines=policy) as s:
        started = time.monotonic()
        with pytest.raises(FetchTimeout, match="within its deadline of 1.5s"):
            s.get(LEAF_CID)  # one chunk at 1 MiB/s: the floor
        assert time.monotonic() - started < 2.0 + SLACK


def test_deadline_policy_formula() -> None:
    policy = DeadlinePolicy()
    assert (policy.floor, policy.rate, policy.cap) == (30.0, MiB, 3600.0)
    assert policy.seconds(0) == policy.seconds(30 * MiB) == 30.0
    assert policy.seconds(2 * 1024**3) == 2048.0
    assert policy.seconds(10 * 1024**3) == 3600.0
    assert check_limits(None, None) == (DEFAULT_MAX_BYTES, None)
    assert DEFAULT_MAX_BYTES == 2 * 1024**3


@pytest.mark.parametrize("call", ["pin", "has", "version", "put"])
def test_gzip_bomb_replies_are_refused_in_bounded_memory(call: str) -> None:
    with HostileKubo("gzip", bomb_bytes=1024**3) as node, KuboStore(node.url) as store:
        action = {
            "pin": lambda: store.pin(SMALL),
            "has": lambda: store.has(SMALL),
            "version": store.version,
            "put": lambda: store.put(b"a model"),
        }[call]
        exc, peak = run(action)
    assert isinstance(exc, StorageError), exc
    assert f"more than {MAX_REPLY} bytes" in str(exc)
    assert peak.seconds < SLACK and peak.extra < MEMORY_BOUND


def test_gzip_bomb_content_is_decompressed_only_as_far_as_needed() -> None:
    with HostileKubo("gzip", bomb_bytes=1024**3) as node, KuboStore(node.url) as store:
        exc, peak = run(lambda: store.get(LEAF_CID))
    assert isinstance(exc, ContentMismatch), exc
    assert peak.extra < MEMORY_BOUND


def test_wrong_bytes_and_wrong_root_blocks_are_mismatches() -> None:
    with HostileKubo("wrong") as node, KuboStore(node.url) as store:
        with pytest.raises(ContentMismatch, match="does not hash to it"):
            store.get(SMALL)
        with pytest.raises(ContentMismatch, match=f"whose CID is {cid_of(bytes(CHUNK_SIZE))}"):
            store.get(LEAF_CID)


@pytest.mark.parametrize("cid", [LEAF_CID, SMALL], ids=["raw", "dag-pb"])
def test_truncated_body_is_a_storage_error(cid: object) -> None:
    with HostileKubo("truncated") as node, KuboStore(node.url) as store:
        exc, peak = run(lambda: store.get(cid))
    assert isinstance(exc, StorageError), exc
    assert peak.seconds < SLACK


def test_replies_without_the_keys_fedchain_reads_are_storage_errors() -> None:
    with HostileKubo("missing") as node, KuboStore(node.url) as store:
        with pytest.raises(StorageError, match="no Version"):
            store.version()
        with pytest.raises(StorageError, match="add answered"):
            store.put(b"a model")


def test_http_500s_are_storage_errors_with_bounded_messages() -> None:
    with HostileKubo("error500") as node, KuboStore(node.url) as store:
        with pytest.raises(StorageError, match="context canceled"):
            store.pin(SMALL)
        exc, peak = run(lambda: store.get(LEAF_CID))
    assert isinstance(exc, StorageError) and len(str(exc)) < 1000, exc
    assert peak.extra < MEMORY_BOUND


def test_root_block_of_a_non_canonical_dag_is_refused() -> None:
    # The leaf itself, asked for as dag-pb: the node serves a block that hashes to the CID
    # but is no UnixFS file node.
    from fedchain.storage.cid import CID, DAG_PB

    odd = CID(1, DAG_PB, LEAF_CID.digest)
    with HostileKubo("honest") as node, KuboStore(node.url) as store:
        node.blocks.blocks[str(odd)] = LEAF
        try:
            with pytest.raises(StorageError, match="not a file as `ipfs add"):
                store.get(odd)
        finally:
            del node.blocks.blocks[str(odd)]


# --- LocalStore: the file size is the declared size ------------------------------------------


def test_local_store_refuses_a_file_larger_than_the_limit_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    cid = cid_of(b"whatever")
    path = store.path_of(cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: takes no disk
    monkeypatch.setattr(store, "_read", lambda *a: pytest.fail("the file was read"))
    with pytest.raises(ContentTooLarge, match=f"more than the limit of {DEFAULT_MAX_BYTES}"):
        store.get(cid)
    with pytest.raises(ContentTooLarge, match="more than the limit of 10 bytes"):
        store.get(cid, max_bytes=10)


def test_local_store_deadline(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", read_size=1024)
    cid = store.put(LEAF * 3)
    assert store.get(cid, timeout=30) == LEAF * 3
    chunks = store.get_stream(cid, timeout=0.5)
    next(chunks)
    time.sleep(0.6)
    with pytest.raises(FetchTimeout):
        list(chunks)


# --- no credentials in output ------------------------------------------------------------


def _all_text(caplog: pytest.LogCaptureFixture, *extra: object) -> str:
    records = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    return records + "\n" + caplog.text + "\n" + "\n".join(map(str, extra))


def test_store_credentials_never_reach_messages_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "fedchain"):
        caplog.set_level(logging.DEBUG, logger=name)
    dead = f"http://user:secret@127.0.0.1:{free_port()}"
    store = KuboStore(dead, retries=1, backoff=0.01)
    assert store.url == f"http://127.0.0.1:{dead.rsplit(':', 1)[1]}/…"
    errors: list[object] = [store.url, repr(store)]
    for action in (store.version, lambda: store.get(LEAF_CID), lambda: store.put(b"x")):
        with pytest.raises(StoreUnavailable) as err:
            action()
        errors += [err.value, repr(err.value)]
        logging.getLogger("fedchain.test").warning("failed", exc_info=err.value)
    with HostileKubo("honest") as node:
        url = f"http://user:secret@127.0.0.1:{node.port}/?token=secrettoken"
        with KuboStore(url) as store:
            assert store.get(SMALL) == LEAF * 10
            errors.append(store.url)
        # The credentials did reach the node, as basic auth and a query parameter.
        assert node.headers.get("Authorization") == httpx.BasicAuth("user", "secret")._auth_header
        assert all("token=secrettoken" in p for p in node.paths)
    with HostileKubo("error500") as node, KuboStore(f"{node.url}/SECRETPATH/api/v0") as store:
        with pytest.raises(StorageError) as err:
            store.pin(SMALL)
        errors += [err.value, store.url]
        assert node.paths[-1].startswith("/SECRETPATH/api/v0/pin/add")
    text = _all_text(caplog, *errors)
    assert "HTTP Request: POST" in text  # httpx did log its requests...
    assert "secret" not in text.lower()  # ...without the password, token or path


def test_chain_api_key_in_the_url_path_never_reaches_messages_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fedchain.eth.chain import connect

    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "web3", "fedchain"):
        caplog.set_level(logging.DEBUG, logger=name)
    with RateLimited() as node:
        with pytest.raises(ChainUnavailable) as err:
            connect(f"http://127.0.0.1:{node.port}/v3/SECRETKEY")
        assert node.paths and all(p == "/v3/SECRETKEY" for p in node.paths)
    assert "429" in str(err.value)
    text = _all_text(caplog, err.value, repr(err.value))
    assert "SECRETKEY" not in text


def test_fetch_timeout_is_a_storage_error_but_not_an_outage() -> None:
    assert issubclass(FetchTimeout, StorageError)
    assert not issubclass(FetchTimeout, StoreUnavailable)
    assert not issubclass(FetchTimeout, ContentNotFound)
    assert FetchTimeout.__doc__ and "deadline" in FetchTimeout.__doc__


def test_a_missing_root_block_is_not_found() -> None:
    absent = cid_of(os.urandom(CHUNK_SIZE + 1))
    with (
        HostileKubo("honest") as node,
        KuboStore(node.url) as store,
        pytest.raises(ContentNotFound, match=str(absent)),
    ):
        store.get(absent)
