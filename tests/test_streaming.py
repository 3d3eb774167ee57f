"""The bounded means stream in two passes (fedchain.aggregation.streaming), bit for bit.

A round handed over as a one-shot iterable (as `run_round` hands over the updates it fetches)
is read once for its statistics, spilled to a temporary file and folded from there: it is
never held in memory. A round handed over as a list is folded in one sweep when nothing is
clipped, in two otherwise. Every way gives the bits SPEC §8.4–8.5 define (the independent
re-implementation in tests/spec_reference.py).
"""

from __future__ import annotations

import gc
import math
import tracemalloc
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spec_reference as ref

from fedchain.aggregation import native, streaming
from fedchain.aggregation.rules import MedianBounds, Scales, UpdateStats
from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg, Update
from fedchain.aggregation.streaming import BoundRule, bounded_mean, two_pass_mean
from fedchain.errors import AggregationError, FedChainError

LEARNERS = [f"0x{i:02x}{'cd' * 19}" for i in range(1, 30)]


def pseudo(n: int, seed: int) -> np.ndarray:
    """n values in [-0.5, 0.5) from integer arithmetic only (the same on every machine)."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed * 1_000_003 + 1)
    h = (i * np.uint64(2654435761) + np.uint64(seed * 97)) % np.uint64(2**32)
    return h.astype(np.float64) / 2**32 - 0.5


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Every dtype the codec allows a mean over, a layer of several blocks (2**16 elements)
    with a partial last one, a scalar and an empty layer."""
    return {
        "big": (pseudo(140_000, seed) * scale).astype(np.float32).reshape(-1, 100),
        "half": (pseudo(30, seed + 1) * scale).astype(np.float16).reshape(3, 10),
        "double": pseudo(70_000, seed + 2) * scale,
        "scalar": np.array(pseudo(1, seed + 3)[0] * scale, dtype=np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "count": np.array(10 + seed, dtype=np.int64),
        "small_ints": (pseudo(9, seed + 4) * 200).astype(np.int16),
        "mask": pseudo(5, seed + 5) > 0,
    }


PREVIOUS = model(0)
PREVIOUS["double"][:3] = -0.0  # a −0 in the previous model: a ⊕ F64(p) must keep 0.0 ⊕ −0


def one_update(i: int, n: int, rogue: float | None = None,
               claims: list[int] | None = None) -> Update:
    """Update i of n, a small step from PREVIOUS; with `rogue`, the last one is scaled by it."""
    step = model(i + 1, scale=0.01)
    weights = {k: (v + step[k]).astype(v.dtype) if v.dtype.kind == "f" else step[k]
               for k, v in PREVIOUS.items()}
    weights["double"][:2] = PREVIOUS["double"][:2]  # Δ = 0 there (−0 − −0 = +0)
    if rogue is not None and i == n - 1:
        with np.errstate(over="ignore"):  # a float16 layer × 1e6 is infinite: its norm too
            weights = {k: (v * rogue).astype(v.dtype) if v.dtype.kind == "f" else v
                       for k, v in weights.items()}
    return Update(LEARNERS[i], claims[i] if claims else 50 + 7 * i, weights)


def round_of(n: int, rogue: float | None = None, claims: list[int] | None = None) -> list[Update]:
    return [one_update(i, n, rogue, claims) for i in range(n)]


def reference(updates: Sequence[Update], **params: object) -> dict[str, np.ndarray]:
    p = {"scaling": "num_examples", "accumulator": "float32", "clip": None,
         "examples_cap": None, **params}
    ups = [ref.Update(u.learner, u.num_examples, u.weights) for u in updates]
    return ref.fedavg_mean(PREVIOUS, ups, p)


def assert_bits(got: dict[str, np.ndarray] | None, expected: dict[str, np.ndarray]) -> None:
    assert got is not None
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


CASES = {
    "default, nothing clipped": (dict(clip=2.0, examples_cap=2.0), dict(n=5)),
    "default, a rogue clipped": (dict(clip=2.0, examples_cap=2.0), dict(n=5, rogue=-10.0)),
    "default, a 2**40 claim": (dict(clip=2.0, examples_cap=2.0),
                               dict(n=5, claims=[90, 100, 2**40, 110, 95])),
    "clip only, two updates": (dict(clip=1.0), dict(n=2, rogue=3.0)),
    "clip, uniform": (dict(clip=2.0, scaling="uniform"), dict(n=4, rogue=1e6)),
    "examples_cap only": (dict(examples_cap=1.5), dict(n=5, claims=[90, 100, 2**40, 110, 95])),
    "examples_cap, float64 sums": (dict(examples_cap=1.0, accumulator="float64"),
                                   dict(n=4, claims=[3, 1, 4, 1])),
}


@pytest.fixture(params=["compiled", "numpy"])
def sweeps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The float64 sweeps in the compiled kernels (`native`, the default where a C compiler
    is) or in numpy (FEDCHAIN_KERNELS=0): the same bits either way."""
    if request.param == "numpy":
        monkeypatch.setenv("FEDCHAIN_KERNELS", "0")
    else:
        monkeypatch.delenv("FEDCHAIN_KERNELS", raising=False)
        if streaming.compiled_kernels() is None:
            pytest.skip("no C compiler on this machine: the sweeps run in numpy")
    return str(request.param)


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_held_and_spec_reference_agree_bit_for_bit(case: str, sweeps: str) -> None:
    params, shape = CASES[case]
    updates = round_of(**shape)  # type: ignore[arg-type]
    expected = reference(updates, **params)
    held = bounded_mean(PREVIOUS, updates, **params)  # type: ignore[arg-type]
    streamed = bounded_mean(PREVIOUS, iter(updates), **params)  # type: ignore[arg-type]
    assert_bits(held, expected)
    assert_bits(streamed, expected)


def test_a_clipped_round_is_folded_again_with_the_real_factors() -> None:
    """The held sweep presumes nothing is clipped; a rogue makes it fold a second time."""
    honest = round_of(5)
    attacked = round_of(5, rogue=50.0)
    sweeps: list[Scales] = []

    class Counting(MedianBounds):
        def scales(self, stats: Sequence[UpdateStats]) -> Scales:
            result = super().scales(stats)
            sweeps.append(result)
            return result

    rule = Counting(clip=2.0, examples_cap=2.0)
    two_pass_mean(PREVIOUS, honest, rule)
    assert len(sweeps) == 2 and sweeps[0].same_as(sweeps[1])  # presumed = real: one sweep
    sweeps.clear()
    result = two_pass_mean(PREVIOUS, attacked, rule)
    assert len(sweeps) == 2 and not sweeps[0].same_as(sweeps[1])
    assert sweeps[1].factors is not None and sweeps[1].factors[-1] < 0.1  # the rogue, clipped
    assert_bits(result, reference(attacked, clip=2.0, examples_cap=2.0))


def fetched(n: int, alive: list[weakref.ref[np.ndarray]], most: list[int],
            rogue: float | None = None) -> Iterator[Update]:
    """The round's updates made one at a time (as a fetch decodes them), counting how many
    earlier ones are still alive whenever the next one is asked for."""
    for i in range(n):
        gc.collect()
        update = one_update(i, n, rogue)
        most[0] = max(most[0], sum(r() is not None for r in alive))
        alive.append(weakref.ref(update.weights["big"]))
        yield update
        del update


def test_the_default_strategy_releases_each_update_before_the_next() -> None:
    alive: list[weakref.ref[np.ndarray]] = []
    most = [0]
    result, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, fetched(6, alive, most, rogue=-10.0))
    assert len(alive) == 6
    assert most[0] == 0  # never two updates alive at once: the round is not held
    expected, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, round_of(6, rogue=-10.0))
    assert_bits(result, expected)


def test_a_round_of_many_updates_takes_a_few_model_sizes_of_memory() -> None:
    """tracemalloc (which numpy reports its buffers to) over an aggregation of 16 updates
    that are made and dropped one by one, as a fetch makes them: the peak stays at a few
    model sizes (the update being made, the new model, a few blocks), where a held round
    takes 16."""
    previous = {"w": (pseudo(3_000_000, 0) * 0.1).astype(np.float32),
                "b": pseudo(1000, 1).astype(np.float32)}
    steps = {k: (pseudo(v.size, 2) * 0.01).astype(np.float32) for k, v in previous.items()}
    size = sum(a.nbytes for a in previous.values())

    def updates() -> Iterator[Update]:
        for i in range(16):
            weights = {}
            for name, step in steps.items():
                array = np.roll(step, 1000 * i)  # one new array per layer, no temporaries
                array *= np.float32(40.0 if i == 7 else 1.0 + i / 16)  # update 7 is clipped
                array += previous[name]
                weights[name] = array
            yield Update(LEARNERS[i], 100 + i, weights)
            del weights, array

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result, _ = ROBUST_FEDAVG.aggregate(previous, updates())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= 3 * size, f"peak {peak / size:.2f} model sizes"
    assert result["w"].dtype == np.float32 and np.isfinite(result["w"]).all()


def test_a_rule_of_the_same_family_streams_too() -> None:
    """Another rule (differences clipped at 1.5 × the round's mean norm, claims capped at a
    quarter of the largest) plugs into the same two passes: only its scales differ."""

    class MeanNorm(BoundRule):
        needs_norms = True

        def scales(self, stats: Sequence[UpdateStats]) -> Scales:
            norms = [float(s.norm or 0.0) for s in stats]
            bound = 1.5 * sum(norms) / len(norms)
            cap = max(1, max(s.num_examples for s in stats) // 4)
            return Scales(tuple(min(s.num_examples, cap) for s in stats),
                          tuple(1.0 if v <= bound else bound / v for v in norms))

    updates = round_of(5, rogue=-8.0)
    alive: list[weakref.ref[np.ndarray]] = []
    most = [0]
    streamed = two_pass_mean(PREVIOUS, fetched(5, alive, most, rogue=-8.0), MeanNorm())
    held = two_pass_mean(PREVIOUS, updates, MeanNorm())
    assert most[0] == 0
    assert_bits(streamed, held)  # type: ignore[arg-type]
    # what the rule asks for, in float64 with numpy: the same up to rounding
    norms = [math.sqrt(sum(float(np.sum((u.weights[k].astype(np.float64)
                                          - PREVIOUS[k].astype(np.float64)) ** 2))
                           for k in PREVIOUS if PREVIOUS[k].dtype.kind == "f"))
             for u in updates]
    bound = 1.5 * sum(norms) / len(norms)
    cap = max(u.num_examples for u in updates) // 4
    weights = [min(u.num_examples, cap) for u in updates]
    factors = [min(1.0, bound / v) for v in norms]
    total = sum(weights)
    p = PREVIOUS["big"].astype(np.float64)
    expected = p + sum(w * f * (u.weights["big"].astype(np.float64) - p)
                       for u, w, f in zip(updates, weights, factors, strict=True)) / total
    assert held is not None
    np.testing.assert_allclose(held["big"], expected.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_a_rule_that_refuses_a_still_round_is_not_presumed() -> None:
    """The held sweep asks the rule what it gives if no update moved; a rule may refuse that
    (here: factors relative to the smallest norm). Then the norms come first, as streamed."""

    class RelativeToSmallest(BoundRule):
        needs_norms = True

        def scales(self, stats: Sequence[UpdateStats]) -> Scales:
            norms = [float(s.norm or 0.0) for s in stats]
            if min(norms) == 0.0:
                raise AggregationError("an update did not move")
            bound = 3.0 * min(norms)
            return Scales(tuple(s.num_examples for s in stats),
                          tuple(1.0 if v <= bound else bound / v for v in norms))

    updates = round_of(4, rogue=5.0)
    held = two_pass_mean(PREVIOUS, updates, RelativeToSmallest())
    streamed = two_pass_mean(PREVIOUS, iter(updates), RelativeToSmallest())
    assert_bits(streamed, held)  # type: ignore[arg-type]
    unclipped = two_pass_mean(PREVIOUS, updates, MedianBounds(clip=1e6))
    assert held is not None and unclipped is not None
    assert not np.array_equal(held["big"], unclipped["big"])  # the rogue was clipped


def test_a_nan_norm_is_refused_either_way() -> None:
    updates = round_of(3)
    bad = {k: v.copy() for k, v in updates[1].weights.items()}
    bad["double"][5] = np.nan
    updates[1] = Update(updates[1].learner, updates[1].num_examples, bad)
    for given in (updates, iter(updates)):
        with pytest.raises(AggregationError, match="norm is NaN"):
            FedAvg(clip=2.0).aggregate(PREVIOUS, given)


def test_a_spill_that_cannot_be_written_is_this_nodes_failure(tmp_path: Path) -> None:
    """Not an AggregationError (which would carry the round over where others aggregate)."""
    missing = tmp_path / "gone"
    with pytest.raises(FedChainError, match="spill file") as raised:
        two_pass_mean(PREVIOUS, iter(round_of(3)), MedianBounds(clip=2.0), spill_dir=missing)
    assert not isinstance(raised.value, AggregationError)


def test_no_updates_give_none() -> None:
    assert two_pass_mean(PREVIOUS, [], MedianBounds(clip=2.0)) is None
    assert two_pass_mean(PREVIOUS, iter([]), MedianBounds(clip=2.0)) is None


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_the_thread_count_changes_no_bit(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeps run a model's blocks on several threads; each block's elements and partial
    sums come from that block alone and the partial sums are added in block order, so one
    thread and several give the same bits (and SPEC §8's, from the independent reference).
    A layer whose last block is odd-sized (its halving sum carries a middle value) and more
    updates than threads included."""
    import threading

    from fedchain.aggregation import streaming

    previous = {**PREVIOUS, "odd": (pseudo(2 * 65_536 + 5_001, 40) * 0.1).astype(np.float32)}

    def moved(i: int, scale: float = 1.0) -> Update:
        u = one_update(i, 9)
        odd = previous["odd"] + (pseudo(previous["odd"].size, 50 + i) * 0.01 * scale)
        return Update(u.learner, u.num_examples, {**u.weights, "odd": odd.astype(np.float32)})

    updates = [moved(i, -12.0 if i == 4 else 1.0) for i in range(9)]  # update 4 is clipped
    if threads == 3:  # the halving sums' small levels in groups of 4 updates, not all 9 at once
        monkeypatch.setattr(streaming, "_GROUP", 4)
    strategies = {"default (align)": ROBUST_FEDAVG,
                  "clip and cap": FedAvg(clip=2.0, examples_cap=2.0),
                  "clip, uniform": FedAvg(clip=1.5, scaling="uniform")}
    ups = [ref.Update(u.learner, u.num_examples, u.weights) for u in updates]
    ran_on: set[int] = set()  # the threads that made scratch in the current sweep
    most = [0]  # the most threads a sweep ran on
    gate = [threading.Barrier(1)]
    made, each_block = streaming._Work.__init__, streaming._each_block

    def counted(self: streaming._Work) -> None:
        ran_on.add(threading.get_ident())
        gate[0].wait(timeout=60)  # each thread takes a block only once all have started
        made(self)

    def sweep(blocks: Sequence[Any], *args: Any) -> None:
        assert streaming._sweep_threads(blocks) == streaming.THREADS  # enough blocks
        gate[0] = threading.Barrier(streaming.THREADS)
        ran_on.clear()
        each_block(blocks, *args)
        most[0] = max(most[0], len(ran_on))

    monkeypatch.setattr(streaming._Work, "__init__", counted)
    monkeypatch.setattr(streaming, "_each_block", sweep)
    for name, strategy in strategies.items():
        params = {"scaling": strategy.scaling, "accumulator": strategy.accumulator,
                  "clip": strategy.clip, "examples_cap": strategy.examples_cap,
                  "align": strategy.align}
        expected = ref.fedavg_mean(previous, ups, params)
        for count in (1, threads):
            monkeypatch.setattr(streaming, "THREADS", count)
            most[0] = 0
            held, _ = strategy.aggregate(previous, updates)
            streamed, _ = strategy.aggregate(previous, iter(updates))
            assert most[0] == count, name  # the blocks did run on that many threads
            assert_bits(held, expected)
            assert_bits(streamed, expected)


# --- the compiled sweeps (fedchain.aggregation.native) ------------------------------------------

ALIGN_CASES = {
    "default": (dict(clip=2.0, examples_cap=2.0), dict(n=5)),
    "default, a sign flip": (dict(clip=2.0, examples_cap=2.0), dict(n=5, rogue=-1.0)),
    "default, a rogue scaled up": (dict(clip=2.0, examples_cap=2.0), dict(n=6, rogue=50.0)),
    "align alone, uniform": (dict(scaling="uniform"), dict(n=3, rogue=-4.0)),
    "more updates than a kernel group": (dict(clip=2.0, examples_cap=2.0), dict(n=21)),
}


def aligned_reference(updates: Sequence[Update], params: dict[str, Any]) -> dict[str, np.ndarray]:
    p = {"scaling": "num_examples", "accumulator": "float32", "clip": None,
         "examples_cap": None, "align": True, **params}
    ups = [ref.Update(u.learner, u.num_examples, u.weights) for u in updates]
    return ref.fedavg_mean(PREVIOUS, ups, p)


@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_align_held_and_streamed_agree_with_the_spec_reference(case: str, sweeps: str) -> None:
    """SPEC §8.15 (the default strategy's rule) both ways, in kernel groups of at most 16."""
    params, shape = ALIGN_CASES[case]
    updates = round_of(**shape)  # type: ignore[arg-type]
    expected = aligned_reference(updates, params)
    assert_bits(streaming.aligned_mean(PREVIOUS, updates, **params), expected)  # type: ignore[arg-type]
    assert_bits(streaming.aligned_mean(PREVIOUS, iter(updates), **params),  # type: ignore[arg-type]
                expected)


def test_the_default_strategy_runs_in_the_compiled_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a C compiler is (every machine `make setup` supports), the kernels are built on
    first use and the default strategy's sweeps run in them, not in numpy."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.delenv("FEDCHAIN_KERNELS", raising=False)
    lib = streaming.compiled_kernels()
    assert lib is not None and lib.path.is_file()
    used: list[str] = []
    for name in ("_align_compiled", "_fold_compiled", "_sqsums"):
        real = getattr(streaming, name)
        monkeypatch.setattr(streaming, name,
                            lambda *a, _real=real, _name=name, **k: (used.append(_name),
                                                                    _real(*a, **k))[1])
    updates = round_of(5)
    result, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, updates)
    assert_bits(result, aligned_reference(updates, dict(clip=2.0, examples_cap=2.0)))
    assert {"_align_compiled", "_fold_compiled", "_sqsums"} <= set(used)


