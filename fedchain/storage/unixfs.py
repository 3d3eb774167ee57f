"""The CID `ipfs add --cid-version=1` gives to a file, computed without an IPFS node.

The importer settings this reproduces (Kubo's defaults for CIDv1, and ipfs-unixfs-importer's
with `cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true`): sha2-256, fixed-size
chunks of 256 KiB stored as raw leaves, joined by UnixFS "file" nodes in dag-pb, balanced
layout with at most 174 links per node. A file of one chunk (≤ 256 KiB, the empty file too)
is its raw leaf, so its CID has codec raw ("bafk…"); larger files get a dag-pb root ("bafy…").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .cid import CID, DAG_PB, RAW, encode_varint

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174

# UnixFS Data message: field 1 Type (varint, File = 2), 3 filesize, 4 blocksizes (repeated).
_UNIXFS_FILE = b"\x08\x02"


@dataclass(frozen=True, slots=True)
class _Node:
    cid: CID
    tsize: int  # bytes of this block plus all blocks below it (dag-pb link Tsize)
    filesize: int  # file bytes under this node (UnixFS blocksize in the parent)


def _parent(children: list[_Node]) -> _Node:
    filesize = sum(c.filesize for c in children)
    data = bytearray(_UNIXFS_FILE)
    data += b"\x18" + encode_varint(filesize)
    for c in children:
        data += b"\x20" + encode_varint(c.filesize)
    block = bytearray()
    # dag-pb canonical order: every Links entry (field 2) before Data (field 1).
    for c in children:
        link = b"\x0a\x24" + bytes(c.cid) + b"\x12\x00\x18" + encode_varint(c.tsize)
        block += b"\x12" + encode_varint(len(link)) + link
    block += b"\x0a" + encode_varint(len(data)) + data
    cid = CID.v1(DAG_PB, hashlib.sha256(block).digest())
    return _Node(cid, len(block) + sum(c.tsize for c in children), filesize)


class CidBuilder:
    """Incremental CID of a byte stream: feed it with `update`, read the CID from `finish`."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._leaves: list[_Node] = []
        self.size = 0

    def _leaf(self, chunk: memoryview | bytearray) -> None:
        digest = hashlib.sha256(chunk).digest()
        self._leaves.append(_Node(CID.v1(RAW, digest), len(chunk), len(chunk)))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the file."""
        mv = memoryview(data).cast("B")
        self.size += len(mv)
        if self._pending:
            take = min(CHUNK_SIZE - len(self._pending), len(mv))
            self._pending += mv[:take]
            mv = mv[take:]
            if len(self._pending) < CHUNK_SIZE:
                return
            self._leaf(self._pending)
            self._pending.clear()
        # Whole chunks are hashed in place: no copy of the caller's buffer.
        full = len(mv) - len(mv) % CHUNK_SIZE
        for start in range(0, full, CHUNK_SIZE):
            self._leaf(mv[start : start + CHUNK_SIZE])
        self._pending += mv[full:]

    def finish(self) -> CID:
        """The CID of everything fed so far (the builder may not be fed afterwards)."""
        if self._pending or not self._leaves:
            self._leaf(self._pending)
            self._pending = bytearray()
        level = self._leaves
        if len(level) == 1:
            return level[0].cid
        while len(level) > 1:
            level = [_parent(level[i : i + MAX_LINKS]) for i in range(0, len(level), MAX_LINKS)]
        return level[0].cid


def cid_of(data: bytes | bytearray | memoryview) -> CID:
    """The CIDv1 `ipfs add --cid-version=1` gives to these bytes."""
    builder = CidBuilder()
    builder.update(data)
    return builder.finish()


def cid_of_stream(chunks: Iterable[bytes]) -> CID:
    """The CIDv1 of the concatenation of `chunks`."""
    builder = CidBuilder()
    for chunk in chunks:
        builder.update(chunk)
    return builder.finish()


def cid_of_file(path: str | Path, block: int = 4 * CHUNK_SIZE) -> CID:
    """The CIDv1 of a file's contents, read in blocks."""
    builder = CidBuilder()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            builder.update(chunk)
    return builder.finish()
