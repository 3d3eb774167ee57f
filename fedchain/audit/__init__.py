"""Auditing a federation: its round history from the chain (`read`), re-verified through a
store (`verify`), as a report (`report`) shown in a terminal, JSON or HTML (`render`)."""

from __future__ import annotations

from ..eth.contract import FedChainReader
from ..storage import ContentStore
from .read import read_federation
from .report import AuditReport
from .verify import distributed_privacy, load_plan, verify

__all__ = ["AuditReport", "audit_federation", "read_federation"]


def audit_federation(
    contract: FedChainReader, store: ContentStore | None = None, *, verify_models: bool = True,
    gas: bool = True, from_block: int | None = None, workers: int = 8,
) -> AuditReport:
    """The audit report of a federation: read from the chain, verified through `store`
    (with a store, the plan is read, and the ε ledger of its learner-level DP recomputed)."""
    report = read_federation(contract, from_block=from_block, gas=gas, workers=workers)
    if store is not None:
        plan = load_plan(report, store)
        if plan is not None:
            distributed_privacy(report, plan)  # SPEC.md §14.16; nothing without secagg.dp
        if verify_models:
            verify(report, store, plan)
    return report
