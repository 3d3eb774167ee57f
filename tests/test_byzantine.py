"""Byzantine bounds: one rogue learner must not wreck a round, and the bounds replay bit for bit.

Update-norm clipping and the examples cap (`FedAvg(clip=…, examples_cap=…)`), the finiteness
check every strategy's result passes before it is returned, and the exact-duplicate rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedchain.aggregation.rules import (
    capped_counts,
    clip_factors,
    examples_cap_value,
    fixed_sum,
    lower_median,
    update_norm,
)
from fedchain.aggregation.strategy import (
    ROBUST_FEDAVG,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
    Update,
    strategy_from_plan,
)
from fedchain.aggregation.streaming import bounded_mean
from fedchain.errors import AggregationError, ConfigError
from fedchain.model.codec import encode
from fedchain.protocol.rules import Submission, find_duplicates
from fedchain.storage.cid import CID, DAG_PB

LEARNERS = [f"0x{i:02X}{'aB' * 19}" for i in range(1, 8)]
ROOT = Path(__file__).resolve().parent.parent


def pseudo(n: int, seed: int) -> np.ndarray:
    """n values in [-0.5, 0.5) from integer arithmetic only: the same on every machine and
    numpy version (unlike numpy's random distributions, which may change between versions)."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed * 1_000_003 + 1)
    h = (i * np.uint64(2654435761) + np.uint64(seed * 97)) % np.uint64(2**32)
    return h.astype(np.float64) / 2**32 - 0.5


def model(seed: int, scale: float = 1.0, big: int = 70_000) -> dict[str, np.ndarray]:
    """A model with float32 (one layer over a block of 2**16), float16, float64, int, bool."""
    return {
        "fc1.weight": (pseudo(big, seed) * scale).astype(np.float32).reshape(-1, 100),
        "fc1.bias": (pseudo(100, seed + 50) * scale).astype(np.float32),
        "fc2.weight": (pseudo(30, seed + 70) * scale).astype(np.float16).reshape(3, 10),
        "bn.running_mean": pseudo(7, seed + 90) * scale,
        "bn.num_batches_tracked": np.array(10 + seed, dtype=np.int64),
        "mask": (pseudo(5, seed + 110) > 0),
    }


PREVIOUS = model(0)
FLOATING = [n for n, a in PREVIOUS.items() if a.dtype.kind == "f"]


def honest(n: int = 4, counts: list[int] | None = None) -> list[Update]:
    """Updates that move a little from PREVIOUS (norm of a few units, like a real round)."""
    counts = counts or [100 + 10 * i for i in range(n)]
    ups = []
    for i in range(n):
        step = model(i + 1, scale=0.01)
        weights = {
            k: (PREVIOUS[k] + step[k]).astype(v.dtype) if v.dtype.kind == "f" else step[k]
            for k, v in PREVIOUS.items()
        }
        ups.append(Update(LEARNERS[i], counts[i], weights))
    return ups


def rogue(weights: dict[str, np.ndarray], count: int = 100) -> Update:
    return Update(LEARNERS[6], count, weights)


def scaled(factor: float) -> dict[str, np.ndarray]:
    """model(9) × factor; float16 layers (whose largest value is 65504) × at most 1e4."""
    return {k: (v * (factor if v.itemsize >= 4 else min(factor, 1e4))).astype(v.dtype)
            if v.dtype.kind == "f" else v.copy() for k, v in model(9).items()}


def filled(value: float) -> dict[str, np.ndarray]:
    """Every floating weight `value`, or its dtype's largest finite value if it is smaller."""
    def fill(v: np.ndarray) -> np.ndarray:
        top = float(np.finfo(v.dtype).max)
        return np.full_like(v, min(value, top) if math.isfinite(value) else value)

    return {k: fill(v) if v.dtype.kind == "f" else v.copy() for k, v in model(9).items()}


def moved(result: dict[str, np.ndarray]) -> float:
    return update_norm(PREVIOUS, result)


def digest(weights: dict[str, np.ndarray]) -> str:
    return hashlib.sha256(encode(weights)).hexdigest()


# --- the reductions ------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 1000, 65_537])
def test_fixed_sum_is_accurate_and_exact_on_integers(n: int) -> None:
    ints = np.arange(n, dtype=np.float64)
    assert fixed_sum(ints.copy()) == n * (n - 1) / 2
    values = pseudo(n, 3) * 1e3
    assert fixed_sum(values.copy()) == pytest.approx(math.fsum(values), rel=1e-13, abs=1e-9)


def test_update_norm_is_the_euclidean_norm_of_the_floating_layers() -> None:
    update = honest(1)[0].weights
    expected = math.sqrt(sum(
        math.fsum(((update[k].astype(np.float64) - PREVIOUS[k]).ravel()) ** 2) for k in FLOATING
    ))
    assert update_norm(PREVIOUS, update) == pytest.approx(expected, rel=1e-12)
    # integer and bool layers do not count
    other = dict(update, **{"bn.num_batches_tracked": np.array(10**9, dtype=np.int64)})
    assert update_norm(PREVIOUS, other) == update_norm(PREVIOUS, update)
    # every float32 value at 3e38 still has a finite float64 norm
    assert math.isfinite(update_norm(PREVIOUS, filled(3e38)))


def test_lower_median_and_examples_cap() -> None:
    assert lower_median([5, 1, 3]) == 3
    assert lower_median([4, 1, 3, 2]) == 2  # the lower middle value: robust to 2 of 4 high
    assert lower_median([7.0, 2**40]) == 7.0
    assert examples_cap_value([100, 120, 90, 110, 2**40], 2.0) == 220
    assert capped_counts([100, 120, 90, 110, 2**40], 2.0) == [100, 120, 90, 110, 220]
    assert examples_cap_value([1, 1, 1], 0.1) == 1  # never below one example
    bound, factors = clip_factors([1.0, 2.0, 8.0, math.inf], 2.0)
    assert bound == 4.0 and factors == [1.0, 1.0, 0.5, 0.0]


# --- clipping ------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [1e30, 3e38], ids=["x1e30", "all-3e38"])
@pytest.mark.parametrize(
    "strategy",
    [FedAvg(clip=2.0), ROBUST_FEDAVG, FedAvgM(clip=2.0, momentum=0.0), FedAdam(clip=2.0)],
    ids=["FedAvg", "robust", "FedAvgM", "FedAdam"],
)
def test_clipping_bounds_a_huge_update(strategy: Strategy, attack: float) -> None:
    ups = honest(4)
    bad = scaled(attack) if attack == 1e30 else filled(attack)
    result, _ = strategy.aggregate(PREVIOUS, [*ups, rogue(bad)])
    for name in FLOATING:
        assert np.isfinite(result[name]).all(), name
    norms = [update_norm(PREVIOUS, u.weights) for u in ups]
    bound = 2.0 * sorted(norms)[1]  # lower median of the five norms: the rogue's is largest
    if isinstance(strategy, FedAdam):  # Adam moves each coordinate by about eta
        assert np.abs(result["fc1.weight"] - PREVIOUS["fc1.weight"]).max() <= 0.11
        return
    # ‖mean Δ‖ ≤ Σ wᵢ ‖clipped Δᵢ‖ / Σ wᵢ ≤ max(B, honest norms) (+ rounding to the dtypes)
    assert moved(result) <= max(bound, *norms) + 1e-2
    # and beyond the honest updates' mean, the rogue moved it by at most its weight share
    # (w/W) of B + ‖honest mean Δ‖: result − honest = (w/W)(cΔ_rogue − honest mean Δ)
    if getattr(strategy, "align", None):
        return  # weights are rescaled by alignment: the share below is tests/test_attacks.py's
    honest_only, _ = strategy.aggregate(PREVIOUS, ups)
    share = 100 / (sum(u.num_examples for u in ups) + 100)
    assert update_norm(honest_only, result) <= share * (bound + moved(honest_only)) + 1e-2


def test_plain_fedavg_refuses_to_return_an_overflowed_model() -> None:
    with pytest.raises(AggregationError, match="layer fc1.weight .*non-finite"):
        FedAvg().aggregate(PREVIOUS, [*honest(4), rogue(filled(3e38))])
    # and a 1e30 update poisons plain FedAvg (finite, so it is not refused): why clip exists
    poisoned, _ = FedAvg().aggregate(PREVIOUS, [*honest(4), rogue(scaled(1e30))])
    assert moved(poisoned) > 1e25


def test_clip_keeps_honest_rounds_close_to_fedavg_and_other_layers_identical() -> None:
    ups = honest(5)
    plain, _ = FedAvg().aggregate(PREVIOUS, ups)
    loose, _ = FedAvg(clip=1e6).aggregate(PREVIOUS, ups)
    for name in ("bn.num_batches_tracked", "mask"):
        assert loose[name].tobytes() == plain[name].tobytes()
    for name in FLOATING:
        tol = 2e-3 if plain[name].dtype == np.float16 else 1e-6
        np.testing.assert_allclose(loose[name], plain[name], rtol=tol, atol=tol)
    # the default's bounds, twice the median norm and claim, leave similar honest updates
    # alone (its `align` reweights them by direction: tests/test_attacks.py)
    robust, _ = FedAvg(clip=2.0, examples_cap=2.0).aggregate(PREVIOUS, ups)
    assert all(robust[n].tobytes() == loose[n].tobytes() for n in PREVIOUS)


def test_clip_uses_the_lower_median_so_two_updates_cannot_lift_the_bound() -> None:
    one = honest(1)
    result, _ = FedAvg(clip=2.0).aggregate(PREVIOUS, [*one, rogue(scaled(1e30), 100)])
    h = update_norm(PREVIOUS, one[0].weights)
    assert moved(result) <= 2 * h * (1 + 1e-6)  # not (h + 1e30-ish) / 2


def test_zero_bound_and_infinite_norms() -> None:
    same = [Update(LEARNERS[i], 10, dict(PREVIOUS)) for i in range(3)]
    result, _ = FedAvg(clip=2.0).aggregate(PREVIOUS, [*same, rogue(model(9))])
    # three updates equal to the previous model: bound 0, the fourth is scaled to nothing
    for name in FLOATING:
        assert result[name].tobytes() == PREVIOUS[name].tobytes(), name
    # a float64 layer whose difference overflows the sum of squares: norm inf, factor 0
    huge = dict(honest(1)[0].weights, **{"bn.running_mean": np.full(7, 1e300)})
    assert update_norm(PREVIOUS, huge) == math.inf
    result, _ = FedAvg(clip=2.0).aggregate(PREVIOUS, [*honest(4), rogue(huge)])
    assert np.abs(result["bn.running_mean"]).max() < 1


def test_clipped_fedavg_takes_a_one_shot_generator() -> None:
    ups = [*honest(4), rogue(scaled(1e30))]
    from_list, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, ups)
    from_gen, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, (u for u in ups))
    assert digest(from_list) == digest(from_gen)
    # the bounded ones stream in two passes (statistics, then the fold): see test_streaming.py
    assert ROBUST_FEDAVG.streams and FedAvg().streams and FedAvgM(clip=1.0).streams
    assert not FedMedian().streams


