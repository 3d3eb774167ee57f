#!/usr/bin/env python
"""Writes SPEC.md's test vectors (tests/data/spec_vectors/) with fedchain, or checks them.

    python scripts/spec_vectors.py           # (re)write tests/data/spec_vectors/
    python scripts/spec_vectors.py --check   # regenerate in memory, compare, exit 1 on a diff

Every input is made with numpy's PCG64 generator from fixed seeds, using only its integer
and uniform outputs (exact everywhere: no libm), so the files are the same on every machine.
Each round's expected outcome is computed by fedchain as its aggregator computes a round
(federation.aggregator's `_run_round`): the updates go through a content store and
`fetch_updates` (size limit, decoding and validation against the previous model, the
duplicate rules), then the plan's strategy. The vectors are the contract with other
implementations (SPEC.md §13): a change in what this script writes is a protocol change.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from eth_utils import keccak, to_checksum_address

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedchain.aggregation.strategy import (  # noqa: E402
    ROBUST_FEDAVG,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
    strategy_from_plan,
)
from fedchain.errors import (  # noqa: E402
    ContentTooLarge,
    InvalidCID,
    InvalidModel,
    StoreUnavailable,
)
from fedchain.eth.events import ChainCid, UpdateSubmitted  # noqa: E402
from fedchain.model.codec import DEFAULT_MAX_BYTES, encode, spec  # noqa: E402
from fedchain.model.fetch import canonical_header, fetch_model  # noqa: E402
from fedchain.protocol.fetching import (  # noqa: E402
    DuplicateUpdate,
    Outcome,
    Rejected,
    fetch_updates,
)
from fedchain.protocol.ledger import RoundRecord  # noqa: E402
from fedchain.protocol.params import Plan  # noqa: E402
from fedchain.protocol.round import REMOVED, TIMED_OUT, run_round  # noqa: E402
from fedchain.storage.local import LocalStore  # noqa: E402

OUT = ROOT / "tests" / "data" / "spec_vectors"

Weights = dict[str, np.ndarray]

#: Learner addresses, ascending by learner key (lower case): A[0] < A[1] < ...
A = sorted((to_checksum_address(keccak(text=f"fedchain spec learner {i}")[-20:])
            for i in range(8)), key=str.lower)


# --- inputs ---------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Uniform in [-scale, scale) from 53-bit integers: exact on every machine."""
    return (rng.random(shape) * 2.0 - 1.0) * scale


def base_model(rng: np.random.Generator) -> Weights:
    """A small two-layer float32 network (57 values)."""
    return {
        "layer1.weight": _uniform(rng, (6, 5), 0.5).astype(np.float32),
        "layer1.bias": _uniform(rng, (6,), 0.1).astype(np.float32),
        "layer2.weight": _uniform(rng, (3, 6), 0.5).astype(np.float32),
        "layer2.bias": _uniform(rng, (3,), 0.1).astype(np.float32),
    }


def mixed_model(rng: np.random.Generator) -> Weights:
    """float32, float16, int64, int8 and bool layers, and a non-ASCII name."""
    return {
        "conv.weight": _uniform(rng, (4, 3), 0.5).astype(np.float32),
        "bn.running_mean": _uniform(rng, (4,), 1.0).astype(np.float32),
        "bn.num_batches_tracked": np.array(int(rng.integers(100, 1000)), np.int64),
        "head.weight": _uniform(rng, (4, 4), 2.0).astype(np.float16),
        "head.bias": _uniform(rng, (4,), 0.5).astype(np.float16),
        "steps": rng.integers(0, 50, (3,)).astype(np.int64),
        "mask": rng.integers(0, 2, (6,)).astype(bool),
        "quant": rng.integers(-100, 100, (5,)).astype(np.int8),
        "échelle": _uniform(rng, (2,), 1.0).astype(np.float32),
    }


def half_model(rng: np.random.Generator) -> Weights:
    """A float16 embedding (256 values) and a float32 bias."""
    return {"embedding": _uniform(rng, (32, 8), 4.0).astype(np.float16),
            "bias": _uniform(rng, (8,), 0.5).astype(np.float32)}


