"""A FedAvg round through the IPFS dev node: pipelined fetching against the bytes alone.

    .venv/bin/python bench/pipeline.py                        # 10 learners × 100M float32
    .venv/bin/python bench/pipeline.py --params 10000000 --in-flight 1,2,3
    .venv/bin/python bench/pipeline.py --repo /tmp/bench-ipfs  # keep the node's blocks

Puts `--learners` seeded models of `--params` float32 parameters (and the previous global
model) into the project's IPFS dev node (scripts/ipfs-devnode.mjs, as `fedchain devnet ipfs`
starts it; `--store URL` uses a running node instead), then measures, each in a fresh
subprocess so that no variant's memory shows in another's peak:

- download: the same models' bytes alone, one after another (`store.get`, verified against
  their CIDs, nothing decoded): what a round's time is measured against;
- round: what the aggregator does with a round, timed from the first fetch to the new model:
  `fetch_updates` (verify, decode, validate each model; `in_flight` at a time) streamed into
  `FedAvg().aggregate`, for each `--in-flight` value (1 is the sequential fetch). The
  previous global model is fetched first, untimed, and held, as the aggregator holds it.

Time: the best and the median of --repeat runs, round-robin so that every variant sees the
same load on a shared machine; CPU is the best run's process time (user + system; the node's
is not counted), folding the part of it the strategy spent on updates rather than waiting for
the next one: the most that overlapping fetches with it can save.
Peak RSS is the process's resident high-water mark (VmHWM, the highest over the runs), taken
before anything else is allocated for the report; "model" is one update's encoded size.
Each round reports the CID of its global model: all must be equal (the pipeline does not
change the round).
Targets (issue 13): round time ≤ 1.3 × download, peak RSS ≤ 4 model sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedchain.aggregation.rules import Update
from fedchain.aggregation.strategy import FedAvg
from fedchain.eth.events import ChainCid, UpdateSubmitted
from fedchain.model import codec
from fedchain.model.fetch import canonical_cid, fetch_model
from fedchain.protocol.fetching import RoundUpdates, fetch_updates
from fedchain.storage import CID, cid_of
from fedchain.storage.kubo import KuboStore

LAYERS = 8


def model(seed: int, params: int) -> codec.Weights:
    """`params` float32 in LAYERS layers, plus a BatchNorm-like counter; seeded."""
    rng = np.random.default_rng(seed)
    size = params // LAYERS
    weights = {f"layer{i}.weight": rng.standard_normal(size, np.float32) for i in range(LAYERS)}
    weights["bn.num_batches_tracked"] = np.array(seed, np.int64)
    return weights


def address(i: int) -> str:
    return f"0x{(i + 1) * 0x10001:040x}"


def _status(key: str) -> int:
    """A /proc/self/status memory figure, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {key} in /proc/self/status")


def rss_peak() -> int:
    """This process's resident high-water mark. VmHWM, not getrusage's ru_maxrss: that one
    carries the parent's peak over fork and exec, and the parent held models to put them."""
    return _status("VmHWM")


def rss_now() -> int:
    return _status("VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the measured processes ---------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, object]:
    store = KuboStore(args.store)
    cids = args.cids.split(",")
    baseline = rss_now()
    if args.worker == "download":
        cpu = cpu_seconds()
        started = time.perf_counter()
        total = 0
        for cid in cids:
            data = store.get(cid, args.max_bytes)
            total += len(data)
            del data
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "bytes": total, "peak": rss_peak(), "baseline": baseline,
                "cpu": cpu_seconds() - cpu}
    previous = fetch_model(store, args.previous, max_bytes=args.max_bytes)  # as the aggregator
    events = [
        UpdateSubmitted(block=100 + i, tx=f"0x{i:064x}", log_index=0, round=1,
                        learner=address(i), model_cid=ChainCid(bytes(CID.parse(cid))),
                        num_examples=100 + 37 * i)
        for i, cid in enumerate(cids)
    ]
    cpu = cpu_seconds()
    started = time.perf_counter()
    updates = RoundUpdates(fetch_updates(store, events, max_bytes=args.max_bytes,
                                         reference=codec.spec(previous), copy=False,
                                         in_flight=args.in_flight))
    waited = [0.0]

    def timed(source: Iterator[Update]) -> Iterator[Update]:
        """`source`, counting the time the strategy waits for the next update."""
        while True:
            asked = time.perf_counter()
            update = next(source, None)
            waited[0] += time.perf_counter() - asked
            if update is None:
                return
            yield update
            del update

    new, _ = FedAvg().aggregate(previous, timed(iter(updates)))
    seconds = time.perf_counter() - started
    peak = rss_peak()
    assert len(updates.included) == len(cids), [r.reason for r in updates.rejected]
    return {"seconds": seconds, "peak": peak, "baseline": baseline, "cpu": cpu_seconds() - cpu,
            "waited": waited[0], "global": str(canonical_cid(new))}