def test_fedavgm_without_momentum_is_clipped_fedavg() -> None:
    ups = [*honest(4), rogue(scaled(1e30))]
    avg, _ = FedAvg(clip=2.0).aggregate(PREVIOUS, ups)
    avgm, _ = FedAvgM(clip=2.0, momentum=0.0).aggregate(PREVIOUS, ups)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "bn.num_batches_tracked", "mask"):
        assert avg[name].tobytes() == avgm[name].tobytes(), name


# --- the examples cap ----------------------------------------------------------------


def test_examples_cap_defeats_a_claim_of_2_to_the_40() -> None:
    ups = honest(4, counts=[100, 120, 90, 110])
    stale = rogue({k: v.copy() for k, v in PREVIOUS.items()}, count=2**40)  # a free-rider
    plain, _ = FedAvg().aggregate(PREVIOUS, [*ups, stale])
    honest_mean, _ = FedAvg().aggregate(PREVIOUS, ups)
    assert moved(plain) < 1e-3 * moved(honest_mean)  # the claim froze the model
    capped, _ = FedAvg(examples_cap=2.0).aggregate(PREVIOUS, [*ups, stale])
    # exactly FedAvg with the claim counted as 2 × the lower median (110) = 220
    expected, _ = FedAvg().aggregate(PREVIOUS, [*ups, rogue(stale.weights, count=220)])
    assert digest(capped) == digest(expected)
    assert moved(capped) > 0.6 * moved(honest_mean)  # 420 of 640 examples still move it