def double_model(rng: np.random.Generator) -> Weights:
    """float64 layers: every rounding of the clipped mean's float64 sums shows in them."""
    return {"w": _uniform(rng, (16, 16), 0.5), "b": _uniform(rng, (16,), 0.1)}


def moved(rng: np.random.Generator, model: Weights, scale: float = 0.05) -> Weights:
    """A learner's update: the model moved a little (integers by a few units)."""
    out: Weights = {}
    for name, a in model.items():
        if a.dtype == bool:
            out[name] = rng.integers(0, 2, a.shape).astype(bool)
        elif a.dtype.kind in "iu":
            step = rng.integers(-3, 4, a.shape)
            info = np.iinfo(a.dtype)
            out[name] = np.clip(a.astype(np.int64) + step, info.min, info.max).astype(a.dtype)
        else:
            out[name] = (a.astype(np.float64) + _uniform(rng, a.shape, scale)).astype(a.dtype)
    return out


def dyadic_model(rng: np.random.Generator) -> Weights:
    """float32 layers of multiples of 1/64 (a difference of two is exact) and an int64 one."""
    return {"w": (rng.integers(-64, 64, (4, 3)) / 64).astype(np.float32),
            "b": (rng.integers(-64, 64, (3,)) / 64).astype(np.float32),
            "steps": rng.integers(0, 50, (3,)).astype(np.int64)}


