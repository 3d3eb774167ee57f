"""`fedchain audit`: a federation's round history from the chain alone, optionally re-verified.

Reading needs only a chain node and the contract address: one paged pass over the contract's
events up to a fixed head block (so a federation still running gives a consistent snapshot),
grouped by round, plus the gas of each transaction from its receipt.

`--verify` then walks the rounds in order holding one round's models at a time: it fetches
the previous global model, the included updates and the published global model through the
store (every byte checked against its CID), decodes and validates them, re-runs the round
with the plan's strategy and compares the CID of the re-encoded result with the published
one. Content the store cannot serve is reported as unfetchable, never as tampering.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from web3.exceptions import Web3RPCError

from .contract import (
    AggregatorChanged,
    EvaluationReported,
    FedChain,
    Finished,
    GenesisSet,
    GlobalModelPublished,
    LearnerAdded,
    LearnerRemoved,
    UpdateSubmitted,
    cid_text,
)
from .history import weighted_metrics
from .report import FAILED, AuditReport, Check, Evaluation, RoundAudit, Submission

__all__ = ["add_arguments", "main", "read_federation"]

RECEIPT = "eth_getTransactionReceipt"
#: Receipts per JSON-RPC batch: public endpoints commonly cap batches at 100 calls.
RECEIPT_BATCH = 100

# --- reading the chain ---------------------------------------------------------------


def deployment_block(contract: FedChain, head: int) -> int:
    """The block that created the contract (binary search on its code); 0 if history is pruned."""
    w3, address = contract.chain.w3, contract.address

    def has_code(block: int) -> bool:
        return bool(contract.chain.call(lambda: w3.eth.get_code(address, block)))

    try:
        if has_code(0):
            return 0
        low, high = 0, head  # no code at `low`, code at `high`
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if has_code(mid) else (mid, high)
        return high
    except (Web3RPCError, ValueError):
        return 0


def _gas_used(contract: FedChain, txs: Iterable[str], workers: int) -> dict[str, int]:
    """gasUsed of each transaction, from receipts: JSON-RPC batches where the node takes them,
    else `workers` requests at a time (web3's per-call formatting costs more than the node)."""
    chain = contract.chain
    unique = list(dict.fromkeys(txs))
    batch = getattr(chain.w3.provider, "make_batch_request", None)
    if not chain.embedded and batch is not None:
        used: dict[str, int] = {}

        def ask(part: list[str]) -> Any:
            return batch([(RECEIPT, [tx]) for tx in part])

        try:
            for i in range(0, len(unique), RECEIPT_BATCH):
                part = unique[i : i + RECEIPT_BATCH]
                for answer in chain.call(partial(ask, part)):
                    result = answer["result"]
                    used[result["transactionHash"].lower()] = int(result["gasUsed"], 16)
            if all(tx.lower() in used for tx in unique):
                return {tx: used[tx.lower()] for tx in unique}
        except (Web3RPCError, ValueError, KeyError, TypeError):
            pass  # a node that refuses batches: ask one receipt at a time

    def one(tx: str) -> tuple[str, int]:
        receipt = chain.call(lambda: chain.w3.eth.get_transaction_receipt(tx))  # type: ignore[arg-type]
        return tx, int(receipt["gasUsed"])

    if chain.embedded:  # one in-process EVM behind a lock: threads would only queue
        return dict(map(one, unique))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, unique))


