"""Utility of differential privacy: the CNN example's final accuracy at ε ∈ {1, 3, 8} (δ =
1e-5) against the non-private run; sample-level with 3 learners (the default part),
learner-level with 100 (`--part learner`).

    .venv/bin/python bench/dp.py                 # ε 1, 3, 8 (5 runs each) and non-private (~3 min)
    .venv/bin/python bench/dp.py --epsilons 8 --repeats 1
    .venv/bin/python bench/dp.py --part learner  # learner-level DP, 100 learners (~30 min)
    .venv/bin/python bench/dp.py --part sweep --epsilons 3 --clip-norms 0.5 1 2   # its settings

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

`--part learner`: learner-level (distributed) differential privacy under secure aggregation
(SPEC.md §14.16), examples/cnn/fedchain-ddp.toml: 100 learners on the pool engine (14–15
records each, DPNet, 10 rounds of 10 full-batch epochs, lr 0.3, momentum 0.9), a committee
of 3. For each target ε, z is the smallest noise multiplier (4 decimals, rounded up) whose
rounds, each counted at the worst case the plan allows (min_learners − 1 other learners'
noise: `Noise.worst_round`), stay within it; the plan's budget is the target, clip_norm C is
`CLIP_NORMS`'s for that target. ε = ∞ is the same secure job without dp; the baseline is the
same learners and training in the clear (plain FedAvg). Reported: z, the largest ε any
learner reached as the audit recomputes it from the plan and the chain
(`audit_federation(...).distributed`), the final centralized accuracy (mean and range of
`--repeats` runs, 3), and the seconds per run. Results: bench/results/ddp.json.
`--part sweep` replays that federation in one process without the chain (`sweep_part`): how
the job's C, rounds, epochs and lr were chosen (examples/cnn/README.md).
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


# --- learner-level (distributed) DP under secure aggregation ---------------------------------

DDP_RESULTS = ROOT / "bench" / "results" / "ddp.json"
#: clip_norm C for each target ε (a target not listed: the job's own). The noise is z·C per
#: released sum, so C sets the step the global model can take against a fixed noise-to-step
#: ratio; at a small ε a small step pays (examples/cnn/README.md, "Learner-level DP").
CLIP_NORMS = {1.0: 0.25, 3.0: 1.0, 8.0: 2.0}


def ddp_noise(dp: dict[str, Any], secagg: dict[str, Any], d: int) -> Any:
    from fedchain.privacy.distributed import DistributedDP, Noise

    return Noise.of(DistributedDP.parse({**dp, "dimension": d}), float(secagg["clip"]),
                    int(secagg["range"]), d)


def ddp_calibrate(dp: dict[str, Any], secagg: dict[str, Any], d: int, target: float,
                  rounds: int) -> float:
    """The smallest z (4 decimals, rounded up) whose `rounds` rounds, each at the worst case
    (min_learners − 1 others' noise), stay within ε = target."""
    def within(k: int) -> bool:
        noise = ddp_noise({**dp, "noise_multiplier": k / 10_000}, secagg, d)
        return noise.epsilon([rounds * r for r in noise.worst_round()]) <= target

    low, high = 0, 1  # low fails (no noise), high is tried: in units of 1e-4
    while not within(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if within(mid) else (mid, high)
    return high / 10_000


def ddp_run(job: Job, rounds: int, out: Path, privacy: str, secagg: dict[str, Any] | None,
            ) -> dict[str, Any]:
    """One simulated run of the 100-learner job (pool engine, the job's committee) with the
    given privacy and secagg object: its accuracy, and each learner's ε recomputed by the
    audit."""
    from fedchain.audit import audit_federation

    task.SETTINGS.reset()
    task.configure(**{**job.learner_options, "output_dir": str(out)})
    config = dataclasses.replace(job.run_config(), rounds=rounds, privacy=privacy,
                                 secagg=secagg)
    started = time.monotonic()
    result = simulate(task.make_learner, job.learners, strategy_from_plan(job.strategy),
                      config=config, initial_weights=task.initial_weights(),
                      evaluate_fn=task.evaluate_global, results_dir=out,
                      aggregators=job.aggregators, quorum=job.quorum, engine="pool",
                      title=f"bench/dp learner {out.name}")
    seconds = time.monotonic() - started
    accuracy = dict(result.history.metrics_centralized["accuracy"])
    report = audit_federation(result.contract, result.store, gas=False)
    ledgers = report.distributed
    return {"accuracy": accuracy[max(accuracy)], "best": max(accuracy.values()),
            "accuracies": [accuracy[r] for r in sorted(accuracy)],
            "epsilon": max((x.epsilon for x in ledgers), default=math.inf),
            "epsilon_min": min((x.epsilon for x in ledgers), default=math.inf),
            "learners_counted": len(ledgers),
            "rounds_per_learner": sorted({x.rounds for x in ledgers}),
            "claims_hold": report.exit_status() == 0,  # every round verified, budgets kept
            "updates": [len(r.included) for r in result.rounds], "seconds": seconds}


def learner_part(args: argparse.Namespace) -> None:
    job_file = CNN / "fedchain-ddp.toml"
    job = Job.load(job_file)
    rounds = args.rounds or job.rounds
    repeats = args.repeats or 3
    base = dict(job.protocol["secagg"])
    dp = dict(base.pop("dp"))
    task.SETTINGS.reset()
    task.configure(**job.learner_options)
    d = sum(int(a.size) for a in task.initial_weights().values()
            if a.dtype.kind == "f")
    out = args.output / "learner"
    print(f"learner-level DP: {job_file.relative_to(ROOT)}, {job.learners} learners, "
          f"{rounds} rounds, d = {d}, min_learners {dp['min_learners']}, δ = {args.delta:g}",
          flush=True)
    plain = [ddp_run(job, rounds, out / "non-private", "none", None)]
    print(f"non-private (plain FedAvg in the clear): accuracy {plain[0]['accuracy']:.4f}, "
          f"{plain[0]['seconds']:.0f} s", flush=True)
    rows = []
    for target in args.epsilons:
        if math.isinf(target):
            z, clip_norm, secagg = 0.0, None, base
        else:
            clip_norm = CLIP_NORMS.get(target, float(dp["clip_norm"]))
            params = {**dp, "clip_norm": clip_norm, "delta": args.delta, "budget": target}
            z = ddp_calibrate(params, base, d, target, rounds)
            secagg = {**base, "dp": {**params, "noise_multiplier": z}}
            noise = ddp_noise(secagg["dp"], base, d)
            assert (noise.max_rounds() or 0) >= rounds, "the budget would stop the learners"
        runs = [ddp_run(job, rounds, out / f"eps-{target:g}-{i}", "secagg", secagg)
                for i in range(repeats)]
        rows.append({**_row(target, z, runs), "clip_norm": clip_norm})
        print(f"ε = {target:g}: z {z}, C {clip_norm}, accuracy "
              f"{[round(r['accuracy'], 4) for r in runs]}, ε reached "
              f"{[round(r['epsilon'], 4) for r in runs]}, "
              f"{[round(r['seconds']) for r in runs]} s", flush=True)

    baseline = _row(math.inf, 0.0, plain)
    print(f"\nCNN example (DPNet), digits, {job.learners} learners (pool engine), {rounds} "
          f"rounds, committee of {job.aggregators}, δ = {args.delta:g}, min_learners "
          f"{dp['min_learners']}; secure rows: mean of {repeats} runs (range)\n")
    print("| ε (target) | z | C | ε reached (max over learners, recomputed by the audit) "
          "| final accuracy | vs non-private | seconds a run |")
    print("|---|---|---|---|---|---|---|")
    for r in [*sorted(rows, key=lambda r: r["target"]), baseline]:
        eps = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.3f}"
        name = (f"{r['target']:g}" if not math.isinf(r["target"]) else
                "∞ (non-private, in the clear)" if r is baseline else "∞ (secure, no DP)")
        spread = f" ({100 * r['low']:.1f}–{100 * r['high']:.1f})" if len(r["runs"]) > 1 else ""
        gap = 100 * (r["accuracy"] - baseline["accuracy"])
        seconds = sum(x["seconds"] for x in r["runs"]) / len(r["runs"])
        print(f"| {name} | {r['sigma'] or '-'} | {r.get('clip_norm') or '-'} | {eps} "
              f"| {100 * r['accuracy']:.1f} %{spread} | {gap:+.1f} points | {seconds:.0f} |")

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    def clean(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "target": finite(r["target"]), "epsilon": finite(r["epsilon"]),
                "runs": [{**x, "epsilon": finite(x["epsilon"]),
                          "epsilon_min": finite(x["epsilon_min"])} for x in r["runs"]]}

    DDP_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    DDP_RESULTS.write_text(json.dumps({
        "job": str(job_file.relative_to(ROOT)), "learners": job.learners, "rounds": rounds,
        "delta": args.delta, "dimension": d, "min_learners": dp["min_learners"],
        "secagg": {k: v for k, v in base.items()}, "train": job.train, "repeats": repeats,
        "non_private": clean(baseline),
        "rows": [{**clean(r), "z": r["sigma"]} for r in rows]}, indent=1) + "\n")
    print(f"\nresults: {DDP_RESULTS.relative_to(ROOT)}")


def sweep_part(args: argparse.Namespace) -> None:
    """The learner-level job's federation replayed in this process, for choosing its settings:
    the same 100 learners, data and training (`TorchLearner.train` from the global model),
    each difference clipped to L2 norm C, their mean plus Gaussian noise of the standard
    deviation the released sum's Skellam noise has (z from `ddp_calibrate`, dequantized and
    divided by the 100 learners); no chain, masking or quantization. Prints the final
    centralized accuracy for each target ε × clip norm × epochs × lr, the mean over
    `--repeats` noise draws (the training is the same bits each time)."""
    import itertools

    import numpy as np

    from fedchain.privacy import quantize as Q

    job = Job.load(CNN / "fedchain-ddp.toml")
    rounds, repeats, n = args.rounds or job.rounds, args.repeats or 2, job.learners
    base = dict(job.protocol["secagg"])
    dp = dict(base.pop("dp"))
    task.SETTINGS.reset()
    task.configure(**job.learner_options)
    initial = task.initial_weights()
    keys = [k for k, a in initial.items() if a.dtype.kind == "f"]
    d = sum(int(initial[k].size) for k in keys)
    learners = [task.make_learner(i, n) for i in range(n)]
    scale = Q.scale(float(base["clip"]), int(base["range"]))
    m = args.min_learners or int(dp["min_learners"])
    for target, clip_norm, epochs, lr in itertools.product(
            args.epsilons or [1.0, 3.0, 8.0, math.inf], args.clip_norms or [dp["clip_norm"]],
            args.epochs or [job.train["epochs"]], args.lr or [job.train["lr"]]):
        sd = z = 0.0
        if not math.isinf(target):
            params = {**dp, "clip_norm": clip_norm, "min_learners": m, "delta": args.delta}
            z = ddp_calibrate(params, base, d, target, rounds)
            noise = ddp_noise({**params, "noise_multiplier": z}, base, d)
            sd = noise.share_sd * math.sqrt(n) / scale / n
        train = {**job.train, "epochs": int(epochs), "lr": float(lr)}
        accuracies = []
        for seed in range(repeats):
            rng = np.random.default_rng(seed)
            w = {k: a.copy() for k, a in initial.items()}
            for r in range(1, rounds + 1):
                total = np.zeros(d)
                for learner in learners:
                    new = learner.train(w, {**train, "round": r}).weights
                    diff = np.concatenate([(new[k].astype(np.float64) - w[k]).ravel()
                                           for k in keys])
                    length = float(np.linalg.norm(diff))
                    if not math.isinf(target) and length > clip_norm:
                        diff *= clip_norm / length
                    total += diff
                mean = total / n + (rng.normal(0.0, sd, d) if sd else 0.0)
                at = 0
                for k in keys:
                    size = w[k].size
                    w[k] = (w[k] + mean[at:at + size].reshape(w[k].shape)).astype(w[k].dtype)
                    at += size
            accuracies.append(task.evaluate_global(rounds, w)[1]["accuracy"])
        print(f"ε {target:g}, C {clip_norm:g}, m {m}, {rounds} rounds of {epochs} epochs at lr "
              f"{lr:g}: z {z}, accuracy {100 * sum(accuracies) / len(accuracies):.1f} % "
              f"{[round(100 * a, 1) for a in accuracies]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sample", "learner", "sweep"), default="sample",
                        help="sample: sample-level DP-SGD, 3 learners (default); learner: "
                        "learner-level DP under secure aggregation, 100 learners; sweep: "
                        "the learner part's federation replayed without a chain, for its "
                        "settings")
    parser.add_argument("--clip-norms", type=float, nargs="+", help="sweep: C values")
    parser.add_argument("--epochs", type=int, nargs="+", help="sweep: epochs a round")
    parser.add_argument("--lr", type=float, nargs="+", help="sweep: learning rates")
    parser.add_argument("--min-learners", type=int, help="sweep: min_learners (the job's)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None,
                        help="target ε (default 1 3 8; --part learner: 1 3 8 inf)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds (default 10; --part learner: the job's)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per DP row (default 5; --part learner: 3)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-dp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(name)s | %(message)s")
    if args.part == "learner":
        args.epsilons = args.epsilons or [1.0, 3.0, 8.0, math.inf]
        learner_part(args)
        return
    if args.part == "sweep":
        sweep_part(args)
        return
    args.epsilons = args.epsilons or [1.0, 3.0, 8.0]
    args.repeats = args.repeats or 5
    args.rounds = args.rounds or 10

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
