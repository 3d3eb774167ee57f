"""CIDs: identical to the IPFS reference importer's (`ipfs add --cid-version=1`), and CID text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedchain.errors import InvalidCID
from fedchain.storage.cid import CID, DAG_PB, RAW, b58encode
from fedchain.storage.unixfs import CHUNK_SIZE, CidBuilder, cid_of, cid_of_file

VECTORS = json.loads((Path(__file__).parent / "data" / "cid_vectors.json").read_text())["vectors"]


def vector_bytes(v: dict[str, Any]) -> bytes:
    """The input bytes of a vector, by the formula scripts/cid-vectors.mjs uses."""
    if "text" in v:
        return str(v["text"]).encode()
    # The formula repeats every 256 bytes: tile one period instead of computing every byte.
    period = ((np.arange(256) * 31 + 7 + v["seed"]) & 255).astype(np.uint8)
    return np.tile(period, v["size"] // 256 + 1)[: v["size"]].tobytes()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_cid_equals_the_reference_importers(vector: dict[str, Any]) -> None:
    assert str(cid_of(vector_bytes(vector))) == vector["cid"]


def test_vectors_cover_the_required_sizes() -> None:
    sizes = {v["size"] for v in VECTORS}
    assert {0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1024 * 1024} <= sizes
    assert max(sizes) > 174 * CHUNK_SIZE  # needs a second DAG level


@pytest.mark.parametrize("piece", [1, 4096, CHUNK_SIZE - 1, 3 * CHUNK_SIZE + 17])
def test_streaming_in_any_piece_size_gives_the_same_cid(piece: int) -> None:
    vector = next(v for v in VECTORS if v["name"] == "1 MiB + 5")
    data = vector_bytes(vector)
    if piece == 1:
        data = data[: CHUNK_SIZE + 3]  # byte-by-byte over a chunk boundary; keep it quick
    builder = CidBuilder()
    for start in range(0, len(data), piece):
        builder.update(data[start : start + piece])
    assert builder.finish() == cid_of(data)
    assert builder.size == len(data)


def test_file_cid_equals_bytes_cid(tmp_path: Path) -> None:
    data = vector_bytes(VECTORS[5])
    (tmp_path / "f").write_bytes(data)
    assert cid_of_file(tmp_path / "f") == cid_of(data)


# Published by Kubo (`ipfs add --cid-version=1`, and plain `ipfs add` for CIDv0).
KUBO_EMPTY_V1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
KUBO_HELLO_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
KUBO_HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def test_known_kubo_cids() -> None:
    assert str(cid_of(b"")) == KUBO_EMPTY_V1
    assert str(cid_of(b"hello world\n")) == KUBO_HELLO_V1


def test_small_files_are_raw_and_large_files_dag_pb() -> None:
    assert cid_of(bytes(CHUNK_SIZE)).codec == RAW
    assert str(cid_of(bytes(CHUNK_SIZE))).startswith("bafk")
    assert cid_of(bytes(CHUNK_SIZE + 1)).codec == DAG_PB
    assert str(cid_of(bytes(CHUNK_SIZE + 1))).startswith("bafy")


@pytest.mark.parametrize("text", [KUBO_EMPTY_V1, KUBO_HELLO_V1, VECTORS[5]["cid"], KUBO_HELLO_V0])
def test_cid_text_and_binary_round_trip(text: str) -> None:
    cid = CID.parse(text)
    assert str(cid) == text
    assert CID.from_bytes(bytes(cid)) == cid
    assert hash(CID.parse(text)) == hash(cid)


def test_cidv0_is_a_bare_sha256_multihash() -> None:
    cid = CID.parse(KUBO_HELLO_V0)
    assert (cid.version, cid.codec) == (0, DAG_PB)
    assert bytes(cid)[:2] == b"\x12\x20" and len(bytes(cid)) == 34


def test_base58btc_and_uppercase_base32_cidv1_parse_to_the_canonical_text() -> None:
    cid = CID.parse(KUBO_HELLO_V1)
    assert CID.parse("z" + b58encode(bytes(cid))) == cid
    assert CID.parse(KUBO_HELLO_V1.upper()) == cid
    assert CID.parse("/ipfs/" + KUBO_HELLO_V1) == cid
    assert bytes(cid).hex().startswith("01551220")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a CID"),
        ("hello", "not a CID fedchain reads"),
        ("bafkreifjjcie6lypi6ny7am", "digest"),
        ("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2DEVEI4", "mixed-case"),
        ("bafkre!fjj", "not valid base32"),
        ("Qm" + "0" * 44, "not a base58btc character"),
        ("zQm", "varint|version"),
    ],
)
def test_malformed_cid_text_is_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidCID, match=reason):
        CID.parse(text)


def test_non_canonical_cids_say_why() -> None:
    with pytest.raises(InvalidCID, match="CIDv0 .* not fedchain's canonical form"):
        CID.parse(KUBO_HELLO_V0).require_canonical()
    sha512 = CID.from_bytes(b"\x01\x55\x13\x40" + bytes(64))
    with pytest.raises(InvalidCID, match="not hashed with sha2-256"):
        sha512.require_canonical()
    dag_cbor = CID(1, 0x71, bytes(32))
    with pytest.raises(InvalidCID, match="codec 0x71, not raw or dag-pb"):
        dag_cbor.require_canonical()
    assert cid_of(b"x").require_canonical() == cid_of(b"x")
