"""The audit report: what the chain says about each round, and the checks run on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, FAILED, UNFETCHABLE, UNVERIFIABLE, NOTE = "ok", "failed", "unfetchable", "unverifiable", "note"


@dataclass
class Check:
    """One verification outcome: what was checked, where, and what was found."""

    status: str  # ok | failed | unfetchable | unverifiable | note
    what: str
    detail: str
    round: int | None = None
    learner: str | None = None


@dataclass
class Submission:
    """An UpdateSubmitted event and whether the round's global model included it."""

    learner: str
    cid: str
    num_examples: int
    block: int
    tx: str
    gas: int | None = None
    included: bool = False


@dataclass
class Evaluation:
    """An EvaluationReported event of a round's global model."""

    learner: str
    num_examples: int
    metrics: dict[str, Any]
    block: int
    tx: str
    gas: int | None = None


@dataclass
class RoundAudit:
    """Everything the chain says about one round, and the checks run on it."""

    round: int
    submissions: list[Submission] = field(default_factory=list)
    included: list[str] = field(default_factory=list)
    global_cid: str | None = None
    publish_block: int | None = None
    publish_tx: str | None = None
    publish_gas: int | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    #: The federation finished before this round's global model was published.
    abandoned: bool = False

    @property
    def left_out(self) -> list[Submission]:
        return [s for s in self.submissions if not s.included]

    @property
    def gas(self) -> int:
        txs = [s.gas for s in self.submissions] + [e.gas for e in self.evaluations]
        return sum(g for g in [*txs, self.publish_gas] if g is not None)

    @property
    def status(self) -> str:
        """failed, open, abandoned, unfetchable (not fully verified), ok (verified), unverified."""
        states = {c.status for c in self.checks}
        if FAILED in states:
            return FAILED
        if self.global_cid is None:
            return "abandoned" if self.abandoned else "open"
        if states & {UNFETCHABLE, UNVERIFIABLE}:
            return UNFETCHABLE
        return OK if OK in states else "unverified"


@dataclass
class AuditReport:
    """A federation's history as recorded on chain, with the outcome of every check."""

    chain: str
    chain_id: int
    contract: str
    owner: str
    aggregator: str
    from_block: int
    head_block: int
    learners: list[str] = field(default_factory=list)
    genesis_cid: str | None = None
    genesis_tx: str | None = None
    plan_cid: str | None = None
    plan: dict[str, Any] | None = None
    finished_after: int | None = None
    rounds: list[RoundAudit] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    gas_total: int | None = None
    verified: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def open_round(self) -> int | None:
        """The round accepting updates at the head block (None before genesis or when done)."""
        if self.genesis_cid is None or self.finished_after is not None:
            return None
        published = [r.round for r in self.rounds if r.global_cid is not None]
        return max(published, default=0) + 1

    def all_checks(self) -> list[Check]:
        return self.checks + [c for r in self.rounds for c in r.checks]

    def failures(self) -> list[Check]:
        return [c for c in self.all_checks() if c.status == FAILED]

    def unfetchable(self) -> list[Check]:
        return [c for c in self.all_checks() if c.status in (UNFETCHABLE, UNVERIFIABLE)]

    def exit_status(self) -> int:
        """0 all good, 1 a check failed, 3 nothing failed but something could not be checked."""
        return 1 if self.failures() else 3 if self.unfetchable() else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["open_round"] = self.open_round
        for r, out in zip(self.rounds, data["rounds"], strict=True):
            out.update(status=r.status, gas=r.gas, left_out=len(r.left_out))
        data["summary"] = {
            "failed": len(self.failures()),
            "unfetchable": len(self.unfetchable()),
            "exit_status": self.exit_status(),
        }
        return data
