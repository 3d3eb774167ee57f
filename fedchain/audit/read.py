"""A federation's round history from the chain alone, as an AuditReport.

Reading needs only a chain node and the contract address: one paged pass over the contract's
events up to a fixed head block (so a federation still running gives a consistent snapshot),
grouped by round, plus the gas of each transaction from its receipt.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from web3.exceptions import Web3RPCError

from ..eth.contract import FedChainReader
from ..eth.events import EvaluationReported
from ..federation.history import (
    REPORT_EXAMPLES_CAP,
    report_problem,
    report_weights,
    weighted_metrics,
)
from ..protocol.ledger import Ledger
from ..protocol.rules import ALL_PPM, draw_seed, is_selected, sample_size
from ..storage.cid import CID
from .privacy import privacy_ledger
from .report import FAILED, NOTE, AuditReport, Check, Evaluation, RoundAudit, Submission

RECEIPT = "eth_getTransactionReceipt"
#: Receipts per JSON-RPC batch: public endpoints commonly cap batches at 100 calls.
RECEIPT_BATCH = 100

# --- reading the chain ---------------------------------------------------------------


def deployment_block(contract: FedChainReader, head: int) -> int:
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


def _gas_used(contract: FedChainReader, txs: Iterable[str], workers: int) -> dict[str, int]:
    """gasUsed of each transaction, from receipts: JSON-RPC batches where the node takes them,
    else `workers` requests at a time (web3's per-call formatting costs more than the node)."""
    chain = contract.chain
    unique = list(dict.fromkeys(txs))
    batch = getattr(chain.w3.provider, "make_batch_request", None)
    if chain.backend.supports_batch and batch is not None:
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

    if not chain.backend.concurrent_requests:  # e.g. one in-process EVM: threads would queue
        return dict(map(one, unique))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, unique))