def directed(scales: dict[int, float]) -> Callable[..., None]:
    """Updates that share a direction d (each the previous model + d + a little noise), except
    update k of `scales`, which is the previous model + scales[k] × (d + its noise): against
    the round for a negative scale, no change for 0, far along for a large one."""
    def tweak(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        d = {n: _uniform(rng, a.shape, 0.05) for n, a in previous.items() if a.dtype.kind == "f"}
        for k in range(len(updates)):
            scale = scales.get(k, 1.0)
            updates[k] = {n: (a.astype(np.float64) + scale * (d[n] + _uniform(rng, a.shape, 0.01)))
                          .astype(a.dtype) if n in d else updates[k][n]
                          for n, a in previous.items()}
    return tweak


def opposite(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
    """Two updates: the previous model + d and − d, exactly (multiples of 1/64)."""
    d = {n: rng.integers(1, 8, a.shape) / 64 for n, a in previous.items() if a.dtype.kind == "f"}
    for k, sign in enumerate((1.0, -1.0)):
        updates[k] = {n: (a.astype(np.float64) + sign * d[n]).astype(a.dtype) if n in d
                      else updates[k][n] for n, a in previous.items()}


def raw_file(weights: Weights, metadata: dict[str, str] | None = None) -> bytes:
    """fedchain's layout for weights `codec.encode` refuses (non-finite values), or with
    caller metadata (encode's own)."""
    if metadata is not None:
        return encode(weights, metadata)
    header = canonical_header(spec(weights))
    return header + b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
                              .tobytes() for a in weights.values())


@dataclass
class Sub:
    learner: str
    num_examples: int
    file: str
    staleness: int = 0


@dataclass
class Vector:
    """One round's inputs (SPEC §12); `files` maps file names to bytes."""

    description: str
    strategy: Strategy
    previous: bytes
    submissions: list[Sub]
    files: dict[str, bytes]
    min_updates: int = 1
    exclude_duplicates: bool = False
    max_model_bytes: int = DEFAULT_MAX_BYTES
    state: bytes | None = None
    removed: list[str] = field(default_factory=list)
    timed_out: bool = False
    #: Learners every member whose vote closed the round reported unavailable (§7.1).
    excused: list[str] = field(default_factory=list)


def _round(description: str, strategy: Strategy, seed: int, learners: list[tuple[str, int]],
           *, model: Callable[[np.random.Generator], Weights] = base_model,
           tweak: Callable[[np.random.Generator, Weights, list[Weights]], None] | None = None,
           **kw: Any) -> Vector:
    """A vector of honest updates from `learners` [(address, num_examples)] in chain order;
    `tweak(rng, previous, updates)` edits the updates (in place) before they are encoded."""
    rng = np.random.default_rng(seed)
    previous = model(rng)
    updates = [moved(rng, previous) for _ in learners]
    if tweak is not None:
        tweak(rng, previous, updates)
    files = {f"u{k + 1}.safetensors": raw_file(u) for k, u in enumerate(updates)}
    subs = [Sub(a, n, f"u{k + 1}.safetensors") for k, (a, n) in enumerate(learners)]
    return Vector(description, strategy, encode(previous), subs, files, **kw)


def _state(rng: np.random.Generator, previous: Weights, keys: tuple[str, ...],
           step: int | None) -> bytes:
    state: Weights = {} if step is None else {"step": np.array(step, np.int64)}
    for name, a in previous.items():
        if a.dtype.kind != "f":
            continue
        for k in keys:
            values = _uniform(rng, a.shape, 0.01)
            state[f"{k}/{name}"] = np.abs(values) * 0.01 if k == "v" else values
    return encode(state)


# --- the vectors ------------------------------------------------------------------------


def vectors() -> dict[str, Vector]:
    v: dict[str, Vector] = {}

    v["fedavg_plain"] = _round(
        "FedAvg, float32 accumulator: a weight above 2**24 is rounded to float32 (SPEC §8.3)",
        FedAvg(), 1, [(A[2], 40), (A[0], 16_777_217), (A[1], 90)])

    v["fedavg_uniform_float64"] = _round(
        "FedAvg, uniform scaling, float64 accumulator", FedAvg("uniform", "float64"), 2,
        [(A[3], 10), (A[1], 20), (A[0], 30), (A[2], 40)])

    def outlier(scale: float, who: int = 0) -> Callable[..., None]:
        def tweak(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
            updates[who] = moved(rng, previous, scale)
        return tweak

    v["fedavg_clip"] = _round(
        "FedAvg clip=1.5: the far update is scaled down to the bound (SPEC §8.5)",
        FedAvg(clip=1.5), 3, [(A[1], 50), (A[0], 60), (A[3], 70), (A[2], 80)],
        tweak=outlier(3.0, 2))

    v["fedavg_examples_cap"] = _round(
        "FedAvg examples_cap=2.0: a claim of 2**40 examples counts as 2 x the lower median",
        FedAvg(examples_cap=2.0), 4, [(A[0], 2**40), (A[1], 100), (A[2], 120), (A[3], 90)])

    v["robust_fedavg"] = _round(
        "FedAvg clip 2, examples_cap 2 (the default before align), one rogue of five: far and "
        "claiming much",
        FedAvg(clip=2.0, examples_cap=2.0), 5,
        [(A[4], 100), (A[2], 110), (A[0], 5_000_000), (A[1], 95), (A[3], 105)],
        tweak=outlier(10.0, 2))

    v["robust_fedavg_mixed_dtypes"] = _round(
        "FedAvg clip 2, examples_cap 2 (the default before align) on float32, float16, int64, "
        "int8 and bool layers: the clipped mean of floating layers, the weighted mean of "
        "integer ones", FedAvg(clip=2.0, examples_cap=2.0), 6,
        [(A[1], 30), (A[0], 45), (A[2], 60)], model=mixed_model, tweak=outlier(1.0, 1))

    v["fedavg_align"] = _round(
        "FedAvg align (SPEC §8.15), no clip or cap: an update against the round's direction "
        "weighs 0, one of no change weighs 0, the others by their cosine with the sum of unit "
        "differences", FedAvg(align=True), 70,
        [(A[3], 40), (A[0], 55), (A[4], 60), (A[1], 35), (A[2], 50)],
        tweak=directed({1: -3.0, 3: 0.0}))

    v["fedavg_align_all_against"] = _round(
        "FedAvg align on two opposite updates of one norm: the direction is 0, every update "
        "weighs 0, the previous model is kept (integer layers take the weighted mean)",
        FedAvg(align=True), 71, [(A[1], 30), (A[0], 50)], model=dyadic_model,
        tweak=opposite)

    v["robust_fedavg_align"] = _round(
        "ROBUST_FEDAVG (clip 2, examples_cap 2, align), one rogue of five: far, against the "
        "others and claiming much", ROBUST_FEDAVG, 72,
        [(A[4], 100), (A[2], 110), (A[0], 5_000_000), (A[1], 95), (A[3], 105)],
        tweak=directed({2: -10.0, 4: 3.0}))

    v["robust_fedavg_align_mixed_dtypes"] = _round(
        "ROBUST_FEDAVG (clip 2, examples_cap 2, align) on float32, float16, int64, int8 and "
        "bool layers: aligned, clipped mean of floating layers, the weighted mean of integer "
        "ones", ROBUST_FEDAVG, 73,
        [(A[1], 30), (A[0], 45), (A[2], 60)], model=mixed_model, tweak=outlier(1.0, 1))

    def reorder(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        updates[1] = dict(reversed(list(updates[1].items())))

    v["fedavg_mixed_dtypes"] = _round(
        "FedAvg on float32, float16 (summed in float32), int64, int8 and bool (rounded half to "
        "even, a tie is false) layers; one update lists its layers in another order",
        FedAvg(), 7, [(A[2], 3), (A[0], 5), (A[1], 4), (A[3], 4)], model=mixed_model,
        tweak=reorder)

    v["fedavg_float16"] = _round(
        "FedAvg of a float16 layer: products and sums in float32, the mean divided in float32 "
        "then rounded to float16 (two roundings, SPEC §8.3)", FedAvg(), 38,
        [(A[0], 1_000_003), (A[1], 999_999_937), (A[2], 123_456_789), (A[3], 7)],
        model=half_model, tweak=outlier(1.0, 2))

    v["fedavg_clip_float64"] = _round(
        "FedAvg clip=1.0 on float64 layers: norms by halving sums, the bound, the factors and "
        "the float64 sum all show in the result's bits", FedAvg(clip=1.0), 29,
        [(A[4], 11), (A[3], 13), (A[2], 17), (A[1], 19), (A[0], 23)], model=double_model,
        tweak=outlier(0.5, 1))

    def signed_zero(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        previous["layer1.bias"][0] = np.float32(0.0)
        for u in updates:
            u["layer1.bias"][0] = np.float32(-0.0)

    v["fedadam_signed_zero"] = _round(
        "FedAdam without state: where every update holds -0 over a +0, the pseudo-gradient is "
        "-0 and m = (1 - beta1) x -0 + 0.0 = +0 in the new state (SPEC §8.9)", FedAdam(), 30,
        [(A[1], 5), (A[0], 6)], tweak=signed_zero)

    v["fedmedian_mixed_dtypes"] = _round(
        "FedMedian of four updates (mean of the two middle values), integer and bool layers "
        "rounded half to even", FedMedian(), 8, [(A[3], 10), (A[2], 10), (A[1], 10), (A[0], 10)],
        model=mixed_model)

    v["fedtrimmedavg"] = _round(
        "FedTrimmedAvg beta=0.3 of six updates: 0.3 x 6 = 1.7999999999999998 in binary64, "
        "so one value is cut on each side", FedTrimmedAvg(beta=0.3), 9,
        [(A[0], 10), (A[1], 10), (A[2], 10), (A[3], 10), (A[4], 10), (A[5], 10)],
        tweak=outlier(2.0, 3))

    v["krum"] = _round(
        "Krum f=1 m=1 of five updates: the most central update, exactly",
        Krum(f=1, m=1), 10, [(A[4], 10), (A[3], 20), (A[2], 30), (A[1], 40), (A[0], 50)],
        tweak=outlier(2.0, 0))

    v["multikrum_mixed_dtypes"] = _round(
        "multi-Krum f=1 m=3 examples_cap=2 of six updates on mixed dtypes: distances over every "
        "layer, the capped weighted mean of the three most central",
        Krum(f=1, m=3, examples_cap=2.0), 11,
        [(A[0], 10), (A[1], 20), (A[2], 1000), (A[3], 40), (A[4], 50), (A[5], 60)],
        model=mixed_model, tweak=outlier(1.0, 4))

    v["krum_too_few"] = _round(
        "Krum f=1 needs 2f+3 = 5 updates, four are included: aggregation fails, carried over",
        Krum(f=1), 12, [(A[0], 10), (A[1], 10), (A[2], 10), (A[3], 10)])

    rng = np.random.default_rng(13)
    base = base_model(rng)
    v["fedavgm"] = _round(
        "FedAvgM server_lr=0.8 momentum=0.9 with the momentum state of the round before",
        FedAvgM(server_lr=0.8, momentum=0.9), 13, [(A[1], 30), (A[0], 20), (A[2], 25)],
        state=_state(rng, base, ("momentum",), None))

    rng = np.random.default_rng(14)
    base = base_model(rng)
    v["fedadam"] = _round(
        "FedAdam eta=0.05 with the state after step 3 (bias correction t = 4)",
        FedAdam(eta=0.05), 14, [(A[2], 30), (A[1], 20), (A[0], 25)],
        state=_state(rng, base, ("m", "v"), 3))

    v["fedadam_first_round_mixed_dtypes"] = _round(
        "FedAdam (clip 2) without state (t = 1) on mixed dtypes: the state is created; integer "
        "layers take the mean", FedAdam(clip=2.0), 15, [(A[0], 7), (A[1], 9), (A[2], 11)],
        model=mixed_model)

    rng = np.random.default_rng(61)
    base = base_model(rng)
    v["fedyogi"] = _round(
        "FedYogi eta=0.05 with the m and v state of the round before: v moves by "
        "(1 - beta2) x delta^2 towards delta^2, by sign(v - delta^2) (SPEC §8.13)",
        FedYogi(eta=0.05), 61, [(A[1], 30), (A[2], 20), (A[0], 25)],
        state=_state(rng, base, ("m", "v"), None))

    v["fedyogi_first_round_mixed_dtypes"] = _round(
        "FedYogi without state on mixed dtypes: v starts at +0, so v = (1 - beta2) x delta^2; "
        "integer layers take the mean", FedYogi(), 62, [(A[0], 7), (A[1], 9), (A[2], 11)],
        model=mixed_model)

    rng = np.random.default_rng(63)
    base = base_model(rng)
    v["fedadagrad"] = _round(
        "FedAdagrad eta=0.05 beta1=0.5 with the m and v state of the round before: "
        "v = delta^2 + v, no bias correction (SPEC §8.12)",
        FedAdagrad(eta=0.05, beta1=0.5), 63, [(A[2], 30), (A[0], 20), (A[1], 25)],
        state=_state(rng, base, ("m", "v"), None))

    v["fedadagrad_first_round"] = _round(
        "FedAdagrad (clip 2) without state: v = delta^2 + 0.0, m = delta + 0.0",
        FedAdagrad(clip=2.0), 64, [(A[0], 7), (A[1], 9), (A[2], 11)])

    staleness = _round(
        "staleness weights: num_examples >> staleness, at least 1 (SPEC §7.2)", FedAvg(), 16,
        [(A[0], 100), (A[1], 101), (A[2], 77), (A[3], 5)])
    for sub, s in zip(staleness.submissions, (0, 1, 3, 10), strict=True):
        sub.staleness = s
    v["staleness"] = staleness

    def nan(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        updates[1]["layer1.bias"][2] = np.nan

    v["nonfinite_rejected"] = _round(
        "an update holding a NaN is invalid; the others are aggregated", FedAvg(), 17,
        [(A[0], 10), (A[1], 20), (A[2], 30)], tweak=nan)

    def huge(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        for u in updates[:2]:
            u["layer2.weight"][1, 1] = np.float32(3.0e38)

    v["nonfinite_carry_over"] = _round(
        "two valid updates whose float32 weighted sum overflows: the result is not finite, "
        "aggregation fails, carried over", FedAvg(), 18, [(A[0], 10), (A[1], 20), (A[2], 30)],
        tweak=huge)

    rng = np.random.default_rng(19)
    base = base_model(rng)
    below = _round(
        "FedAdam with state: two submissions, min_updates 3: carried over without fetching "
        "(the garbage submission is not judged); no state published",
        FedAdam(), 19, [(A[1], 10), (A[0], 10)], min_updates=3,
        state=_state(rng, base, ("m", "v"), 1))
    below.files["u2.safetensors"] = b"not a model"
    v["below_min_updates"] = below

    def too_few(rng: np.random.Generator, previous: Weights, updates: list[Weights]) -> None:
        updates[0]["layer2.bias"] = np.zeros(4, np.float32)
        updates[2]["layer1.bias"] = updates[2]["layer1.bias"].astype(np.float64)

    v["too_few_valid"] = _round(
        "min_updates 2, three submissions, two invalid (a wrong shape, a wrong dtype): one "
        "included is too few, carried over", FedAvg(), 20,
        [(A[0], 10), (A[1], 10), (A[2], 10)], min_updates=2, tweak=too_few)

    rejections = _round(
        "rejected: 7 bytes, a wrong shape, a missing layer, -inf, and valid weights whose "
        "metadata takes the file past max_model_bytes; the two valid updates aggregated",
        FedAvg(), 21, [(A[i], 10 + i) for i in range(7)])
    rng = np.random.default_rng(121)
    previous_weights = base_model(np.random.default_rng(21))
    ok_weights = moved(rng, previous_weights)
    rejections.max_model_bytes = len(rejections.previous) + 64
    rejections.files["u3.safetensors"] = b"\x00" * 7
    wrong_shape = dict(ok_weights, **{"layer1.weight": np.zeros((5, 6), np.float32)})
    rejections.files["u4.safetensors"] = raw_file(wrong_shape)
    missing = {k: a for k, a in ok_weights.items() if k != "layer2.bias"}
    rejections.files["u5.safetensors"] = raw_file(missing)
    rejections.files["u6.safetensors"] = raw_file(ok_weights, {"padding": "x" * 200})
    inf = {k: a.copy() for k, a in ok_weights.items()}
    inf["layer2.weight"][0, 0] = -np.inf
    rejections.files["u7.safetensors"] = raw_file(inf)
    v["rejections"] = rejections

    dup = _round(
        "exclude_duplicates: a learner sorting first resubmits, later in chain order, the "
        "very file of another: rejected unfetched (SPEC §7.4 rule 1)", FedAvg(), 22,
        [(A[3], 10), (A[1], 10), (A[2], 10)], exclude_duplicates=True)
    dup.submissions[1].file = "u1.safetensors"
    del dup.files["u2.safetensors"]
    v["duplicate_same_cid"] = dup

    allowed = _round(
        "without exclude_duplicates the same file submitted twice counts twice", FedAvg(), 22,
        [(A[3], 10), (A[1], 10), (A[2], 10)])
    allowed.submissions[1].file = "u1.safetensors"
    del allowed.files["u2.safetensors"]
    v["duplicate_allowed"] = allowed

    rng = np.random.default_rng(123)
    reenc = _round(
        "exclude_duplicates: the same weights re-encoded with metadata after the canonical "
        "file are a duplicate (rule 6); re-encoded before it, both count", FedAvg(), 23,
        [(A[4], 10), (A[0], 10), (A[1], 10), (A[3], 10), (A[2], 10)],
        exclude_duplicates=True)
    w1 = moved(rng, base_model(np.random.default_rng(23)))
    w2 = moved(rng, base_model(np.random.default_rng(23)))
    reenc.files["u1.safetensors"] = encode(w1)
    reenc.files["u2.safetensors"] = encode(w1, {"note": "mine"})
    reenc.files["u3.safetensors"] = encode(w2, {"note": "first"})
    reenc.files["u4.safetensors"] = encode(w2)
    v["duplicate_reencoded"] = reenc

    v["removed"] = _round(
        "a learner removed by the owner before the round closed is excluded", FedAvg(), 24,
        [(A[0], 10), (A[1], 20), (A[2], 30)], removed=[A[1]])

    v["removed_below_min_updates"] = _round(
        "removing a learner leaves fewer usable submissions than min_updates: carried over",
        FedAvg(), 25, [(A[0], 10), (A[1], 20), (A[2], 30)], removed=[A[2]], min_updates=3)

    v["excused"] = _round(
        "every member whose vote closed the round reported a valid update unavailable: it is "
        "rejected as unavailable, unfetched, and the others are aggregated", FedAvg(), 28,
        [(A[0], 10), (A[1], 20), (A[2], 30)], excused=[A[1]], min_updates=2)

    v["timed_out"] = _round(
        "no quorum by the vote deadline: closeRound carried the previous model over",
        FedAvg(), 26, [(A[0], 10), (A[1], 20)], timed_out=True)

    v["no_submissions"] = _round(
        "min_updates 0 and no submission: nothing included, carried over", FedAvg(), 27, [],
        min_updates=0)
    return v


# --- fedchain's outcome -------------------------------------------------------------------


def _reason(r: Rejected) -> str:
    error = r.error
    if isinstance(error, DuplicateUpdate):
        return "duplicate"
    if isinstance(error, InvalidCID):
        return "bad-cid"
    if isinstance(error, ContentTooLarge):
        return "too-large"
    if isinstance(error, InvalidModel):
        return "invalid"
    return "unavailable"


def outcome(vector: Vector, store: LocalStore) -> dict[str, Any]:
    """The round's outcome as every fedchain role computes it: `protocol.round.run_round`
    over the vector's submissions, fetched from `store` (SPEC §7.3)."""
    limit = vector.max_model_bytes
    previous_cid = store.put(vector.previous)
    previous = fetch_model(store, previous_cid, max_bytes=limit)
    state = (None if vector.state is None else
             fetch_model(store, store.put(vector.state), max_bytes=limit))
    events = [UpdateSubmitted(block=k + 1, tx=f"0x{k + 1:064x}", log_index=0, round=1,
                              learner=s.learner,
                              model_cid=ChainCid(bytes(store.put(vector.files[s.file]))),
                              num_examples=s.num_examples, staleness=s.staleness)
              for k, s in enumerate(vector.submissions)]
    record = RoundRecord(1, ChainCid(bytes(previous_cid)), submissions=events,
                         removed=set(vector.removed), timed_out=vector.timed_out)
    plan = Plan(strategy=vector.strategy.to_plan(), rounds=1, min_updates=vector.min_updates,
                max_model_bytes=limit, exclude_duplicates=vector.exclude_duplicates)

    def fetch(usable: Sequence[UpdateSubmitted]) -> Iterable[Outcome]:
        return fetch_updates(store, usable, max_bytes=limit, reference=spec(previous),
                             exclude_duplicates=vector.exclude_duplicates, copy=False)

    o = run_round(plan, strategy_from_plan(plan.strategy), record, fetch, previous, state,
                  raise_errors=(StoreUnavailable,), excused=vector.excused)
    if o.carried_over is None or o.carried_over != TIMED_OUT:
        store.put(o.model_bytes)
    rejected = [{"learner": r.learner, "reason": "removed" if r.reason == REMOVED else _reason(r)}
                for r in o.excluded if r.reason == REMOVED or r.error is not None]
    return {
        "model_cid": str(o.model_cid),
        "state_cid": None if o.state_cid is None else str(o.state_cid),
        "included": list(o.learners),
        "carried_over": o.carried_over,
        "rejected": sorted(rejected, key=lambda r: r["learner"].lower()),
    }


def vector_json(vector: Vector, expected: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": vector.description,
        "strategy": vector.strategy.to_plan(),
        "min_updates": vector.min_updates,
        "exclude_duplicates": vector.exclude_duplicates,
        "max_model_bytes": vector.max_model_bytes,
        "previous": "previous.safetensors",
        "state": None if vector.state is None else "state.safetensors",
        "submissions": [{"learner": s.learner, "num_examples": s.num_examples,
                         "staleness": s.staleness, "file": s.file}
                        for s in vector.submissions],
        "removed": list(vector.removed),
        "timed_out": vector.timed_out,
        "excused": list(vector.excused),
        "expected": expected,
    }


def _dump(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def plans() -> dict[str, Any]:
    """Plans as fedchain writes them (SPEC §6.2): the fields set, the bytes, the CID."""
    from fedchain.storage import cid_of

    examples = [
        {"strategy": FedAvg(clip=2.0, examples_cap=2.0).to_plan(), "rounds": 3,
         "min_updates": 2},
        {"strategy": FedAdam(eta=0.01).to_plan(), "rounds": 10, "min_updates": 2,
         "exclude_duplicates": True, "fraction": 0.5, "update_window": 300,
         "vote_window": 600, "train": {"lr": 0.1, "note": "é", "steps": 5}},
        {"strategy": Krum(f=2, m=3).to_plan(), "rounds": 100, "min_updates": 7,
         "reveal_window": 60, "update_window": 120, "verify": "sampled", "verify_rate": 0.1,
         "max_model_bytes": 1 << 30, "evaluate": {"batch_size": 256}},
        {"strategy": FedTrimmedAvg(beta=0.1).to_plan(), "rounds": 5, "min_updates": 0,
         "buffer_size": 4, "max_staleness": 2, "verify_max_bytes": 0, "fraction": 1.0},
        {"strategy": FedAvgM(server_lr=1, momentum=0.5, clip=3.0).to_plan(), "rounds": 2,
         "verify": "off", "fraction": 0.0001, "train": {"big": 1e22, "small": 1.5e-7}},
        {"strategy": FedMedian().to_plan(), "rounds": 1, "software": "other 2.0",
         "train": {"list": [1, 2.5, "x\n\"y\""]}},
        {"strategy": ROBUST_FEDAVG.to_plan(), "rounds": 3, "min_updates": 2},
    ]
    out = []
    for fields in examples:
        data = Plan(**fields).to_json()
        out.append({"plan": {"software": Plan.software, **fields} if "software" not in fields
                    else fields, "bytes": data.decode("ascii"), "cid": str(cid_of(data))})
    return {"plans": out}


def generate() -> dict[str, bytes]:
    """Every file of tests/data/spec_vectors/, by path relative to it."""
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        for name, vector in vectors().items():
            expected = outcome(vector, store)
            files[f"{name}/vector.json"] = _dump(vector_json(vector, expected))
            files[f"{name}/previous.safetensors"] = vector.previous
            if vector.state is not None:
                files[f"{name}/state.safetensors"] = vector.state
            for file in sorted({s.file for s in vector.submissions}):
                files[f"{name}/{file}"] = vector.files[file]
    files["plans.json"] = _dump(plans())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate in memory and compare with the files on disk")
    args = parser.parse_args(argv)
    files = generate()
    on_disk = {str(p.relative_to(OUT)): p.read_bytes()
               for p in sorted(OUT.rglob("*")) if p.is_file()} if OUT.exists() else {}
    if args.check:
        problems = [f"missing: {p}" for p in sorted(set(files) - set(on_disk))]
        problems += [f"not generated: {p}" for p in sorted(set(on_disk) - set(files))]
        problems += [f"differs: {p}" for p in sorted(set(files) & set(on_disk))
                     if files[p] != on_disk[p]]
        for line in problems:
            print(line)
        print(f"{len(files)} files checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    for stale in set(on_disk) - set(files):
        (OUT / stale).unlink()
    for path, data in files.items():
        target = OUT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for directory in sorted(OUT.iterdir()):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    total = sum(len(d) for d in files.values())
    count = sum(1 for p in files if p.endswith("/vector.json"))
    print(f"wrote {count} vectors, {len(files)} files, {total} bytes to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
