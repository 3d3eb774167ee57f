"""History of a run (Flower's names): losses and metrics per round, a pure record.

Learners' evaluation reports come from the chain, where any learner can write anything:
`report_problem` is the rule that leaves a report out of the distributed metrics (History,
results.json, the audit), and every value a History holds is finite, so its JSON is strict.
A report's `dp_…` keys are the learner's privacy account (`privacy.dpsgd`), not metrics of the
model: the distributed metrics leave them out (`fedchain privacy` reads them).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..aggregation.rules import capped_counts
from ..eth.events import EvaluationReported
from ..jsonsafe import loads
from ..privacy.dpsgd import PREFIX as PRIVACY_PREFIX
from ..protocol.fetching import Rejected

__all__ = [
    "MAX_EXAMPLES",
    "History",
    "MetricsAggregation",
    "Rejected",
    "RoundResult",
    "report_problem",
    "strict_json",
    "aggregate_reports",
    "usable_reports",
    "weighted_metrics",
]

log = logging.getLogger("fedchain.history")

#: A custom aggregation of a round's evaluation reports (Flower's
#: evaluate_metrics_aggregation_fn): [(num_examples, {"loss": …, metric: …})] of the usable
#: reports → {"loss": …, metric: …}; "loss" in the result is the distributed loss.
MetricsAggregation = Callable[[list[tuple[int, dict[str, float]]]], Mapping[str, float]]

#: The contract's MAX_EXAMPLES: the most examples an update may claim. An evaluation report
#: claiming more is absurd (the contract does not check reports' numExamples).
MAX_EXAMPLES = 2**40


def _shown(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def report_problem(
    round: int, num_examples: int, metrics: bytes | str | Mapping[str, Any]
) -> str | None:
    """Why an evaluation report must not count in the distributed metrics, or None.

    A report counts when it is about a published round (not round 0, the genesis model),
    claims 1..MAX_EXAMPLES examples, and its metrics are a JSON object whose every value is a
    finite number (`metrics` as reported on chain, or already parsed into a mapping).
    """
    if round < 1:
        return "a report on round 0 (the genesis model): no round produced it"
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        return f"numExamples is {num_examples}: the report would weigh nothing"
    if num_examples > MAX_EXAMPLES:
        shown = f"{num_examples:,}" if num_examples < 10**15 else f"{num_examples:.3g}"
        return (f"numExamples {shown} is above 2**40, the contract's MAX_EXAMPLES: the report "
                "would outweigh every other")
    body: Any = metrics
    if not isinstance(metrics, Mapping):
        try:
            body = loads(metrics)  # depth-checked; NaN and Infinity parse, and are refused below
        except (ValueError, RecursionError):
            return "the metrics are not JSON"
    if not isinstance(body, Mapping):
        return f"the metrics are a JSON {_json_type(body)}, not an object of numbers"
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is a JSON {_json_type(value)}, not a number"
        try:
            number = float(value)
        except OverflowError:
            return f"metric {key!r} is an integer too large for a float"
        if not math.isfinite(number):
            return f"metric {key!r} is {_shown(number)}, not a finite number"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def usable_reports(reports: Iterable[EvaluationReported]) -> list[EvaluationReported]:
    """The reports that count in the distributed metrics; each one left out is logged with
    its reason (`report_problem`)."""
    kept = []
    for r in reports:
        problem = report_problem(r.round, r.num_examples, r.metrics)
        if problem is None:
            kept.append(r)
        else:
            log.warning("[ROUND %d] evaluation report of %s ignored: %s", r.round, r.learner,
                        problem)
    return kept


#: A round's evaluation reports count for at most this many times the lower median of their
#: numExamples, as training claims do under the default strategy (`ROBUST_FEDAVG`'s
#: examples_cap): one report claiming 2**40 examples cannot outweigh every other.
REPORT_EXAMPLES_CAP = 2.0


def report_weights(reports: Sequence[EvaluationReported]) -> list[int]:
    """Each usable report's weight: its numExamples, capped at REPORT_EXAMPLES_CAP × the lower
    median of the reports' numExamples (`aggregation.rules.capped_counts`)."""
    if not reports:
        return []
    return capped_counts([r.num_examples for r in reports], REPORT_EXAMPLES_CAP)


def _finite(what: str, round: int, value: float) -> bool:
    if math.isfinite(value):
        return True
    log.warning("[ROUND %d] %s is %s: left out of the history", round, what, _shown(value))
    return False


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±Infinity) replaced by None, in dicts, lists
    and tuples at any depth: what `json.dumps(..., allow_nan=False)` accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


