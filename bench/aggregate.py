"""FedAvg: fedchain's streaming strategy against Flower's `aggregate` and `aggregate_inplace`.

    .venv/bin/python bench/aggregate.py                       # 10 learners × 10M float32
    .venv/bin/python bench/aggregate.py --learners 4 --params 1000000 --repeat 2

Every contender runs in its own subprocesses on the same seeded inputs, so no contender's
allocations pollute another's figures. Timing: one long-lived subprocess per contender, called
round-robin --repeat times (default 5) so that all contenders see the same load on a shared
machine; best and median reported. Memory: one fresh subprocess per contender. Peak extra
memory is what the aggregation allocates on top of its inputs, in model sizes: from
tracemalloc (numpy reports its buffers to it) and
from the kernel's RSS high-water mark (reset through /proc/self/clear_refs), with glibc's
mmap threshold pinned so freed arrays go back to the OS instead of hiding later peaks.

Flower's `aggregate_inplace` takes FitRes whose Parameters are bytes (one `np.save` blob per
layer), so its time includes deserializing them. The "bytes" contenders give fedchain the
equivalent work: decoding its own model bytes (`fedchain.model.codec.decode`, which also validates
and checks every value is finite) or, for a like-for-like decode, the very same Parameters
with Flower's `parameters_to_ndarrays`. The "memory" contenders start from in-memory arrays.
Results are compared with `aggregate_inplace`'s output (max absolute difference).

The default strategy (`ROBUST_FEDAVG`: clip 2, examples_cap 2, align; SPEC §8.4, §8.15, whose
differences from the previous model are summed in float64) reads the round three times: the
norms; the round's direction and each update's cosine with it; the fold. It runs on a held
round of arrays ("1 clipped": a rogue's update is clipped), and on a one-shot stream of
decoded views, as in a real round (norms and a spill file, then two sweeps of the spill).
Its sweeps run a model's blocks on a thread pool (`streaming.THREADS`, one thread per CPU by
default; the bits are the same for any count): "1 thread" is the held round on one. Each
sweep's float64 loops run in fedchain's compiled kernels (`fedchain.aggregation.native`,
built with the machine's C compiler on first use); "numpy sweeps" is the held round without
them (FEDCHAIN_KERNELS=0), the same bits. The last
lines compare it with issue 19's targets: ≥ 2× flwr `aggregate_inplace`'s speed and ≤ 1.5×
plain FedAvg's time. Times are wall-clock; on a shared machine the workers' CPU time (also
shown; the sum over threads) is the steadier figure for the single-threaded contenders.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# This tree's fedchain, not the one the virtualenv installs (the workers run this file too).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg, Strategy, Update  # noqa: E402

Weights = dict[str, np.ndarray]
Run = Callable[[], Weights | list[np.ndarray] | None]

CONTENDERS = {
    # name: (input, what it does)
    "flwr aggregate_inplace": ("bytes (npy)", "Flower's in-place FedAvg, decodes Parameters"),
    "fedchain f32 + codec.decode": ("bytes (codec)", "FedAvg(), decoding each model on demand"),
    "fedchain f64 + codec.decode": ("bytes (codec)", "FedAvg(accumulator='float64')"),
    "fedchain f32 + flwr decode": ("bytes (npy)", "FedAvg(), same decode as Flower"),
    "fedchain f32 + decode views": ("bytes (codec)", "FedAvg(), decode(copy=False)"),
    "fedchain robust + decode views": (
        "bytes (codec)", "ROBUST_FEDAVG (clip=2, examples_cap=2, align), a one-shot stream: "
        "norms and a spill file, then the direction and cosines, and the fold, from the spill"
    ),
    "flwr aggregate": ("arrays", "Flower's list-based FedAvg"),
    "fedchain f32": ("arrays", "FedAvg()"),
    "fedchain f64": ("arrays", "FedAvg(accumulator='float64')"),
    "fedchain robust": ("arrays", "ROBUST_FEDAVG, a held round: three sweeps (norms; direction "
                        "and cosines; the float64 Δ fold), on a thread per CPU"),
    "fedchain robust, 1 thread": ("arrays", "the same on one thread (streaming.THREADS = 1)"),
    "fedchain robust, numpy sweeps": ("arrays", "the same without the compiled kernels "
                                      "(FEDCHAIN_KERNELS=0)"),
    "fedchain robust, 1 clipped": ("arrays", "ROBUST_FEDAVG, learner 3 sends 10× its model: "
                                   "clipped"),
    "codec.decode only": ("bytes (codec)", "decode all N models, no aggregation"),
    "flwr decode only": ("bytes (npy)", "parameters_to_ndarrays on all N, no aggregation"),
}
REFERENCE = "flwr aggregate_inplace"


def layer_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """A CNN-like layout of about `params` parameters: a few big matrices, small vectors."""
    rows = max(4, params // 1024)
    big = {"conv.weight": rows // 20, "fc1.weight": rows * 6 // 10, "fc2.weight": rows // 4}
    big["fc3.weight"] = rows - sum(big.values()) - 1
    shapes: dict[str, tuple[int, ...]] = {}
    for name, r in big.items():
        shapes[name] = (r, 1024)
        shapes[name.replace("weight", "bias")] = (1024,) if r > 1 else (1,)
    return shapes


def make_inputs(learners: int, params: int) -> tuple[Weights, list[tuple[str, int, Weights]]]:
    """The previous global model and, per learner in address order, (address, n, weights)."""
    shapes = layer_shapes(params)

    def model(seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}

    addresses = sorted((f"0x{i:040x}" for i in range(1, learners + 1)), key=str.lower)
    return model(0), [(a, 100 + 37 * i, model(i + 1)) for i, a in enumerate(addresses)]


def _drain(decoded: Iterator[Any]) -> None:
    """Consume decoded models one at a time, keeping none."""
    for model in decoded:
        del model  # release it before the next one is decoded


def prepare(name: str, learners: int, params: int) -> Run:
    """Build `name`'s inputs (not timed) and return the call to time."""
    previous, inputs = make_inputs(learners, params)
    names = list(previous)
    if "codec" in name:
        from fedchain.model import codec

        blobs = [(a, n, codec.encode(w)) for a, n, w in inputs]
        del inputs
        if name == "codec.decode only":
            return lambda: _drain(codec.decode(b) for _, _, b in blobs)
        decode = partial(codec.decode, copy=False) if "views" in name else codec.decode

        def fetch_codec() -> Iterator[Update]:
            for address, n, blob in blobs:
                yield Update(address, n, decode(blob))

        strategy = _strategy(name)
        return lambda: strategy.aggregate(previous, fetch_codec())[0]
    if "bytes (npy)" in CONTENDERS[name][0]:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.common import parameters_to_ndarrays as to_arrays
        from flwr.server.strategy.aggregate import aggregate_inplace

        results = [
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(w.values())), n, {}))
            for _, n, w in inputs
        ]
        addresses = [a for a, _, _ in inputs]
        del inputs
        if name == REFERENCE:
            return lambda: aggregate_inplace(results)  # type: ignore[arg-type]
        if name == "flwr decode only":
            return lambda: _drain(to_arrays(r.parameters) for _, r in results)

        def fetch_npy() -> Iterator[Update]:
            for address, (_, fit) in zip(addresses, results, strict=True):
                yield Update(
                    address,
                    fit.num_examples,
                    dict(zip(names, to_arrays(fit.parameters), strict=True)),
                )

        return lambda: FedAvg().aggregate(previous, fetch_npy())[0]
    if name == "flwr aggregate":
        from flwr.server.strategy.aggregate import aggregate

        pairs = [(list(w.values()), n) for _, n, w in inputs]
        return lambda: aggregate(pairs)
    if "clipped" in name:
        for array in inputs[3][2].values():
            array *= np.float32(10.0)
    if "1 thread" in name:
        from fedchain.aggregation import streaming

        streaming.THREADS = 1
    if "numpy sweeps" in name:
        os.environ["FEDCHAIN_KERNELS"] = "0"
    updates = [Update(a, n, w) for a, n, w in inputs]
    strategy = _strategy(name)
    return lambda: strategy.aggregate(previous, updates)[0]


