"""Aggregation strategies: numerics, streaming, determinism, robustness, plans, errors."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from fedchain.aggregation.rules import aggregate_median, aggregate_trimmed_mean, krum_select
from fedchain.aggregation.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
    Update,
    learner_key,
    strategy_from_plan,
)
from fedchain.errors import AggregationError, ConfigError, InvalidModel

LEARNERS = [f"0x{i:02X}{'aB' * 19}" for i in range(1, 8)]


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32),
        "conv.bias": (rng.standard_normal(4) * scale).astype(np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float64),
        "bn.num_batches_tracked": np.array(int(rng.integers(0, 100)), dtype=np.int64),
        "fc.weight": (rng.standard_normal((10, 36)) * scale).astype(np.float16),
        "mask": rng.integers(0, 2, 5).astype(bool),
    }


def updates(n: int, counts: list[int] | None = None) -> list[Update]:
    counts = counts or [10 * (i + 1) for i in range(n)]
    return [Update(LEARNERS[i], counts[i], model(i + 1)) for i in range(n)]


PREVIOUS = model(0)


def reference_mean(ups: list[Update], weights: list[float]) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {
        name: sum(w * u.weights[name].astype(np.float64) for u, w in zip(ups, weights, strict=True))
        / total
        for name in PREVIOUS
    }


def assert_layout_like(result: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> None:
    assert list(result) == list(like)
    for name, ref in like.items():
        assert result[name].dtype == ref.dtype and result[name].shape == ref.shape, name


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert a[name].tobytes() == b[name].tobytes(), name


# --- FedAvg --------------------------------------------------------------------------


@pytest.mark.parametrize("accumulator", ["float32", "float64"])
def test_fedavg_is_the_num_examples_weighted_mean(accumulator: str) -> None:
    ups = updates(4)
    result, state = FedAvg(accumulator=accumulator).aggregate(PREVIOUS, ups)
    expected = reference_mean(ups, [u.num_examples for u in ups])
    assert state is None
    assert_layout_like(result, PREVIOUS)
    for name in ("conv.weight", "conv.bias", "bn.running_mean"):
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["fc.weight"], expected["fc.weight"], rtol=2e-3, atol=2e-3)
    assert result["bn.num_batches_tracked"] == np.rint(expected["bn.num_batches_tracked"])


def test_fedavg_uniform_ignores_num_examples() -> None:
    ups = updates(3, counts=[1, 1000, 7])
    result, _ = FedAvg(scaling="uniform").aggregate(PREVIOUS, ups)
    expected = reference_mean(ups, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(result["conv.weight"], expected["conv.weight"], atol=1e-6)


def test_integer_layers_round_half_to_even_and_bools_take_the_majority() -> None:
    prev = {"count": np.array([0, 0, 0], dtype=np.int64), "flag": np.zeros(3, dtype=bool)}
    a = {"count": np.array([1, 2, 3], dtype=np.int64), "flag": np.array([True, True, False])}
    b = {"count": np.array([2, 3, 4], dtype=np.int64), "flag": np.array([True, False, False])}
    result, _ = FedAvg().aggregate(prev, [Update(LEARNERS[0], 1, a), Update(LEARNERS[1], 1, b)])
    # means 1.5, 2.5, 3.5 round to even: 2, 2, 4; votes 2/2, 1/2 (tie → False), 0/2
    assert result["count"].tolist() == [2, 2, 4]
    assert result["flag"].tolist() == [True, False, False]


def test_fedavg_matches_flower_aggregate() -> None:
    flower = pytest.importorskip("flwr.server.strategy.aggregate")
    ups = updates(5)
    float_layers = ["conv.weight", "conv.bias", "bn.running_mean"]
    theirs = flower.aggregate([([u.weights[n] for n in float_layers], u.num_examples) for u in ups])
    for accumulator in ("float32", "float64"):
        ours, _ = FedAvg(accumulator=accumulator).aggregate(PREVIOUS, ups)
        for name, expected in zip(float_layers, theirs, strict=True):
            assert np.max(np.abs(ours[name] - expected)) <= 1e-6, (accumulator, name)


def test_fedavg_streams_a_generator_one_update_at_a_time() -> None:
    alive: list[weakref.ref[np.ndarray]] = []
    most_alive = 0

    def fetch() -> Iterator[Update]:
        nonlocal most_alive
        for i in range(6):
            gc.collect()
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
            weights = model(i + 1)
            alive.append(weakref.ref(weights["conv.weight"]))
            yield Update(LEARNERS[i], 5 + i, weights)
            del weights

    result, _ = FedAvg().aggregate(PREVIOUS, fetch())
    assert len(alive) == 6
    assert most_alive == 0  # every earlier update was released before the next was fetched
    expected, _ = FedAvg().aggregate(
        PREVIOUS, [Update(LEARNERS[i], 5 + i, model(i + 1)) for i in range(6)]
    )
    assert_identical(result, expected)


def test_rerun_is_bit_identical_and_sorting_removes_input_order() -> None:
    ups = updates(5)
    shuffled = [ups[i] for i in (3, 0, 4, 2, 1)]
    canonical = sorted(shuffled, key=lambda u: learner_key(u.learner))
    for strategy in (FedAvg(), FedAvg(accumulator="float64"), FedMedian(), Krum(f=1, m=3)):
        first, _ = strategy.aggregate(PREVIOUS, ups)
        again, _ = strategy.aggregate(PREVIOUS, canonical)
        assert_identical(first, again)


def test_learner_order_is_case_insensitive_hex() -> None:
    lower, upper = "0x" + "0a" * 20, "0x" + "0B" * 20
    assert sorted([upper, lower], key=learner_key) == [lower, upper]


def test_no_updates_returns_previous_and_state_unchanged() -> None:
    state = {"momentum/conv.bias": np.ones(4)}
    for strategy in (FedAvg(), FedMedian(), FedTrimmedAvg(), Krum(), FedAvgM(), FedAdam(),
                     FedAvg(clip=2.0, examples_cap=2.0), FedAdam(clip=1.0)):
        result, new_state = strategy.aggregate(PREVIOUS, iter([]), state)
        assert result is PREVIOUS and new_state is state


# --- robust rules --------------------------------------------------------------------


def with_outlier(n: int) -> list[Update]:
    ups = updates(n - 1)
    attacker = {k: (v * 0 + 1e4).astype(v.dtype) for k, v in model(99).items()}
    return [*ups, Update(LEARNERS[n - 1], 10**6, attacker)]


def test_median_is_the_middle_value_and_ignores_one_huge_outlier() -> None:
    ups = with_outlier(5)
    result, _ = FedMedian().aggregate(PREVIOUS, ups)
    stacked = np.stack([u.weights["conv.weight"] for u in ups[:4]])
    honest_lo, honest_hi = stacked.min(axis=0), stacked.max(axis=0)
    assert np.all(result["conv.weight"] >= honest_lo) and np.all(result["conv.weight"] <= honest_hi)
    three = [m.weights for m in updates(3)]
    np.testing.assert_array_equal(
        aggregate_median(three)["conv.bias"],
        np.median(np.stack([m["conv.bias"] for m in three]), axis=0),
    )
    assert_layout_like(result, PREVIOUS)


def test_trimmed_mean_drops_extremes() -> None:
    ups = with_outlier(5)
    result, _ = FedTrimmedAvg(beta=0.2).aggregate(PREVIOUS, ups)
    assert np.abs(result["conv.weight"]).max() < 10
    flower = pytest.importorskip("flwr.server.strategy.aggregate")
    theirs = flower.aggregate_trimmed_avg([([u.weights["conv.bias"]], 1) for u in ups], 0.2)
    ours = aggregate_trimmed_mean([u.weights for u in ups], 0.2)["conv.bias"]
    assert np.max(np.abs(ours - theirs[0])) <= 1e-6


def test_krum_picks_an_honest_update_and_multikrum_averages_the_best() -> None:
    ups = with_outlier(5)
    chosen = krum_select([u.weights for u in ups], f=1, m=1)
    assert chosen != [4]
    result, _ = Krum(f=1).aggregate(PREVIOUS, ups)
    assert_identical(result, ups[chosen[0]].weights)
    multi, _ = Krum(f=1, m=3).aggregate(PREVIOUS, ups)
    best = krum_select([u.weights for u in ups], f=1, m=3)
    assert 4 not in best and len(best) == 3
    expected, _ = FedAvg().aggregate(PREVIOUS, [ups[i] for i in best])
    assert_identical(multi, expected)


def test_krum_refuses_too_few_updates() -> None:
    with pytest.raises(AggregationError, match="at least 5 updates"):
        Krum(f=1).aggregate(PREVIOUS, updates(4))


# --- server optimizers ---------------------------------------------------------------


def test_fedavgm_without_momentum_is_fedavg_and_momentum_accumulates() -> None:
    ups = updates(3)
    plain, _ = FedAvg().aggregate(PREVIOUS, ups)
    same, _ = FedAvgM(server_lr=1.0, momentum=0.0).aggregate(PREVIOUS, ups)
    # float32/16 differences are exact in float64, so previous + delta gives the mean back
    for name in ("conv.weight", "conv.bias", "fc.weight", "bn.num_batches_tracked", "mask"):
        assert same[name].tobytes() == plain[name].tobytes()
    np.testing.assert_allclose(same["bn.running_mean"], plain["bn.running_mean"], atol=1e-15)
    strategy = FedAvgM(server_lr=0.5, momentum=0.9)
    first, state = strategy.aggregate(PREVIOUS, ups)
    delta = plain["conv.bias"].astype(np.float64) - PREVIOUS["conv.bias"]
    np.testing.assert_allclose(first["conv.bias"], PREVIOUS["conv.bias"] + 0.5 * delta, rtol=1e-6)
    second, state2 = strategy.aggregate(first, ups, state)
    assert state is not None and state2 is not None
    delta2 = plain["conv.bias"].astype(np.float64) - first["conv.bias"]
    np.testing.assert_allclose(state2["momentum/conv.bias"], 0.9 * delta + delta2, rtol=1e-6)
    assert "momentum/bn.num_batches_tracked" not in state2


def test_fedadam_state_replays_bit_identically() -> None:
    strategy = FedAdam(eta=0.01)
    runs = []
    for _ in range(2):
        current, state = PREVIOUS, None
        for round_ in range(3):
            current, state = strategy.aggregate(current, updates(3, [5 + round_, 6, 7]), state)
        runs.append((current, state))
    assert_identical(runs[0][0], runs[1][0])
    assert runs[0][1] is not None and runs[1][1] is not None
    assert_identical(runs[0][1], runs[1][1])
    assert int(runs[0][1]["step"]) == 3
    first, _ = FedAdam(eta=0.01).aggregate(PREVIOUS, updates(3))
    # step 1 of Adam moves each coordinate by about eta, in the direction of the mean
    moved = first["conv.bias"].astype(np.float64) - PREVIOUS["conv.bias"]
    np.testing.assert_allclose(np.abs(moved), 0.01, rtol=1e-3)


# --- plans ---------------------------------------------------------------------------

STRATEGIES: list[Strategy] = [
    FedAvg(),
    FedAvg(scaling="uniform", accumulator="float64"),
    FedMedian(),
    FedTrimmedAvg(beta=0.1),
    Krum(f=2, m=3),
    FedAvgM(server_lr=0.7, momentum=0.5),
    FedAdam(eta=0.03, beta1=0.8, beta2=0.95, tau=1e-3),
    FedAvg(clip=2.0, examples_cap=2.0),
    FedAvgM(server_lr=0.7, clip=1.5),
    Krum(f=1, m=3, examples_cap=3.0),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_plan_round_trips_through_json(strategy: Strategy) -> None:
    plan = json.loads(json.dumps(strategy.to_plan()))
    assert plan["name"] == strategy.name
    assert strategy_from_plan(plan) == strategy


@pytest.mark.parametrize(
    "plan",
    [
        {"name": "FedProx", "params": {}},
        {"name": "FedAvg", "params": {"scaling": "by_loss"}},
        {"name": "FedAvg", "params": {"learning_rate": 1}},
        {"name": "FedTrimmedAvg", "params": {"beta": 0.5}},
        {"name": "Krum", "params": {"f": 1.5}},
        {"name": "FedAvgM", "params": {"momentum": float("nan")}},
    ],
)
def test_bad_plans_raise_config_error(plan: dict) -> None:
    with pytest.raises(ConfigError):
        strategy_from_plan(plan)


# --- errors --------------------------------------------------------------------------


def test_mismatched_update_raises_invalid_model() -> None:
    bad_shape = dict(model(1), **{"conv.bias": np.zeros(5, np.float32)})
    missing = {k: v for k, v in model(1).items() if k != "mask"}
    for weights, message in ((bad_shape, r"conv\.bias"), (missing, "missing layers \\['mask'\\]")):
        for strategy in (FedAvg(), FedMedian()):
            with pytest.raises(InvalidModel, match=message):
                strategy.aggregate(PREVIOUS, [Update(LEARNERS[0], 1, weights)])


@pytest.mark.parametrize("count", [0, -3, True])
def test_non_positive_num_examples_raises(count: int) -> None:
    with pytest.raises(AggregationError, match="num_examples"):
        FedAvg().aggregate(PREVIOUS, [Update(LEARNERS[0], count, model(1))])


def test_out_of_order_or_duplicate_learners_raise() -> None:
    a, b = updates(2)
    for order in ([b, a], [a, a]):
        with pytest.raises(AggregationError, match="ascending learner order"):
            FedAvg().aggregate(PREVIOUS, order)


def test_median_and_trimmed_mean_order_signed_zeros_the_same_on_every_cpu():
    """−0 sorts before +0 (IEEE-754's total order), whatever numpy's float sort would do with
    the CPU's vector instructions: a median over ±0 has one sign bit everywhere."""
    def model(x: float) -> dict[str, np.ndarray]:
        return {"w": np.full(4, x, dtype=np.float32)}

    previous = model(0.0)
    signs = [-0.0, 0.0, -0.0, 0.0, 0.0]  # lower median of the sorted values: index 2
    updates = [Update(f"0x{i:040x}", 1, model(x)) for i, x in enumerate(signs)]
    median, _ = FedMedian().aggregate(previous, updates)
    assert np.all(median["w"] == 0) and not np.signbit(median["w"]).any()
    flipped = [Update(u.learner, 1, model(-x)) for u, x in zip(updates, signs, strict=True)]
    median, _ = FedMedian().aggregate(previous, flipped)  # three −0: the middle one is −0
    assert np.signbit(median["w"]).all()


@pytest.mark.parametrize("step", [np.array(-1, np.int64), np.array([3], np.int64),
                                  np.array(2**40, np.int64), np.array(3.0)])
def test_a_forged_server_state_step_fails_the_round_instead_of_crashing(step):
    previous = {"w": np.zeros(3, np.float32)}
    updates = [Update("0x" + "1" * 40, 10, {"w": np.ones(3, np.float32)})]
    state = {"step": step, "m/w": np.zeros(3), "v/w": np.zeros(3)}
    with pytest.raises(AggregationError, match="step"):
        FedAdam().aggregate(previous, updates, state)
    with pytest.raises(AggregationError, match="float64"):
        FedAdam().aggregate(previous, updates, {"step": np.array(1, np.int64),
                                                "m/w": np.zeros(3, np.float32),
                                                "v/w": np.zeros(3)})
