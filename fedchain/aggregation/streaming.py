"""Two-pass streaming for the bounded means (FedAvg with `clip` / `examples_cap`, SPEC §8.4–8.5).

A bounded mean is a *rule of the round* in three steps, which is what lets it stream:

1. **statistics**: scalars per update, computed from that update alone — its claimed weight
   and, if the rule asks for it, its norm ‖update − previous‖ (§8.5 step 1, `rules.update_norm`);
2. **scales**: from the statistics of the whole round, one weight `W_k` and (for the Δ mean of
   §8.5) one clip factor `φ_k` per update — `BoundRule.scales`, pure scalar arithmetic
   (medians, caps), which is where a rule of this family differs from another;
3. **fold**: the updates summed with those scales, block by block, elementwise in float64
   (§8.5 step 4) or, without clip factors, as §8.3's weighted mean in the accumulator dtype.

`two_pass_mean` runs them in one of two ways, with the same arithmetic in the same order (so
the same bits):

- a one-shot iterable (a round being fetched): pass 1 computes each update's statistics as
  it arrives and writes its arrays to a spill file (an unnamed temporary file, so the disk
  and the page cache hold the round, not the process), then drops it; pass 2 reads the
  updates back from the spill, one 65 536-element block of one update at a time, and folds
  them. The process holds the previous model, the new one and a few blocks: never the round.
- a sequence (the caller holds the updates already): one sweep over the blocks computes the
  statistics *and* the fold with the scales presumed from the claims alone (the scales the rule
  gives when no update moved: nothing clipped). If the real scales are those, bit for bit, the
  fold is the answer — the usual round, where no update is clipped, reads its updates once;
  otherwise a second sweep folds with the real scales.

Rules of the same family (clip at a multiple of another statistic of the round's norms, caps
from other statistics of the claims) stream unchanged: only `BoundRule.scales` changes.
"""

from __future__ import annotations

import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AggregationError, ConfigError, FedChainError
from ..model.codec import Weights
from .rules import (
    _BLOCK,
    ACCUMULATORS,
    SCALINGS,
    BoundRule,
    MedianBounds,
    Scales,
    Update,
    UpdateStats,
    _say_once,
    _short,
    _sum_dtype,
    check_update,
    clip_factors,
    fixed_sum,
    stream_mean,
    update_norm,
)

__all__ = [
    "BoundRule",
    "MedianBounds",
    "Scales",
    "UpdateStats",
    "aligned_mean",
    "alignment_factors",
    "bounded_mean",
    "two_pass_mean",
]


