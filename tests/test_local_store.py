"""LocalStore: verified gets, crash-safe writes, several processes sharing one directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedchain.errors import ConfigError, ContentMismatch, ContentNotFound, InvalidCID
from fedchain.storage import CID, open_store
from fedchain.storage.local import STALE_TMP_SECONDS, LocalStore
from fedchain.storage.unixfs import CHUNK_SIZE, cid_of

BIG = bytes(range(256)) * (5 * CHUNK_SIZE // 256) + b"tail"  # a dag-pb file of 6 chunks


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize("data", [b"", b"hello world\n", BIG], ids=["empty", "small", "big"])
def test_put_returns_the_ipfs_cid_and_get_returns_the_bytes(store: LocalStore, data: bytes) -> None:
    cid = store.put(data)
    assert cid == cid_of(data)
    assert store.get(cid) == data
    assert store.get(str(cid)) == data
    assert store.has(cid)


def test_streaming_put_and_get_match_whole_bytes(store: LocalStore) -> None:
    cid = store.put_stream(BIG[i : i + 100_000] for i in range(0, len(BIG), 100_000))
    assert cid == cid_of(BIG)
    assert b"".join(store.get_stream(cid)) == BIG


def test_put_file_and_get_file_round_trip(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(BIG)
    cid = store.put_file(tmp_path / "model.safetensors")
    store.get_file(cid, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == BIG


def test_missing_content_is_not_found(store: LocalStore) -> None:
    absent = cid_of(b"never stored")
    assert not store.has(absent)
    with pytest.raises(ContentNotFound, match=str(absent)):
        store.get(absent)
    with pytest.raises(ContentNotFound):
        store.pin(absent)


def test_pin_of_stored_content_succeeds(store: LocalStore) -> None:
    cid = store.put(b"keep me")
    store.pin(cid)
    assert store.get(cid) == b"keep me"


def test_non_canonical_cid_is_refused_with_reason(store: LocalStore) -> None:
    with pytest.raises(InvalidCID, match="CIDv0 .* not fedchain's canonical form"):
        store.get("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    with pytest.raises(InvalidCID):
        store.get("not-a-cid")


def test_damaged_file_on_disk_raises_mismatch_naming_both_cids(store: LocalStore) -> None:
    cid = store.put(BIG)
    path = store.path_of(cid)
    path.write_bytes(BIG[: len(BIG) // 2])  # as if a crash had cut the file short
    with pytest.raises(ContentMismatch, match=f"{cid} whose CID is {cid_of(BIG[: len(BIG) // 2])}"):
        store.get(cid)


def test_streaming_get_of_damaged_content_fails_before_the_stream_ends(store: LocalStore) -> None:
    cid = store.put(BIG)
    damaged = bytearray(BIG)
    damaged[-1] ^= 1
    store.path_of(cid).write_bytes(damaged)
    received = []
    with pytest.raises(ContentMismatch):
        for chunk in store.get_stream(cid):
            received.append(chunk)
    assert len(b"".join(received)) < len(BIG)


def test_get_file_of_damaged_content_leaves_no_file(store: LocalStore, tmp_path: Path) -> None:
    cid = store.put(BIG)
    store.path_of(cid).write_bytes(b"garbage")
    with pytest.raises(ContentMismatch):
        store.get_file(cid, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "store"] == []


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_file = open_store((tmp_path / "a").as_uri())
    assert isinstance(by_file, LocalStore) and by_file.root == tmp_path / "a"
    monkeypatch.setenv("FEDCHAIN_STORE_DIR", str(tmp_path / "embedded"))
    embedded = open_store("embedded")
    assert isinstance(embedded, LocalStore) and embedded.root == tmp_path / "embedded"
    cid = by_file.put(b"shared?")
    assert not embedded.has(cid)
    for bad in ("ftp://x", "file://otherhost/dir", "/plain/path"):
        with pytest.raises(ConfigError, match="store URL"):
            open_store(bad)


WRITER = textwrap.dedent(
    """
    import sys
    from fedchain.storage.local import LocalStore
    store = LocalStore(sys.argv[1])
    me = sys.argv[2]
    shared = bytes(range(256)) * 3000
    for i in range(150):
        print(store.put(shared), store.put(f"{me}-{i}".encode() * 50000), flush=True)
    """
)


def test_two_processes_writing_same_and_different_content(store: LocalStore) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.root), name],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    shared = bytes(range(256)) * 3000
    for name, out in zip(("a", "b"), outputs, strict=True):
        lines = out.split("\n")[:-1]
        assert len(lines) == 150
        for i, line in enumerate(lines):
            shared_cid, own_cid = map(CID.parse, line.split())
            assert store.get(shared_cid) == shared
            assert store.get(own_cid) == f"{name}-{i}".encode() * 50000
    assert list((store.root / "tmp").iterdir()) == []


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from fedchain.storage.local import LocalStore
    store = LocalStore(sys.argv[1])
    def chunks():
        yield b"a" * 300_000
        yield b"b" * 300_000
        os.kill(os.getpid(), signal.SIGKILL)
        yield b"never written"
    store.put_stream(chunks())
    """
)


def test_killed_writer_leaves_nothing_that_passes_as_content(store: LocalStore) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(store.root)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = b"a" * 300_000 + b"b" * 300_000
    whole = partial + b"never written"
    assert not store.has(cid_of(partial)) and not store.has(cid_of(whole))
    assert [p for p in (store.root / "files").rglob("*") if p.is_file()] == []
    leftovers = list((store.root / "tmp").iterdir())
    assert len(leftovers) == 1
    # The same content can still be stored and read afterwards.
    assert store.get(store.put(whole)) == whole
    # A later open sweeps temporary files once they are older than any live writer's.
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(leftovers[0], (old, old))
    LocalStore(store.root)
    assert not leftovers[0].exists()
