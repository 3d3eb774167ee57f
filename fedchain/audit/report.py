"""The audit report: what the chain says about each round, and the checks run on it.

The report holds the chain's own records (the events, with their CIDs decoded once), not
copies of their fields; `to_dict` gives the JSON form, CIDs as text. Evaluation reports that
`federation.history.report_problem` refuses stay in the report, marked ignored with the
reason (`RoundAudit.ignored_evaluations`); the round's loss and metrics leave them out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..eth.events import (
    ChainCid,
    Disputed,
    EvaluationReported,
    GenesisSet,
    GlobalModelPublished,
    RoundVoided,
    SecaggPosted,
    UpdateSubmitted,
    Voted,
)
from ..federation.history import report_problem
from ..jsonsafe import loads
from ..privacy.distributed import DistributedLedger
from ..protocol.ledger import ChainFacts
from .privacy import LearnerPrivacy

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
    """An UpdateSubmitted event, its gas, and whether the round's global model included it."""

    event: UpdateSubmitted
    gas: int | None = None
    included: bool = False

    @property
    def learner(self) -> str:
        return self.event.learner

    @property
    def cid(self) -> str:
        """The submitted CID as text (0x-hex if the bytes are not a CID)."""
        return self.event.model_cid.text

    @property
    def num_examples(self) -> int:
        return self.event.num_examples

    @property
    def block(self) -> int:
        return self.event.block

    @property
    def tx(self) -> str:
        return self.event.tx

    def to_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner, "cid": self.cid, "num_examples": self.num_examples,
            "block": self.block, "tx": self.tx, "gas": self.gas, "included": self.included,
        }  # fmt: skip


def parse_metrics(raw: bytes) -> dict[str, Any]:
    """A report's metrics as a dict to show: the JSON object, else the text or value wrapped."""
    try:
        body = loads(raw)
    except (ValueError, RecursionError):
        return {"unparsed": raw.decode("utf-8", "replace")}
    return body if isinstance(body, dict) else {"value": body}


@dataclass
class Evaluation:
    """An EvaluationReported event of a round's global model."""

    learner: str
    num_examples: int
    metrics: dict[str, Any]
    block: int
    tx: str
    gas: int | None = None
    #: The metrics bytes as reported on chain (None: only the parsed `metrics` are known, and
    #: `problem` judges those).
    raw: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, event: EvaluationReported) -> Evaluation:
        """The evaluation of an EvaluationReported event, its metrics bytes kept."""
        return cls(event.learner, event.num_examples, parse_metrics(event.metrics), event.block,
                   event.tx, raw=bytes(event.metrics))

    def problem(self, round: int) -> str | None:
        """Why the round's distributed metrics leave this report out (None: it counts)."""
        return report_problem(round, self.num_examples,
                              self.raw if self.raw is not None else self.metrics)

    def to_dict(self, round: int) -> dict[str, Any]:
        return {
            "learner": self.learner, "num_examples": self.num_examples, "metrics": self.metrics,
            "block": self.block, "tx": self.tx, "gas": self.gas, "ignored": self.problem(round),
        }  # fmt: skip


