"""Aggregator memory for one round of the default strategy, through the store and run_round.

    .venv/bin/python bench/stream_memory.py                        # 100 learners × 10M float32
    .venv/bin/python bench/stream_memory.py --learners 20 --params 1000000 --in-flight 1 4
    .venv/bin/python bench/stream_memory.py --learners 20 --compare /work/main   # another tree

Setup (not measured): a LocalStore in a temporary directory holding the previous global model
and one update per learner (fedchain model bytes, under their CIDs), and the round's
UpdateSubmitted events. Measured: a fresh subprocess per row — the aggregator — imports
fedchain, reads the previous model from the store (`fetch_model`, as
`Aggregator.previous_global` does) and runs `protocol.round.run_round` with the strategy,
fetching as `Aggregator.fetch_round` does (`fetch_updates` with copy=False, the plan's size
limit, the previous model's spec, `in_flight` fetches at once: the aggregator's
FETCH_IN_FLIGHT by default). Its peak RSS is the kernel's high-water mark of the child
(`ru_maxrss` from wait4), so whatever the process touched counts: the previous model, the
fetch buffers, the new model, the spill file's read buffers (the spill itself is in the page
cache, not in the process). Printed in model sizes: the whole peak, and the peak above the
child's RSS once fedchain is imported (the interpreter, numpy and fedchain's code: the same
for every row), and the high-water mark when run_round returns, before the new model is
encoded (the aggregator encodes it to publish it: one more model size, whatever the strategy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("default", "plain")


def layers(params: int) -> dict[str, tuple[int, ...]]:
    """Two big float32 matrices and a bias: about `params` parameters."""
    rows = max(2, params // 1024)
    return {"fc1.weight": (rows // 2, 1024), "fc2.weight": (rows - rows // 2, 1024),
            "fc2.bias": (1024,)}


def model_bytes(params: int) -> int:
    return 4 * sum(int(np.prod(s)) for s in layers(params).values())


def prepare(directory: Path, learners: int, params: int) -> dict[str, Any]:
    """The store's contents and the round's submissions, as JSON for the aggregator child."""
    from fedchain.model.codec import encode
    from fedchain.storage.local import LocalStore

    store = LocalStore(directory / "store", durable=False)
    rng = np.random.default_rng(0)
    shapes = layers(params)
    previous = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    genesis = str(store.put(encode(previous)))
    submissions = []
    for i in range(learners):
        # a trained step from the previous model; learner 3 sends −10 × its step
        weights = {}
        for name, base in previous.items():
            step = rng.standard_normal(base.shape, dtype=np.float32)
            step *= np.float32(-0.1 if i == 3 else 0.01)
            step += base
            weights[name] = step
        data = encode(weights)
        del weights
        submissions.append({"learner": f"0x{i + 1:040x}", "cid": str(store.put(data)),
                            "num_examples": 100 + i})
        del data
    return {"store": str(directory / "store"), "previous": genesis, "submissions": submissions}


def aggregate(setup: dict[str, Any], strategy_name: str, in_flight: int) -> dict[str, Any]:
    """The aggregator's side, in this fresh process: one round through run_round."""
    from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg
    from fedchain.eth.events import ChainCid, UpdateSubmitted
    from fedchain.model.codec import spec
    from fedchain.model.fetch import fetch_model
    from fedchain.protocol.fetching import fetch_updates
    from fedchain.protocol.ledger import RoundRecord
    from fedchain.protocol.params import Plan
    from fedchain.protocol.round import run_round
    from fedchain.storage import CID
    from fedchain.storage.local import LocalStore

    rss_imported = _status_kib("VmRSS")
    strategy = ROBUST_FEDAVG if strategy_name == "default" else FedAvg()
    plan = Plan(strategy=strategy.to_plan(), rounds=1)
    store = LocalStore(setup["store"], durable=False)
    previous_cid = CID.parse(setup["previous"])
    submitted = [
        UpdateSubmitted(block=1 + i, tx=f"0x{i:064x}", log_index=0, round=1,
                        learner=s["learner"], model_cid=ChainCid(bytes(CID.parse(s["cid"]))),
                        num_examples=s["num_examples"])
        for i, s in enumerate(setup["submissions"])
    ]
    record = RoundRecord(1, ChainCid(bytes(previous_cid)), submissions=submitted)
    started = time.perf_counter()
    previous = fetch_model(store, previous_cid, max_bytes=plan.max_model_bytes)
    reference = spec(previous)

    def fetch(usable: Any) -> Any:
        return fetch_updates(store, usable, max_bytes=plan.max_model_bytes, reference=reference,
                             copy=False, in_flight=in_flight)

    outcome = run_round(plan, strategy, record, fetch, previous)
    seconds = time.perf_counter() - started
    round_peak = _status_kib("VmHWM")
    assert outcome.carried_over is None, outcome.carried_over_because
    cid = str(outcome.model_cid)  # encodes the new model, as the aggregator does to publish it
    return {"rss_imported_kib": rss_imported, "round_peak_kib": round_peak, "seconds": seconds,
            "included": len(outcome.included), "model_cid": cid}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(setup_file: Path, strategy: str, in_flight: int, tree: Path) -> dict[str, Any]:
    """One aggregator child; its peak RSS from the kernel (wait4's ru_maxrss)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, __file__, "--child", str(setup_file), "--strategy", strategy,
               "--in-flight", str(in_flight)]
    child = subprocess.Popen(command, env=env, cwd=tree, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the aggregator child failed ({strategy}, in_flight {in_flight})")
    result = dict(json.loads(out.strip().splitlines()[-1]))
    result["peak_kib"] = usage.ru_maxrss  # KiB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=100)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=None,
                        help="fetches at once (default: the aggregator's FETCH_IN_FLIGHT)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="also run the aggregator child with fedchain from this tree")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # fedchain from the tree in PYTHONPATH (see measure)
        setup = json.loads(args.child.read_text())
        print(json.dumps(aggregate(setup, args.strategy, args.in_flight[0])))
        return

    sys.path.insert(0, str(ROOT))  # this tree's fedchain, not the virtualenv's
    from fedchain.federation.aggregator import FETCH_IN_FLIGHT

    in_flights = args.in_flight or [FETCH_IN_FLIGHT]
    size = model_bytes(args.params)
    print(f"{args.learners} learners, {size // 4:,} float32 params, model size "
          f"{size / 2**20:.1f} MiB; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedchain-stream-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        setup = prepare(directory, args.learners, args.params)
        setup_file = directory / "setup.json"
        setup_file.write_text(json.dumps(setup))
        print(f"store filled in {time.perf_counter() - started:.0f} s "
              f"({args.learners + 1} models)", flush=True)
        header = (f"{'fedchain tree':28} {'strategy':8} {'in_flight':>9} {'round s':>8} "
                  f"{'peak RSS':>9} {'peak (models)':>13} {'above imports':>13} "
                  f"{'run_round only':>14}")
        print(header + "\n" + "-" * len(header), flush=True)
        cids: dict[str, set[str]] = {}
        for tree in [ROOT, *args.compare]:
            for strategy in args.strategies:
                for in_flight in in_flights:
                    r = measure(setup_file, strategy, in_flight, tree)
                    peak = r["peak_kib"] * 1024
                    above = (r["peak_kib"] - r["rss_imported_kib"]) * 1024
                    in_round = (r["round_peak_kib"] - r["rss_imported_kib"]) * 1024
                    cids.setdefault(strategy, set()).add(r["model_cid"])
                    print(f"{str(tree)[-28:]:28} {strategy:8} {in_flight:9d} "
                          f"{r['seconds']:8.2f} {peak / 2**20:7.0f}Mi {peak / size:13.2f} "
                          f"{above / size:13.2f} {in_round / size:14.2f}", flush=True)
        for strategy, found in cids.items():
            print(f"{strategy}: {'the same model' if len(found) == 1 else 'DIFFERENT models'} "
                  f"from every run ({', '.join(sorted(c[:16] + '…' for c in found))})")
    print(f"load average after: {os.getloadavg()[0]:.1f}. 'above imports': the peak over the "
          "child's RSS once fedchain is imported, including the new model's encoding (the bytes "
          "the aggregator publishes: one more model size); 'run_round only': the peak when "
          "run_round returns, before that encoding. Target: the default strategy's peak ≤ 3 "
          "model sizes.")


if __name__ == "__main__":
    main()