def _strategy(name: str) -> Strategy:
    if "robust" in name:
        from fedchain.aggregation import streaming

        streaming.compiled_kernels()  # built and checked now, not in the first timed call
        return ROBUST_FEDAVG
    return FedAvg(accumulator="float64" if "f64" in name else "float32")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak extra memory of one call of the contender, in model sizes, in this fresh process."""
    run = prepare(args.worker, args.learners, args.params)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the RSS high-water mark
    rss_before = _status_kib("VmRSS")
    tracemalloc.start()
    run()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = _status_kib("VmHWM") - rss_before
    size = model_bytes(args.params)
    return {"traced": traced_peak / size, "rss": rss_peak * 1024 / size}


def serve_timings(args: argparse.Namespace) -> None:
    """Prepare the contender, then time one call per "run" line on stdin; "save" keeps a result."""
    run = prepare(args.worker, args.learners, args.params)
    print("ready", flush=True)
    result = None
    for command in sys.stdin:
        if command.strip() == "run":
            del result
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            result = run()
            print(time.perf_counter() - start, time.process_time() - cpu, flush=True)
        elif command.strip() == "save":
            if result is not None:
                arrays = list(result.values()) if isinstance(result, dict) else result
                np.savez(Path(args.out) / f"{list(CONTENDERS).index(args.worker)}.npz", *arrays)
            print("saved", flush=True)


def model_bytes(params: int) -> int:
    return 4 * sum(int(np.prod(s)) for s in layer_shapes(params).values())


def _command(name: str, mode: str, args: argparse.Namespace, out: str) -> list[str]:
    command = [sys.executable, __file__, "--worker", name, "--mode", mode, "--out", out]
    return command + ["--learners", str(args.learners), "--params", str(args.params)]


def peak_memory(name: str, args: argparse.Namespace, out: str) -> dict[str, Any]:
    """Run measure_memory for `name` in a fresh subprocess."""
    # glibc would keep freed arrays below its (adaptive) mmap threshold in the heap, where a
    # later peak could reuse them unseen; a fixed threshold returns them to the OS.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    command = _command(name, "memory", args, out)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} (memory) failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def timings(
    args: argparse.Namespace, out: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times of every contender, interleaved round by round so all see the same machine load."""
    workers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in CONTENDERS:  # one at a time, so input preparation does not overlap
            worker = subprocess.Popen(
                _command(name, "time", args, out),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            workers[name] = worker
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} failed to start")
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for _ in range(args.repeat):
            for name, worker in workers.items():
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("run\n")
                worker.stdin.flush()
                wall, used = worker.stdout.readline().split()
                times[name].append(float(wall))
                cpu[name].append(float(used))
        for worker in workers.values():
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("save\n")
            worker.stdin.flush()
            worker.stdout.readline()
        return times, cpu
    finally:
        for worker in workers.values():
            if worker.stdin is not None:
                worker.stdin.close()
            worker.wait()