def test_examples_cap_leaves_honest_unequal_shards_alone() -> None:
    ups = honest(5, counts=[50, 80, 100, 130, 190])  # 190 ≤ 2 × 100
    plain, _ = FedAvg().aggregate(PREVIOUS, ups)
    capped, _ = FedAvg(examples_cap=2.0).aggregate(PREVIOUS, ups)
    assert digest(plain) == digest(capped)


def test_multikrum_caps_claims_too() -> None:
    ups = honest(4, counts=[100, 120, 90, 110])
    center = bounded_mean(PREVIOUS, ups)  # the most central update: Krum keeps it
    assert center is not None
    boosted = [*ups, rogue(center, count=2**40)]
    uncapped, _ = Krum(f=1, m=3).aggregate(PREVIOUS, boosted)
    assert update_norm(center, uncapped) < 1e-3 * moved(center)  # the claim took over
    capped, _ = Krum(f=1, m=3, examples_cap=1.0).aggregate(PREVIOUS, boosted)
    from fedchain.aggregation.rules import krum_select

    chosen = krum_select([u.weights for u in boosted], 1, 3)
    assert 4 in chosen
    counts = capped_counts([u.num_examples for u in boosted], 1.0)  # cap: 110
    expected, _ = FedAvg().aggregate(
        PREVIOUS, [Update(boosted[i].learner, counts[i], boosted[i].weights) for i in chosen])
    assert digest(capped) == digest(expected)


