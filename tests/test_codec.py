"""fedchain.model.codec: deterministic safetensors bytes; validation raises only InvalidModel."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchain.errors import InvalidModel
from fedchain.model import codec
from fedchain.model import torch as model_torch

HERE = Path(__file__).parent


def small_cnn() -> codec.Weights:
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((6, 3, 5, 5)).astype(np.float32),
        "conv1.bias": rng.standard_normal(6).astype(np.float32),
        "bn1.running_mean": np.zeros(6, np.float32),
        "bn1.num_batches_tracked": np.array(7, np.int64),
        "fc.weight": rng.standard_normal((10, 24)).astype(np.float32),
    }


def raw_file(header: dict[str, Any], data: bytes = b"", order: list[str] | None = None) -> bytes:
    """Safetensors bytes with a hand-made header, for malformed inputs."""
    header = dict(header)
    if "__metadata__" not in header:
        names = order if order is not None else [k for k in header if k != "__metadata__"]
        header["__metadata__"] = {
            "format": codec.FORMAT,
            "version": codec.VERSION,
            "order": json.dumps(names),
        }
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


ALL_DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_allowed_dtype_round_trips_exactly(dtype: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, size=(3, 4)) if dtype == "bool" else rng.standard_normal((3, 4))
    weights = {"w": values.astype(dtype), "scalar": np.array(3, dtype=dtype)}
    decoded = codec.decode(codec.encode(weights))
    for name, array in weights.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        assert np.array_equal(decoded[name], array)


def test_allowed_dtypes_are_documented_list() -> None:
    assert sorted(codec.ALLOWED_DTYPES) == sorted(ALL_DTYPES)


def test_decode_keeps_the_models_own_order_not_alphabetical() -> None:
    weights: codec.Weights = {
        "z.last_alphabetically": np.ones(2, np.float32),
        "a.first": np.ones(3, np.int64),
    }
    assert list(codec.decode(codec.encode(weights))) == ["z.last_alphabetically", "a.first"]


def test_empty_and_zero_sized_tensors_round_trip() -> None:
    weights: codec.Weights = {"empty": np.zeros((0, 3), np.float16), "x": np.ones(1, np.float32)}
    decoded = codec.decode(codec.encode(weights))
    assert decoded["empty"].shape == (0, 3)
    assert codec.decode(codec.encode({})) == {}


def test_decoded_arrays_are_writable_copies() -> None:
    data = codec.encode(small_cnn())
    decoded = codec.decode(data)
    decoded["conv1.bias"] += 1.0  # aggregation updates arrays in place
    assert np.array_equal(codec.decode(data)["conv1.bias"], small_cnn()["conv1.bias"])


def test_bytes_are_standard_safetensors() -> None:
    weights = small_cnn()
    loaded = safetensors.numpy.load(codec.encode(weights, {"round": "3"}))
    assert set(loaded) == set(weights)
    for name, array in weights.items():
        assert np.array_equal(loaded[name], array)


def test_library_written_safetensors_with_fedchain_metadata_decode() -> None:
    weights = small_cnn()
    meta = {"format": codec.FORMAT, "version": codec.VERSION, "order": json.dumps(list(weights))}
    data = safetensors.numpy.save(weights, metadata=meta)
    assert list(codec.decode(data, reference=weights)) == list(weights)


def test_same_weights_give_same_bytes_in_another_process() -> None:
    metadata = {f"key{i}": str(i) for i in range(8)}
    data = codec.encode(small_cnn(), metadata)
    assert data == codec.encode(small_cnn(), dict(reversed(list(metadata.items()))))
    script = (
        "import hashlib, sys; sys.path.insert(0, '.'); import test_codec as t; "
        "from fedchain.model import codec; "
        "m = {f'key{i}': str(i) for i in range(8)}; "
        "print(hashlib.sha256(codec.encode(t.small_cnn(), m)).hexdigest())"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=HERE
    ).stdout.strip()
    assert other == hashlib.sha256(data).hexdigest()


def test_non_contiguous_and_big_endian_inputs_encode_like_their_plain_copies() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    odd = {"t": base.T, "be": base.astype(">f4")}
    plain = {"t": np.ascontiguousarray(base.T), "be": base.copy()}
    assert codec.encode(odd) == codec.encode(plain)


def test_user_metadata_is_kept_and_reserved_keys_are_refused() -> None:
    data = codec.encode(small_cnn(), {"round": "4"})
    assert codec.read_metadata(data)["round"] == "4"
    with pytest.raises(InvalidModel, match="order"):
        codec.encode(small_cnn(), {"order": "[]"})


def test_spec_describes_names_shapes_and_dtypes() -> None:
    s = codec.read_spec(codec.encode(small_cnn()))
    assert s == codec.spec(small_cnn())
    assert s.names[0] == "conv1.weight"
    assert s.tensors[3] == codec.TensorSpec("bn1.num_batches_tracked", (), "int64")


# --- validation ----------------------------------------------------------------------------


def test_shape_mismatch_names_the_layer_and_both_shapes() -> None:
    reference = small_cnn()
    got = {**reference, "conv1.weight": np.zeros((6, 3, 3, 3), np.float32)}
    with pytest.raises(InvalidModel) as err:
        codec.decode(codec.encode(got), reference=reference)
    assert str(err.value) == "layer conv1.weight: shape (6,3,5,5) expected, got (6,3,3,3)"


def test_dtype_mismatch_names_the_layer() -> None:
    reference = small_cnn()
    got = {**reference, "conv1.bias": reference["conv1.bias"].astype(np.float64)}
    with pytest.raises(InvalidModel, match="layer conv1.bias: dtype float32 expected, got float64"):
        codec.decode(codec.encode(got), reference=codec.spec(reference))


def test_missing_and_extra_layers_are_named() -> None:
    reference = small_cnn()
    got = {k: v for k, v in reference.items() if k != "fc.weight"}
    got["fc2.weight"] = np.zeros(3, np.float32)
    with pytest.raises(InvalidModel, match=r"missing layers \['fc.weight'\].*unexpected.*fc2"):
        codec.decode(codec.encode(got), reference=reference)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_naming_the_layer(bad: float) -> None:
    weights = small_cnn()
    poisoned = weights["fc.weight"].copy()
    poisoned[2, 3] = bad
    with pytest.raises(InvalidModel, match="layer fc.weight: 1 non-finite"):
        codec.encode({**weights, "fc.weight": poisoned})
    header = {"fc.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = raw_file(header, np.array([1.0, bad], "<f4").tobytes())
    with pytest.raises(InvalidModel, match="layer fc.weight: 1 non-finite"):
        codec.decode(data)


def test_size_limit_is_enforced() -> None:
    data = codec.encode(small_cnn())
    with pytest.raises(InvalidModel, match="more than the limit of 100"):
        codec.decode(data, max_bytes=100)


@pytest.mark.parametrize(
    ("dtype", "array"),
    [("complex64", np.zeros(2, np.complex64)), ("uint16", np.zeros(2, np.uint16))],
)
def test_encode_refuses_dtypes_outside_the_allow_list(dtype: str, array: np.ndarray) -> None:
    with pytest.raises(InvalidModel, match=f"layer w: dtype {dtype} is not allowed"):
        codec.encode({"w": array})


def test_encode_refuses_non_arrays() -> None:
    with pytest.raises(InvalidModel, match="layer w: a numpy array expected, got list"):
        codec.encode({"w": [1.0, 2.0]})  # type: ignore[dict-item]


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (struct.pack("<Q", 10**6) + b"{}", "header length"),
        (struct.pack("<Q", 3) + b"{x}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
        (raw_file({"__metadata__": {"format": "other"}}), "format is 'other'"),
        (raw_file({"__metadata__": {"format": codec.FORMAT, "version": "2"}}), "version '2'"),
        (raw_file(GOOD, bytes(8), order=["w", "v"]), "'order'"),
        (
            raw_file({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),
            "dtype 'BF16' is not allowed",
        ),
        (
            raw_file({"w": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),
            "dtype 'U16' is not allowed",
        ),
        (
            raw_file({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
            "is not a list of sizes",
        ),
        (
            raw_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, bytes(8)),
            "outside the 8-byte data",
        ),
        (
            raw_file({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
            "do not hold float32 (3,)",
        ),
        (raw_file({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "needs exactly"),
        (raw_file(GOOD, bytes(12)), "4 bytes after the last tensor"),
        (
            raw_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
            "gap",
        ),
        (
            raw_file(
                {**GOOD, "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)
            ),
            "overlaps",
        ),
        (
            raw_file({"b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"),
            "bool values",
        ),
        (struct.pack("<Q", 26) + b'{"w":{},"w":{},"x":1}     ', "names 'w' twice"),
    ],
)
def test_malformed_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidModel, match=reason.replace("(", r"\(").replace(")", r"\)")):
        codec.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_invalid_model(data: bytes) -> None:
    try:
        weights = codec.decode(data)
    except InvalidModel:
        return
    assert all(isinstance(a, np.ndarray) for a in weights.values())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_damaged_model_bytes_only_ever_raise_invalid_model(data: st.DataObject) -> None:
    good = bytearray(codec.encode(small_cnn()))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        weights = codec.decode(bytes(good[:cut]), reference=small_cnn())
    except InvalidModel:
        return
    assert codec.spec(weights) == codec.spec(small_cnn())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "I64", "BOOL", "U8", "F16", "BF16"]) | JSON,
        "shape": st.lists(st.integers(-1, 5), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-1, 80), max_size=3) | JSON,
    }
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=4), ENTRY | JSON, max_size=3),
    st.binary(max_size=80),
)
def test_arbitrary_headers_only_ever_raise_invalid_model(
    header: dict[str, Any], body: bytes
) -> None:
    try:
        weights = codec.decode(raw_file(header, body))
    except InvalidModel:
        return
    assert set(weights) == set(header)


# --- torch ---------------------------------------------------------------------------------


def test_torch_state_dict_with_batchnorm_round_trips_into_a_fresh_model() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    def make() -> Any:
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
            torch.nn.Linear(4 * 6 * 6, 2),
        )  # fmt: skip

    model = make()
    model.train()
    model(torch.randn(5, 3, 8, 8))  # updates BatchNorm running stats and its counter
    weights = model_torch.from_state_dict(model.state_dict())
    assert weights["1.num_batches_tracked"].dtype == np.int64
    fresh = make()
    fresh.load_state_dict(model_torch.to_state_dict(codec.decode(codec.encode(weights))))
    model.eval()
    fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), fresh(x))


def test_bfloat16_tensors_are_refused_with_advice() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidModel, match="layer w: bfloat16 .* cast"):
        model_torch.from_state_dict({"w": torch.zeros(2, dtype=torch.bfloat16)})


# --- hostile inputs: never anything but InvalidModel ------------------------------------------


@pytest.fixture
def evm_recursion_limit() -> Iterator[None]:
    """Python's recursion limit as py-evm sets it, under which deep JSON crashed json."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _one_tensor(shape: Any, dtype: str = "F32", data: bytes = b"") -> bytes:
    return raw_file({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}, data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_one_tensor([0, 2**62]), "larger than the 2147483648-byte limit"),
        (_one_tensor([2**70] * 10), "larger than the"),
        (_one_tensor([0] * 65), "65 dimensions"),
        (_one_tensor([0, 2**63, 2**63]), "larger than the"),
        (None, "model bytes expected, got NoneType"),
        (5, "model bytes expected, got int"),
        ("not bytes", "model bytes expected, got str"),
        ([1, 2], "model bytes expected, got list"),
        (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (struct.pack("<Q", 200_000) + b"{" * 200_000, "nested deeper"),
        (_one_tensor({"a": [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]}), "shape {'a'"),
    ],
    ids=["0x2^62", "10x2^70", "65-dims", "0x2^63x2^63", "None", "int", "str", "list", "deep",
         "deep-open", "deep-shape"],
)
def test_hostile_inputs_are_invalid_models_with_a_reason(
    data: Any, reason: str, evm_recursion_limit: None
) -> None:
    for reference in (None, small_cnn()):
        with pytest.raises(InvalidModel, match=reason.replace("(", r"\(")):
            codec.decode(data, reference=reference)
    with pytest.raises(InvalidModel):
        codec.read_spec(data)


