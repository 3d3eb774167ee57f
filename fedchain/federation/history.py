"""History of a run (Flower's names): losses and metrics per round, a pure record."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..eth.events import EvaluationReported
from .fetching import Rejected

__all__ = ["History", "Rejected", "RoundResult", "weighted_metrics"]


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

    def add_round(self, result: RoundResult) -> None:
        self.rounds.append(result)

    def add_centralized(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        self.losses_centralized.append((round, float(loss)))
        for k, v in metrics.items():
            self.metrics_centralized.setdefault(k, []).append((round, float(v)))

    def add_distributed(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        self.losses_distributed.append((round, float(loss)))
        for k, v in metrics.items():
            self.metrics_distributed.setdefault(k, []).append((round, float(v)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses_distributed": self.losses_distributed,
            "losses_centralized": self.losses_centralized,
            "metrics_distributed": self.metrics_distributed,
            "metrics_centralized": self.metrics_centralized,
            "rounds": [r.to_dict() for r in self.rounds],
        }


def weighted_metrics(
    reports: list[EvaluationReported],
) -> tuple[float | None, dict[str, float]]:
    """Example-weighted mean of the loss and numeric metrics in evaluation reports."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for r in reports:
        try:
            body = json.loads(r.metrics)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        for k, v in body.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                sums[k] += float(v) * r.num_examples
                weights[k] += r.num_examples
    means = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
    loss = means.pop("loss", None)
    return loss, means