# --- finiteness ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [FedAvg(), FedAvg(accumulator="float64"), FedAvgM(), FedAdam(), FedAvg(examples_cap=2.0)],
    ids=lambda s: json.dumps(s.to_plan()["params"]),
)
def test_no_strategy_returns_a_non_finite_model(strategy: Strategy) -> None:
    nan = rogue(filled(np.nan))
    with pytest.raises(AggregationError, match=r"layer \S+ has \d+ non-finite"):
        strategy.aggregate(PREVIOUS, [*honest(2), nan])


def test_clipping_refuses_a_nan_update_by_name() -> None:
    with pytest.raises(AggregationError, match=f"update from {LEARNERS[6]} .*NaN"):
        ROBUST_FEDAVG.aggregate(PREVIOUS, [*honest(2), rogue(filled(np.nan))])


def test_robust_rules_outvote_a_nan_update() -> None:
    for strategy in (FedMedian(), FedTrimmedAvg(beta=0.2)):
        result, _ = strategy.aggregate(PREVIOUS, [*honest(4), rogue(filled(np.nan))])
        assert all(np.isfinite(result[n]).all() for n in FLOATING)


def test_server_state_is_checked_too() -> None:
    # FedAdam's second moment of a 1e200 difference overflows float64 (Δ² > 1.8e308): the
    # step itself is finite (m / √v = 0), the state is not
    ups = honest(2)
    huge = [Update(u.learner, u.num_examples,
                   dict(u.weights, **{"bn.running_mean": np.full(7, 1e200)})) for u in ups]
    with pytest.raises(AggregationError, match=r"FedAdam server state: layer v/bn.running_mean"):
        FedAdam().aggregate(PREVIOUS, huge)


# --- reproducibility -----------------------------------------------------------------

SCRIPT = """
import hashlib, json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_byzantine import PREVIOUS, honest, rogue, scaled, filled
from fedchain.aggregation.strategy import FedAvg, FedAdam, ROBUST_FEDAVG
from fedchain.model.codec import encode
out = {{}}
rounds = {{
    "x1e30": [*honest(4), rogue(scaled(1e30))],
    "3e38": [*honest(4), rogue(filled(3e38))],
    "claim": [*honest(4), rogue(scaled(1.0), 2**40)],
}}
for attack, ups in rounds.items():
    for label, s in (("robust", ROBUST_FEDAVG), ("clip1", FedAvg(clip=1.0, accumulator="float64")),
                     ("adam", FedAdam(clip=2.0, examples_cap=2.0)),
                     ("bounds", FedAvg(clip=2.0, examples_cap=2.0))):
        new, state = s.aggregate(PREVIOUS, ups)
        out[attack + "/" + label] = hashlib.sha256(encode(new)).hexdigest()
        if state is not None:
            out[attack + "/" + label + "/state"] = hashlib.sha256(encode(state)).hexdigest()
print(json.dumps(out, sort_keys=True))
"""



