"""Content identifiers: CIDv0/CIDv1 parsing and printing, and fedchain's canonical form.

A CID is (version, codec, multihash). Binary CIDv1 is `varint(1) varint(codec) multihash`;
CIDv0 is a bare sha2-256 multihash, printed in base58btc ("Qm…"). CIDv1 text is multibase:
fedchain prints base32 lower-case ("b…", e.g. "bafy…" for dag-pb, "bafk…" for raw) and reads
base32 and base58btc ("z…").
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from ..errors import InvalidCID

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
#: The largest CID text fedchain will look at (a sha2-512 CIDv1 in base32 is ~ 110 chars).
_MAX_TEXT = 256

CANONICAL_FORM = "CIDv1, sha2-256, raw or dag-pb, as `ipfs add --cid-version=1` gives"


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128, as multiformats and protobuf use."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(
    buf: bytes, pos: int, max_len: int = 9, error: type[Exception] = InvalidCID
) -> tuple[int, int]:
    """Read one unsigned varint (below 2**64, at most `max_len` bytes) at `pos`; return (value,
    next position). A truncated or over-long one raises `error`."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + max_len)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value >= 1 << 64:
                break
            return value, i + 1
        shift += 7
    raise error("truncated or over-long varint")


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase base58btc without the 'z' prefix)."""
    n = int.from_bytes(data, "big")
    chars = []
    while n:
        n, r = divmod(n, 58)
        chars.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; InvalidCID on characters outside the alphabet."""
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise InvalidCID(f"{c!r} is not a base58btc character")
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


@dataclass(frozen=True, slots=True)
class CID:
    """An immutable content identifier: version, codec and multihash (code, digest)."""

    version: int
    codec: int
    digest: bytes
    hash_code: int = SHA2_256

    @classmethod
    def v1(cls, codec: int, sha256_digest: bytes) -> CID:
        """The CIDv1 of a sha2-256 digest."""
        return cls(1, codec, bytes(sha256_digest))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CID:
        """Parse a binary CID (what fedchain stores on chain)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidCID(f"a binary CID must be bytes, not {type(data).__name__}")
        if len(data) > _MAX_TEXT:
            raise InvalidCID(f"{len(data)} bytes are too long for a CID")
        data = bytes(data)
        if len(data) == 34 and data[0] == SHA2_256 and data[1] == 32:
            return cls(0, DAG_PB, data[2:])
        version, pos = decode_varint(data, 0)
        if version != 1:
            raise InvalidCID(f"unsupported CID version {version} in binary CID 0x{data.hex()}")
        codec, pos = decode_varint(data, pos)
        code, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        digest = data[pos:]
        if len(digest) != length:
            raise InvalidCID(
                f"multihash declares a {length}-byte digest but {len(digest)} bytes follow"
            )
        if code == SHA2_256 and length != 32:
            raise InvalidCID(f"sha2-256 digest must be 32 bytes, not {length}")
        return cls(1, codec, digest, code)

    @classmethod
    def coerce(cls, value: object) -> CID:
        """A CID from a CID, its text or its binary form; InvalidCID for anything else."""
        if isinstance(value, CID):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.from_bytes(value)
        raise InvalidCID(f"a CID must be a CID, text or bytes, not {type(value).__name__}")

    @classmethod
    def parse(cls, text: str | CID) -> CID:
        """Parse CID text: CIDv0 ("Qm…"), or CIDv1 in base32 ("b…") or base58btc ("z…")."""
        if isinstance(text, CID):
            return text
        if not isinstance(text, str):
            raise InvalidCID(f"a CID must be text or a CID, not {type(text).__name__}")
        text = text.strip()
        if text.startswith("/ipfs/"):
            text = text[len("/ipfs/") :]
        if not text or len(text) > _MAX_TEXT:
            raise InvalidCID(f"{text[:60]!r} is not a CID (empty or too long)")
        if len(text) == 46 and text.startswith("Qm"):
            return cls.from_bytes(b58decode(text))
        prefix, body = text[0], text[1:]
        if prefix in "bB":
            if prefix == "B":
                body = body.lower()
            if body != body.lower() or not body.isascii():
                raise InvalidCID(f"{text!r}: mixed-case base32 is not a valid CID")
            pad = "=" * (-len(body) % 8)
            try:
                raw = base64.b32decode(body.upper() + pad)
            except ValueError as exc:
                raise InvalidCID(f"{text!r} is not valid base32: {exc}") from None
        elif prefix == "z":
            raw = b58decode(body)
        else:
            raise InvalidCID(
                f"{text[:60]!r} is not a CID fedchain reads "
                "(CIDv0 'Qm…', or CIDv1 in base32 'b…' or base58btc 'z…')"
            )
        return cls.from_bytes(raw)

    @property
    def multihash(self) -> bytes:
        return encode_varint(self.hash_code) + encode_varint(len(self.digest)) + self.digest

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(bytes(self)).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    @property
    def codec_name(self) -> str:
        return _CODEC_NAMES.get(self.codec, hex(self.codec))

    def canonical_problem(self) -> str | None:
        """Why this CID is not in fedchain's canonical form, or None if it is."""
        if self.version != 1:
            return f"CIDv{self.version} {self} is not fedchain's canonical form ({CANONICAL_FORM})"
        if self.hash_code != SHA2_256 or len(self.digest) != 32:
            return f"{self} is not hashed with sha2-256 ({CANONICAL_FORM})"
        if self.codec not in _CODEC_NAMES:
            return f"{self} has codec {self.codec_name}, not raw or dag-pb ({CANONICAL_FORM})"
        return None

    def require_canonical(self) -> CID:
        """Return self, or raise InvalidCID saying why it is not canonical."""
        problem = self.canonical_problem()
        if problem:
            raise InvalidCID(problem)
        return self


#: How callers may give a CID: its binary form, a CID object, or its text.
CidLike = bytes | bytearray | CID | str


def cid_bytes(cid: CidLike) -> bytes:
    """The binary form of a CID given as bytes, a CID object or its text."""
    if isinstance(cid, bytes | bytearray):
        return bytes(cid)
    return bytes(CID.coerce(cid))  # text or a CID; InvalidCID for anything else


def to_cid(raw: bytes) -> CID:
    """The CID object of a binary CID read from the chain (InvalidCID if it is not one)."""
    return CID.from_bytes(raw)