def max_diff(out: str, name: str) -> float | None:
    path = Path(out) / f"{list(CONTENDERS).index(name)}.npz"
    if not path.exists():
        return None
    with np.load(path) as ours, np.load(Path(out) / "0.npz") as ref:
        return max(float(np.max(np.abs(ours[k] - ref[k]), initial=0.0)) for k in ref.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=10)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.mode == "memory":
        print(json.dumps(measure_memory(args)))
        return
    if args.worker:
        serve_timings(args)
        return

    import flwr

    shapes = layer_shapes(args.params)
    count = sum(int(np.prod(s)) for s in shapes.values())
    print(
        f"N = {args.learners} learners, {count:,} float32 params in {len(shapes)} layers, "
        f"model size {count * 4 / 2**20:.1f} MiB; best/median of {args.repeat} runs; "
        f"numpy {np.__version__}, flwr {flwr.__version__}, {os.cpu_count()} CPUs",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        times, cpu = timings(args, out)
        diffs = {name: max_diff(out, name) for name in CONTENDERS}
        peaks = {name: peak_memory(name, args, out) for name in CONTENDERS}
    rows = [
        (name, {"best": min(t), "median": statistics.median(t)}, peaks[name])
        for name, t in times.items()
    ]
    reference = rows[0][1]["best"]
    best_cpu = {name: min(t) for name, t in cpu.items()}
    header = (
        f"{'contender':30} {'input':14} {'best s':>7} {'median s':>8} {'vs inplace':>10} "
        f"{'best cpu s':>10} {'peak traced':>11} {'peak RSS':>8} {'max|diff|':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for name, timing, memory in rows:
        diff = diffs[name]
        print(
            f"{name:30} {CONTENDERS[name][0]:14} {timing['best']:7.3f} {timing['median']:8.3f} "
            f"{reference / timing['best']:9.2f}x {best_cpu[name]:10.3f} "
            f"{memory['traced']:10.2f}M {memory['rss']:7.2f}M "
            f"{'—' if diff is None else f'{diff:.1e}':>9}"
        )
    print(
        "peak = extra memory during the call, in model sizes (M); 'vs inplace' = speed-up "
        "over flwr aggregate_inplace (which always decodes its Parameters bytes); cpu = the "
        "worker's process time (less sensitive than wall time to other processes' load). "
        f"Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after."
    )
    best = {name: timing["best"] for name, timing, _ in rows}
    for default, plain in (("fedchain robust", "fedchain f32"),
                           ("fedchain robust + decode views", "fedchain f32 + decode views")):
        print(
            f"default strategy ({default}): {best[REFERENCE] / best[default]:.2f}× flwr "
            f"aggregate_inplace's speed (target ≥ 2), {best[default] / best[plain]:.2f}× "
            f"plain FedAvg's time (target ≤ 1.5; cpu {best_cpu[default] / best_cpu[plain]:.2f}×)"
        )


if __name__ == "__main__":
    main()
