"""A run's files: results.json (MetisFL's name) and history.png, the same from every path.

`simulate` and `fedchain aggregator` both call `write_results`, so both leave the same complete
record: the plan, every round (global CID, included and rejected updates, timings), and the
distributed metrics as the learners reported them on chain (the reports `history.report_problem`
refuses left out). results.json is strict JSON: a non-finite number is written as null.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..eth.contract import FedChainReader
from ..protocol.ledger import Ledger
from ..protocol.params import Plan
from .history import History, strict_json, weighted_metrics


def fill_distributed(history: History, contract: FedChainReader,
                     ledger: Ledger | None = None) -> None:
    """Replaces the distributed series with the example-weighted means reported on chain;
    a report that `history.report_problem` refuses (non-finite metrics, an absurd
    numExamples, round 0) is logged and left out. `ledger`: one to bring up to date
    (incrementally) instead of reading the chain's events from the start."""
    history.losses_distributed.clear()
    history.metrics_distributed.clear()
    ledger = Ledger(contract) if ledger is None else ledger
    ledger.refresh()
    for record in ledger.records():
        loss, metrics = weighted_metrics(record.evaluations)
        if loss is not None:
            history.add_distributed(record.round, loss, metrics)


def write_results(
    out: str | Path,
    history: History,
    contract: FedChainReader,
    *,
    store_url: str,
    plan: Plan | None,
    title: str = "fedchain",
) -> tuple[Path, Path]:
    """Writes `out`/results.json and `out`/history.png; returns their paths."""
    results = write_results_json(out, history, contract, store_url=store_url, plan=plan)
    return results, plot_history(history, Path(out) / "history.png", title=title)


def write_results_json(
    out: str | Path,
    history: History,
    contract: FedChainReader,
    *,
    store_url: str,
    plan: Plan | None,
    ledger: Ledger | None = None,
) -> Path:
    """Writes `out`/results.json (atomically: a process killed while writing it leaves the
    previous file whole) and returns its path; `ledger` as in `fill_distributed`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fill_distributed(history, contract, ledger)
    record = {
        "contract": contract.address,
        "chain": contract.chain.url,
        "store": store_url,
        "plan": asdict(plan) if plan is not None else None,
        **history.to_dict(),
    }
    results = out / "results.json"
    partial = out / f".results.json.{os.getpid()}.tmp"
    partial.write_text(json.dumps(strict_json(record), indent=2, allow_nan=False) + "\n")
    os.replace(partial, results)
    return results


#: Panels a row of history.png holds (loss, then one per metric).
PLOT_COLUMNS = 3


def plot_history(history: History, path: str | Path, title: str = "fedchain") -> Path:
    """Draws loss and every metric per round (distributed and centralized) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metric_names = sorted(set(history.metrics_distributed) | set(history.metrics_centralized))
    panels = 1 + len(metric_names)
    # At most PLOT_COLUMNS panels a row: five metrics (the DCGAN's) make two rows, not a strip.
    cols = min(panels, PLOT_COLUMNS)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    axes = [list(grid.flat)[:panels]]
    for spare in list(grid.flat)[panels:]:
        spare.set_visible(False)
    series = [
        ("loss", history.losses_distributed, history.losses_centralized),
        *[
            (m, history.metrics_distributed.get(m, []), history.metrics_centralized.get(m, []))
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