def two_pass_mean(
    previous: Weights,
    updates: Iterable[Update],
    rule: BoundRule,
    *,
    spill_dir: str | Path | None = None,
) -> Weights | None:
    """The bounded mean of `updates` under `rule` (see the module docstring); None when there
    are none. A sequence is read where it is; any other iterable is consumed once, each update
    released before the next one is pulled, and re-read from a spill file in `spill_dir` (the
    system's temporary directory by default)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(updates, Sequence):
            return _held(previous, updates, rule)
        return _streamed(previous, updates, rule, spill_dir)


def bounded_mean(
    previous: Weights,
    updates: Iterable[Update],
    *,
    clip: float | None = None,
    examples_cap: float | None = None,
    scaling: str = "num_examples",
    accumulator: str = "float32",
) -> Weights | None:
    """FedAvg's weighted mean with Byzantine bounds; None when there are no updates.

    - `examples_cap` = k: each num_examples counts for at most max(1, ⌊k × m⌋), m the lower
      median of the round's claims (scaling "num_examples" only). One learner claiming 2**40
      examples then weighs as much as k typical learners, not all of them.
    - `clip` = c (Sun et al., 2019, "Can you really backdoor federated learning?", with an
      adaptive bound): each difference Δᵢ = updateᵢ − previous is scaled by min(1, B / ‖Δᵢ‖),
      B = c × the lower median of the round's ‖Δⱼ‖ (float64, `rules.update_norm`), and the scaled
      differences are averaged in float64 (SPEC §8.5): no finite update, even
      all 3e38, can overflow the sum, and one update moves the model by at most B × its
      weight share.

    With neither, this is `rules.stream_mean`. With either, both bounds need the whole round's
    medians before the first update is folded in: `two_pass_mean` computes the claims and
    norms in a first pass (`rules.MedianBounds` turns them into weights and clip factors) and
    folds in a second, re-reading a one-shot iterable (a round being fetched) from a spill
    file, so the round is never held in memory.
    """
    if clip is None and examples_cap is None:
        return stream_mean(previous, updates, scaling, accumulator)
    if scaling not in SCALINGS or accumulator not in ACCUMULATORS:
        raise ConfigError(f"scaling {scaling!r} / accumulator {accumulator!r} is not known")
    rule = MedianBounds(clip, examples_cap, scaling, accumulator)
    return two_pass_mean(previous, updates, rule)


# --- the two ways ----------------------------------------------------------------------------


def _held(previous: Weights, updates: Sequence[Update], rule: BoundRule) -> Weights | None:
    last: str | None = None
    for update in updates:
        last = check_update(previous, update, last)
    if not updates:
        return None
    claimed = [UpdateStats(u.learner, u.num_examples) for u in updates]
    reader = _HeldReader(updates)
    if not rule.needs_norms:
        scales = rule.scales(claimed)
        rule.report(claimed, scales)
        return _sweep(previous, reader, scales, rule.accumulator, None)
    try:
        presumed = rule.scales([replace(s, norm=0.0) for s in claimed])
    except Exception:  # noqa: BLE001 - only an optimisation: a rule may refuse a still round
        stats = [replace(s, norm=update_norm(previous, u.weights))
                 for s, u in zip(claimed, updates, strict=True)]
        scales = rule.scales(stats)
        rule.report(stats, scales)
        return _sweep(previous, reader, scales, rule.accumulator, None)
    squares = np.zeros(len(updates))
    result = _sweep(previous, reader, presumed, rule.accumulator, squares)
    stats = [replace(s, norm=math.sqrt(q)) for s, q in zip(claimed, squares, strict=True)]
    scales = rule.scales(stats)
    rule.report(stats, scales)
    if scales.same_as(presumed):
        return result
    del result
    return _sweep(previous, reader, scales, rule.accumulator, None)


def _streamed(
    previous: Weights, updates: Iterable[Update], rule: BoundRule, spill_dir: str | Path | None
) -> Weights | None:
    stats: list[UpdateStats] = []
    with _Spill(previous, spill_dir) as spill:
        last: str | None = None
        for update in updates:
            last = check_update(previous, update, last)
            norm = update_norm(previous, update.weights) if rule.needs_norms else None
            stats.append(UpdateStats(update.learner, update.num_examples, norm))
            spill.write(update.weights)
            del update  # release it before the next one is pulled (and fetched)
        if not stats:
            return None
        scales = rule.scales(stats)
        rule.report(stats, scales)
        return _sweep(previous, spill, scales, rule.accumulator, None)


# --- reading updates back --------------------------------------------------------------------


class _Reader(ABC):
    count: int

    @abstractmethod
    def layer(self, name: str) -> None:
        """Prepare to read blocks of layer `name` of every update."""

    @abstractmethod
    def block(self, k: int, start: int, stop: int) -> np.ndarray:
        """Elements start:stop of the current layer of update k, flat (valid until the next
        call)."""


class _HeldReader(_Reader):
    """Updates in memory: blocks are views."""

    def __init__(self, updates: Sequence[Update]) -> None:
        self._updates = updates
        self.count = len(updates)
        self._flats: list[np.ndarray] = []

    def layer(self, name: str) -> None:
        self._flats = [np.ravel(u.weights[name]) for u in self._updates]

    def block(self, k: int, start: int, stop: int) -> np.ndarray:
        return self._flats[k][start:stop]


class _Spill(_Reader):
    """The round's updates written one after another to an unnamed temporary file, each in
    the previous model's layer order, and read back a block at a time (os.preadv into one
    buffer: nothing of the file is mapped into the process)."""

    def __init__(self, previous: Weights, directory: str | Path | None) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - see __exit__
        except OSError as exc:
            raise _spill_failed(exc, directory) from None
        self._directory = directory
        self._offsets: dict[str, int] = {}
        size = 0
        for name, ref in previous.items():
            self._offsets[name] = size
            size += ref.nbytes
        self._size = size
        self._dtypes = {name: ref.dtype for name, ref in previous.items()}
        self.count = 0
        self._offset = 0
        self._dtype = np.dtype(np.uint8)
        self._buffer = np.empty(_BLOCK * 8, np.uint8)  # a block of the widest dtype

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def write(self, weights: Weights) -> None:
        """Appends an update (checked against the previous model: same layers, dtypes)."""
        try:
            for name in self._offsets:
                array = np.ascontiguousarray(weights[name])
                if array.size:
                    self._file.write(array.reshape(-1).view(np.uint8).data)
        except OSError as exc:  # a full disk: this node's failure, not the round's
            raise _spill_failed(exc, self._directory) from None
        self.count += 1

    def layer(self, name: str) -> None:
        self._file.flush()
        self._offset = self._offsets[name]
        self._dtype = self._dtypes[name]

    def block(self, k: int, start: int, stop: int) -> np.ndarray:
        want = (stop - start) * self._dtype.itemsize
        view = memoryview(self._buffer)[:want]  # type: ignore[arg-type]
        position = k * self._size + self._offset + start * self._dtype.itemsize
        fd, done = self._file.fileno(), 0
        while done < want:
            got = os.preadv(fd, [view[done:]], position + done)
            if got <= 0:
                raise FedChainError(f"the round's spill file ended {want - done} bytes early "
                                    "(was the temporary directory cleaned while it was read?)")
            done += got
        return self._buffer[:want].view(self._dtype)


def _spill_failed(exc: OSError, directory: str | Path | None) -> FedChainError:
    """Not an AggregationError: a node that cannot spill must not carry the round over (the
    others would aggregate it); it fails to compute the round instead."""
    where = directory or tempfile.gettempdir()
    return FedChainError(f"cannot write the round's updates to a spill file in {where} (set "
                         f"TMPDIR to a disk with room for the round's updates): {exc}")


# --- the sweep -------------------------------------------------------------------------------


def _sweep(
    previous: Weights,
    reader: _Reader,
    scales: Scales,
    accumulator: str,
    squares: np.ndarray | None,
) -> Weights:
    """The fold of `reader`'s updates with `scales`, layer by layer and block by block; the
    squared norms (§8.5 step 1, before the square root) added into `squares` if given."""
    n = reader.count
    weights = [int(w) for w in scales.weights]
    if len(weights) != n or (scales.factors is not None and len(scales.factors) != n):
        raise AggregationError(f"the rule gave {len(weights)} weights for {n} updates")
    work = _Work()
    result: Weights = {}
    for name, ref in previous.items():
        reader.layer(name)
        out = np.empty(ref.shape, ref.dtype)
        flat_out, flat_ref = out.reshape(-1), np.ravel(ref)
        delta = scales.factors is not None and ref.dtype.kind == "f"
        norms = squares is not None and ref.dtype.kind == "f"
        for start in range(0, ref.size, _BLOCK):
            stop = min(start + _BLOCK, ref.size)
            p = flat_ref[start:stop]
            target = flat_out[start:stop]
            if delta:
                assert scales.factors is not None
                _delta_block(reader, start, stop, p, target, weights, scales.factors,
                             squares if norms else None, work, scales.divisor)
            else:
                if norms:
                    assert squares is not None
                    _norm_block(reader, start, stop, p, squares, work)
                sum_dtype = (np.dtype(np.float64) if scales.factors is not None
                             else _sum_dtype(ref.dtype, accumulator))
                _mean_block(reader, start, stop, ref.dtype, sum_dtype, target, weights,
                            scales.factors is not None, work)
        result[name] = out
    return result


#: How many updates' squared differences are halving-summed at once (fewer, larger ufunc calls
#: for the many small levels of the halving sum; ~_GROUP × 0.5 MiB of scratch).
_GROUP = 4


class _Work:
    """Scratch blocks, reused by every block of every layer."""

    def __init__(self) -> None:
        self.p64 = np.empty(_BLOCK, np.float64)
        self.d = np.empty(_BLOCK, np.float64)
        self.q = np.empty(_BLOCK, np.float64)
        self.acc = np.empty(_BLOCK, np.float64)
        self.acc32 = np.empty(_BLOCK, np.float32)
        self.t32 = np.empty(_BLOCK, np.float32)
        #: squared differences of a few updates' blocks, halving-summed together
        self.squares = np.empty((_GROUP, _BLOCK), np.float64)


def _difference(x: np.ndarray, p64: np.ndarray, d: np.ndarray) -> None:
    """d = F64(x) ⊖ p64 (the cast, then the subtraction: cheaper than a mixed-dtype ufunc)."""
    if x.dtype == np.float64:
        np.subtract(x, p64, out=d)
    else:
        np.copyto(d, x, casting="unsafe")
        np.subtract(d, p64, out=d)


def _add_square_sums(squares: np.ndarray, k: int, d: np.ndarray, q: np.ndarray) -> None:
    """squares[k] ⊕= halving_sum(d ⊗ d) (§8.5 step 1, one block)."""
    np.multiply(d, d, out=q)
    squares[k] += fixed_sum(q)


def _delta_block(
    reader: _Reader,
    start: int,
    stop: int,
    p: np.ndarray,
    target: np.ndarray,
    weights: list[int],
    factors: Sequence[float],
    squares: np.ndarray | None,
    work: _Work,
    divisor: float | None = None,
) -> None:
    """One block of a floating layer, §8.5 step 4: a = Σ (F64(x_k) ⊖ F64(p)) ⊗ σ_k over the
    updates with σ_k ≠ 0, then cast_D((a ⊘ W) ⊕ F64(p)); norms (step 1) on the way."""
    m = stop - start
    p64, d, acc = work.p64[:m], work.d[:m], work.acc[:m]
    np.copyto(p64, p, casting="unsafe")
    acc.fill(0.0)
    total = float(sum(weights))
    group = work.squares.shape[0]
    for k, (weight, factor) in enumerate(zip(weights, factors, strict=True)):
        scale = float(weight) * factor
        if squares is not None:
            _difference(reader.block(k, start, stop), p64, d)
            row = k % group
            np.multiply(d, d, out=work.squares[row, :m])
            if row == group - 1 or k == len(weights) - 1:
                _halving_sums(work.squares[: row + 1, :m], squares[k - row : k + 1])
        elif scale != 0.0:
            _difference(reader.block(k, start, stop), p64, d)
        if scale != 0.0:
            if scale != 1.0:
                np.multiply(d, scale, out=d)
            np.add(acc, d, out=acc)
    if divisor is not None:  # align (§8.15 step 6): V = Σ W_k ⊗ γ_k; 0 keeps the layer
        if divisor == 0.0:
            np.copyto(target, p)
            return
        total = divisor
    np.divide(acc, total, out=acc)
    np.add(acc, p64, out=acc)
    np.copyto(target, acc, casting="unsafe")


def _halving_sums(rows: np.ndarray, into: np.ndarray) -> None:
    """into[i] ⊕= halving_sum(rows[i]) for each row (`rules.fixed_sum`'s order, all rows at
    once); `rows` is overwritten."""
    n = rows.shape[1]
    while n > 1:
        half = (n + 1) // 2
        np.add(rows[:, : n - half], rows[:, half:n], out=rows[:, : n - half])
        n = half
    if rows.shape[1]:
        into += rows[:, 0]


def _norm_block(
    reader: _Reader, start: int, stop: int, p: np.ndarray, squares: np.ndarray, work: _Work
) -> None:
    """The norms' share of one block of a floating layer, for a rule whose fold is §8.3's."""
    m = stop - start
    p64, d, q = work.p64[:m], work.d[:m], work.q[:m]
    np.copyto(p64, p, casting="unsafe")
    for k in range(reader.count):
        _difference(reader.block(k, start, stop), p64, d)
        _add_square_sums(squares, k, d, q)


def _mean_block(
    reader: _Reader,
    start: int,
    stop: int,
    dtype: np.dtype[Any],
    sum_dtype: np.dtype[Any],
    target: np.ndarray,
    weights: list[int],
    clipped: bool,
    work: _Work,
) -> None:
    """One block of §8.3's weighted mean (or of an integer layer under §8.5 step 5):
    s = T(x_1) ⊗ T(w_1), s ⊕= T(x_k) ⊗ T(w_k), then s ⊘ N in T, cast to the layer's dtype
    (integers rounded half to even). T: the accumulator's sum dtype (F64 for integer layers;
    F64 for everything under §8.5)."""
    m = stop - start
    acc: np.ndarray
    part: np.ndarray
    if sum_dtype == np.float64:
        acc, part = work.acc[:m], work.q[:m]
    else:
        acc, part = work.acc32[:m], work.t32[:m]
    for k, weight in enumerate(weights):
        x = reader.block(k, start, stop)
        scale = sum_dtype.type(weight)
        if k == 0:
            np.multiply(x, scale, out=acc, casting="unsafe")
        elif weight == 1:
            np.add(acc, x, out=acc, casting="unsafe")
        else:
            np.multiply(x, scale, out=part, casting="unsafe")
            np.add(acc, part, out=acc)
    total = float(sum(weights)) if clipped else sum(weights)
    if dtype.kind == "f":
        if dtype == sum_dtype:
            np.divide(acc, total, out=target)
        else:
            np.divide(acc, total, out=target, casting="same_kind")
    else:
        np.divide(acc, total, out=acc)
        np.rint(acc, out=acc)
        np.copyto(target, acc, casting="unsafe")


# --- align (SPEC §8.15) ----------------------------------------------------------------------


def aligned_mean(
    previous: Weights,
    updates: Iterable[Update],
    *,
    clip: float | None = None,
    examples_cap: float | None = None,
    scaling: str = "num_examples",
    spill_dir: str | Path | None = None,
) -> Weights | None:
    """FedAvg's mean with `align` (SPEC §8.15), after `examples_cap` (§8.4) and with `clip`'s
    factors (§8.5 steps 1–2) if set; None when there are no updates.

    Three passes over the round, never holding it (a one-shot iterable is spilled as in
    `two_pass_mean`): the claims and norms; then, block by block, the round's direction
    r = Σ Δ_k / ν_k, its norm and each update's Δ_k · r (γ_k, the cosine, 0 if negative);
    then the fold with σ_k = W_k ⊗ (φ_k ⊗ γ_k), divided by V = Σ W_k ⊗ γ_k.
    """
    if scaling not in SCALINGS:
        raise ConfigError(f"scaling {scaling!r} is not known")
    rule = MedianBounds(clip, examples_cap, scaling, "float64")
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(updates, Sequence):
            last: str | None = None
            for update in updates:
                last = check_update(previous, update, last)
            if not updates:
                return None
            stats = [UpdateStats(u.learner, u.num_examples, update_norm(previous, u.weights))
                     for u in updates]
            return _aligned(previous, _HeldReader(updates), stats, rule)
        with _Spill(previous, spill_dir) as spill:
            stats = []
            last = None
            for update in updates:
                last = check_update(previous, update, last)
                stats.append(UpdateStats(update.learner, update.num_examples,
                                         update_norm(previous, update.weights)))
                spill.write(update.weights)
                del update  # release it before the next one is pulled (and fetched)
            if not stats:
                return None
            return _aligned(previous, spill, stats, rule)


def _aligned(previous: Weights, reader: _Reader, stats: list[UpdateStats],
             rule: MedianBounds) -> Weights:
    norms = [float(s.norm) if s.norm is not None else math.nan for s in stats]
    for s, norm in zip(stats, norms, strict=True):
        if math.isnan(norm):
            raise AggregationError(
                f"update from {s.learner} has non-finite values: its norm is NaN"
            )
    weights = rule.weights(stats)
    factors = [1.0] * len(stats) if rule.clip is None else clip_factors(norms, rule.clip)[1]
    rule.report(stats, Scales(tuple(weights), tuple(factors)))
    gammas = _alignment(previous, reader, norms)
    against = [s.learner for s, g in zip(stats, gammas, strict=True) if g == 0.0]
    if against:
        _say_once(("aligned", tuple(against)),
                  "%d of %d updates weigh 0 (align: against the round's direction, "
                  "or no change): %s", len(against), len(stats),
                  ", ".join(_short(a) for a in against))
    divisor = 0.0
    for w, g in zip(weights, gammas, strict=True):
        divisor += float(w) * g  # in order, one rounding each (not sum(): it compensates)
    scales = Scales(tuple(weights), tuple(f * g for f, g in zip(factors, gammas, strict=True)),
                    divisor)
    return _sweep(previous, reader, scales, "float64", None)


def alignment_factors(previous: Weights, updates: Sequence[Update],
                      norms: Sequence[float]) -> list[float]:
    """Each held update's γ = max(0, cos(Δᵢ, r)), at most 1, where r = Σ Δⱼ / ‖Δⱼ‖ over the
    updates with a finite, non-zero norm (§8.15 steps 2–4); 0 for a zero or infinite norm,
    for r = 0, and for a non-finite quotient. The γ FedAvg's `align` folds with."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _alignment(previous, _HeldReader(updates), norms)


