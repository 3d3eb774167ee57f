"""dag-pb blocks of UnixFS files: the encoding fedchain writes, and a strict reader.

A dag-pb block is a protobuf `PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }`
with `PBLink { bytes Hash = 1; string Name = 2; uint64 Tsize = 3; }`; a UnixFS file node's
Data is `Data { Type = 1 (File = 2); bytes Data = 2; uint64 filesize = 3; repeated uint64
blocksizes = 4; ... }`. The reader is what lets a store learn a file's declared size from its
root block before fetching any leaf, and refuse a DAG whose root is not shaped like the one
`ipfs add --cid-version=1` builds for that size (see `canonical_blocksizes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .cid import CID, decode_varint, encode_varint

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
#: UnixFS Data.Type of a file.
UNIXFS_FILE = 2
#: The largest dag-pb block fedchain reads (a canonical root is ~ 8 KiB; Kubo caps blocks at
#: 1 MiB for exchange, 2 MiB with --allow-big-block).
MAX_BLOCK = 2 * 1024 * 1024


class MalformedBlock(ValueError):
    """A block that is not a well-formed dag-pb UnixFS file node."""


@dataclass(frozen=True, slots=True)
class Link:
    cid: CID
    name: str
    tsize: int | None


@dataclass(frozen=True, slots=True)
class FileNode:
    """A decoded dag-pb UnixFS file node."""

    links: tuple[Link, ...]
    type: int
    filesize: int | None
    blocksizes: tuple[int, ...]
    inline: int  # bytes of file data kept in the node itself


def encode_file_node(children: Sequence[tuple[CID, int, int]]) -> bytes:
    """The dag-pb block of a UnixFS file node over (cid, tsize, filesize) children."""
    filesize = sum(size for _, _, size in children)
    data = bytearray(b"\x08" + encode_varint(UNIXFS_FILE))
    data += b"\x18" + encode_varint(filesize)
    for _, _, size in children:
        data += b"\x20" + encode_varint(size)
    block = bytearray()
    # dag-pb canonical order: every Links entry (field 2) before Data (field 1).
    for cid, tsize, _ in children:
        raw = bytes(cid)
        link = b"\x0a" + encode_varint(len(raw)) + raw + b"\x12\x00\x18" + encode_varint(tsize)
        block += b"\x12" + encode_varint(len(link)) + link
    block += b"\x0a" + encode_varint(len(data)) + data
    return bytes(block)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    return decode_varint(buf, pos, max_len=10, error=MalformedBlock)


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field of a protobuf message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedBlock("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if length > len(buf) - pos:
                raise MalformedBlock("a field runs past the end of the block")
            out.append((number, wire, buf[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if width > len(buf) - pos:
                raise MalformedBlock("a field runs past the end of the block")
            out.append((number, wire, int.from_bytes(buf[pos : pos + width], "little")))
            pos += width
        else:
            raise MalformedBlock(f"unsupported protobuf wire type {wire}")
    return out


def _link(buf: bytes) -> Link:
    cid: CID | None = None
    name, tsize = "", None
    for number, wire, value in _fields(buf):
        if number == 1 and isinstance(value, bytes):
            try:
                cid = CID.from_bytes(value)
            except Exception as exc:  # InvalidCID
                raise MalformedBlock(f"a link holds no valid CID: {exc}") from None
        elif number == 2 and isinstance(value, bytes):
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedBlock("a link name is not UTF-8") from None
        elif number == 3 and wire == 0 and isinstance(value, int):
            tsize = value
        else:
            raise MalformedBlock(f"unexpected field {number} in a link")
    if cid is None:
        raise MalformedBlock("a link has no Hash")
    return Link(cid, name, tsize)


def decode_file_node(block: bytes) -> FileNode:
    """The links and UnixFS fields of a dag-pb file node (MalformedBlock if it is not one)."""
    if len(block) > MAX_BLOCK:
        raise MalformedBlock(f"a {len(block)}-byte block is larger than {MAX_BLOCK} bytes")
    links: list[Link] = []
    data: bytes | None = None
    for number, _, value in _fields(bytes(block)):
        if number == 2 and isinstance(value, bytes):
            links.append(_link(value))
        elif number == 1 and isinstance(value, bytes) and data is None:
            data = value
        else:
            raise MalformedBlock(f"unexpected field {number} in a dag-pb node")
    if data is None:
        raise MalformedBlock("the node has no UnixFS Data")
    kind: int | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    inline = 0
    for number, wire, value in _fields(data):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, bytes):
            inline = len(value)
        elif number == 3 and wire == 0 and isinstance(value, int):
            filesize = value
        elif number == 4 and wire == 0 and isinstance(value, int):
            blocksizes.append(value)
        elif number == 4 and isinstance(value, bytes):  # packed encoding
            pos = 0
            while pos < len(value):
                size, pos = _varint(value, pos)
                blocksizes.append(size)
        elif number in (5, 6, 7, 8):  # hashType, fanout, mode, mtime: not in file nodes
            raise MalformedBlock(f"UnixFS field {number} does not belong in a file node")
        else:
            raise MalformedBlock(f"unexpected UnixFS field {number}")
    if kind is None:
        raise MalformedBlock("UnixFS Data has no Type")
    return FileNode(tuple(links), kind, filesize, tuple(blocksizes), inline)


def canonical_blocksizes(filesize: int) -> list[int]:
    """The root's blocksizes in the balanced DAG `ipfs add --cid-version=1` builds for a file
    of `filesize` bytes (more than one chunk; a single chunk is a raw leaf, not a dag-pb node).
    """
    leaves = -(-filesize // CHUNK_SIZE)
    per_child = 1  # leaves under each child of the root
    while per_child * MAX_LINKS < leaves:
        per_child *= MAX_LINKS
    full = per_child * CHUNK_SIZE
    count = -(-leaves // per_child)
    return [full] * (count - 1) + [filesize - full * (count - 1)]


def declared_size(block: bytes) -> int:
    """The file size a canonical dag-pb root declares (MalformedBlock if it is not canonical)."""
    node = decode_file_node(block)
    if node.type != UNIXFS_FILE:
        raise MalformedBlock(f"UnixFS type {node.type} is not a file")
    if node.filesize is None:
        raise MalformedBlock("the file node declares no filesize")
    if node.inline:
        raise MalformedBlock("the file node holds data itself (fedchain's leaves are raw)")
    if len(node.links) != len(node.blocksizes):
        raise MalformedBlock(
            f"{len(node.links)} links but {len(node.blocksizes)} blocksizes"
        )
    if node.filesize <= CHUNK_SIZE:
        raise MalformedBlock(
            f"a {node.filesize}-byte file is a single raw leaf, not a dag-pb node"
        )
    if list(node.blocksizes) != canonical_blocksizes(node.filesize):
        raise MalformedBlock(
            f"its blocksizes are not the balanced layout of a {node.filesize}-byte file"
        )
    return node.filesize
