"""Aggregation rules: pure, deterministic functions from updates to a model (Flower style).

Determinism, so anyone can re-run a round and get the bit-identical global model:
updates come in one fixed order, ascending learner address (case-insensitive hex), and any
other order is refused; arithmetic is elementwise IEEE-754 in a fixed order with a fixed
accumulation dtype (no BLAS, no threads, no fused multiply-add), so it does not depend on
the machine.

dtypes: floating layers are summed in the `accumulator` dtype ("float32" or "float64", never
narrower than the layer) and divided once at the end (the bounded mean,
`streaming.bounded_mean`, always sums differences from the previous global model in
float64). Integer layers (e.g. BatchNorm's `num_batches_tracked`) are aggregated in float64
and rounded half to even back to their dtype (exact below 2**53); bool layers are treated as
0/1 integers, so they become a (weighted) majority vote in which a tie gives False. Results
have the names, order, shapes and dtypes of the previous global model.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AggregationError, ConfigError, InvalidModel
from ..model.codec import Weights
from ..protocol.rules import learner_key

log = logging.getLogger("fedchain.aggregation")

#: What this process has already said about a round's bounds (clipped updates, capped
#: claims): every party that computes a round (the aggregator, each learner re-deriving it,
#: a committee) reaches the same result, and saying it once per process is enough.
_SAID: OrderedDict[Any, None] = OrderedDict()
_SAID_LOCK = threading.Lock()
_SAID_MAX = 4096


def _say_once(key: Any, message: str, *args: Any) -> None:
    """Logs `message` at INFO the first time this process computes it for `key` (a round's
    result), at DEBUG every other time."""
    with _SAID_LOCK:
        first = key not in _SAID
        _SAID[key] = None
        _SAID.move_to_end(key)
        while len(_SAID) > _SAID_MAX:
            _SAID.popitem(last=False)
    log.log(logging.INFO if first else logging.DEBUG, message, *args)


def forget_said() -> None:
    """Forgets what was said (`simulate` calls it, so a second run in a process says it
    again)."""
    with _SAID_LOCK:
        _SAID.clear()


def _short(learner: str) -> str:
    return f"{learner[:6]}…{learner[-4:]}" if len(learner) > 12 else learner

SCALINGS = ("num_examples", "uniform")
ACCUMULATORS = ("float32", "float64")
# Elements per block: large enough to amortise a ufunc call, small enough to stay in L2.
_BLOCK = 1 << 16


@dataclass(frozen=True)
class Update:
    """One learner's model for a round."""

    learner: str  # 0x-address, checksum case
    num_examples: int
    weights: Weights


# --- validation ----------------------------------------------------------------------