def test_the_baseline_build_gives_the_avx2_builds_bits(tmp_path: Path) -> None:
    """The library dispatches to an AVX2 clone where the CPU has AVX2; a build without the
    clones (the SSE2 baseline every x86-64 has; elsewhere, the one build there is) gives the
    same bits: lanes round as scalars do, and nothing is fused or reordered."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    baseline = native.Kernels(native.build(tmp_path, extra=("-DFEDCHAIN_NO_CLONES",)))
    assert streaming._check_against_numpy(baseline) is None
    for params, shape in ALIGN_CASES.values():
        updates = round_of(**shape)  # type: ignore[arg-type]
        rule = MedianBounds(params.get("clip"), params.get("examples_cap"),  # type: ignore[arg-type]
                            str(params.get("scaling", "num_examples")), "float64")
        got = streaming._aligned_mean(PREVIOUS, updates, rule, None, baseline, quiet=True)
        assert_bits(got, aligned_reference(updates, params))


def test_a_library_that_computes_other_bits_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The build is checked against the numpy path before use: a library whose direction
    multiplies by 1/ν instead of dividing by ν (a last-bit difference, the kind a compiler
    flag could make) is refused, said so, and the round is computed in numpy, right."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    source = native.SOURCE.read_text()
    assert source.count("/ nu)") == 1
    wrong = tmp_path / "_kernels.c"
    wrong.write_text(source.replace("/ nu)", "* (1.0 / nu))"))
    monkeypatch.setattr(native, "SOURCE", wrong)
    problem = streaming._check_against_numpy(native.Kernels(native.build(tmp_path / "one")))
    assert problem is not None and "differ from the numpy path" in problem
    monkeypatch.setenv("FEDCHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDCHAIN_KERNELS", raising=False)
    monkeypatch.setattr(native, "_loaded", [])
    with caplog.at_level("INFO", logger="fedchain.aggregation.native"):
        assert streaming.compiled_kernels() is None
    assert "not available" in caplog.text and "differ from the numpy path" in caplog.text
    updates = round_of(5, rogue=-1.0)
    result, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, updates)
    assert_bits(result, aligned_reference(updates, dict(clip=2.0, examples_cap=2.0)))


def test_without_a_compiler_the_sweeps_run_in_numpy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("FEDCHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDCHAIN_KERNELS", raising=False)
    monkeypatch.setattr(native, "_loaded", [])
    with caplog.at_level("INFO", logger="fedchain.aggregation.native"):
        assert streaming.compiled_kernels() is None
    assert "no-such-cc" in caplog.text
    updates = round_of(4)
    result, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, iter(updates))
    assert_bits(result, aligned_reference(updates, dict(clip=2.0, examples_cap=2.0)))


def test_free_riders_move_no_bound_of_align(sweeps: str) -> None:
    """SPEC §8.15 step 1: the cap and the clip bound come from the updates that moved. Three
    free-riders of ten (the global model sent back, claiming 2**40 examples) leave the
    floating layers exactly as the seven others alone make them; before, their zero norms
    pulled the clip bound down to the smaller honest norms (the attack suite's `claim` cell).
    """
    def spread(i: int) -> Update:  # mover i's step × (1 + i): norms about 1 … 7 units
        u = one_update(i, 7)
        weights = {k: ((v.astype(np.float64) - PREVIOUS[k]) * (1 + i) + PREVIOUS[k]).astype(v.dtype)
                   if v.dtype.kind == "f" else v for k, v in u.weights.items()}
        return Update(u.learner, u.num_examples, weights)

    movers = [spread(i) for i in range(7)]
    riders = [Update(LEARNERS[20 + i], 2**40, {k: v.copy() for k, v in PREVIOUS.items()})
              for i in range(3)]
    everyone = sorted(movers + riders, key=lambda u: u.learner.lower())
    params = dict(clip=2.0, examples_cap=2.0)
    alone = streaming.aligned_mean(PREVIOUS, movers, **params)  # type: ignore[arg-type]
    assert alone is not None
    for ridden in (streaming.aligned_mean(PREVIOUS, everyone, **params),  # type: ignore[arg-type]
                   streaming.aligned_mean(PREVIOUS, iter(everyone), **params),  # type: ignore[arg-type]
                   ref.fedavg_mean(PREVIOUS, [ref.Update(u.learner, u.num_examples, u.weights)
                                              for u in everyone],
                                   {"scaling": "num_examples", "accumulator": "float32",
                                    "align": True, **params})):
        assert ridden is not None
        for name, array in alone.items():
            if array.dtype.kind == "f":
                assert ridden[name].tobytes() == array.tobytes(), name
    # the bound the seven set clips nobody here; over all ten (three zeros) it clipped three
    norms = [ref.update_norm(PREVIOUS, u.weights) for u in everyone]
    moved = sorted(v for v in norms if v > 0)
    assert sum(v > 2.0 * moved[(len(moved) - 1) // 2] for v in moved) == 0
    assert sum(v > 2.0 * sorted(norms)[(len(norms) - 1) // 2] for v in moved) == 3


def test_a_compiler_that_refuses_the_avx2_clones_gets_a_build_without_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the AVX2 clones cannot be built (ifunc is ELF's: macOS, some compilers), the
    kernels are built without them instead of not at all."""
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler on this machine")
    picky = tmp_path / "picky-cc"
    picky.write_text("#!/bin/sh\n"
                     "case \"$*\" in *FEDCHAIN_NO_CLONES*) ;; "
                     "*) echo 'target_clones: not on this platform' >&2; exit 1;; esac\n"
                     f"exec {real} \"$@\"\n")
    picky.chmod(0o755)
    monkeypatch.setenv("CC", str(picky))
    monkeypatch.setenv("FEDCHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDCHAIN_KERNELS", raising=False)
    monkeypatch.setattr(native, "_loaded", [])
    lib = streaming.compiled_kernels()
    assert lib is not None
    assert lib.path.name == native._name(("-DFEDCHAIN_NO_CLONES",))
    updates = round_of(5, rogue=-1.0)
    result, _ = ROBUST_FEDAVG.aggregate(PREVIOUS, updates)
    assert_bits(result, aligned_reference(updates, dict(clip=2.0, examples_cap=2.0)))
