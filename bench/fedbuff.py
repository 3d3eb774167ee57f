"""Asynchronous (FedBuff) rounds against synchronous ones when learners differ in speed: the CNN
example on digits, wall-clock time until the global model reaches 90 % centralized accuracy.

    .venv/bin/python bench/fedbuff.py            # 5 learners, 2 of them 8× slower (~3 min)
    .venv/bin/python bench/fedbuff.py --quick    # 4 learners, 1 of them 8× slower (~1.5 min)
    .venv/bin/python bench/fedbuff.py --learners 6 --slow 2 --factor 10 --buffer 3

Each mode is a whole `fedchain.simulate` run (embedded chain and store, a thread per learner)
of examples/cnn's job (its Net, data, FedAvg with the Byzantine bounds clip=2 and
examples_cap=2, and [train] settings), the same learners, data and genesis model:

    sync    synchronous rounds: a round waits for every learner's update
    async   FedBuff: a round closes once `--buffer` updates are in, from any learners; an
            update trained on a model up to `--max-staleness` rounds old is accepted and
            weighted num_examples >> staleness (fedchain.protocol.fetching.staleness_weight)

Both modes aggregate about the same number of updates: sync runs `--rounds` rounds, async
⌈rounds × learners / buffer⌉ rounds.

Slow devices are simulated, and said so: the last `--slow` learners train for real, then
sleep (factor − 1) × the time that training just took (`--sleep measured`, the default), so
each of their steps takes `--factor` times as long as their own training did at that moment.
A sleeping learner holds no core. All learners, the aggregator and the learners' checks of
each model share this machine's cores: in synchronous rounds every learner trains at once,
each training takes several times as long as alone, and the slow learners' sleep grows with
it. `--sleep alone` has them sleep (factor − 1) × one training's time alone instead (measured
before the runs): their slowness then no longer grows with the load. These are one machine's
figures, not a testbed of separate devices.

Before the runs, one learner trains twice outside them (loading the data and warming torch
up, which a slow learner's sleep would otherwise multiply); the second training's time alone
is reported. The clock starts when the first learner starts training on the genesis model. A
model's time is when the aggregator hands it to the example's `evaluate_global` (the
held-out test set), right after the round closed on chain. Reported per mode: the time and
rounds (model versions) until the centralized accuracy first reaches `--target`, the final
accuracy, the time of the last model, the updates aggregated, how many of them were stale
(trained on an older model than the round's) and their staleness, trainings whose update
never counted (landed more than max_staleness rounds late, or after the end), and the
audit's verdict (every round re-derived from the chain and the store, stale weights
included). A single run per mode: which updates are stale depends on timing, so figures vary
from run to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedchain.audit import audit_federation  # noqa: E402
from fedchain.cli.job import Job  # noqa: E402
from fedchain.federation.config import RunConfig  # noqa: E402
from fedchain.federation.learner import EvalResult, Learner, TrainResult  # noqa: E402
from fedchain.federation.simulation import SimulationResult, simulate  # noqa: E402
from fedchain.model.codec import Weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "examples" / "cnn" / "fedchain.toml"


class Clock:
    """One run's clock: started by the first training, stamped by each evaluated model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t0: float | None = None
        #: Set once the last round is evaluated: slow learners stop sleeping.
        self.done = threading.Event()

    def start(self) -> None:
        with self.lock:
            if self.t0 is None:
                self.t0 = time.monotonic()

    def now(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0


class Paced(Learner):
    """A learner on a device `factor` times slower: real training, then (factor − 1) × that
    training's own duration asleep, or × `basis` seconds when given (cut short once the run
    is over)."""

    def __init__(self, inner: Learner, factor: float, clock: Clock,
                 basis: float | None = None) -> None:
        self.inner, self.factor, self.clock, self.basis = inner, factor, clock, basis
        self.trainings = 0
        self.train_seconds = 0.0
        self.sleep_seconds = 0.0

    def get_weights(self) -> Weights:
        return self.inner.get_weights()

    def set_weights(self, weights: Weights) -> None:
        self.inner.set_weights(weights)

    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult:
        self.clock.start()
        started = time.monotonic()
        result = self.inner.train(weights, config)
        took = time.monotonic() - started
        self.trainings += 1
        self.train_seconds += took
        if self.factor > 1:
            slept = time.monotonic()
            self.clock.done.wait((self.factor - 1) * (took if self.basis is None else self.basis))
            self.sleep_seconds += time.monotonic() - slept
        return result

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        return self.inner.evaluate(weights, config)


def warm_up(job: Job, learners: int) -> float:
    """Loads the data and runs torch's first training and evaluation outside any measured run
    (the first ones are slower, and a slow learner's sleep would multiply that); returns the
    seconds one learner's training then takes alone."""
    learner = job.learner_factory()(0, learners)
    weights = job.initial_weights()
    learner.train(weights, {**job.train, "round": 1})
    job.evaluate_fn()(0, weights)
    started = time.monotonic()
    learner.train(weights, {**job.train, "round": 2})
    return time.monotonic() - started


def run_mode(name: str, job: Job, config: RunConfig, factors: list[float], target: float,
             audit: bool, basis: float | None) -> dict[str, Any]:
    """One federation; what the table and the JSON report about it."""
    clock = Clock()
    make_inner = job.learner_factory()
    evaluate_global = job.evaluate_fn()
    paced: list[Paced] = []
    curve: list[dict[str, float]] = []

    def make(i: int, n: int) -> Learner:
        learner = Paced(make_inner(i, n), factors[i], clock, basis)
        paced.append(learner)
        return learner

    def evaluate(round: int, weights: Weights) -> tuple[float, dict[str, float]]:
        seconds = clock.now()
        loss, metrics = evaluate_global(round, weights)
        curve.append({"round": round, "seconds": round_to(seconds), "accuracy": metrics["accuracy"],
                      "loss": round_to(loss, 4)})
        print(f"  [{name}] round {round:>3}  {seconds:6.1f}s  accuracy {metrics['accuracy']:.4f}",
              flush=True)
        if round >= (config.rounds or 0):
            clock.done.set()
        return loss, metrics

    started = time.monotonic()
    result = simulate(make, len(factors), config=config, evaluate_fn=evaluate,
                      initial_weights=job.initial_weights())
    clock.done.set()
    simulated = time.monotonic() - started
    report = summarize(result, curve, paced, target)
    report.update(mode=name, simulate_seconds=round_to(simulated), curve=curve)
    if audit:
        audited = time.monotonic()
        verdict = audit_federation(result.contract, result.store, gas=False)
        report["audit"] = {
            "ok": verdict.exit_status() == 0,
            "problems": [f"round {c.round}: {c.what}: {c.status}: {c.detail}"
                         for c in verdict.all_checks() if c.status not in ("ok", "note")],
            "seconds": round_to(time.monotonic() - audited),
        }
    return report


def round_to(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def summarize(result: SimulationResult, curve: list[dict[str, float]], paced: list[Paced],
              target: float) -> dict[str, Any]:
    contract = result.contract
    index = {a: i for i, a in enumerate(n.address for n in result.learners)}
    reached = next((p for p in curve if p["accuracy"] >= target), None)
    included = stale = submitted = 0
    staleness: Counter[int] = Counter()
    per_learner = Counter[int]()
    for r in result.rounds:
        updates = {u.learner: u for u in contract.updates(r.round)}
        submitted += len(updates)
        for learner in r.included:
            u = updates[learner]
            included += 1
            per_learner[index[learner]] += 1
            staleness[u.staleness] += 1
            stale += u.staleness > 0
    trainings = sum(p.trainings for p in paced)
    return {
        "seconds_to_target": None if reached is None else reached["seconds"],
        "rounds_to_target": None if reached is None else int(reached["round"]),
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "rounds": len(result.rounds),
        "seconds": curve[-1]["seconds"] if curve else None,
        "updates_included": included,
        "stale_included": stale,
        "staleness_included": {str(k): v for k, v in sorted(staleness.items())},
        "carried_over": sum(1 for r in result.rounds if not r.included),
        "trainings": trainings,
        "submitted": submitted,
        # Trained, never counted: landed past max_staleness, or after the last round closed.
        "not_counted": trainings - included,
        "included_per_learner": [per_learner[i] for i in range(len(paced))],
        "train_seconds_per_learner": [round_to(p.train_seconds) for p in paced],
        "trainings_per_learner": [p.trainings for p in paced],
        # One training's mean time (before any sleep): how much the cores were shared.
        "seconds_per_training": round_to(
            sum(p.train_seconds for p in paced) / max(1, trainings), 3),
        "sleep_seconds_per_learner": [round_to(p.sleep_seconds) for p in paced],
    }


def print_table(reports: list[dict[str, Any]], target: float) -> None:
    def shown(value: Any, fmt: str) -> str:
        return "not reached" if value is None else format(value, fmt)

    print()
    print(f"{'mode':<30} {f's to {target:.0%}':>9} {'rounds':>7} {'final acc':>10} "
          f"{'wall (s)':>9} {'rounds':>7} {'updates':>8} {'stale':>6} {'not counted':>12} "
          f"{'audit':>6}")
    for r in reports:
        audit = "-" if "audit" not in r else ("ok" if r["audit"]["ok"] else "FAILED")
        print(f"{r['label']:<30} {shown(r['seconds_to_target'], '.1f'):>9} "
              f"{shown(r['rounds_to_target'], 'd'):>7} {r['final_accuracy']:>10.4f} "
              f"{r['seconds']:>9.1f} {r['rounds']:>7} {r['updates_included']:>8} "
              f"{r['stale_included']:>6} {r['not_counted']:>12} {audit:>6}")
    print("(s to target and its rounds: the first model at or above the target; wall: the last "
          "model's time; updates: aggregated; stale: aggregated ones trained on an older model; "
          "not counted: trainings whose update no round included)")
    times = {r["mode"]: r["seconds_to_target"] for r in reports}
    if times.get("sync") and times.get("async"):
        print(f"async reached {target:.0%} {times['sync'] / times['async']:.1f}× sooner than sync")
    for r in reports:
        print(f"  {r['mode']}: trainings per learner {r['trainings_per_learner']}, updates "
              f"aggregated per learner {r['included_per_learner']}, staleness of those "
              f"aggregated {r['staleness_included']}, one training "
              f"{r['seconds_per_training']:.2f}s on average (before any sleep)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 learners, 1 slow, buffer 2, 5 synchronous rounds")
    parser.add_argument("--learners", type=int, help="default 5 (--quick: 4)")
    parser.add_argument("--slow", type=int, help="how many learners are slow (the last ones); "
                        "default 2 (--quick: 1)")
    parser.add_argument("--factor", type=float, default=8.0,
                        help="how many times slower a slow learner is (default 8)")
    parser.add_argument("--buffer", type=int, help="async buffer_size K; default ⌈learners/2⌉")
    parser.add_argument("--max-staleness", type=int, default=8,
                        help="async max_staleness S (default 8)")
    parser.add_argument("--rounds", type=int, help="synchronous rounds; default 8 (--quick: 5)")
    parser.add_argument("--sleep", choices=("measured", "alone"), default="measured",
                        help="a slow learner sleeps (factor - 1) × the training it just did "
                        "(measured, the default) or × one training's time alone, measured "
                        "before the runs (alone: its slowness no longer grows with the load)")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--no-audit", dest="audit", action="store_false")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "fedbuff.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    learners = args.learners or (4 if args.quick else 5)
    slow = args.slow if args.slow is not None else (1 if args.quick else 2)
    buffer = args.buffer or math.ceil(learners / 2)
    rounds = args.rounds or (5 if args.quick else 8)
    if not 0 <= slow < learners or not 1 <= buffer <= learners:
        parser.error("need 0 <= slow < learners and 1 <= buffer <= learners")
    factors = [1.0] * (learners - slow) + [args.factor] * slow
    async_rounds = math.ceil(rounds * learners / buffer)

    job = Job.load(JOB)
    base = dataclasses.replace(
        job.run_config(),
        min_updates=None,  # sync: the default quorum, but each round waits for every learner
        round_timeout=600.0,
        evaluation_timeout=5.0,
    )
    configs = {
        "sync": (dataclasses.replace(base, rounds=rounds),
                 f"sync ({learners} of {learners})"),
        "async": (dataclasses.replace(base, rounds=async_rounds, buffer_size=buffer,
                                      max_staleness=args.max_staleness),
                  f"async FedBuff (K={buffer}, S={args.max_staleness})"),
    }
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(configs))
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(configs)}")

    load = os.getloadavg()
    print(f"CNN on digits ({JOB.relative_to(ROOT)}: {job.train}), {learners} learners, "
          f"speed factors {factors}; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"sync: {rounds} rounds; async: buffer {buffer}, max staleness "
          f"{args.max_staleness}, {async_rounds} rounds (about as many updates)")
    alone = warm_up(job, learners)
    print(f"one learner's training alone, after a warm-up: {alone:.2f}s")
    reports = []
    for mode in modes:
        config, label = configs[mode]
        print(f"{label}:", flush=True)
        report = run_mode(mode, job, config, factors, args.target, args.audit,
                          alone if args.sleep == "alone" else None)
        report["label"] = label
        reports.append(report)
    print_table(reports, args.target)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "job": str(JOB.relative_to(ROOT)), "train": job.train, "strategy": job.strategy,
        "learner_options": job.learner_options, "learners": learners, "factors": factors,
        "buffer_size": buffer, "max_staleness": args.max_staleness, "sync_rounds": rounds,
        "async_rounds": async_rounds, "target": args.target, "cpus": os.cpu_count(),
        "load_average": list(load), "quick": args.quick, "training_alone_seconds": alone,
        "sleep": args.sleep,
    }  # fmt: skip
    args.json.write_text(json.dumps({"settings": settings, "modes": reports}, indent=2) + "\n")
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
