"""Utility of sample-level differential privacy: the CNN example's final accuracy at ε ∈ {1, 3,
8} (δ = 1e-5) against the non-private run, 3 learners, 10 rounds.

    .venv/bin/python bench/dp.py                 # ε 1, 3, 8 and non-private, 3 runs each (~7 min)
    .venv/bin/python bench/dp.py --epsilons 8 --repeats 1

Each row is a whole `fedchain.simulate` run (embedded chain and store, a thread per learner)
on the digits data, the same genesis model and partitions (each learner's 80 %: 383–384
records; the held-out test set, 359 images, is the aggregator's):

    ε = ∞   examples/cnn/fedchain.toml: the example as it is (SGD, lr 0.02, momentum 0.9,
            batches of 16, 2 epochs a round, FedAvg with the default bounds)
    ε = 1, 3, 8
            examples/cnn/fedchain-dp.toml: DP-SGD (each record's gradient clipped to 1, 128
            records a step in expectation, 2 epochs = 6 steps a round, lr 1.0, momentum 0.5)
            with the noise multiplier `noise_for_epsilon` gives for 10 rounds at the smallest
            learner's sampling rate, and the learners' budget set to the target

Reported per row: σ, the largest ε any learner reached as `fedchain privacy` recomputes it
from the chain (and whether every learner's claim matched), the global model's centralized
accuracy after the last round (and the best of any round), and the gap to the non-private
run: the mean of `--repeats` runs (3) and their range. DP-SGD's noise is fresh every run
(from os.urandom), and at ε = 8 one run's final accuracy differs from another's by up to ten
points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.cnn import task  # noqa: E402
from fedchain.aggregation.strategy import strategy_from_plan  # noqa: E402
from fedchain.audit import read_federation  # noqa: E402
from fedchain.cli.job import Job  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.privacy.accountant import noise_for_epsilon  # noqa: E402
from fedchain.privacy.dpsgd import sampling_rate, steps_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dp.json"


def run(job_file: Path, rounds: int, out: Path, **options: Any) -> dict[str, Any]:
    """One simulated run of a job with learner options overridden; its accuracy and ε."""
    job = Job.load(job_file)
    task.SETTINGS.reset()
    task.configure(**{**job.learner_options, **options, "output_dir": str(out)})
    started = time.monotonic()
    config = dataclasses.replace(job.run_config(), rounds=rounds, train=dict(job.train))
    result = simulate(task.make_learner, job.learners or 3, strategy_from_plan(job.strategy),
                      config=config, initial_weights=task.initial_weights(),
                      evaluate_fn=task.evaluate_global, results_dir=out,
                      title=f"bench/dp {job_file.name}")
    seconds = time.monotonic() - started
    accuracy = dict(result.history.metrics_centralized["accuracy"])
    report = read_federation(result.contract, gas=False)
    eps = [p.epsilon for p in report.privacy if p.epsilon is not None]
    return {"accuracy": accuracy[max(accuracy)], "best": max(accuracy.values()),
            "epsilon": max(eps) if eps else math.inf,
            "claims_hold": all(p.ok for p in report.privacy),
            "updates": [len(r.included) for r in result.rounds], "seconds": seconds}


def _row(target: float, sigma: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    final = [r["accuracy"] for r in runs]
    return {"target": target, "sigma": sigma, "accuracy": sum(final) / len(final),
            "low": min(final), "high": max(final),
            "best": sum(r["best"] for r in runs) / len(runs),
            "epsilon": max(r["epsilon"] for r in runs),
            "claims_hold": all(r["claims_hold"] for r in runs), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (default 3)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-dp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(name)s | %(message)s")

    dp_job = Job.load(ROOT / "examples" / "cnn" / "fedchain-dp.toml")
    opts = dp_job.learner_options
    records = 383  # the smallest learner's training records (3 learners, local_test 0.2)
    q = sampling_rate(int(opts["dp_batch"]), records)
    steps = args.rounds * steps_for(dp_job.train, q)
    plain = ROOT / "examples" / "cnn" / "fedchain.toml"
    runs = [run(plain, args.rounds, args.output / f"non-private-{i}")
            for i in range(args.repeats)]
    baseline = _row(math.inf, 0.0, runs)
    rows = [baseline]
    print(f"ε = ∞ (non-private): accuracy {[round(r['accuracy'], 4) for r in runs]}", flush=True)
    for target in args.epsilons:
        sigma = noise_for_epsilon(target, q, steps, args.delta)
        runs = [run(ROOT / "examples" / "cnn" / "fedchain-dp.toml", args.rounds,
                    args.output / f"eps-{target:g}-{i}", dp_noise=sigma, dp_budget=target,
                    dp_delta=args.delta) for i in range(args.repeats)]
        rows.append(_row(target, sigma, runs))
        print(f"ε = {target:g}: σ {sigma}, accuracy {[round(r['accuracy'], 4) for r in runs]}",
              flush=True)

    print(f"\nCNN example, digits, 3 learners, {args.rounds} rounds, δ = {args.delta:g}; DP-SGD "
          f"q = {q:.3f}, {steps // args.rounds} steps a round, {steps} in all; mean of "
          f"{args.repeats} runs (range)\n")
    print("| ε (target) | σ | ε reached (recomputed from chain) | final accuracy | best round "
          "| vs non-private |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["target"]):
        eps = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.3f}"
        held = "" if r["claims_hold"] else " (a claim did not match!)"
        gap = 100 * (r["accuracy"] - baseline["accuracy"])
        name = "∞ (non-private)" if math.isinf(r["target"]) else f"{r['target']:g}"
        print(f"| {name} | {r['sigma'] or '-'} | {eps}{held} | {100 * r['accuracy']:.1f} % "
              f"({100 * r['low']:.1f}–{100 * r['high']:.1f}) | {100 * r['best']:.1f} % "
              f"| {gap:+.1f} points |")

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rounds": args.rounds, "delta": args.delta, "q": q, "steps": steps,
        "repeats": args.repeats,
        "rows": [{**r, "target": finite(r["target"]), "epsilon": finite(r["epsilon"]),
                  "runs": [{**x, "epsilon": finite(x["epsilon"])} for x in r["runs"]]}
                 for r in rows]}, indent=1) + "\n")
    print(f"\nresults: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
