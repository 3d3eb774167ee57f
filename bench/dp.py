"""Utility of sample-level differential privacy: the CNN example's final accuracy at ε ∈ {1, 3,
8} (δ = 1e-5) against the non-private run, 3 learners, 10 rounds.

    .venv/bin/python bench/dp.py                 # ε 1, 3, 8 (5 runs each) and non-private (~3 min)
    .venv/bin/python bench/dp.py --epsilons 8 --repeats 1

Each row is a whole `fedchain.simulate` run (embedded chain and store, a thread per learner)
on the digits data (IID over 3 learners; the held-out test set, 359 images, is the
aggregator's and gives the accuracy):

    ε = ∞   examples/cnn/fedchain.toml: the example as it is (Net, 62,006 parameters; each
            learner trains on 80 % of its partition, 383–384 records, SGD lr 0.02, momentum
            0.9, batches of 16, 2 epochs a round, FedAvg with the default bounds)
    ε = 1, 3, 8
            examples/cnn/fedchain-dp.toml: DP-SGD on DPNet (a tanh CNN of 6,378 parameters)
            over all of each learner's 479–480 records, every step the clipped (C = 1) sum
            of all of them (q = 1), lr 4, momentum 0.5; 4 steps a round at ε = 8, 2 at ε = 3,
            1 at ε = 1 (`EPOCHS`: fewer, less noisy steps pay at a smaller ε); σ is
            `noise_for_epsilon` for 10 rounds of those steps at the largest q and steps of
            any learner, the learners' budget the target

and, to tell the model's share of the gap from the noise's, the DP job's model and data
trained without privacy (fedchain.toml's training, `model = "dp"`, `local_test = 0`).

Reported per row: σ, the largest ε any learner reached as `fedchain privacy` recomputes it
from the chain (and whether every learner's claim matched), the global model's centralized
accuracy after the last round (and the best of any round), and the gap to the non-private
run: the mean of `--repeats` runs (5) and their range. DP-SGD's noise is fresh every run (from
os.urandom), so DP rows differ from run to run; the non-private rows are the same bits on
every run for a seed and run once.
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
from fedchain.privacy.dpsgd import PrivacyLedger, steps_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dp.json"
CNN = ROOT / "examples" / "cnn"
#: DP-SGD steps a round (`[train] epochs`; q = 1, so one step is one epoch) for each target
#: ε; a target not listed uses the DP job's own (4).
EPOCHS = {1.0: 1, 3.0: 2}


def run(job_file: Path, rounds: int, out: Path, train: dict[str, Any] | None = None,
        **options: Any) -> dict[str, Any]:
    """One simulated run of a job with learner options (and [train] keys) overridden; its
    accuracy and ε."""
    job = Job.load(job_file)
    task.SETTINGS.reset()
    task.configure(**{**job.learner_options, **options, "output_dir": str(out)})
    started = time.monotonic()
    config = dataclasses.replace(job.run_config(), rounds=rounds,
                                 train={**job.train, **(train or {})})
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


def calibrate(job: Job, target: float, rounds: int, epochs: int, delta: float) -> float:
    """The smallest σ that keeps every learner of the job within ε = target after `rounds`
    rounds of `epochs` (each learner's q from its own records, its steps from that q)."""
    task.SETTINGS.reset()
    sigmas = []
    for i in range(job.learners or 3):
        learner = task.make_learner(i, job.learners or 3, **job.learner_options)
        assert learner.dp is not None
        ledger = PrivacyLedger(learner.dp, learner.num_train)
        steps = rounds * steps_for({"epochs": epochs}, ledger.q)
        sigmas.append(noise_for_epsilon(target, ledger.q, steps, delta))
    return max(sigmas)


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
    parser.add_argument("--repeats", type=int, default=5, help="runs per DP row (default 5)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-dp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(name)s | %(message)s")

    dp_file = CNN / "fedchain-dp.toml"
    dp_job = Job.load(dp_file)
    plain = CNN / "fedchain.toml"
    runs = [run(plain, args.rounds, args.output / "non-private")]
    baseline = _row(math.inf, 0.0, runs)
    print(f"ε = ∞ (non-private): accuracy {runs[0]['accuracy']:.4f}", flush=True)
    runs = [run(plain, args.rounds, args.output / "non-private-dp-model", model="dp",
                local_test=0.0)]
    reference = _row(math.inf, 0.0, runs)
    print(f"ε = ∞, the DP job's model and data: accuracy {runs[0]['accuracy']:.4f}", flush=True)
    rows = []
    for target in args.epsilons:
        epochs = EPOCHS.get(target, int(dp_job.train["epochs"]))
        sigma = calibrate(dp_job, target, args.rounds, epochs, args.delta)
        runs = [run(dp_file, args.rounds, args.output / f"eps-{target:g}-{i}",
                    train={"epochs": epochs}, dp_noise=sigma, dp_budget=target,
                    dp_delta=args.delta) for i in range(args.repeats)]
        rows.append({**_row(target, sigma, runs), "steps_per_round": epochs})
        print(f"ε = {target:g}: σ {sigma}, {epochs} steps a round, accuracy "
              f"{[round(r['accuracy'], 4) for r in runs]}", flush=True)

    print(f"\nCNN example, digits, 3 learners, {args.rounds} rounds, δ = {args.delta:g}; DP-SGD "
          f"q = 1; DP rows: mean of {args.repeats} runs (range)\n")
    print("| ε (target) | σ | steps a round | ε reached (recomputed from chain) | final accuracy "
          "| best round | vs non-private |")
    print("|---|---|---|---|---|---|---|")
    for r in [*sorted(rows, key=lambda r: r["target"]), baseline, reference]:
        eps = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.3f}"
        held = "" if r["claims_hold"] else " (a claim did not match!)"
        gap = 100 * (r["accuracy"] - baseline["accuracy"])
        name = (f"{r['target']:g}" if not math.isinf(r["target"]) else
                "∞ (non-private)" if r is baseline else "∞ (DP job's model and data)")
        spread = f" ({100 * r['low']:.1f}–{100 * r['high']:.1f})" if len(r["runs"]) > 1 else ""
        print(f"| {name} | {r['sigma'] or '-'} | {r.get('steps_per_round', '-')} | {eps}{held} "
              f"| {100 * r['accuracy']:.1f} %{spread} | {100 * r['best']:.1f} % "
              f"| {gap:+.1f} points |")

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    def clean(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "target": finite(r["target"]), "epsilon": finite(r["epsilon"]),
                "runs": [{**x, "epsilon": finite(x["epsilon"])} for x in r["runs"]]}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rounds": args.rounds, "delta": args.delta, "q": 1.0, "repeats": args.repeats,
        "non_private": clean(baseline), "non_private_dp_model": clean(reference),
        "rows": [clean(r) for r in rows]}, indent=1) + "\n")
    print(f"\nresults: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