def _metrics(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {"unparsed": raw.decode("utf-8", "replace")}
    return body if isinstance(body, dict) else {"value": body}


def read_federation(
    contract: FedChain,
    *,
    from_block: int | None = None,
    gas: bool = True,
    workers: int = 8,
    page: int = 10_000,
) -> AuditReport:
    """The federation's history from the chain alone: one paged pass over its events."""
    chain = contract.chain
    started = time.monotonic()
    head = chain.block_number()
    start = deployment_block(contract, head) if from_block is None else from_block
    report = AuditReport(
        chain.url, chain.chain_id, contract.address, contract.owner(), "", start, head
    )
    rounds: dict[int, RoundAudit] = {}
    reports: dict[int, list[EvaluationReported]] = {}
    active: dict[str, bool] = {}

    def at(round: int) -> RoundAudit:
        return rounds.setdefault(round, RoundAudit(round))

    txs: list[str] = []
    for e in contract.events(from_block=start, to_block=head, page=page):
        txs.append(e.tx)
        if isinstance(e, UpdateSubmitted):
            at(e.round).submissions.append(
                Submission(e.learner, cid_text(e.model_cid), e.num_examples, e.block, e.tx)
            )
        elif isinstance(e, EvaluationReported):
            at(e.round).evaluations.append(
                Evaluation(e.learner, e.num_examples, _metrics(e.metrics), e.block, e.tx)
            )
            reports.setdefault(e.round, []).append(e)
        elif isinstance(e, GlobalModelPublished):
            r = at(e.round)
            r.global_cid, r.included = cid_text(e.model_cid), list(e.included)
            r.publish_block, r.publish_tx = e.block, e.tx
        elif isinstance(e, GenesisSet):
            report.genesis_cid, report.plan_cid = cid_text(e.model_cid), cid_text(e.plan_cid)
            report.genesis_tx = e.tx
        elif isinstance(e, LearnerAdded | LearnerRemoved):
            active[e.learner] = isinstance(e, LearnerAdded)
        elif isinstance(e, AggregatorChanged):
            report.aggregator = e.next
        elif isinstance(e, Finished):
            report.finished_after = e.last_round
    report.learners = [a for a, on in active.items() if on]
    report.rounds = [rounds[r] for r in sorted(rounds)]
    for r in report.rounds:
        r.abandoned = r.global_cid is None and report.finished_after is not None
        _chain_checks(r)
        r.loss, r.metrics = weighted_metrics(reports.get(r.round, []))
    report.seconds["events"] = time.monotonic() - started
    if gas:
        started = time.monotonic()
        used = _gas_used(contract, txs, workers)
        for r in report.rounds:
            for s in r.submissions:
                s.gas = used.get(s.tx)
            for v in r.evaluations:
                v.gas = used.get(v.tx)
            r.publish_gas = used.get(r.publish_tx) if r.publish_tx else None
        report.gas_total = sum(used.values())
        report.seconds["gas"] = time.monotonic() - started
    return report


def _chain_checks(r: RoundAudit) -> None:
    """What the chain alone can tell about a round: every included learner submitted."""
    submitted = {s.learner: s for s in r.submissions}
    for learner in r.included:
        if learner in submitted:
            submitted[learner].included = True
        else:
            r.checks.append(
                Check(
                    FAILED,
                    "included update",
                    "included learner has no submission in this round",
                    r.round,
                    learner,
                )
            )


# --- command line --------------------------------------------------------------------


def audit_federation(
    contract: FedChain, store: Any | None = None, *, verify_models: bool = True,
    gas: bool = True, from_block: int | None = None, workers: int = 8,
) -> AuditReport:
    """The audit report of a federation: read from the chain, verified through `store`."""
    from .verify import load_plan, verify

    report = read_federation(contract, from_block=from_block, gas=gas, workers=workers)
    if store is not None:
        plan = load_plan(report, store)
        if verify_models:
            verify(report, store, plan)
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `fedchain audit` options."""
    p.add_argument("--job", help="job TOML file (flags override it)")
    p.add_argument("--chain", help="'embedded' or a JSON-RPC URL, e.g. http://127.0.0.1:8545")
    p.add_argument("--contract", help="FedChain address (default: deployments/<chainId>.json)")
    p.add_argument("--deployments", help="directory of deployment records")
    p.add_argument(
        "--store", help="'embedded', file:///dir, or a Kubo RPC URL (for the plan and --verify)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="fetch every model and re-run every round's aggregation",
    )
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument(
        "--from-block",
        type=int,
        help="first block to scan (default: the contract's deployment block)",
    )
    p.add_argument("--no-gas", action="store_true", help="skip the per-transaction receipts")
    p.add_argument("--workers", type=int, default=8, help="parallel receipt requests")


def main(args: argparse.Namespace) -> int:
    """Runs `fedchain audit`; 0 if every check passed, 1 if one failed, 3 if some could not run."""
    from pathlib import Path

    from rich.console import Console

    from .chain import connect
    from .deploy import find_contract
    from .job import Job
    from .report import print_report, write_html, write_json
    from .storage import open_store

    job = Job.load(args.job)
    chain = connect(args.chain or job.chain)
    contract = find_contract(
        chain, args.contract or job.contract, None, Path(args.deployments or job.deployments)
    )
    store_url = args.store or (job.store if args.job or args.verify else None)
    report = audit_federation(
        contract, open_store(store_url) if store_url is not None else None,
        verify_models=args.verify, gas=not args.no_gas, from_block=args.from_block,
        workers=args.workers,
    )
    console = Console() if sys.stdout.isatty() else Console(width=160)
    print_report(report, console)
    if args.json:
        console.print(f"JSON report: {write_json(report, args.json)}")
    if args.html:
        console.print(f"HTML report: {write_html(report, args.html)}")
    return report.exit_status()
