"""Directed attacks against the default strategy: `align` and the attack suite in small.

The whole suite (every attack, 1 of 5, 2 of 10 and 3 of 10, IID and Dirichlet, MLP and CNN) is
`bench/robustness.py`; here a few of its cells run on the MLP example, IID, one rogue of five,
through the same engine (bench/attacks.py: the example's real learners, each round aggregated
by the strategy's `aggregate`). Accuracies come from torch training, whose last bits differ
between CPUs: the assertions leave 3 points of slack where the bench measures a few tenths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fedchain.aggregation.rules import update_norm
from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg, Update
from fedchain.aggregation.streaming import alignment_factors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import attacks  # noqa: E402  (bench/attacks.py)

LEARNERS = [f"0x{i:040x}" for i in range(1, 7)]


def _ints(n: int, seed: int) -> np.ndarray:
    """n values in [-0.5, 0.5) from integer arithmetic (the same on every machine)."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed * 1_000_003 + 1)
    h = (i * np.uint64(2654435761) + np.uint64(seed * 97)) % np.uint64(2**32)
    return h.astype(np.float64) / 2**32 - 0.5


PREVIOUS = {"w": _ints(300, 0).astype(np.float32), "steps": np.array(7, np.int64)}
DIRECTION = _ints(300, 1) * 0.1


def _update(i: int, scale: float, count: int = 100) -> Update:
    delta = scale * (DIRECTION + _ints(300, 10 + i) * 0.02)
    weights = {"w": (PREVIOUS["w"] + delta).astype(np.float32),
               "steps": np.array(7 + i, np.int64)}
    return Update(LEARNERS[i], count, weights)


def test_an_update_against_the_round_weighs_nothing_and_one_without_change_dilutes_nothing():
    honest = [_update(i, 1.0) for i in range(4)]
    flipped = _update(4, -10.0, count=2**40)  # −10 × its change, claiming 2**40 examples
    free_rider = Update(LEARNERS[5], 100, {k: v.copy() for k, v in PREVIOUS.items()})
    ups = [*honest, flipped, free_rider]
    gammas = alignment_factors(PREVIOUS, ups, [update_norm(PREVIOUS, u.weights) for u in ups])
    assert gammas[4] == 0.0 and gammas[5] == 0.0
    assert all(0.9 < g <= 1.0 for g in gammas[:4])

    honest_mean, _ = FedAvg().aggregate(PREVIOUS, honest)
    default, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, ups)
    former, _ = FedAvg(clip=2.0, examples_cap=2.0).aggregate(PREVIOUS, ups)
    step = honest_mean["w"] - PREVIOUS["w"]

    def progress(result: dict[str, np.ndarray]) -> float:
        """How far along the honest mean's step a result moved (1: all the way)."""
        moved = result["w"].astype(np.float64) - PREVIOUS["w"]
        return float(np.dot(moved, step) / np.dot(step, step))

    assert progress(default) == pytest.approx(1.0, abs=0.05)
    assert progress(former) < 0.2  # capped weight 2 × clipped norm 2 cancel the honest four
    # integer layers are the weighted mean of every update, as with clip alone
    assert default["steps"] == former["steps"]


def test_align_gives_the_same_bits_held_and_streamed_from_a_one_shot_iterator():
    ups = [*(_update(i, 1.0) for i in range(4)), _update(4, -10.0, count=2**40)]
    held, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, ups)
    streamed, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, iter(ups))  # spilled, read three times
    assert all(held[k].tobytes() == streamed[k].tobytes() for k in PREVIOUS)


def test_when_every_update_weighs_zero_the_floating_layers_stay():
    # multiples of 1/64: previous ± step is exact, so the two changes are exact opposites
    previous = {"w": (np.arange(40) / 64 - 0.25).astype(np.float32),
                "steps": np.array(7, np.int64)}
    step = (np.arange(40) % 5 + 1) / 64
    ups = [Update(LEARNERS[k], 100, {"w": (previous["w"] + sign * step).astype(np.float32),
                                     "steps": np.array(7 + k, np.int64)})
           for k, sign in enumerate((1.0, -1.0))]
    result, _ = FedAvg(align=True).aggregate(previous, ups)
    assert np.array_equal(result["w"], previous["w"])
    assert result["steps"] == 8  # (7 + 8) / 2 = 7.5, rounded half to even


def test_align_is_recorded_in_the_plan_and_off_leaves_the_plan_unchanged():
    assert ROBUST_FEDAVG.to_plan()["params"]["align"] is True
    assert "align" not in FedAvg(clip=2.0, examples_cap=2.0, align=False).to_plan()["params"]
    assert ROBUST_FEDAVG.streams  # three passes over a spilled round, never holding it


# --- the suite in small ---------------------------------------------------------------

SETUP = attacks.Setup("mlp", "iid", 5, 1)
ATTACKS = ("x-10+claim", "alie", "x-1")
COLUMNS = {"default": ROBUST_FEDAVG, "FedAvg": FedAvg(),
           "former default": FedAvg(clip=2.0, examples_cap=2.0)}


@pytest.fixture(scope="module")
def cells() -> dict[tuple[str, str], attacks.Cell]:
    out = {}
    for label, strategy in COLUMNS.items():
        honest = attacks.Setup(SETUP.model, SETUP.partition, SETUP.learners, 0)
        out[label, "none"] = attacks.run_cell(honest, strategy, label, "none")
        for attack in ATTACKS:
            if label == "former default" and attack != "x-10+claim":
                continue
            out[label, attack] = attacks.run_cell(SETUP, strategy, label, attack)
    return out


def test_the_honest_runs_learn_and_the_default_costs_them_nothing(cells):
    assert cells["FedAvg", "none"].accuracy > 0.85
    assert cells["default", "none"].accuracy >= cells["FedAvg", "none"].accuracy - 0.01


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_default_stays_near_the_honest_run_under_one_rogue_of_five(cells, attack):
    honest = cells["default", "none"].accuracy
    assert cells["default", attack].accuracy >= honest - 0.03, cells["default", attack]


def test_plain_fedavg_and_the_former_default_fall_to_minus_ten_times_with_a_huge_claim(cells):
    honest = cells["FedAvg", "none"].accuracy
    assert cells["FedAvg", "x-10+claim"].accuracy < 0.5  # the claim takes the mean over
    # clip 2 × cap 2 let the rogue cancel the four honest updates: the model barely learns
    assert cells["former default", "x-10+claim"].accuracy < honest - 0.2


def test_the_align_rules_bench_prototype_of_the_spec_rule_is_the_default():
    """bench/align_rules.py compares candidate rules with a float64 prototype of §8.15 (`spec`):
    its figures stand for the default's only if that prototype computes the default's round.
    A round with an update against the others, one clipped, one capped and a free-rider."""
    import align_rules  # bench/align_rules.py

    ups = [_update(0, 1.0), _update(1, 0.7, count=300), _update(2, 1.3), _update(3, 5.0),
           _update(4, -2.0, count=2**40),
           Update(LEARNERS[5], 2**40, {k: v.copy() for k, v in PREVIOUS.items()})]
    default, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, ups)
    spec, _ = align_rules.AlignRule(rule="spec").aggregate(PREVIOUS, ups)
    np.testing.assert_allclose(spec["w"], default["w"], rtol=0, atol=1e-6)
    assert not np.allclose(spec["w"], FedAvg(clip=2.0, examples_cap=2.0).aggregate(
        PREVIOUS, ups)[0]["w"], atol=1e-4)  # align did change this round
    assert int(spec["steps"]) == int(default["steps"]) != 7  # integer layers: §8.15 step 7