def check_update(previous: Weights, update: Update, last_key: str | None) -> str:
    """Raise unless `update` fits `previous` and comes after `last_key`; return its key."""
    key = learner_key(update.learner)
    if last_key is not None and key <= last_key:
        raise AggregationError(
            f"updates must come in strictly ascending learner order: {update.learner} "
            f"comes after {last_key}"
        )
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise AggregationError(
            f"update from {update.learner}: num_examples must be a positive integer, got {n!r}"
        )
    weights = update.weights
    if weights.keys() != previous.keys():
        missing = [k for k in previous if k not in weights]
        extra = [k for k in weights if k not in previous]
        raise InvalidModel(
            f"update from {update.learner} does not match the global model: "
            f"missing layers {missing}, unexpected layers {extra}"
        )
    for name, ref in previous.items():
        got = weights[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise InvalidModel(
                f"update from {update.learner}: layer {name} is {got.dtype} {got.shape}, "
                f"the global model has {ref.dtype} {ref.shape}"
            )
    return key


def collect_updates(previous: Weights, updates: Iterable[Update]) -> list[Update]:
    """The updates as a list, checked (for strategies that need them all at once)."""
    collected: list[Update] = []
    last: str | None = None
    for update in updates:
        last = check_update(previous, update, last)
        collected.append(update)
    return collected


def _sum_dtype(dtype: np.dtype[Any], accumulator: str) -> np.dtype[Any]:
    if dtype.kind == "f":
        return np.promote_types(dtype, accumulator)
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    raise InvalidModel(f"dtype {dtype} cannot be aggregated")


def _cast_like(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """float64 `values` in `ref`'s dtype and shape; integers and bools rounded half to even."""
    if ref.dtype.kind != "f":
        values = np.rint(values)
    return np.asarray(values).astype(ref.dtype).reshape(ref.shape)


# --- weighted mean (streaming) -------------------------------------------------------


def weighted_sum_into(acc: Weights, weights: Mapping[str, np.ndarray], factor: int) -> None:
    """acc[name] += factor × weights[name] for every layer of acc, in acc's dtype, in place."""
    for name, total in acc.items():
        flat_acc, flat = total.reshape(-1), np.ravel(weights[name])
        if factor == 1:
            np.add(flat_acc, flat, out=flat_acc)
            continue
        scale = total.dtype.type(factor)
        scratch = np.empty(min(_BLOCK, flat_acc.size), total.dtype)
        for start in range(0, flat_acc.size, _BLOCK):
            stop = min(start + _BLOCK, flat_acc.size)
            part = scratch[: stop - start]
            np.multiply(flat[start:stop], scale, out=part)
            np.add(flat_acc[start:stop], part, out=flat_acc[start:stop])


def _start_sum(weights: Mapping[str, np.ndarray], factor: int, accumulator: str) -> Weights:
    """factor × weights in the accumulation dtypes (the first term of a running sum)."""
    acc: Weights = {}
    for name, array in weights.items():
        dtype = _sum_dtype(array.dtype, accumulator)
        acc[name] = np.multiply(array, dtype.type(factor), out=np.empty(array.shape, dtype))
    return acc


def _mean_from_sum(acc: Weights, total: int | float, previous: Weights) -> Weights:
    """acc / total in previous's dtypes; consumes acc (each sum is freed once it is divided)."""
    mean: Weights = {}
    for name, ref in previous.items():
        summed = acc.pop(name)
        if summed.dtype == ref.dtype:
            mean[name] = np.divide(summed, total, out=summed)
        elif ref.dtype.kind == "f":
            out = np.empty(ref.shape, ref.dtype)
            mean[name] = np.divide(summed, total, out=out, casting="same_kind")
        else:
            mean[name] = _cast_like(np.divide(summed, total, out=summed), ref)
        del summed
    return mean


def stream_mean(
    previous: Weights,
    updates: Iterable[Update],
    scaling: str = "num_examples",
    accumulator: str = "float32",
) -> Weights | None:
    """Weighted mean of the updates, folded in one at a time; None when there are none.

    Holds only the running sum and the update being folded in: each update is released
    before the next one is pulled from `updates`, which may be a generator fetching models.
    """
    if scaling not in SCALINGS or accumulator not in ACCUMULATORS:
        raise ConfigError(f"scaling {scaling!r} / accumulator {accumulator!r} is not known")
    acc: Weights | None = None
    total = 0
    last: str | None = None
    for update in updates:
        last = check_update(previous, update, last)
        factor = update.num_examples if scaling == "num_examples" else 1
        if acc is None:
            acc = _start_sum(update.weights, factor, accumulator)
        else:
            weighted_sum_into(acc, update.weights, factor)
        total += int(factor)
        del update  # release it before the generator fetches the next one
    return None if acc is None else _mean_from_sum(acc, total, previous)


# --- coordinate-wise robust rules ----------------------------------------------------


#: The bits below a float64's sign: flipping them on negative values maps IEEE-754 order onto
#: int64 order, with −0 just below +0 (an involution: applying it again restores the floats).
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)


def _sort_total(rows: np.ndarray) -> None:
    """Sorts float64 `rows` along axis 1 in place, in IEEE-754's total order (−0 before +0).

    Through int64 keys: integers sort to one result on every CPU, where numpy's float sort
    places −0 and +0 (equal as floats) by the vector instructions it runs with."""
    bits = rows.view(np.int64)
    bits ^= (bits >> 63) & _MAGNITUDE
    bits.sort(axis=1)
    bits ^= (bits >> 63) & _MAGNITUDE


#: Public name of the total-order sort (secure aggregation's median of group means).
sort_total = _sort_total


def _coordinatewise(models: Sequence[Weights], rule: Callable[[np.ndarray], np.ndarray]) -> Weights:
    """Apply `rule` to each block of coordinates, sorted: rows = coordinates, columns = models."""
    n = len(models)
    result: Weights = {}
    for name, ref in models[0].items():
        flats = [np.ravel(m[name]) for m in models]
        values = np.empty(ref.size, np.float64)
        block = np.empty((max(1, min(_BLOCK // n, ref.size)), n), np.float64)
        for start in range(0, ref.size, block.shape[0]):
            stop = min(start + block.shape[0], ref.size)
            rows = block[: stop - start]
            for j, flat in enumerate(flats):
                rows[:, j] = flat[start:stop]
            _sort_total(rows)
            values[start:stop] = rule(rows)
        result[name] = _cast_like(values, ref)
    return result


def aggregate_median(models: Sequence[Weights]) -> Weights:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    n = len(models)
    if n % 2:
        return _coordinatewise(models, lambda rows: rows[:, n // 2])
    return _coordinatewise(models, lambda rows: (rows[:, n // 2 - 1] + rows[:, n // 2]) / 2)


def aggregate_trimmed_mean(models: Sequence[Weights], beta: float) -> Weights:
    """Coordinate-wise mean after dropping the int(beta × n) lowest and highest values."""
    n = len(models)
    cut = int(beta * n)

    def trimmed(rows: np.ndarray) -> np.ndarray:
        kept = rows[:, cut : n - cut]
        total = kept[:, 0].copy()
        for j in range(1, kept.shape[1]):
            total += kept[:, j]
        return total / kept.shape[1]

    return _coordinatewise(models, trimmed)


def _squared_distances(models: Sequence[Weights]) -> np.ndarray:
    """Matrix of squared Euclidean distances between the models, summed in float64."""
    n = len(models)
    distances = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            total = 0.0
            for name, ref in models[i].items():
                a, b = np.ravel(models[i][name]), np.ravel(models[j][name])
                for start in range(0, ref.size, _BLOCK):
                    stop = start + _BLOCK
                    diff = np.subtract(a[start:stop], b[start:stop], dtype=np.float64)
                    # numpy's own sum, not BLAS dot: the same on every machine
                    total += float(np.multiply(diff, diff, out=diff).sum())
            distances[i, j] = distances[j, i] = total
    return distances


def krum_select(models: Sequence[Weights], f: int, m: int = 1) -> list[int]:
    """Indices (ascending) of the m models with the lowest Krum scores, tolerating f attackers.

    A model's score is the sum of its squared distances to its n - f - 2 nearest other models;
    ties go to the lower index (the lower learner address).
    """
    n = len(models)
    if n < 2 * f + 3:
        raise AggregationError(f"Krum with f={f} needs at least {2 * f + 3} updates, got {n}")
    if not 1 <= m <= n - f:
        raise AggregationError(f"Krum keeps m={m} of {n} updates: m must be in 1..n-f={n - f}")
    distances = _squared_distances(models)
    nearest = n - f - 2
    scores = []
    for i in range(n):
        others = np.sort(np.delete(distances[i], i))[:nearest]
        scores.append(sum(float(d) for d in others))
    ranked = sorted(range(n), key=lambda i: (scores[i], i))
    return sorted(ranked[:m])


# --- fixed-order reductions and finiteness -------------------------------------------


def fixed_sum(values: np.ndarray) -> float:
    """The sum of a 1-D float64 array, in an order this function fixes; `values` is overwritten.

    A binary tree by halves: element i is added to element i + ⌈n/2⌉, and again on the first
    ⌈n/2⌉, until one is left. Every step is an elementwise IEEE-754 addition (correctly
    rounded, no fused multiply-add possible), so the result depends only on the values and
    their count. `np.sum` is deterministic too for a given numpy build (pairwise summation
    over a contiguous array, whose split points depend only on the length), but that blocking
    is an implementation detail numpy may change between versions, and `np.dot` /
    `np.linalg.norm` go to BLAS, whose reduction order depends on the library, the CPU's SIMD
    width and the thread count. An auditor re-running a round with another numpy or BLAS
    gets the same bits from this one.
    """
    n = values.size
    while n > 1:
        half = (n + 1) // 2
        np.add(values[: n - half], values[half:n], out=values[: n - half])
        n = half
    return float(values[0]) if values.size else 0.0


def require_finite(weights: Mapping[str, np.ndarray], what: str) -> None:
    """Raise AggregationError naming the first floating layer with NaN or ±inf values."""
    for name, array in weights.items():
        if array.dtype.kind != "f":
            continue
        flat = np.ravel(array)
        # In blocks: a whole-layer isfinite() would allocate a temporary as large as the layer.
        for start in range(0, flat.size, _BLOCK):
            if not np.isfinite(flat[start : start + _BLOCK]).all():
                bad = int(np.count_nonzero(~np.isfinite(flat)))
                raise AggregationError(
                    f"{what}: layer {name} has {bad} non-finite value(s) (NaN, ±inf or an "
                    "overflow); nothing is published"
                )


# --- Byzantine bounds: examples cap and update-norm clipping --------------------------


def lower_median(values: Sequence[Any]) -> Any:
    """The ⌈n/2⌉-th smallest value (the median for odd n, the lower middle value for even n).

    Always one of the values (an integer stays an integer), and robust to ⌈n/2⌉ − 1 values
    that are too large, one more than the usual median for even n (with two updates it is
    the smaller, where the usual median would let one rogue set half the bound).
    """
    if not values:
        raise AggregationError("the median of no values")
    return sorted(values)[(len(values) - 1) // 2]


def examples_cap_value(counts: Sequence[int], examples_cap: float) -> int:
    """The most examples one update may count for: max(1, ⌊examples_cap × lower median⌋)."""
    median = int(lower_median([int(c) for c in counts]))
    return max(1, math.floor(examples_cap * median))  # one IEEE product: the same everywhere


def capped_counts(counts: Sequence[int], examples_cap: float) -> list[int]:
    """Each claimed num_examples, capped at `examples_cap_value` of the round's claims."""
    cap = examples_cap_value(counts, examples_cap)
    return [min(int(c), cap) for c in counts]


def update_norm(previous: Weights, weights: Mapping[str, np.ndarray]) -> float:
    """‖weights − previous‖₂ over the floating layers, in float64, bit-reproducible.

    Layers in the previous model's order, each in blocks of a fixed size; a block's squared
    differences are summed by `fixed_sum` and the block sums added in order. For float16 and
    float32 layers the result is finite for any finite update (|Δ| ≤ 6.9e38, so Δ² ≤ 4.7e77);
    float64 layers whose differences exceed about 1e154 give +inf. NaN only for NaN or
    infinite inputs.
    """
    total = 0.0
    scratch = np.empty(_BLOCK, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for _, _, part in _delta_blocks(previous, weights, scratch):
            np.multiply(part, part, out=part)
            total += fixed_sum(part)
    return math.sqrt(total)


def clip_factors(norms: Sequence[float], clip: float,
                 among: Sequence[int] | None = None) -> tuple[float, list[float]]:
    """(bound B = clip × lower median of the norms, each update's factor min(1, B / norm)).
    The median is over the norms of the updates `among` (indices; all by default).

    An infinite norm beyond a finite bound gets factor 0 (its update adds nothing); NaN norms
    must be refused before (see `MedianBounds.scales`).
    """
    counted = list(norms) if among is None else [norms[k] for k in among]
    bound = clip * float(lower_median(counted))
    return bound, [1.0 if norm <= bound else bound / norm for norm in norms]


def moved(norms: Sequence[float]) -> list[int]:
    """The updates whose statistics set align's bounds (SPEC §8.15 step 1): those that moved,
    by a finite amount (0 < ν < ∞); every update if none did."""
    usable = [k for k, norm in enumerate(norms) if 0.0 < norm < math.inf]
    return usable or list(range(len(norms)))


@dataclass(frozen=True)
class UpdateStats:
    """Pass 1's scalars for one update."""

    learner: str
    #: The update's weight as claimed (its staleness-discounted num_examples, §7.2).
    num_examples: int
    #: ‖update − previous‖₂ over the floating layers (§8.5 step 1); None unless the rule
    #: asks for norms.
    norm: float | None = None


@dataclass(frozen=True)
class Scales:
    """Step 2's result: how much each update counts in the fold."""

    #: W_k: each update's weight in the mean (capped, or 1 for uniform scaling); the mean
    #: divides by their sum.
    weights: tuple[int, ...]
    #: φ_k: the factor of each update's difference from the previous model, for the float64
    #: Δ mean of §8.5 (σ_k = W_k ⊗ φ_k); None: §8.3's weighted mean of the updates themselves,
    #: in the accumulator dtype.
    factors: tuple[float, ...] | None = None
    #: The floating layers' divisor instead of Σ W_k (align, SPEC §8.15: V = Σ W_k ⊗ γ_k; 0
    #: leaves them as they were); None: Σ W_k.
    divisor: float | None = None

    def same_as(self, other: Scales) -> bool:
        """Bit-identical scales (so the same fold): −0.0 and 0.0 differ, as do NaNs' bits."""
        if self.weights != other.weights or (self.factors is None) != (other.factors is None):
            return False
        if self.divisor != other.divisor:
            return False
        if self.factors is None or other.factors is None:
            return True
        return np.array(self.factors).tobytes() == np.array(other.factors).tobytes()


class BoundRule(ABC):
    """A bounded mean: which statistics pass 1 computes, and the scales they give."""

    #: Whether `scales` needs each update's norm (pass 1 then reads the updates' floats).
    needs_norms: bool = False
    #: The sum dtype of §8.3's mean ("float32" or "float64"), when `scales` gives no factors.
    accumulator: str = "float32"

    @abstractmethod
    def scales(self, stats: Sequence[UpdateStats]) -> Scales:
        """The scales of the round's updates (at least one) from their statistics; pure (it
        is also asked what it would give if no update had moved). AggregationError when the
        round cannot be aggregated (e.g. a NaN norm)."""

    def report(self, stats: Sequence[UpdateStats], scales: Scales,  # noqa: B027
               among: Sequence[int] | None = None) -> None:
        """Says what the bounds did to the round (called once, with the real scales; the
        round's statistics taken over the updates `among`, all by default)."""


@dataclass(frozen=True)
class MedianBounds(BoundRule):
    """FedAvg's Byzantine bounds (SPEC §8.4–8.5) as a `BoundRule`: claims capped at
    `examples_cap` × their lower median, differences clipped at `clip` × the lower median of
    the round's norms (see `streaming.bounded_mean`)."""

    clip: float | None = None
    examples_cap: float | None = None
    scaling: str = "num_examples"
    accumulator: str = "float32"

    @property
    def needs_norms(self) -> bool:  # type: ignore[override]
        return self.clip is not None

    def weights(self, stats: Sequence[UpdateStats],
                among: Sequence[int] | None = None) -> list[int]:
        """W_k: the claims, capped (§8.4; the cap from the claims of the updates `among`, all
        by default), or 1 each for uniform scaling."""
        if self.scaling != "num_examples":
            return [1] * len(stats)
        claims = [int(s.num_examples) for s in stats]
        if self.examples_cap is None:
            return claims
        if among is None:
            return capped_counts(claims, self.examples_cap)
        cap = examples_cap_value([claims[k] for k in among], self.examples_cap)
        return [min(c, cap) for c in claims]

    def scales(self, stats: Sequence[UpdateStats]) -> Scales:
        weights = tuple(self.weights(stats))
        if self.clip is None:
            return Scales(weights)
        norms = [float(s.norm) if s.norm is not None else math.nan for s in stats]
        for s, norm in zip(stats, norms, strict=True):
            if math.isnan(norm):
                raise AggregationError(
                    f"update from {s.learner} has non-finite values: its norm is NaN"
                )
        return Scales(weights, tuple(clip_factors(norms, self.clip)[1]))

    def report(self, stats: Sequence[UpdateStats], scales: Scales,
               among: Sequence[int] | None = None) -> None:
        # One line for the round, once per process (at DEBUG for every party after the first).
        if self.examples_cap is not None and self.scaling == "num_examples":
            capped = [(s.learner, s.num_examples, w)
                      for s, w in zip(stats, scales.weights, strict=True) if w != s.num_examples]
            if capped:
                _say_once(("capped", self.examples_cap, tuple(capped)),
                          "num_examples capped (examples_cap %g) for %d of %d updates: %s",
                          self.examples_cap, len(capped), len(stats),
                          ", ".join(f"{_short(a)} {n} → {c}" for a, n, c in capped))
        if self.clip is not None and scales.factors is not None:
            counted = stats if among is None else [stats[k] for k in among]
            bound = self.clip * float(lower_median([s.norm for s in counted]))
            clipped = [(s.learner, s.norm, f)
                       for s, f in zip(stats, scales.factors, strict=True) if f != 1.0]
            if clipped:
                _say_once(("clipped", bound, tuple(clipped)),
                          "%d of %d updates clipped to bound %.4g (%g × the median change): %s",
                          len(clipped), len(stats), bound, self.clip,
                          ", ".join(f"{_short(a)} norm {n:.4g} × {f:.4g}"
                                    for a, n, f in clipped))


def _delta_blocks(
    previous: Weights, weights: Mapping[str, np.ndarray], scratch: np.ndarray
) -> Iterable[tuple[str, int, np.ndarray]]:
    """(layer, start, Δ block in float64) over the floating layers, in previous's order."""
    for name, ref in previous.items():
        if ref.dtype.kind != "f":
            continue
        flat, base = np.ravel(weights[name]), np.ravel(ref)
        for start in range(0, flat.size, _BLOCK):
            stop = min(start + _BLOCK, flat.size)
            part = scratch[: stop - start]
            np.subtract(flat[start:stop], base[start:stop], out=part, dtype=np.float64)
            yield name, start, part
