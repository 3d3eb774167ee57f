"""`fedchain audit` at scale: 100 rounds × 10 learners on Anvil, read from the chain alone.

    .venv/bin/python bench/audit.py                      # 100 rounds × 10 learners
    .venv/bin/python bench/audit.py --rounds 20 --learners 5

Builds the federation through the binding, as fast as Anvil mines: each round the learners
submit tiny real models (put in a file:// store) from 10 threads, the aggregator publishes
the FedAvg of them, and every learner reports an evaluation. Then it times the audit the way
a user runs it: reading every event and every receipt (the < 30 s target), without receipts,
the whole `fedchain audit` command in a fresh process, and `--verify` of every round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console

from fedchain.aggregation.strategy import FedAvg, Update
from fedchain.audit import read_federation
from fedchain.audit.render import print_report
from fedchain.audit.verify import load_plan, verify
from fedchain.cli import devnet
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.federation.node import metrics_json
from fedchain.model.codec import encode
from fedchain.protocol.params import Plan
from fedchain.protocol.rules import learner_key
from fedchain.storage import open_store

TARGET_SECONDS = 30.0


def tiny_model(rng: np.random.Generator, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A learner's update: the global model plus a little seeded noise, one step further."""
    return {
        "dense.weight": (base["dense.weight"] + rng.normal(0, 0.1, (8, 4))).astype(np.float32),
        "dense.bias": (base["dense.bias"] + rng.normal(0, 0.1, 8)).astype(np.float32),
        "steps": np.asarray(base["steps"] + 1, np.int64),
    }


def build(url: str, store_url: str, rounds: int, learners: int) -> tuple[FedChain, int, float]:
    """Deploys and runs the federation; (contract, transactions sent, seconds)."""
    started = time.monotonic()
    chain = connect(url)
    store = open_store(store_url)
    owner, aggregator = chain.account(0), chain.account(1)
    accounts = [chain.account(2 + i) for i in range(learners)]
    contract, _ = FedChain.deploy(chain, owner, aggregator.address)
    contract.add_learners([a.address for a in accounts])
    agg = contract.with_account(aggregator)
    nodes = [contract.with_account(a) for a in accounts]
    weights = {
        "dense.weight": np.zeros((8, 4), np.float32),
        "dense.bias": np.zeros(8, np.float32),
        "steps": np.zeros((), np.int64),
    }
    plan = Plan(strategy=FedAvg().to_plan(), rounds=rounds, min_updates=learners)
    agg.set_genesis(store.put(encode(weights)), store.put(plan.to_json()), plan.rounds)
    sent = 4
    rngs = [np.random.default_rng(i) for i in range(learners)]

    def learn(i: int, round: int, base: dict[str, np.ndarray]) -> Update:
        update = tiny_model(rngs[i], base)
        examples = 50 + 10 * i
        nodes[i].submit_update(round, store.put(encode(update)), examples)
        return Update(accounts[i].address, examples, update)

    def report(i: int, round: int) -> None:
        loss = 1.0 / round + 0.01 * i
        nodes[i].report_evaluation(round, 100, metrics_json(loss, {"accuracy": 1 - loss / 2}))

    with ThreadPoolExecutor(max_workers=learners) as pool:
        for round in range(1, rounds + 1):
            updates = list(pool.map(lambda i, r=round, b=weights: learn(i, r, b), range(learners)))
            updates.sort(key=lambda u: learner_key(u.learner))
            weights, _ = FedAvg().aggregate(weights, updates)
            agg.publish_global(round, store.put(encode(weights)), [u.learner for u in updates])
            list(pool.map(lambda i, r=round: report(i, r), range(learners)))
            sent += 2 * learners + 1
            if round % 10 == 0:
                print(f"  round {round}/{rounds} ({time.monotonic() - started:.0f}s)", flush=True)
    agg.finish()
    return contract, sent + 1, time.monotonic() - started


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--learners", type=int, default=10)
    parser.add_argument("--show", action="store_true", help="print the audit table")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, devnet.start_anvil() as node:
        store_url = f"file://{Path(tmp) / 'store'}"
        print(f"building {args.rounds} rounds × {args.learners} learners on Anvil {node.url}")
        contract, sent, built = build(node.url, store_url, args.rounds, args.learners)
        print(f"  {sent} transactions in {built:.1f}s")

        chain = connect(node.url)
        auditor = FedChain.at(chain, contract.address)  # a fresh binding: nothing cached
        report, with_gas = timed(lambda: read_federation(auditor))
        _, without_gas = timed(lambda: read_federation(auditor, gas=False))
        store = open_store(store_url)
        _, verified = timed(lambda: verify(report, store, load_plan(report, store)))
        command = [
            sys.executable,
            "-m",
            "fedchain.cli",
            "audit",
            "--chain",
            node.url,
            "--contract",
            contract.address,
        ]
        done, cli = timed(lambda: subprocess.run(command, capture_output=True, text=True))
        if done.returncode != 0:
            raise SystemExit(f"fedchain audit failed ({done.returncode}):\n{done.stderr}")
        if args.show:
            print_report(report, Console(width=120))

        events = sum(len(r.submissions) + len(r.evaluations) + 1 for r in report.rounds)
        figures = {
            "rounds": len(report.rounds),
            "learners": len(report.learners),
            "events": events,
            "receipts": sent,
            "audit_seconds": round(with_gas, 2),
            "events_seconds": round(report.seconds["events"], 2),
            "receipts_seconds": round(report.seconds["gas"], 2),
            "audit_without_gas_seconds": round(without_gas, 2),
            "cli_seconds": round(cli, 2),
            "verify_seconds": round(verified, 2),
            "verify_failures": len(report.failures()),
            "target_seconds": TARGET_SECONDS,
        }
        print(json.dumps(figures, indent=2))
        verdict = "meets" if with_gas < TARGET_SECONDS else "MISSES"
        print(
            f"audit of {len(report.rounds)} rounds × {len(report.learners)} learners without "
            f"--verify: {with_gas:.2f}s with gas ({without_gas:.2f}s without), {verdict} the "
            f"{TARGET_SECONDS:.0f}s target; `fedchain audit` command {cli:.2f}s; "
            f"--verify of every round {verified:.2f}s, {len(report.failures())} failures"
        )


if __name__ == "__main__":
    main()
