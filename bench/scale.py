"""Scale: seconds per round and process CPU per learner per round, 10 to 1,000 learners.

A 4-parameter numpy learner (so almost all the time is protocol: chain, store, codec),
FedAvg, 3 rounds, a scratch LocalStore, on an Anvil node started from node_modules (or the
embedded chain), through `simulate` itself, with either engine:

- `threads`: a thread per learner polling the chain every 0.2 s (the default up to 8 learners: what
  separate learner processes do);
- `pool`: one ChainWatcher for the process, a LearnerPool stepping only the learners that
  have something to do on `--workers` threads, receipts polled by block and transactions
  sent in JSON-RPC batches, one re-derivation of each round per process.

Every learner evaluates each global model and reports it on chain (two transactions per
learner per round), and re-derives the model it trains on (verify = "full").

    .venv/bin/python bench/scale.py                            # the issue's points
    .venv/bin/python bench/scale.py --learners 100,1000 --engines pool
    .venv/bin/python bench/scale.py --learners 1000 --fraction 0.1 --engines pool
    .venv/bin/python bench/scale.py --block-time 0.25           # Anvil mining every 0.25 s

Seconds per round: from a round's opening (genesis, or the previous publication) to its
publication, from the aggregator's own log lines. CPU: this process's CPU time (learners,
aggregator, watcher: every thread) from genesis to the federation's end, per learner that
took part per round; the chain node's CPU is given beside it. Setup (deploying, funding and
registering the learners) is timed apart. Writes runs/bench/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.aggregation.strategy import FedAvg
from fedchain.cli import devnet
from fedchain.federation.config import RunConfig
from fedchain.federation.learner import EvalResult, Learner, TrainResult
from fedchain.federation.simulation import simulate
from fedchain.storage.local import LocalStore

ROUNDS = 3
#: Issue 13's targets, seconds per round on Anvil: (learners, fraction) -> seconds.
TARGETS = {(100, 1.0): 1.5, (1000, 1.0): 15.0, (1000, 0.1): 2.0}
#: Issue 13's figures for the code before it (threads), measured on a fresh clone.
ISSUE_BASELINE = {10: 0.7, 50: 5.5, 100: 21.0}

log = logging.getLogger("bench.scale")


class TinyLearner(Learner):
    """Linear regression with 4 parameters on 32 seeded examples: a step of training costs
    microseconds, so what is measured is the protocol around it."""

    TRUE_W = np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)

    def __init__(self, learner_id: int) -> None:
        rng = np.random.default_rng(learner_id)
        self.x = rng.normal(size=(32, 4)).astype(np.float32)
        self.y = (self.x @ self.TRUE_W + rng.normal(scale=0.1, size=32)).astype(np.float32)
        self.weights = initial_weights()

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.weights

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = dict(weights)

    def train(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> TrainResult:
        w = weights["w"].copy()
        for _ in range(3):
            w = w - np.float32(0.1) * self.x.T @ (self.x @ w - self.y) / np.float32(32)
        w = w.astype(np.float32)
        return TrainResult({"w": w}, len(self.x), {"mse": self._mse(w)})

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> EvalResult:
        mse = self._mse(weights["w"])
        return EvalResult(mse, len(self.x), {"mse": mse})

    def _mse(self, w: np.ndarray) -> float:
        return float(np.mean((self.x @ w - self.y) ** 2))


def initial_weights() -> dict[str, np.ndarray]:
    return {"w": np.zeros(4, np.float32)}


class RoundClock(logging.Handler):
    """Times rounds from the aggregator's log lines (genesis opens round 1, a publication
    closes a round, then the federation finishes), with this process's CPU time at each."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[str, float, float]] = []
        self.included: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        now, cpu = time.monotonic(), time.process_time()
        if text.startswith("genesis model"):
            self.marks.append(("open", now, cpu))
        elif text.startswith("[ROUND") and "published" in text:
            self.marks.append(("published", now, cpu))
            self.included.append(int(text.split("aggregated ")[1].split(",")[0]))
        elif text.startswith("federation finished"):
            self.marks.append(("finished", now, cpu))

    def rounds(self) -> list[float]:
        times = [t for kind, t, _ in self.marks if kind in ("open", "published")]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def cpu(self) -> float:
        cpus = [c for _, _, c in self.marks]
        return cpus[-1] - cpus[0] if len(cpus) > 1 else 0.0