def test_a_memoryview_of_other_items_is_read_as_bytes() -> None:
    data = codec.encode(small_cnn())
    assert len(data) % 4 == 0
    decoded = codec.decode(memoryview(data).cast("I"))
    assert codec.spec(decoded) == codec.spec(small_cnn())
    with pytest.raises(InvalidModel, match="after the last tensor"):
        codec.decode(memoryview(data + b"\0" * 4).cast("I"))


DIM = st.integers(0, 4) | st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 2**70])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(DIM, max_size=70),
    st.sampled_from(["F32", "F16", "BOOL", "I64", "U8"]),
    st.binary(max_size=64),
)
def test_hostile_shapes_without_a_reference_only_raise_invalid_model(
    shape: list[int], dtype: str, body: bytes
) -> None:
    # A genesis model is decoded with no reference: nothing may crash it.
    try:
        weights = codec.decode(_one_tensor(shape, dtype, body))
    except InvalidModel:
        return
    assert list(weights["w"].shape) == shape


def test_deeply_nested_order_metadata_is_refused(evm_recursion_limit: None) -> None:
    header = {
        "__metadata__": {
            "format": codec.FORMAT, "version": codec.VERSION, "order": "[" * 100_000,
        },
    }  # fmt: skip
    with pytest.raises(InvalidModel, match="'order'"):
        codec.decode(raw_file(header))