def measure(variant: list[str], common: list[str]) -> dict[str, object]:
    """Runs this script as a worker in a fresh process; its JSON answer."""
    done = subprocess.run([sys.executable, __file__, *common, *variant], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the driver ---------------------------------------------------------------------------


def put_models(store: KuboStore, learners: int, params: int) -> tuple[str, list[str], int]:
    """(previous global CID, update CIDs, update size): seeded models, put unless present."""
    cids: list[str] = []
    size = 0
    for seed in range(learners + 1):
        started = time.perf_counter()
        data = codec.encode(model(seed, params))
        cid = cid_of(data)
        if not store.has(cid):
            if store.put(data) != cid:
                raise SystemExit(f"the node stored model {seed} under another CID")
            what = f"put in {time.perf_counter() - started:.0f}s"
        else:
            what = "already in the node"
        size = max(size, len(data))
        print(f"  model {seed}: {len(data) / 1e6:.1f} MB, {cid} ({what})", flush=True)
        cids.append(str(cid))
        del data
    return cids[0], cids[1:], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=10)
    parser.add_argument("--params", type=int, default=100_000_000)
    parser.add_argument("--in-flight", default="2,1",
                        help="comma-separated in_flight values to run (1 = sequential)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each variant, round-robin; the best time is shown")
    parser.add_argument("--store", help="a running IPFS node's RPC URL (default: start one)")
    parser.add_argument("--repo", type=Path, help="the dev node's repository (kept)")
    # worker mode (internal)
    parser.add_argument("--worker", choices=["download", "round"], help=argparse.SUPPRESS)
    parser.add_argument("--cids", help=argparse.SUPPRESS)
    parser.add_argument("--previous", help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "round":
            args.in_flight = int(args.in_flight)
        print(json.dumps(worker(args)))
        return

    node = None
    if args.store is None:
        from fedchain.cli.devnet import start_ipfs_devnode

        if args.repo is not None:
            args.repo.mkdir(parents=True, exist_ok=True)
        # a kept repository re-pins its models at start, which takes a while for gigabytes
        node = start_ipfs_devnode(repo=args.repo, timeout=900)
        args.store = node.url
    try:
        run(args)
    finally:
        if node is not None:
            node.stop()


def run(args: argparse.Namespace) -> None:
    store = KuboStore(args.store)
    load = os.getloadavg()
    print(f"IPFS node {store.version()} at {args.store}; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{args.learners} learners × {args.params:,} float32 parameters, seeded:")
    previous, cids, size = put_models(store, args.learners, args.params)
    limit = max(size, 1 << 20) + (1 << 20)
    common = ["--store", args.store, "--cids", ",".join(cids), "--previous", previous,
              "--max-bytes", str(limit)]
    variants = {"download": ["--worker", "download"]}
    for k in (int(v) for v in args.in_flight.split(",")):
        variants[f"round, in_flight={k}"] = ["--worker", "round", "--in-flight", str(k)]
    results: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    for attempt in range(args.repeat):
        for name, variant in variants.items():
            print(f"  [{attempt + 1}/{args.repeat}] {name} …", flush=True)
            results[name].append(measure(variant, common))

    best = {name: min(runs, key=lambda r: float(r["seconds"])) for name, runs in results.items()}
    median = {name: statistics.median(float(r["seconds"]) for r in runs)
              for name, runs in results.items()}
    download = float(best["download"]["seconds"])
    total = int(best["download"]["bytes"])
    print()
    print(f"model: {size / 1e6:.1f} MB encoded; a round: {total / 1e9:.2f} GB; "
          f"download alone {total / download / 1e6:.0f} MB/s (best run)")
    print(f"{'variant':<30} {'best (s)':>9} {'× dl':>5} {'median (s)':>11} {'× dl':>5} "
          f"{'CPU (s)':>8} {'folding (s)':>12} {'peak RSS (MB)':>14} {'× model':>8}")
    for name, r in best.items():
        seconds, peak = float(r["seconds"]), max(int(x["peak"]) for x in results[name])
        label = "download alone (store.get)" if name == "download" else f"FedAvg {name}"
        folding = "" if "waited" not in r else f"{seconds - float(r['waited']):.1f}"
        print(f"{label:<30} {seconds:>9.1f} {seconds / download:>5.2f} {median[name]:>11.1f} "
              f"{median[name] / median['download']:>5.2f} {float(r['cpu']):>8.1f} "
              f"{folding:>12} {peak / 1e6:>14.0f} {peak / size:>8.2f}")
    print(f"(baseline RSS after imports: {int(best['download']['baseline']) / 1e6:.0f} MB; "
          "folding: the part of the round the strategy was not waiting for an update)")
    globals_ = {str(r["global"]) for name, runs in results.items() if name != "download"
                for r in runs}
    print()
    print("targets: round ≤ 1.3 × download, peak RSS ≤ 4 model sizes")
    print(f"global model of every round: {', '.join(sorted(globals_))} "
          f"({'identical' if len(globals_) == 1 else 'DIFFERENT'})")
    if args.repeat > 1:
        print("every run (time; peak RSS is the highest of them):")
        for name, runs in results.items():
            print(f"  {name}: " + ", ".join(f"{float(r['seconds']):.1f}s" for r in runs))


if __name__ == "__main__":
    main()
