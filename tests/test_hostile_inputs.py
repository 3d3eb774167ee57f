"""Hostile inputs to the CID parser and the plan loader: a fedchain exception or a valid value.

(The model codec's fuzzing is in test_codec.py.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchain.errors import ConfigError, InvalidCID
from fedchain.protocol.params import MAX_PLAN_BYTES, PLAN_FORMAT, Plan
from fedchain.storage import CID
from fedchain.storage.cid import cid_bytes
from fedchain.storage.unixfs import cid_of


@pytest.fixture
def evm_recursion_limit() -> Iterator[None]:
    """Python's recursion limit as py-evm sets it, under which deep JSON crashed json."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


GOOD = cid_of(b"a model")  # a raw CIDv1
GOOD_PB = cid_of(bytes(300_000))  # dag-pb
V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


# --- CIDs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, 5, 10**12, 3.5, ["bafy"], {"cid": 1}, object(), True],
    ids=["None", "int", "big-int", "float", "list", "dict", "object", "bool"],
)
def test_cid_parsers_refuse_what_is_not_a_cid_with_invalid_cid(value: Any) -> None:
    for parse in (CID.parse, CID.from_bytes, CID.coerce, cid_bytes):
        with pytest.raises(InvalidCID):
            parse(value)


@pytest.mark.parametrize(
    "value", [b"", b"\x01", b"\xff" * 12, b"\x01\x55\x12\x20" + b"\0" * 31, bytes(300)],
    ids=["empty", "version-only", "over-long-varint", "short-digest", "too-long"],
)
def test_garbage_binary_cids_are_invalid_cids(value: bytes) -> None:
    with pytest.raises(InvalidCID):
        CID.from_bytes(value)
    with pytest.raises(InvalidCID):
        CID.coerce(bytearray(value))


def test_coerce_accepts_every_form_of_a_cid() -> None:
    for cid in (GOOD, GOOD_PB, CID.parse(V0)):
        assert CID.coerce(cid) is cid
        assert CID.coerce(str(cid)) == cid
        assert CID.coerce(bytes(cid)) == cid
        assert CID.coerce(memoryview(bytes(cid))) == cid
        assert cid_bytes(cid) == cid_bytes(str(cid)) == bytes(cid)


def _check_cid(value: CID) -> None:
    # A value the parser returns must print and re-parse to itself.
    assert CID.parse(str(value)) == value
    assert CID.from_bytes(bytes(value)) == value


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300) | st.sampled_from([str(GOOD), str(GOOD_PB), V0]).map(
    lambda t: t[:-1]) | st.from_regex(r"\A[bBzQ][a-zA-Z2-7]{0,120}\Z"))  # fmt: skip
def test_arbitrary_cid_text_only_ever_raises_invalid_cid(text: str) -> None:
    try:
        cid = CID.parse(text)
    except InvalidCID:
        return
    if cid.version == 1 and cid.codec < 2**32:
        _check_cid(cid)


@settings(max_examples=1000, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(lambda tail: b"\x01" + tail, st.binary(max_size=80))
    | st.builds(lambda d, i, b: bytes(GOOD)[:i] + bytes([b]) + bytes(GOOD)[i + 1 :] + d,
                st.binary(max_size=4), st.integers(0, 35), st.integers(0, 255))
)  # fmt: skip
def test_arbitrary_cid_bytes_only_ever_raise_invalid_cid(data: bytes) -> None:
    try:
        cid = CID.from_bytes(data)
    except InvalidCID:
        return
    if cid.canonical_problem() is None:
        _check_cid(cid)


# --- plans -------------------------------------------------------------------------------

VALID = {
    "format": PLAN_FORMAT,
    "strategy": {"name": "fedavg", "params": {}},
    "rounds": 3,
    "min_updates": 1,
    "train": {"epochs": 1},
    "evaluate": {},
    "codec": {"format": "fedchain-weights", "version": "1"},
    "max_model_bytes": 2**31,
    "software": "fedchain 0.1.0",
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=15,
)


def test_a_valid_plan_round_trips() -> None:
    plan = Plan.from_json(json.dumps(VALID).encode())
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("rounds", "3", "rounds must be an integer"),
        ("rounds", True, "rounds must be an integer"),
        ("rounds", 2**80, "rounds must be an integer in 1.."),
        ("rounds", 0, "rounds must be"),
        ("min_updates", -1, "min_updates must be"),
        ("max_model_bytes", 1e400, "max_model_bytes must be"),
        ("max_model_bytes", 2**100, "max_model_bytes must be"),
        ("strategy", "fedavg", "strategy must be an object"),
        ("strategy", {"params": {}}, 'strategy must be an object with a "name"'),
        ("train", [1, 2], "train must be an object"),
        ("codec", {"format": 1}, "codec must be an object of strings"),
        ("software", None, "software must be a string"),
    ],
)
def test_plan_fields_of_the_wrong_type_are_config_errors(
    field: str, value: Any, reason: str
) -> None:
    data = json.dumps({**VALID, field: value}).encode()
    with pytest.raises(ConfigError, match=reason):
        Plan.from_json(data)


@pytest.mark.parametrize(
    "data",
    [
        None, 5, b"", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"1" * 5000,
        b'{"format": "fedchain-plan/1"}', b"[]", b"x" * (MAX_PLAN_BYTES + 1),
        json.dumps({**VALID, "rounds": int("9" * 4000)}).encode(),
    ],
    ids=["None", "int", "empty", "not-utf8", "deep", "huge-int", "no-fields", "list", "too-big",
         "4000-digits"],
)  # fmt: skip
def test_hostile_plan_json_is_a_config_error(data: Any, evm_recursion_limit: None) -> None:
    with pytest.raises(ConfigError):
        Plan.from_json(data)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(VALID)), JSON, max_size=9), st.booleans())
def test_arbitrary_plan_json_is_a_plan_or_a_config_error(
    fields: dict[str, Any], base: bool
) -> None:
    raw = {**(VALID if base else {}), **fields}
    if base:
        raw["format"] = PLAN_FORMAT
    try:
        data = json.dumps(raw).encode()
    except ValueError:  # NaN is fine in Python's JSON; only circular data fails
        return
    try:
        plan = Plan.from_json(data)
    except ConfigError:
        return
    assert isinstance(plan.rounds, int) and plan.rounds >= 1
    assert isinstance(plan.strategy["name"], str)
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | JSON.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_plan_bytes_are_a_plan_or_a_config_error(data: bytes) -> None:
    try:
        Plan.from_json(data)
    except ConfigError:
        return


# --- JSON depth ------------------------------------------------------------------------------


def test_json_depth_check_counts_structure_not_strings(evm_recursion_limit: None) -> None:
    from fedchain.jsonsafe import TooDeep, check_depth, loads

    assert loads('{"a": "[[[[\\"[[[[", "b": [[1]]}') == {"a": '[[[["[[[[', "b": [[1]]}
    assert loads("[" * 100 + "]" * 100, max_depth=100)
    for deep in ("[" * 101 + "]" * 101, "[" * 1_000_000, '{"a":' * 200 + "1" + "}" * 200):
        with pytest.raises(TooDeep):
            loads(deep)
    check_depth(b'"' + b"[" * 10_000 + b'"')  # all inside a string
