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

A sweep's float64 loops over a block (the norms' squares, align's direction and dot products,
the fold) run in compiled kernels (`native`, `compiled_kernels`) for float32 and float64
layers where a C compiler built them, and in numpy otherwise (float16 layers always): the
same operations in the same order, so the same bits; `_check_against_numpy` holds the kernels
to that before they are used.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import AggregationError, ConfigError, FedChainError
from ..model.codec import Weights
from . import native
from .native import Kernels
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
    moved,
    stream_mean,
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
    lib = compiled_kernels()
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(updates, Sequence):
            return _held(previous, updates, rule, lib)
        return _streamed(previous, updates, rule, spill_dir, lib)


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


def _held(previous: Weights, updates: Sequence[Update], rule: BoundRule,
          lib: Kernels | None) -> Weights | None:
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
        return _sweep(previous, reader, scales, rule.accumulator, None, lib)
    try:
        presumed = rule.scales([replace(s, norm=0.0) for s in claimed])
    except Exception:  # noqa: BLE001 - only an optimisation: a rule may refuse a still round
        stats = [replace(s, norm=norm)
                 for s, norm in zip(claimed, _norms(previous, reader, lib), strict=True)]
        scales = rule.scales(stats)
        rule.report(stats, scales)
        return _sweep(previous, reader, scales, rule.accumulator, None, lib)
    squares = np.zeros(len(updates))
    result = _sweep(previous, reader, presumed, rule.accumulator, squares, lib)
    stats = [replace(s, norm=math.sqrt(q)) for s, q in zip(claimed, squares, strict=True)]
    scales = rule.scales(stats)
    rule.report(stats, scales)
    if scales.same_as(presumed):
        return result
    del result
    return _sweep(previous, reader, scales, rule.accumulator, None, lib)


def _streamed(
    previous: Weights,
    updates: Iterable[Update],
    rule: BoundRule,
    spill_dir: str | Path | None,
    lib: Kernels | None,
) -> Weights | None:
    stats: list[UpdateStats] = []
    with _Spill(previous, spill_dir) as spill:
        last: str | None = None
        for update in updates:
            last = check_update(previous, update, last)
            norm = _norm(previous, update, lib) if rule.needs_norms else None
            stats.append(UpdateStats(update.learner, update.num_examples, norm))
            spill.write(update.weights)
            del update  # release it before the next one is pulled (and fetched)
        if not stats:
            return None
        scales = rule.scales(stats)
        rule.report(stats, scales)
        return _sweep(previous, spill, scales, rule.accumulator, None, lib)


# --- blocks, and the threads that sweep them -------------------------------------------------

#: How many threads a sweep runs on. None: one per CPU this process may run on, at most
#: `_MAX_THREADS` and one per `_ELEMENTS_PER_THREAD` elements swept (each thread's scratch
#: is about 3.5 MiB: a small model is swept on fewer). Any count gives the same bits: see
#: `_each_block`.
THREADS: int | None = None
_MAX_THREADS = 8
_ELEMENTS_PER_THREAD = 2 << 20