def node_cpu(node: devnet.DevNode | None) -> float:
    """CPU seconds (user + system) the chain node's process has used."""
    if node is None:
        return 0.0
    try:
        fields = Path(f"/proc/{node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    engine: str
    learners: int
    fraction: float = 1.0
    chain: str = "anvil"
    block_time: float = 0.0
    workers: int | None = None
    rounds: int = ROUNDS
    seconds_per_round: list[float] = field(default_factory=list)
    mean_round: float = 0.0
    included_per_round: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    cpu_ms_per_learner_round: float = 0.0
    node_cpu_seconds: float = 0.0
    setup_seconds: float = 0.0
    wall_seconds: float = 0.0
    error: str | None = None

    @property
    def label(self) -> str:
        mined = (", embedded chain" if self.chain == "embedded" else
                 f", blocks every {self.block_time:g} s" if self.block_time else ", automine")
        return f"{self.engine}{mined}" + (f", fraction {self.fraction:g}"
                                          if self.fraction < 1 else "")


@contextmanager
def chain_node(kind: str, block_time: float) -> Iterator[tuple[str, devnet.DevNode | None]]:
    if kind == "embedded":
        yield "embedded", None
        return
    node = devnet.start_anvil(block_time=block_time or None)
    try:
        yield node.url, node
    finally:
        node.stop()


def measure(engine: str, n: int, *, fraction: float, chain: str, block_time: float,
            workers: int) -> Point:
    point = Point(engine, n, fraction, chain, block_time,
                  workers=workers if engine == "pool" else None)
    clock = RoundClock()
    logging.getLogger("fedchain.aggregator").addHandler(clock)
    store = LocalStore(tempfile.mkdtemp(prefix="fedchain-scale-"), durable=False)
    config = RunConfig(fraction=fraction, round_timeout=600.0, evaluation_timeout=30.0)
    with chain_node(chain, block_time) as (url, node):
        cpu0 = node_cpu(node)
        started = time.monotonic()
        try:
            simulate(lambda i, _: TinyLearner(i), n, FedAvg(), ROUNDS, chain=url, store=store,
                     config=config, min_updates=1, timeout=3600.0, engine=engine,
                     workers=workers, initial_weights=initial_weights())
        except Exception as exc:  # a point that fails is recorded, the bench goes on
            point.error = f"{type(exc).__name__}: {exc}"
            log.error("%s at %d learners failed: %s", engine, n, point.error, exc_info=True)
        point.wall_seconds = round(time.monotonic() - started, 2)
        point.node_cpu_seconds = round(node_cpu(node) - cpu0, 2)
    logging.getLogger("fedchain.aggregator").removeHandler(clock)
    point.seconds_per_round = [round(s, 3) for s in clock.rounds()]
    point.included_per_round = clock.included
    if point.seconds_per_round:
        point.mean_round = round(statistics.mean(point.seconds_per_round), 3)
    if clock.marks:
        point.setup_seconds = round(clock.marks[0][1] - started, 2)
    point.cpu_seconds = round(clock.cpu(), 2)
    took_part = sum(clock.included) or n * ROUNDS
    point.cpu_ms_per_learner_round = round(1000 * clock.cpu() / took_part, 2)
    return point


def table(points: list[Point]) -> str:
    rows = ["| engine | learners | s/round (r1, r2, r3) | mean | included | CPU ms / learner "
            "/ round | node CPU s | setup s |", "|" + "---|" * 8]
    for p in points:
        shown = ", ".join(f"{s:.2f}" for s in p.seconds_per_round) or "–"
        if p.error:
            shown += f" ERROR {p.error[:60]}"
        included = "/".join(str(k) for k in p.included_per_round)
        rows.append(f"| {p.label} | {p.learners} | {shown} | {p.mean_round:.2f} | {included} "
                    f"| {p.cpu_ms_per_learner_round:.1f} | {p.node_cpu_seconds:.1f} | "
                    f"{p.setup_seconds:.1f} |")
    return "\n".join(rows)


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2))
    for label in dict.fromkeys(p.label for p in points if not p.error):
        pts = sorted((p for p in points if p.label == label and not p.error),
                     key=lambda p: p.learners)
        style = "o--" if pts[0].engine == "threads" else ("D:" if pts[0].fraction < 1 else "s-")
        xs = [p.learners for p in pts]
        left.plot(xs, [p.mean_round for p in pts], style, label=label)
        right.plot(xs, [p.cpu_ms_per_learner_round for p in pts], style, label=label)
    for (n, _), target in TARGETS.items():
        left.plot([n], [target], "r*", markersize=12)
    left.plot([], [], "r*", label="issue 13 targets")
    left.plot(list(ISSUE_BASELINE), list(ISSUE_BASELINE.values()), "kx:",
              label="before issue 13 (threads)")
    left.set(xscale="log", yscale="log", xlabel="learners registered",
             ylabel="seconds per round", title="round time (FedAvg, 4 parameters, Anvil)")
    right.set(xscale="log", xlabel="learners registered",
              ylabel="process CPU ms per learner per round",
              title="CPU per participating learner per round")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learners", default="10,100,300,1000", help="comma-separated sizes")
    ap.add_argument("--engines", default="threads,pool", help="threads, pool or both")
    ap.add_argument("--threads-max", type=int, default=100,
                    help="largest size run with the threads engine")
    ap.add_argument("--fraction", type=float, default=None,
                    help="only this sampling fraction (default: 1, then 0.1 at 1,000)")
    ap.add_argument("--chain", choices=("anvil", "embedded"), default="anvil")
    ap.add_argument("--block-time", type=float, default=0.0,
                    help="Anvil mines a block every this many seconds (0: each transaction)")
    ap.add_argument("--workers", type=int, default=256, help="the pool's threads")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--append", action="store_true",
                    help="keep the points already in OUT/scale.json (same point: replaced)")
    ap.add_argument("--replot", action="store_true", help="redraw from OUT/scale.json only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(name)s | %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    logging.getLogger("fedchain.aggregator").setLevel(logging.INFO)  # for RoundClock
    json_path = args.out / "scale.json"
    kept: list[Point] = []
    if (args.append or args.replot) and json_path.exists():
        kept = [Point(**p) for p in json.loads(json_path.read_text())["points"]]
    points: list[Point] = []
    if not args.replot:
        sizes = [int(s) for s in args.learners.split(",") if s]
        plan = [(e, n, args.fraction or 1.0) for e in args.engines.split(",") for n in sizes
                if not (e == "threads" and n > args.threads_max)]
        if args.fraction is None and 1000 in sizes and "pool" in args.engines:
            plan.append(("pool", 1000, 0.1))
        for engine, n, fraction in plan:
            print(f"{engine}: {n} learners, fraction {fraction:g} …", flush=True)
            point = measure(engine, n, fraction=fraction, chain=args.chain,
                            block_time=args.block_time, workers=args.workers)
            points.append(point)
            print(table([point]).splitlines()[-1], flush=True)
    def key(p: Point) -> tuple[Any, ...]:
        return (p.engine, p.learners, p.fraction, p.chain, p.block_time)

    fresh = {key(p) for p in points}
    everything = sorted([p for p in kept if key(p) not in fresh] + points,
                        key=lambda p: (p.label, p.learners))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(
        {"rounds": ROUNDS, "cores": os.cpu_count(), "issue_baseline_threads": ISSUE_BASELINE,
         "targets": [{"learners": n, "fraction": f, "seconds": s}
                     for (n, f), s in TARGETS.items()],
         "points": [asdict(p) for p in everything]}, indent=2) + "\n")
    print()
    print(table(everything))
    plot(everything, args.out / "scale.png")
    print(f"\npoints: {json_path}  plot: {args.out / 'scale.png'}")
    return 1 if any(p.error for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