def _run(env_extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **env_extra)
    code = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bounded_rounds_are_bit_identical_in_two_processes_and_cpu_paths() -> None:
    from numpy._core._multiarray_umath import __cpu_features__

    first = _run({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    # the second process: other thread counts, and numpy's SIMD kernels for wider vectors
    # switched off where the CPU has them, so elementwise loops take other code paths
    second_env = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    wide = [f for f in ("X86_V4", "X86_V3", "AVX512F", "AVX2", "ASIMDHP")
            if __cpu_features__.get(f)]
    if wide:
        second_env["NPY_DISABLE_CPU_FEATURES"] = " ".join(wide)
    second = _run(second_env)
    assert first == second
    assert len(first) == 15


def raw_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 over each layer's name, dtype, shape and little-endian bytes (not the codec's)."""
    h = hashlib.sha256()
    for name, a in weights.items():
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


#: What the machine that wrote this test computed (numpy 2.4, x86-64 with AVX2): another
#: machine, CPU or numpy version must give the same bits, or audits of past rounds break.
#: FedAvg(clip=2.0, examples_cap=2.0), the default before `align`:
GOLDEN = {
    "x1e30": "3a543a99f6aa2174fc7ee32e4d5d4622405933eea53d173356291885e290d5a6",
    "3e38": "1fc18ce4cd608862aa38b1fb2e0483b018f7d3d437c288a781f6e4d712c3f856",
    "claim": "09aa73682c5700d759b745f48297618b7d140bbe8344f5a43857cdbf6620df0d",
}


def test_update_norms_reproduce_the_recorded_bits() -> None:
    # the reduction order is part of the protocol: numpy 2.4's np.sum gives ...d8bp+12 here
    assert fixed_sum(pseudo(65_539, 0) ** 2).hex() == "0x1.55572b4df2d8ap+12"
    assert update_norm(PREVIOUS, honest(1)[0].weights).hex() == "0x1.876d95938a2f1p-1"
    assert update_norm(PREVIOUS, scaled(1e30)).hex() == "0x1.e25ec035ca26fp+105"


#: The same rounds under ROBUST_FEDAVG (clip 2, examples_cap 2, align).
GOLDEN_ALIGN = {
    "x1e30": "4b029308dc58ffb8ac33c4791b9f60bae46add383b6963c0e2584ba787d6227c",
    "3e38": "48fda1037cf9e41b62c196698c334815ed593080a24d48e4fe91d0fcd5e3586b",
    "claim": "27c1f8cad9bb20d479c0d696df896f7f23c919d0fe6fc9e14b67289d8d8634b7",
}


@pytest.mark.parametrize("attack", sorted(GOLDEN))
@pytest.mark.parametrize("label", ["bounds", "default"])
def test_bounded_rounds_reproduce_the_recorded_bits(attack: str, label: str) -> None:
    rounds = {
        "x1e30": [*honest(4), rogue(scaled(1e30))],
        "3e38": [*honest(4), rogue(filled(3e38))],
        "claim": [*honest(4), rogue(scaled(1.0), 2**40)],
    }
    strategy, golden = ((FedAvg(clip=2.0, examples_cap=2.0), GOLDEN) if label == "bounds"
                        else (ROBUST_FEDAVG, GOLDEN_ALIGN))
    result, _ = strategy.aggregate(PREVIOUS, rounds[attack])
    assert raw_digest(result) == golden[attack]


# --- plans ---------------------------------------------------------------------------


def test_plans_without_bounds_are_unchanged() -> None:
    assert FedAvg().to_plan() == {
        "name": "FedAvg", "params": {"scaling": "num_examples", "accumulator": "float32"}
    }
    assert "clip" not in FedAvgM().to_plan()["params"]
    assert "examples_cap" not in Krum().to_plan()["params"]
    assert strategy_from_plan(FedAvg().to_plan()) == FedAvg()


@pytest.mark.parametrize(
    "strategy",
    [ROBUST_FEDAVG, FedAvg(clip=1.5), FedAdam(eta=0.01, clip=3.0, examples_cap=4.0),
     Krum(f=1, m=3, examples_cap=2.0)],
    ids=lambda s: json.dumps(s.to_plan()),
)
def test_bounds_are_recorded_in_the_plan(strategy: Strategy) -> None:
    plan = json.loads(json.dumps(strategy.to_plan()))
    assert strategy_from_plan(plan) == strategy
    one = json.dumps(FedAvg(clip=2, examples_cap=2, align=True).to_plan())
    assert one == json.dumps(ROBUST_FEDAVG.to_plan())  # `clip = 2` and `clip = 2.0`: one plan
    assert ROBUST_FEDAVG.to_plan() == {"name": "FedAvg", "params": {
        "scaling": "num_examples", "accumulator": "float32", "clip": 2.0, "examples_cap": 2.0,
        "align": True}}
    # align off is the plan of a strategy without it (plans and CIDs of existing jobs stay)
    assert FedAvg(clip=2.0, align=False).to_plan() == FedAvg(clip=2.0).to_plan()


@pytest.mark.parametrize(
    "params",
    [{"clip": 0}, {"clip": -1.0}, {"clip": float("nan")}, {"clip": "2"}, {"clip": True},
     {"examples_cap": float("inf")}, {"examples_cap": 2.0, "scaling": "uniform"},
     {"align": 1}, {"align": "true"}],
)
def test_bad_bounds_raise_config_error(params: dict) -> None:
    with pytest.raises(ConfigError):
        strategy_from_plan({"name": "FedAvg", "params": params})


def test_bounded_mean_without_bounds_is_stream_mean() -> None:
    ups = honest(3)
    a = bounded_mean(PREVIOUS, ups)
    b, _ = FedAvg().aggregate(PREVIOUS, ups)
    assert a is not None and digest(a) == digest(b)
    assert bounded_mean(PREVIOUS, [], clip=2.0) is None


# --- exact duplicates ----------------------------------------------------------------


def sub(learner: int, content: bytes, block: int, index: int = 0) -> Submission:
    return Submission(LEARNERS[learner], content, (block, index))


def test_find_duplicates_keeps_the_first_submission_of_each_content() -> None:
    a, b, c = b"cid-a", b"cid-b", b"cid-c"
    subs = [sub(3, a, 12, 1), sub(0, a, 10, 0), sub(1, b, 11, 0), sub(2, a, 12, 0), sub(4, c, 9)]
    kept, duplicates = find_duplicates(subs)
    assert [s.learner for s in kept] == [LEARNERS[4], LEARNERS[0], LEARNERS[1]]  # chain order
    assert [(d.submission.learner, d.original.learner) for d in duplicates] == [
        (LEARNERS[2], LEARNERS[0]), (LEARNERS[3], LEARNERS[0])]
    assert duplicates[0].reason == f"same content as {LEARNERS[0]}'s update"
    # the same split whatever order the submissions are given in
    again = find_duplicates(reversed(subs))
    assert again == (kept, duplicates)
    assert find_duplicates([]) == ([], [])


def test_find_duplicates_refuses_two_submissions_at_one_chain_position() -> None:
    with pytest.raises(AggregationError, match="same chain position"):
        find_duplicates([sub(0, b"x", 5, 2), sub(1, b"y", 5, 2)])


class _Event:
    def __init__(self, learner: str, model_cid: bytes, block: int, log_index: int) -> None:
        self.learner, self.model_cid = learner, model_cid
        self.block, self.log_index = block, log_index


def test_submissions_from_events_compare_cid_multihashes() -> None:
    digest_ = hashlib.sha256(b"model").digest()
    v0 = bytes(CID(0, DAG_PB, digest_))
    v1 = bytes(CID.v1(DAG_PB, digest_))
    other = bytes(CID.v1(DAG_PB, hashlib.sha256(b"other").digest()))
    assert v0 != v1
    events = [_Event(LEARNERS[0], v1, 3, 0), _Event(LEARNERS[1], v0, 4, 0),
              _Event(LEARNERS[2], other, 4, 1), _Event(LEARNERS[3], b"not a cid", 5, 0)]
    kept, duplicates = find_duplicates(Submission.of(e) for e in events)
    assert [s.ref for s in kept] == [events[0], events[2], events[3]]
    assert len(duplicates) == 1 and duplicates[0].submission.ref is events[1]