def _thread_count(elements: int) -> int:
    if THREADS is not None:
        return max(1, THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_THREADS, elements // _ELEMENTS_PER_THREAD))


class _Block(NamedTuple):
    """Elements start:stop of a layer (SPEC §8.2's blocks: 65 536 elements, the last of a
    layer shorter); `place` is its index among the sweep's blocks, in the previous model's
    layer order."""

    place: int
    layer: str
    start: int
    stop: int


def _blocks(previous: Weights, floating_only: bool) -> list[_Block]:
    blocks: list[_Block] = []
    for name, ref in previous.items():
        if floating_only and ref.dtype.kind != "f":
            continue
        for start in range(0, ref.size, _BLOCK):
            blocks.append(_Block(len(blocks), name, start, min(start + _BLOCK, ref.size)))
    return blocks


def _sweep_threads(blocks: Sequence[_Block]) -> int:
    """The threads that sweep `blocks`."""
    return min(_thread_count(sum(b.stop - b.start for b in blocks)), len(blocks))


def _each_block(blocks: Sequence[_Block], job: Callable[[_Work, _Block], None]) -> None:
    """job(work, block) for every block, on `_sweep_threads(blocks)` threads, each thread with
    its own scratch (`_Work`).

    Why the thread count cannot change a bit: a block's blocks are fixed by the layer sizes
    alone (SPEC §8.2), a job computes its block's elements and its block's partial sums (one
    halving sum per update) from that block's elements alone, by the same operations whoever
    runs it, and writes them at the block's own place; whatever crosses blocks (a norm, a dot
    product) the caller adds up afterwards, block by block in order (`_in_order`), as SPEC
    §8.5 step 1 and §8.15 steps 3–4 say. numpy releases the GIL inside its loops, so the
    threads run at once."""
    threads = _sweep_threads(blocks)
    if threads <= 1:
        work = _Work()
        with np.errstate(over="ignore", invalid="ignore"):
            for block in blocks:
                job(work, block)
        return
    pending = iter(blocks)
    lock = threading.Lock()
    failed = threading.Event()

    def run() -> None:
        work = _Work()
        with np.errstate(over="ignore", invalid="ignore"):  # the caller's, in this thread
            while not failed.is_set():
                with lock:
                    block = next(pending, None)
                if block is None:
                    return
                try:
                    job(work, block)
                except BaseException:
                    failed.set()  # the others stop at their next block
                    raise

    with ThreadPoolExecutor(threads, thread_name_prefix="fedchain-sweep") as pool:
        futures = [pool.submit(run) for _ in range(threads)]
    for future in futures:
        future.result()


def _in_order(parts: np.ndarray) -> np.ndarray:
    """Column k: t = 0.0, then t ← t ⊕ parts[b, k] for each block b in order."""
    total = np.zeros(parts.shape[1])
    for row in parts:
        total += row
    return total


#: The halving sums' small levels run on up to `_GROUP` updates' blocks at once (one ufunc
#: call per level for all of them): per update, the levels run down to at most `_ROW` values.
_ROW = 2048
_GROUP = 32
#: Align's sweep keeps differences between its two steps of a block, to compute them once
#: instead of twice: up to this many bytes (all threads together), and at most a byte per
#: element swept (a quarter of a float32 model).
_KEPT_BYTES = 16 << 20
#: The compiled kernels (`native`) take the updates of a block in groups of at most this many
#: where they are in memory, and of `_SLOTS` where each one's block must be read into a buffer
#: of its own (a spill file): a thread's buffers are `_SLOTS` blocks.
_KGROUP = 16
_SLOTS = 4


class _Work:
    """One thread's scratch, reused by every block it sweeps."""

    def __init__(self) -> None:
        self.p64 = np.empty(_BLOCK, np.float64)
        self.d = np.empty(_BLOCK, np.float64)
        self.q = np.empty(_BLOCK, np.float64)
        self.acc = np.empty(_BLOCK, np.float64)
        self.acc32 = np.empty(_BLOCK, np.float32)
        self.t32 = np.empty(_BLOCK, np.float32)
        self.raw = np.empty(_BLOCK * 8, np.uint8)  # a block of the widest dtype, read back
        #: per update of a group, what is left of its block's halving sum after its large
        #: levels (`_row_sum`), and how many values that is
        self.rows = np.empty((_GROUP, _ROW), np.float64)
        self.left = 0
        #: blocks of differences kept between two steps of a block (align's direction, then
        #: its dot products), grown on first use
        self.kept = np.empty((0, _BLOCK), np.float64)
        #: for the compiled kernels: the addresses of a group's blocks, their sums, and (for
        #: readers that copy) one buffer per update of a group, made on first use
        self.ptrs = np.zeros(_KGROUP, np.uint64)
        self.sums = np.zeros(_KGROUP, np.float64)
        self.slots = np.empty((0, _BLOCK * 8), np.uint8)
        self.held: list[np.ndarray | None] = [None] * _SLOTS

    def slot(self, i: int) -> np.ndarray:
        """The i-th update's read buffer of a kernel group."""
        if self.slots.shape[0] == 0:
            self.slots = np.empty((_SLOTS, _BLOCK * 8), np.uint8)
        return self.slots[i]


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _halve_into(values: np.ndarray, row: np.ndarray) -> int:
    """The levels of `values`'s halving sum (`rules.fixed_sum`'s order) while more than
    `_ROW` values are left; the values left go into `row`; returns how many. `values` is
    overwritten."""
    n = values.size
    if n <= _ROW:
        row[:n] = values
        return n
    while True:
        half = (n + 1) // 2
        if half <= _ROW:
            np.add(values[: n - half], values[half:n], out=row[: n - half])
            row[n - half : half] = values[n - half : half]  # the middle one, for odd n
            return half
        np.add(values[: n - half], values[half:n], out=values[: n - half])
        n = half


def _row_sum(work: _Work, i: int, count: int, values: np.ndarray, out: np.ndarray) -> None:
    """out[i] = the halving sum of `values` (overwritten), the i-th of `count` same-sized
    arrays of a block: its large levels now, its small ones with the rest of its group."""
    g = i % _GROUP
    work.left = _halve_into(values, work.rows[g])
    if g == _GROUP - 1 or i == count - 1:
        out[i - g : i + 1] = _halving_rows(work.rows[: g + 1, : work.left])


def _halving_rows(rows: np.ndarray) -> np.ndarray:
    """The halving sum of each row (the levels left after `_halve_into`, all rows at once);
    `rows` is overwritten."""
    n = rows.shape[1]
    while n > 1:
        half = (n + 1) // 2
        np.add(rows[:, : n - half], rows[:, half:n], out=rows[:, : n - half])
        n = half
    return rows[:, 0].copy() if n else np.zeros(rows.shape[0])


def _difference(x: np.ndarray, p64: np.ndarray, d: np.ndarray) -> None:
    """d = F64(x) ⊖ p64 (the cast, then the subtraction: cheaper than a mixed-dtype ufunc)."""
    if x.dtype == np.float64:
        np.subtract(x, p64, out=d)
    else:
        np.copyto(d, x, casting="unsafe")
        np.subtract(d, p64, out=d)


# --- reading updates back --------------------------------------------------------------------


class _Reader(ABC):
    """The round's updates, read a block at a time, from any thread."""

    count: int

    def ready(self) -> None:  # noqa: B027 - most readers are always ready
        """Called before a sweep reads blocks."""

    @abstractmethod
    def block(self, k: int, block: _Block, raw: np.ndarray) -> np.ndarray:
        """The block's elements of update k, flat; read into `raw` (the calling thread's
        bytes) if they are not in memory, so valid until that thread's next call."""

    def group(self, block: _Block) -> int:
        """How many updates' blocks `addresses` takes at once."""
        return _SLOTS

    def addresses(self, ks: Sequence[int], block: _Block, work: _Work) -> int:
        """The block's elements of the updates `ks` (at most `group(block)`) for a compiled
        kernel: their addresses into `work.ptrs` (valid until the thread's next call); returns
        the address of `work.ptrs`."""
        for i, k in enumerate(ks):
            data = np.ascontiguousarray(self.block(k, block, work.slot(i)))
            work.held[i] = data  # a copy must live until the kernel has run
            work.ptrs[i] = _address(data)
        return _address(work.ptrs)


class _HeldReader(_Reader):
    """Updates in memory: blocks are views (copies for arrays that are not C-contiguous)."""

    def __init__(self, updates: Sequence[Update]) -> None:
        self.count = len(updates)
        self._flats: list[dict[str, Any]] = [
            {name: (a.reshape(-1) if a.flags.c_contiguous else a.flat)
             for name, a in u.weights.items()}
            for u in updates
        ]
        #: per layer whose arrays are all contiguous: each update's address of its elements
        self._bases: dict[str, np.ndarray] = {}
        if updates:
            for name in self._flats[0]:
                flats = [f[name] for f in self._flats]
                if all(isinstance(f, np.ndarray) for f in flats):
                    self._bases[name] = np.array([_address(f) for f in flats], np.uint64)

    def block(self, k: int, block: _Block, raw: np.ndarray) -> np.ndarray:
        return np.asarray(self._flats[k][block.layer][block.start : block.stop])

    def group(self, block: _Block) -> int:
        return _KGROUP if block.layer in self._bases else _SLOTS

    def addresses(self, ks: Sequence[int], block: _Block, work: _Work) -> int:
        bases = self._bases.get(block.layer)
        if bases is None:
            return super().addresses(ks, block, work)
        offset = block.start * self._flats[ks[0]][block.layer].itemsize
        np.add(bases[ks], np.uint64(offset), out=work.ptrs[: len(ks)])
        return _address(work.ptrs)


class _Spill(_Reader):
    """The round's updates written one after another to an unnamed temporary file, each in
    the previous model's layer order, and read back a block at a time (os.preadv into the
    reading thread's buffer: nothing of the file is mapped into the process)."""

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

    def ready(self) -> None:
        self._file.flush()

    def block(self, k: int, block: _Block, raw: np.ndarray) -> np.ndarray:
        dtype = self._dtypes[block.layer]
        want = (block.stop - block.start) * dtype.itemsize
        view = memoryview(raw)[:want]  # type: ignore[arg-type]
        position = k * self._size + self._offsets[block.layer] + block.start * dtype.itemsize
        fd, done = self._file.fileno(), 0
        while done < want:
            got = os.preadv(fd, [view[done:]], position + done)
            if got <= 0:
                raise FedChainError(f"the round's spill file ended {want - done} bytes early "
                                    "(was the temporary directory cleaned while it was read?)")
            done += got
        return raw[:want].view(dtype)


def _spill_failed(exc: OSError, directory: str | Path | None) -> FedChainError:
    """Not an AggregationError: a node that cannot spill must not carry the round over (the
    others would aggregate it); it fails to compute the round instead."""
    where = directory or tempfile.gettempdir()
    return FedChainError(f"cannot write the round's updates to a spill file in {where} (set "
                         f"TMPDIR to a disk with room for the round's updates): {exc}")


# --- the sweeps ------------------------------------------------------------------------------


def _norm(previous: Weights, update: Update, lib: Kernels | None) -> float:
    """`rules.update_norm` (SPEC §8.5 step 1), its blocks swept on several threads."""
    return _norms(previous, _HeldReader([update]), lib)[0]


def compiled_kernels() -> Kernels | None:
    """The sweeps' compiled kernels (`native`), checked against the numpy path on first use;
    None where there are none (the sweeps then run in numpy, with the same results)."""
    return native.kernels(_check_against_numpy)


def build_kernels() -> None:
    """`make setup`: builds the compiled kernels now and says where they are (never fails)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lib = compiled_kernels()
    print(f"fedchain: compiled sweeps {'at ' + str(lib.path) if lib else 'not built'}")


def _compiled(lib: Kernels | None, dtype: np.dtype[Any]) -> Kernels | None:
    """`lib` if it has kernels for layers of `dtype` (float32, float64), else None."""
    return lib if lib is not None and dtype in lib.sqsums else None


def _groups(ks: Sequence[int], size: int) -> list[list[int]]:
    ks = list(ks)
    return [ks[i : i + size] for i in range(0, len(ks), size)]


def _norms(previous: Weights, reader: _Reader, lib: Kernels | None) -> list[float]:
    """Every update's ν_k (SPEC §8.5 step 1): per block, each update's squared differences
    halving-summed; the block sums added in block order."""
    n = reader.count
    blocks = _blocks(previous, floating_only=True)
    flats = {name: np.ravel(ref) for name, ref in previous.items()}
    parts = np.zeros((len(blocks), n))
    reader.ready()

    def job(work: _Work, block: _Block) -> None:
        p = flats[block.layer][block.start : block.stop]
        _norm_block(reader, block, p, parts[block.place], work, lib)

    _each_block(blocks, job)
    return [math.sqrt(t) for t in _in_order(parts).tolist()]


def _sqsums(lib: Kernels, reader: _Reader, ks: Sequence[int], block: _Block, p: np.ndarray,
            out: np.ndarray, work: _Work) -> None:
    """out[k] = the halving sum of update k's squared differences over the block, compiled."""
    m = block.stop - block.start
    for group in _groups(ks, reader.group(block)):
        ptrs = reader.addresses(group, block, work)
        lib.sqsums[p.dtype](len(group), ptrs, _address(p), m, _address(work.q), _address(work.sums))
        out[group] = work.sums[: len(group)]


def _sweep(
    previous: Weights,
    reader: _Reader,
    scales: Scales,
    accumulator: str,
    squares: np.ndarray | None,
    lib: Kernels | None,
) -> Weights:
    """The fold of `reader`'s updates with `scales`, block by block (the blocks on several
    threads: `_each_block`); the squared norms (§8.5 step 1, before the square root) written
    into `squares` if given."""
    n = reader.count
    weights = [int(w) for w in scales.weights]
    if len(weights) != n or (scales.factors is not None and len(scales.factors) != n):
        raise AggregationError(f"the rule gave {len(weights)} weights for {n} updates")
    blocks = _blocks(previous, floating_only=False)
    flats = {name: np.ravel(ref) for name, ref in previous.items()}
    result: Weights = {name: np.empty(ref.shape, ref.dtype) for name, ref in previous.items()}
    outs = {name: out.reshape(-1) for name, out in result.items()}
    # integer layers' blocks leave their rows at +0.0, which adds nothing to a norm
    parts = np.zeros((len(blocks), n)) if squares is not None else None
    reader.ready()

    def job(work: _Work, block: _Block) -> None:
        dtype = previous[block.layer].dtype
        p = flats[block.layer][block.start : block.stop]
        target = outs[block.layer][block.start : block.stop]
        floating = dtype.kind == "f"
        row = parts[block.place] if parts is not None and floating else None
        if scales.factors is not None and floating:
            _delta_block(reader, block, p, target, weights, scales.factors, row, work,
                         scales.divisor, lib)
            return
        if row is not None:
            _norm_block(reader, block, p, row, work, lib)
        sum_dtype = (np.dtype(np.float64) if scales.factors is not None
                     else _sum_dtype(dtype, accumulator))
        _mean_block(reader, block, dtype, sum_dtype, target, weights,
                    scales.factors is not None, work)

    _each_block(blocks, job)
    if squares is not None and parts is not None:
        squares[:] = _in_order(parts)
    return result


def _delta_block(
    reader: _Reader,
    block: _Block,
    p: np.ndarray,
    target: np.ndarray,
    weights: list[int],
    factors: Sequence[float],
    squares: np.ndarray | None,
    work: _Work,
    divisor: float | None = None,
    lib: Kernels | None = None,
) -> None:
    """One block of a floating layer, §8.5 step 4: a = Σ (F64(x_k) ⊖ F64(p)) ⊗ σ_k over the
    updates with σ_k ≠ 0, then cast_D((a ⊘ W) ⊕ F64(p)); each update's halving sum of its
    squared differences (step 1) into `squares` on the way. In `lib`'s kernels where it has
    them for the layer's dtype: the same operations in the same order."""
    m = block.stop - block.start
    acc = work.acc[:m]
    acc.fill(0.0)
    compiled = _compiled(lib, p.dtype)
    if compiled is not None:
        _fold_compiled(compiled, reader, block, p, weights, factors, squares, work, acc)
    else:
        p64, d, q = work.p64[:m], work.d[:m], work.q[:m]
        np.copyto(p64, p, casting="unsafe")
        for k, (weight, factor) in enumerate(zip(weights, factors, strict=True)):
            scale = float(weight) * factor
            if squares is not None or scale != 0.0:
                _difference(reader.block(k, block, work.raw), p64, d)
            if squares is not None:
                np.multiply(d, d, out=q)
                _row_sum(work, k, len(weights), q, squares)
            if scale != 0.0:
                if scale != 1.0:
                    np.multiply(d, scale, out=d)
                np.add(acc, d, out=acc)
    total = float(sum(weights))
    if divisor is not None:  # align (§8.15 step 6): V = Σ W_k ⊗ γ_k; 0 keeps the layer
        if divisor == 0.0:
            np.copyto(target, p)
            return
        total = divisor
    if compiled is not None:
        compiled.finish[p.dtype](_address(acc), _address(p), m, total, _address(target))
        return
    np.divide(acc, total, out=acc)
    np.add(acc, work.p64[:m], out=acc)
    np.copyto(target, acc, casting="unsafe")


def _fold_compiled(lib: Kernels, reader: _Reader, block: _Block, p: np.ndarray,
                   weights: list[int], factors: Sequence[float], squares: np.ndarray | None,
                   work: _Work, acc: np.ndarray) -> None:
    """`_delta_block`'s sums in the compiled kernels: the squares' halving sums into
    `squares` (if given), then acc ⊕= Δ_k ⊗ σ_k for each σ_k ≠ 0, in order."""
    m = block.stop - block.start
    if squares is not None:
        _sqsums(lib, reader, range(len(weights)), block, p, squares, work)
    scales = np.array([float(w) * f for w, f in zip(weights, factors, strict=True)])
    folded = [k for k in range(len(weights)) if scales[k] != 0.0]
    for group in _groups(folded, reader.group(block)):
        ptrs = reader.addresses(group, block, work)
        part = scales[group]  # a new array, alive through the call
        lib.fold[p.dtype](len(group), ptrs, _address(p), m, _address(part), _address(acc))


def _norm_block(
    reader: _Reader,
    block: _Block,
    p: np.ndarray,
    squares: np.ndarray,
    work: _Work,
    lib: Kernels | None = None,
) -> None:
    """The norms' share of one block of a floating layer: squares[k] = the halving sum of
    update k's squared differences (in `lib`'s kernels where it has them)."""
    compiled = _compiled(lib, p.dtype)
    if compiled is not None:
        _sqsums(compiled, reader, range(reader.count), block, p, squares, work)
        return
    m = block.stop - block.start
    p64, d = work.p64[:m], work.d[:m]
    np.copyto(p64, p, casting="unsafe")
    for k in range(reader.count):
        _difference(reader.block(k, block, work.raw), p64, d)
        np.multiply(d, d, out=d)
        _row_sum(work, k, reader.count, d, squares)


def _mean_block(
    reader: _Reader,
    block: _Block,
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
    m = block.stop - block.start
    acc: np.ndarray
    part: np.ndarray
    if sum_dtype == np.float64:
        acc, part = work.acc[:m], work.q[:m]
    else:
        acc, part = work.acc32[:m], work.t32[:m]
    for k, weight in enumerate(weights):
        x = reader.block(k, block, work.raw)
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
    return _aligned_mean(previous, updates, rule, spill_dir, compiled_kernels())


def _aligned_mean(previous: Weights, updates: Iterable[Update], rule: MedianBounds,
                  spill_dir: str | Path | None, lib: Kernels | None,
                  quiet: bool = False) -> Weights | None:
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(updates, Sequence):
            last: str | None = None
            for update in updates:
                last = check_update(previous, update, last)
            if not updates:
                return None
            reader = _HeldReader(updates)
            stats = [UpdateStats(u.learner, u.num_examples, norm)
                     for u, norm in zip(updates, _norms(previous, reader, lib), strict=True)]
            return _aligned(previous, reader, stats, rule, lib, quiet)
        with _Spill(previous, spill_dir) as spill:
            stats = []
            last = None
            for update in updates:
                last = check_update(previous, update, last)
                stats.append(UpdateStats(update.learner, update.num_examples,
                                         _norm(previous, update, lib)))
                spill.write(update.weights)
                del update  # release it before the next one is pulled (and fetched)
            if not stats:
                return None
            return _aligned(previous, spill, stats, rule, lib, quiet)


def _aligned(previous: Weights, reader: _Reader, stats: list[UpdateStats],
             rule: MedianBounds, lib: Kernels | None, quiet: bool = False) -> Weights:
    norms = [float(s.norm) if s.norm is not None else math.nan for s in stats]
    for s, norm in zip(stats, norms, strict=True):
        if math.isnan(norm):
            raise AggregationError(
                f"update from {s.learner} has non-finite values: its norm is NaN"
            )
    # the round's bounds from the updates that moved (§8.15 step 1): a free-rider's claim or
    # zero norm moves neither the cap nor the clip bound
    counted = moved(norms)
    weights = rule.weights(stats, counted)
    factors = ([1.0] * len(stats) if rule.clip is None
               else clip_factors(norms, rule.clip, counted)[1])
    if not quiet:
        rule.report(stats, Scales(tuple(weights), tuple(factors)), counted)
    gammas = _alignment(previous, reader, norms, lib)
    against = [s.learner for s, g in zip(stats, gammas, strict=True) if g == 0.0]
    if against and not quiet:
        _say_once(("aligned", tuple(against)),
                  "%d of %d updates weigh 0 (align: against the round's direction, "
                  "or no change): %s", len(against), len(stats),
                  ", ".join(_short(a) for a in against))
    divisor = 0.0
    for w, g in zip(weights, gammas, strict=True):
        divisor += float(w) * g  # in order, one rounding each (not sum(): it compensates)
    scales = Scales(tuple(weights), tuple(f * g for f, g in zip(factors, gammas, strict=True)),
                    divisor)
    return _sweep(previous, reader, scales, "float64", None, lib)


def alignment_factors(previous: Weights, updates: Sequence[Update],
                      norms: Sequence[float]) -> list[float]:
    """Each held update's γ = max(0, cos(Δᵢ, r)), at most 1, where r = Σ Δⱼ / ‖Δⱼ‖ over the
    updates with a finite, non-zero norm (§8.15 steps 2–4); 0 for a zero or infinite norm,
    for r = 0, and for a non-finite quotient. The γ FedAvg's `align` folds with."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _alignment(previous, _HeldReader(updates), norms, compiled_kernels())


def _alignment(previous: Weights, reader: _Reader, norms: Sequence[float],
               lib: Kernels | None) -> list[float]:
    """γ_k (§8.15 steps 2–4), block by block: r's block from every usable update's block, its
    squares' halving sum (ρ²'s share) and each usable update's Δ·r halving sum (its dot
    product's share); the shares added in block order."""
    n = reader.count
    usable = [k for k in range(n) if 0.0 < norms[k] < math.inf]
    if not usable:  # r = 0, so ρ = 0
        return [0.0] * n
    blocks = _blocks(previous, floating_only=True)
    flats = {name: np.ravel(ref) for name, ref in previous.items()}
    # per block: each usable update's share of its dot product, then ρ²'s
    parts = np.zeros((len(blocks), len(usable) + 1))
    reader.ready()

    budget = min(_KEPT_BYTES, sum(b.stop - b.start for b in blocks))
    kept = min(len(usable), budget // _sweep_threads(blocks) // (_BLOCK * 8))
    count = len(usable) + 1
    usable_norms = np.array([norms[k] for k in usable], np.float64)

    def job(work: _Work, block: _Block) -> None:
        m = block.stop - block.start
        p = flats[block.layer][block.start : block.stop]
        compiled = _compiled(lib, p.dtype)
        if compiled is not None:
            _align_compiled(compiled, reader, block, p, usable, usable_norms,
                            parts[block.place], work)
            return
        p64, d, r = work.p64[:m], work.d[:m], work.acc[:m]
        if work.kept.shape[0] < kept:
            work.kept = np.empty((kept, _BLOCK), np.float64)
        np.copyto(p64, p, casting="unsafe")
        r.fill(0.0)
        for i, k in enumerate(usable):
            delta = work.kept[i, :m] if i < kept else d
            _difference(reader.block(k, block, work.raw), p64, delta)
            np.divide(delta, norms[k], out=d)
            np.add(r, d, out=r)
        shares = parts[block.place]
        for i, k in enumerate(usable):
            if i < kept:
                np.multiply(work.kept[i, :m], r, out=d)
            else:
                _difference(reader.block(k, block, work.raw), p64, d)
                np.multiply(d, r, out=d)
            _row_sum(work, i, count, d, shares)
        np.multiply(r, r, out=d)
        _row_sum(work, count - 1, count, d, shares)

    _each_block(blocks, job)
    totals = _in_order(parts).tolist()
    dots = [0.0] * n
    for i, k in enumerate(usable):
        dots[k] = totals[i]
    rho = math.sqrt(totals[-1])
    counted = set(usable)
    gammas = []
    for k in range(n):
        if k not in counted or not 0.0 < rho < math.inf:
            gammas.append(0.0)
            continue
        q = dots[k] / (norms[k] * rho) if norms[k] * rho < math.inf else 0.0
        gammas.append(1.0 if q >= 1.0 else q if q > 0.0 else 0.0)
    return gammas


def _align_compiled(lib: Kernels, reader: _Reader, block: _Block, p: np.ndarray,
                    usable: list[int], norms: np.ndarray, shares: np.ndarray,
                    work: _Work) -> None:
    """One block of `_alignment` in the compiled kernels: r from every usable update in order,
    then each one's Δ·r halving sum into shares[i], and r·r's into shares[-1]."""
    m = block.stop - block.start
    r = work.acc[:m]
    r.fill(0.0)
    groups = _groups(range(len(usable)), reader.group(block))
    for group in groups:
        ptrs = reader.addresses([usable[i] for i in group], block, work)
        lib.direction[p.dtype](len(group), ptrs, _address(p), m,
                               _address(norms) + 8 * group[0], _address(r))
    for group in groups:
        ptrs = reader.addresses([usable[i] for i in group], block, work)
        lib.dots[p.dtype](len(group), ptrs, _address(p), m, _address(r), _address(work.q),
                          _address(work.sums))
        shares[group[0] : group[-1] + 1] = work.sums[: len(group)]
    shares[-1] = lib.squares(_address(r), m, _address(work.q))


# --- the compiled kernels' check ---------------------------------------------------------------


class _QuietBounds(MedianBounds):
    def report(self, stats: Sequence[UpdateStats], scales: Scales,
               among: Sequence[int] | None = None) -> None:
        pass


def _check_against_numpy(lib: Kernels) -> str | None:
    """The kernels against the numpy path on a small round made to reach their edges: a layer
    of two blocks (the second of odd length), float64 and float16 and integer layers, a
    non-contiguous update, −0, subnormals, an update of no change, one against the direction,
    one clipped; held and spilled, align and clip. The first difference, or None."""
    rng = np.random.default_rng(19)
    previous: Weights = {
        "a": rng.standard_normal(_BLOCK + 4465).astype(np.float32),
        "b": rng.standard_normal((70, 30)),
        "c": rng.standard_normal(5).astype(np.float16),
        "n": np.arange(3, dtype=np.int64),
    }
    previous["a"][:4] = [0.0, -0.0, 1e-41, -1e-44]
    updates = []
    for i in range(6):
        step = 1.0 if i != 4 else -3.0  # the fifth pulls against the round
        weights = {name: (a + step * rng.standard_normal(a.shape) * 0.1 * (1 + 9 * (i == 5)))
                   .astype(a.dtype) for name, a in previous.items()}
        weights["a"][:4] = [-0.0, 0.0, -1e-41, 3e-45]
        if i == 2:
            weights = {name: a.copy() for name, a in previous.items()}  # no change
        if i == 3:
            weights["b"] = np.asfortranarray(weights["b"])  # not C-contiguous
        updates.append(Update(f"0x{i:040x}", 10 + i, weights))
    runs: list[tuple[str, Callable[[Kernels | None], Weights | None]]] = [
        ("align, held", lambda k: _aligned_mean(
            previous, updates, _QuietBounds(2.0, 2.0, "num_examples", "float64"), None, k,
            quiet=True)),
        ("align, spilled", lambda k: _aligned_mean(
            previous, iter(updates), _QuietBounds(None, None, "uniform", "float64"), None, k,
            quiet=True)),
        ("clip, held", lambda k: _held(
            previous, updates, _QuietBounds(1.5, None, "num_examples", "float32"), k)),
        ("clip, spilled", lambda k: _streamed(
            previous, iter(updates), _QuietBounds(1.5, 2.0, "num_examples", "float32"),
            None, k)),
    ]
    with np.errstate(over="ignore", invalid="ignore"):
        reader = _HeldReader(updates)
        norms = _norms(previous, reader, None)
        if _norms(previous, reader, lib) != norms:
            return "the norms differ from the numpy path's"
        if _alignment(previous, reader, norms, lib) != _alignment(previous, reader, norms, None):
            return "the alignments differ from the numpy path's"
        for what, run in runs:
            want, got = run(None), run(lib)
            if want is None or got is None:
                return f"{what}: no result"
            for name, array in want.items():
                if array.tobytes() != got[name].tobytes():
                    return f"{what}: layer {name} differs from the numpy path"
    return None
