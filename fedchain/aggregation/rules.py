"""Aggregation rules: pure, deterministic functions from updates to a model (Flower style).

Determinism, so anyone can re-run a round and get the bit-identical global model:
updates come in one fixed order, ascending learner address (case-insensitive hex), and any
other order is refused; arithmetic is elementwise IEEE-754 in a fixed order with a fixed
accumulation dtype (no BLAS, no threads, no fused multiply-add), so it does not depend on
the machine.

dtypes: floating layers are summed in the `accumulator` dtype ("float32" or "float64", never
narrower than the layer) and divided once at the end. Integer layers (e.g. BatchNorm's
`num_batches_tracked`) are aggregated in float64 and rounded half to even back to their
dtype (exact below 2**53); bool layers are treated as 0/1 integers, so they become a
(weighted) majority vote in which a tie gives False. Results have the names, order, shapes
and dtypes of the previous global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AggregationError, ConfigError, InvalidModel
from ..eth.accounts import learner_key
from ..model.codec import Weights

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


def _mean_from_sum(acc: Weights, total: int, previous: Weights) -> Weights:
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
            rows.sort(axis=1)
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
