"""History of a run (Flower's names), results.json (MetisFL), and the loss/accuracy plot."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import EvaluationReported, FedChain


@dataclass
class History:
    """Per-round losses and metrics: distributed (learners' reports) and centralized."""

    losses_distributed: list[tuple[int, float]] = field(default_factory=list)
    losses_centralized: list[tuple[int, float]] = field(default_factory=list)
    metrics_distributed: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    metrics_centralized: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def add_centralized(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        self.losses_centralized.append((round, float(loss)))
        for k, v in metrics.items():
            self.metrics_centralized.setdefault(k, []).append((round, float(v)))

    def add_distributed(self, round: int, loss: float, metrics: Mapping[str, float]) -> None:
        self.losses_distributed.append((round, float(loss)))
        for k, v in metrics.items():
            self.metrics_distributed.setdefault(k, []).append((round, float(v)))

    def fill_distributed(self, contract: FedChain) -> None:
        """Replaces the distributed series with the example-weighted means reported on chain."""
        self.losses_distributed.clear()
        self.metrics_distributed.clear()
        reports: dict[int, list[EvaluationReported]] = defaultdict(list)
        for e in contract.events("EvaluationReported"):
            assert isinstance(e, EvaluationReported)
            reports[e.round].append(e)
        for round in sorted(reports):
            loss, metrics = weighted_metrics(reports[round])
            if loss is not None:
                self.add_distributed(round, loss, metrics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "losses_distributed": self.losses_distributed,
            "losses_centralized": self.losses_centralized,
            "metrics_distributed": self.metrics_distributed,
            "metrics_centralized": self.metrics_centralized,
            "rounds": self.rounds,
        }

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Writes results.json (history plus `extra` fields such as the contract address)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**extra, **self.to_dict()}, indent=2) + "\n")
        return path

    def plot(self, path: str | Path, title: str = "fedchain") -> Path:
        """Draws loss and every metric per round (distributed and centralized) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metric_names = sorted(set(self.metrics_distributed) | set(self.metrics_centralized))
        panels = 1 + len(metric_names)
        fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
        series = [
            ("loss", self.losses_distributed, self.losses_centralized),
            *[
                (m, self.metrics_distributed.get(m, []), self.metrics_centralized.get(m, []))
                for m in metric_names
            ],
        ]
        for ax, (name, dist, cent) in zip(axes[0], series, strict=True):
            for label, points, style in (("distributed", dist, "o-"), ("centralized", cent, "s--")):
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, label=label)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


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