@dataclass
class RoundResult:
    """What the aggregator did in one round."""

    round: int
    #: The CID of the global model published for the round, as text.
    global_cid: str
    #: The learners whose updates the global model includes, in learner order.
    included: list[str]
    #: The submissions left out, and why.
    rejected: list[Rejected]
    received: int
    seconds: float
    centralized: tuple[float, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The round as results.json records it."""
        return {
            "round": self.round,
            "global": self.global_cid,
            "included": self.included,
            "rejected": [x.to_dict() for x in self.rejected],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class History:
    """Per-round losses and metrics: distributed (learners' reports) and centralized."""

    losses_distributed: list[tuple[int, float]] = field(default_factory=list)
    losses_centralized: list[tuple[int, float]] = field(default_factory=list)
    metrics_distributed: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    metrics_centralized: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    rounds: list[RoundResult] = field(default_factory=list)
    #: Failures of learners' own code (simulate: LearnerNode.failures), as results.json has
    #: them: {"learner", "round", "what", "error"}.
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: How a round's evaluation reports become its distributed loss and metrics (None:
    #: `weighted_metrics`, the example-weighted mean).
    metrics_aggregation: MetricsAggregation | None = field(default=None, repr=False,
                                                           compare=False)

    def add_round(self, result: RoundResult) -> None:
        self.rounds.append(result)

    def add_centralized(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        """Records the aggregator's evaluation; a non-finite value is logged and left out."""
        self._add(round, "centralized", loss, metrics, self.losses_centralized,
                  self.metrics_centralized)

    def add_distributed(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        """Records the learners' mean evaluation; a non-finite value is logged and left out."""
        self._add(round, "distributed", loss, metrics, self.losses_distributed,
                  self.metrics_distributed)

    @staticmethod
    def _add(round: int, kind: str, loss: float, metrics: Mapping[str, float],
             losses: list[tuple[int, float]],
             series: dict[str, list[tuple[int, float]]]) -> None:
        if _finite(f"the {kind} loss", round, float(loss)):
            losses.append((round, float(loss)))
        for k, v in metrics.items():
            if _finite(f"the {kind} {k}", round, float(v)):
                series.setdefault(k, []).append((round, float(v)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses_distributed": self.losses_distributed,
            "losses_centralized": self.losses_centralized,
            "metrics_distributed": self.metrics_distributed,
            "metrics_centralized": self.metrics_centralized,
            "rounds": [r.to_dict() for r in self.rounds],
            **({"failures": self.failures} if self.failures else {}),
        }


def weighted_metrics(
    reports: Iterable[EvaluationReported],
) -> tuple[float | None, dict[str, float]]:
    """Example-weighted mean of the loss and metrics in a round's evaluation reports.

    Only the reports `usable_reports` keeps count (the others are logged); a mean that still
    overflows (finite values too large to sum) is logged and left out.
    """
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    rounds = set()
    usable = usable_reports(reports)
    for r, weight in zip(usable, report_weights(usable), strict=True):
        rounds.add(r.round)
        for k, v in loads(r.metrics).items():
            if k.startswith(PRIVACY_PREFIX):
                continue  # a learner's own privacy account, not a metric of the model
            sums[k] += float(v) * weight
            weights[k] += weight
    means: dict[str, float] = {}
    for k in sums:
        mean = sums[k] / weights[k]
        if _finite(f"the mean {k} of the reports", min(rounds), mean):
            means[k] = mean
    loss = means.pop("loss", None)
    return loss, means


def aggregate_reports(
    reports: Iterable[EvaluationReported], how: MetricsAggregation | None = None,
) -> tuple[float | None, dict[str, float]]:
    """(loss, metrics) of a round's evaluation reports by `how` (None: `weighted_metrics`).
    `how` sees the reports `usable_reports` keeps, each with its numExamples capped as
    `report_weights` caps it; a non-finite or non-numeric value it returns is logged and left
    out."""
    if how is None:
        return weighted_metrics(reports)
    usable = usable_reports(reports)
    if not usable:
        return None, {}
    pairs = [(weight, {k: float(v) for k, v in loads(r.metrics).items()
                       if not k.startswith(PRIVACY_PREFIX)})
             for r, weight in zip(usable, report_weights(usable), strict=True)]
    result: dict[str, float] = {}
    for k, v in how(pairs).items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            log.warning("round %d: the metrics aggregation gave %s = %r, not a number: "
                        "left out", usable[0].round, k, v)
        elif _finite(f"the aggregated {k} of the reports", usable[0].round, float(v)):
            result[str(k)] = float(v)
    loss = result.pop("loss", None)
    return loss, result
