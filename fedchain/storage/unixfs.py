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

from .cid import CID, DAG_PB, RAW
from .dagpb import CHUNK_SIZE, MAX_LINKS, encode_file_node

__all__ = ["CHUNK_SIZE", "MAX_LINKS", "CidBuilder", "cid_of", "cid_of_file", "cid_of_stream"]


@dataclass(frozen=True, slots=True)
class _Node:
    cid: CID
    tsize: int  # bytes of this block plus all blocks below it (dag-pb link Tsize)
    filesize: int  # file bytes under this node (UnixFS blocksize in the parent)


def _parent(children: list[_Node]) -> _Node:
    block = encode_file_node([(c.cid, c.tsize, c.filesize) for c in children])
    cid = CID.v1(DAG_PB, hashlib.sha256(block).digest())
    tsize = len(block) + sum(c.tsize for c in children)
    return _Node(cid, tsize, sum(c.filesize for c in children))


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
