"""Terminal tables of a run: the rounds and the evaluation per round."""

from __future__ import annotations

from typing import Any

from .options import make_console


def print_rounds(result: Any) -> None:
    from rich.table import Table

    table = Table(title="rounds")
    for col in ("round", "updates", "rejected", "global model", "seconds"):
        table.add_column(col)
    for r in result.rounds:
        table.add_row(str(r.round), str(len(r.included)), str(len(r.rejected)), r.global_cid,
                      f"{r.seconds:.1f}")
    make_console().print(table)


def print_history(history: Any) -> None:
    from rich.table import Table

    rounds = sorted({r for r, _ in history.losses_distributed}
                    | {r for r, _ in history.losses_centralized})
    if not rounds:
        return
    table = Table(title="evaluation per round")
    table.add_column("round")
    columns: list[tuple[str, dict[int, float]]] = []
    if history.losses_distributed:
        columns.append(("loss (distributed)", dict(history.losses_distributed)))
    for k, v in sorted(history.metrics_distributed.items()):
        columns.append((f"{k} (distributed)", dict(v)))
    if history.losses_centralized:
        columns.append(("loss (centralized)", dict(history.losses_centralized)))
    for k, v in sorted(history.metrics_centralized.items()):
        columns.append((f"{k} (centralized)", dict(v)))
    for name, _ in columns:
        table.add_column(name)
    for r in rounds:
        table.add_row(str(r), *(f"{vals[r]:.4f}" if r in vals else "-" for _, vals in columns))
    make_console().print(table)