@dataclass
class RoundAudit:
    """Everything the chain says about one round, and the checks run on it."""

    round: int
    submissions: list[Submission] = field(default_factory=list)
    #: The round's GlobalModelPublished event (None while unpublished).
    published: GlobalModelPublished | None = None
    publish_gas: int | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    #: The federation finished before this round's global model was published.
    abandoned: bool = False
    #: The committee's votes on this round, in chain order (evidence, agreeing or not).
    votes: list[Voted] = field(default_factory=list)
    #: The learners whose submissions each member reported unavailable (UnavailableReported).
    unavailable: dict[str, set[str]] = field(default_factory=dict)
    #: The round passed its vote deadline without a quorum and was closed, carried over.
    timed_out: bool = False
    #: Learners' records that re-deriving the round's model gave another CID.
    disputes: list[Disputed] = field(default_factory=list)
    #: Learners removed by the owner before the round closed (their updates are excluded).
    removed: list[str] = field(default_factory=list)
    #: The learners voided this round's result (RoundVoided), or None.
    voided: RoundVoided | None = None
    #: This round was closed by the void of the round before it, on this restored model.
    restored: ChainCid | None = None
    #: Secure aggregation: the round's SecaggPosted messages and the chain facts its rule
    #: reads (SPEC.md §14); empty and None otherwise.
    secagg: list[SecaggPosted] = field(default_factory=list)
    facts: ChainFacts | None = None
    #: The round's sampling seed as drawn on chain (RoundSeeded), if any.
    seed: bytes | None = None

    @property
    def included(self) -> list[str]:
        """The learners whose updates the published global model includes."""
        return list(self.published.included) if self.published is not None else []

    @property
    def global_cid(self) -> str | None:
        """The published global model's CID as text (None while unpublished)."""
        return self.published.model_cid.text if self.published is not None else None

    @property
    def publish_block(self) -> int | None:
        return self.published.block if self.published is not None else None

    @property
    def publish_tx(self) -> str | None:
        return self.published.tx if self.published is not None else None

    @property
    def ignored_evaluations(self) -> list[tuple[Evaluation, str]]:
        """The evaluation reports left out of the round's loss and metrics, with the reason."""
        found = [(e, e.problem(self.round)) for e in self.evaluations]
        return [(e, problem) for e, problem in found if problem is not None]

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "submissions": [s.to_dict() for s in self.submissions],
            "included": self.included,
            "global_cid": self.global_cid,
            "publish_block": self.publish_block,
            "publish_tx": self.publish_tx,
            "publish_gas": self.publish_gas,
            "evaluations": [e.to_dict(self.round) for e in self.evaluations],
            "ignored_evaluations": len(self.ignored_evaluations),
            "loss": self.loss,
            "metrics": self.metrics,
            "checks": [asdict(c) for c in self.checks],
            "abandoned": self.abandoned,
            "timed_out": self.timed_out,
            "votes": [
                {"member": v.member, "model_cid": v.model_cid.text, "state_cid": v.state_cid.text
                 if v.state_cid.raw else None, "included": list(v.included), "tx": v.tx}
                for v in self.votes
            ],
            "disputes": [{"learner": d.learner, "computed_cid": d.computed_cid.text, "tx": d.tx}
                         for d in self.disputes],
            "status": self.status,
            "gas": self.gas,
            "left_out": len(self.left_out),
        }


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
    #: The GenesisSet event (None before genesis).
    genesis: GenesisSet | None = None
    plan: dict[str, Any] | None = None
    finished_after: int | None = None
    rounds: list[RoundAudit] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    gas_total: int | None = None
    verified: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    #: The ε ledger of every learner that reported differential privacy (`audit.privacy`).
    privacy: list[LearnerPrivacy] = field(default_factory=list)
    #: With the plan's distributed DP (SPEC.md §14.16): every learner's ε, recomputed from
    #: the plan and the rounds' secure-aggregation records (`audit.privacy.distributed`).
    distributed: list[DistributedLedger] = field(default_factory=list)

    @property
    def genesis_cid(self) -> str | None:
        """The genesis model's CID as text (None before genesis)."""
        return self.genesis.model_cid.text if self.genesis is not None else None

    @property
    def plan_cid(self) -> str | None:
        """The plan's CID as text (None before genesis)."""
        return self.genesis.plan_cid.text if self.genesis is not None else None

    @property
    def genesis_tx(self) -> str | None:
        return self.genesis.tx if self.genesis is not None else None

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
        """0 all good, 1 a check failed, 3 nothing failed but something could not be checked:
        a round left unverified never passes."""
        return 1 if self.failures() else 3 if self.unfetchable() else 0

    def unverified_rounds(self) -> list[int]:
        """The published rounds a check could not verify (content unavailable, state unknown)."""
        return sorted({c.round for c in self.unfetchable() if c.round is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "chain_id": self.chain_id,
            "contract": self.contract,
            "owner": self.owner,
            "aggregator": self.aggregator,
            "from_block": self.from_block,
            "head_block": self.head_block,
            "learners": self.learners,
            "genesis_cid": self.genesis_cid,
            "genesis_tx": self.genesis_tx,
            "plan_cid": self.plan_cid,
            "plan": self.plan,
            "finished_after": self.finished_after,
            "rounds": [r.to_dict() for r in self.rounds],
            "checks": [asdict(c) for c in self.checks],
            "gas_total": self.gas_total,
            "verified": self.verified,
            "seconds": self.seconds,
            "open_round": self.open_round,
            "privacy": [p.to_dict() for p in self.privacy],
            "distributed_privacy": [p.to_dict() for p in self.distributed],
            "summary": {
                "failed": len(self.failures()),
                "unfetchable": len(self.unfetchable()),
                "exit_status": self.exit_status(),
            },
        }