def _alignment(previous: Weights, reader: _Reader, norms: Sequence[float]) -> list[float]:
    """γ_k (§8.15 steps 2–4), block by block: r's block from every usable update's block, its
    squares' halving sum into ρ², each update's Δ·r halving sum into its dot product."""
    n = reader.count
    usable = [0.0 < v < math.inf for v in norms]
    dots = [0.0] * n
    total = 0.0
    p64_all, d_all = np.empty(_BLOCK, np.float64), np.empty(_BLOCK, np.float64)
    r_all = np.empty(_BLOCK, np.float64)
    for name, ref in previous.items():
        if ref.dtype.kind != "f":
            continue
        reader.layer(name)
        flat_ref = np.ravel(ref)
        for start in range(0, ref.size, _BLOCK):
            stop = min(start + _BLOCK, ref.size)
            m = stop - start
            p64, d, r = p64_all[:m], d_all[:m], r_all[:m]
            np.copyto(p64, flat_ref[start:stop], casting="unsafe")
            r.fill(0.0)
            for k in range(n):
                if usable[k]:
                    _difference(reader.block(k, start, stop), p64, d)
                    np.divide(d, norms[k], out=d)
                    np.add(r, d, out=r)
            np.multiply(r, r, out=d)
            total += fixed_sum(d)
            for k in range(n):
                if usable[k]:
                    _difference(reader.block(k, start, stop), p64, d)
                    np.multiply(d, r, out=d)
                    dots[k] += fixed_sum(d)
    rho = math.sqrt(total)
    gammas = []
    for k in range(n):
        if not usable[k] or not 0.0 < rho < math.inf:
            gammas.append(0.0)
            continue
        q = dots[k] / (norms[k] * rho) if norms[k] * rho < math.inf else 0.0
        gammas.append(1.0 if q >= 1.0 else q if q > 0.0 else 0.0)
    return gammas