def read_federation(
    contract: FedChainReader,
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
    ledger = Ledger(contract, from_block=start, page=page, keep_txs=gas)
    ledger.refresh(head)
    report.genesis = ledger.genesis
    report.finished_after = ledger.finished_after
    if ledger.committee is not None:
        c = ledger.committee
        report.aggregator = ", ".join(c.members) + (
            f" (quorum {c.quorum})" if len(c.members) > 1 else "")
    report.learners = [a for a, on in ledger.active.items() if on]
    _governance_checks(report, ledger)
    seeds: dict[int, bytes] = {}
    undrawn: set[int] = set()  # rounds whose seed no transaction drew: computed here
    ppm = report.genesis.select_ppm if report.genesis is not None else 0
    for record in ledger.records():
        r = RoundAudit(record.round, [Submission(e) for e in record.submissions],
                       record.published, evaluations=[Evaluation.of(e) for e in
                                                      record.evaluations],
                       votes=record.votes, timed_out=record.timed_out,
                       disputes=record.disputes, removed=sorted(record.removed),
                       voided=record.voided, restored=record.restored,
                       unavailable={m: set(ls) for m, ls in record.unavailable.items()},
                       secagg=list(record.secagg), facts=record.facts, seed=record.seed)
        if record.seed is not None:
            seeds[record.round] = record.seed
        elif 0 < ppm < ALL_PPM and not record.submissions and record.opened_block is not None:
            # No submission drew it: the seed its opening block's hash gives (SPEC §3.5).
            block_hash = bytes(chain.call(partial(chain.w3.eth.get_block,
                                                  record.opened_block))["hash"])
            n = record.slots or 0
            seeds[record.round] = draw_seed(block_hash, contract.address, record.round, n,
                                            sample_size(ppm, n) if n else 0)
            undrawn.add(record.round)
        report.rounds.append(r)
        r.loss, r.metrics = weighted_metrics(record.evaluations)
        _capped_reports(r, record.evaluations)
    _copy_checks(report)
    for r in report.rounds:
        r.abandoned = r.published is None and report.finished_after is not None
        _chain_checks(r)
        if 0 < ppm < ALL_PPM:
            _selection_checks(r, seeds, ledger.indices, ppm, r.round in undrawn)
    _privacy_checks(report)
    report.seconds["events"] = time.monotonic() - started
    if gas:
        started = time.monotonic()
        used = _gas_used(contract, ledger.txs, workers)
        for r in report.rounds:
            for s in r.submissions:
                s.gas = used.get(s.tx)
            for v in r.evaluations:
                v.gas = used.get(v.tx)
            r.publish_gas = used.get(r.publish_tx) if r.publish_tx else None
        report.gas_total = sum(used.values())
        report.seconds["gas"] = time.monotonic() - started
    return report


def _privacy_checks(report: AuditReport) -> None:
    """The ε ledger (`audit.privacy`): every learner's privacy reports recomputed; a claim
    that does not match, a learner past its budget or an inconsistent ledger fails."""
    report.privacy = privacy_ledger(
        (r.round, [(e.learner, e.metrics) for e in r.evaluations],
         [s.learner for s in r.submissions]) for r in report.rounds)
    for ledger in report.privacy:
        for round, problem in ledger.malformed:
            report.checks.append(Check(FAILED, "privacy", f"privacy report unreadable: {problem}",
                                       round, ledger.learner))
        for e in ledger.entries:
            for problem in e.problems:
                report.checks.append(Check(FAILED, "privacy", problem, e.round, ledger.learner))
        for round in ledger.unreported:
            report.checks.append(Check(NOTE, "privacy", "submitted an update but published no "
                                       "privacy report for this round", round, ledger.learner))


def _selection_checks(r: RoundAudit, seeds: dict[int, bytes], indices: dict[str, int],
                      ppm: int, undrawn: bool = False) -> None:
    """Client sampling, re-derived: the learners each round's seed selects (the permutation
    its seed draws, SPEC §3.8), and every submission from one of them (a submission's round is
    the round it was submitted in, a stale one included). `undrawn`: no transaction drew the
    round's seed (no submission), which was computed from its opening block's hash."""
    seed = seeds.get(r.round)
    if seed is None:
        r.checks.append(Check(FAILED, "selection", "no sampling seed on chain for this round",
                              r.round))
    else:
        chosen = [a for a, i in indices.items() if is_selected(seed, i, ppm)]
        # A note, not OK: an OK check marks the round verified, which only --verify does.
        how = ("the seed its opening block's hash gives (no submission drew it)" if undrawn
               else "the round's seed")
        r.checks.append(Check(NOTE, "selection", f"{len(chosen)} of {len(indices)} learners "
                              f"selected by {how} 0x{seed.hex()[:16]}…", r.round))
    for s in r.submissions:
        index = indices.get(s.learner, 0)
        if seed is None or index == 0 or not is_selected(seed, index, ppm):
            r.checks.append(Check(FAILED, "selection", "submitted without being selected by "
                                  "the round's seed", r.round, s.learner))


def _copy_checks(report: AuditReport) -> None:
    """A note for each submission that is a copy (the same CID, multihash compared) of
    another learner's submission in the same or an earlier round, or of a global model the
    chain published before it: free-riding in the open. The round's rule judges copies only
    within a round and only with exclude_duplicates (SPEC.md §7.4); a copy from an earlier
    round is a stale update like any other, which the default strategy's clip and examples
    cap bound, so the audit shows it rather than fails it."""
    first: dict[bytes, tuple[str, int]] = {}  # content -> (first learner, its round)
    models: dict[bytes, int] = {}  # content -> the round that published it as global model
    if report.genesis is not None:
        models[_content(report.genesis.model_cid.raw, report.genesis.model_cid.cid)] = 0
    for r in report.rounds:
        for s in r.submissions:
            cid = s.event.model_cid
            key = _content(cid.raw, cid.cid)
            if key in models:
                which = "the genesis model" if models[key] == 0 else \
                    f"round {models[key]}'s global model"
                r.checks.append(Check(NOTE, "copied update", f"{cid.text} is {which}, "
                                      "submitted unchanged", r.round, s.learner))
            elif key in first and first[key][0] != s.learner:
                learner, round = first[key]
                where = "in this round" if round == r.round else f"in round {round}"
                r.checks.append(Check(NOTE, "copied update", f"{cid.text} is the update "
                                      f"{learner} submitted {where}", r.round, s.learner))
            first.setdefault(key, (s.learner, r.round))
        if r.published is not None:
            p = r.published.model_cid
            models.setdefault(_content(p.raw, p.cid), r.round)


def _content(raw: bytes, cid: CID | None) -> bytes:
    """What a CID names, whatever its version and codec: its multihash (its bytes if none)."""
    return raw if cid is None else bytes(cid.multihash)


def _capped_reports(r: RoundAudit, reports: list[EvaluationReported]) -> None:
    """A note for each evaluation report that claims more examples than it counts for (the
    reports left out are the round's `ignored` evaluations, logged once by weighted_metrics)."""
    usable = [e for e in reports if report_problem(e.round, e.num_examples, e.metrics) is None]
    for report, weight in zip(usable, report_weights(usable), strict=True):
        if weight < report.num_examples:
            r.checks.append(Check(NOTE, "evaluation", f"claims {report.num_examples:,} "
                                  f"examples; counts for {weight:,} ({REPORT_EXAMPLES_CAP:g} × "
                                  "the round's median claim)", r.round, report.learner))


def _governance_checks(report: AuditReport, ledger: Ledger) -> None:
    """The genesis votes (a member that voted for another genesis model, plan or parameters
    dissents, visibly) and every committee change the owner made after the genesis, with the
    round it happened in."""
    if report.genesis is not None and ledger.genesis_votes:
        digests = {v.digest for v in ledger.genesis_votes}
        if len(digests) > 1:
            counts = {d: sum(v.digest == d for v in ledger.genesis_votes) for d in digests}
            chosen = max(digests, key=lambda d: counts[d])
            for v in ledger.genesis_votes:
                if v.digest != chosen:
                    report.checks.append(Check(
                        NOTE, "genesis vote", "voted for another genesis (model, plan or round "
                        f"parameters: digest 0x{v.digest.hex()[:16]}…) than the one the quorum "
                        "set", None, v.member))
    for round, change in ledger.committee_changes:
        report.checks.append(Check(
            NOTE, "committee", f"the owner replaced the committee while round {round} was "
            f"open: {', '.join(change.members)} (quorum {change.quorum}, epoch {change.epoch})",
            round))


def _chain_checks(r: RoundAudit) -> None:
    """What the chain alone can tell about a round: every included learner submitted, which
    committee votes disagree with the published result, which learners dispute it."""
    if r.published is not None and r.votes:
        closing = r.published
        for v in r.votes:
            if v.model_cid.raw == b"" and not v.bits:
                continue  # a vote to finish the federation
            if (v.model_cid, v.state_cid, set(v.included)) != (
                    closing.model_cid, closing.state_cid, set(closing.included)):
                r.checks.append(Check(
                    FAILED, "vote",
                    f"voted {v.model_cid} with {len(v.included)} included, not the "
                    f"{closing.model_cid} ({len(closing.included)} included) the quorum closed "
                    "the round on", r.round, v.member))
    if r.timed_out:
        r.checks.append(Check(NOTE, "round", "no quorum by the vote deadline: closed by "
                              "anyone, the previous global model carried over", r.round))
    for d in r.disputes:
        r.checks.append(Check(NOTE, "dispute", f"re-derived the global model as "
                              f"{d.computed_cid}", r.round, d.learner))
    if r.voided is not None:
        evicted = ", ".join(r.voided.evicted) or "none (the committee had changed)"
        r.checks.append(Check(NOTE, "void", f"{r.voided.disputes} learners disputed it: voided, "
                              f"{r.voided.restored_cid} restored; evicted: {evicted}", r.round))
    if r.restored is not None:
        r.checks.append(Check(NOTE, "void", f"closed by the void of round {r.round - 1}, on "
                              f"the restored model {r.restored}", r.round))
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
