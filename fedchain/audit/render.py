"""Renderings of an audit report: a round table for the terminal (rich), the full structure
as JSON, and a self-contained HTML page (inline CSS, metric plots as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..federation.history import strict_json
from .report import FAILED, NOTE, OK, UNFETCHABLE, UNVERIFIABLE, AuditReport, Check, RoundAudit

# --- terminal ------------------------------------------------------------------------

SYMBOLS = {OK: "✓", FAILED: "✗", UNFETCHABLE: "?", "open": "open", "abandoned": "unpublished",
           "unverified": "-"}  # fmt: skip
_STYLES = {
    OK: "green",
    FAILED: "bold red",
    UNFETCHABLE: "yellow",
    UNVERIFIABLE: "yellow",
    NOTE: "dim",
    "open": "cyan",
    "abandoned": "dim",
    "unverified": "dim",
}


def short_cid(cid: str | None) -> str:
    """The first and last characters of a CID, enough to tell CIDs apart in a table."""
    if cid is None:
        return "-"
    return cid if len(cid) <= 20 else f"{cid[:10]}…{cid[-6:]}"


def metric_name(report: AuditReport) -> str | None:
    """The metric shown beside the loss: accuracy if reported, else the first one reported."""
    names = sorted({k for r in report.rounds for k in r.metrics})
    return "accuracy" if "accuracy" in names else (names[0] if names else None)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def round_rows(report: AuditReport) -> list[list[str]]:
    """The round table as text cells: one row per round."""
    metric = metric_name(report)
    rows = []
    for r in report.rounds:
        published = r.global_cid is not None
        included = str(len(r.included)) if published else "-"
        rows.append([
            str(r.round), f"{included}/{len(r.submissions)}",
            str(len(r.left_out)) if published else "-", short_cid(r.global_cid),
            _number(r.loss), _number(r.metrics.get(metric)) if metric else "-",
            f"{r.gas:,}" if report.gas_total is not None else "-", SYMBOLS[r.status],
        ])  # fmt: skip
    return rows


def _columns(report: AuditReport) -> list[str]:
    metric = metric_name(report) or "metric"
    return ["round", "updates incl/sub", "left out", "global model", "loss", metric, "gas",
            "verify"]  # fmt: skip


def _eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def privacy_rows(report: AuditReport) -> list[list[str]]:
    """The ε ledger's summary as text cells: one row per learner that reported differential
    privacy, its latest report recomputed."""
    rows = []
    for p in report.privacy:
        last = p.entries[-1] if p.entries else None
        took = sum(e.submitted for e in p.entries) + len(p.unreported)
        rows.append([
            p.learner, str(took), f"{last.sigma:g}" if last else "-",
            f"{last.q:.4g}" if last else "-", str(last.total_steps) if last else "-",
            f"{last.delta:g}" if last else "-", _eps(last.claimed) if last else "-",
            _eps(p.epsilon), "-" if p.budget is None else f"{p.budget:g}",
            SYMBOLS[OK] if p.ok else SYMBOLS[FAILED],
        ])  # fmt: skip
    return rows


PRIVACY_COLUMNS = ["learner", "rounds trained", "σ", "q", "steps", "δ", "claimed ε",
                   "recomputed ε", "budget", "ok"]


def print_distributed(report: AuditReport, console: Console) -> None:
    """The distributed-DP ledger (SPEC.md §14.16): each learner's ε after each round it
    finished, recomputed from the plan and the chain (nothing without one)."""
    if not report.distributed:
        return
    dp: dict[str, Any] = ((report.plan or {}).get("secagg") or {}).get("dp") or {}
    table = Table(title=f"distributed DP: each learner's ε(δ = {dp.get('delta', 1e-5):g}), "
                        "recomputed from the plan and the chain")
    for i, name in enumerate(["learner", "rounds", "ε", "budget", "per round (group size)",
                              "check"]):
        table.add_column(name, justify="left" if i in (0, 4, 5) else "right")
    for p in report.distributed:
        rounds = ", ".join(f"{e.round}({e.group}{'' if e.released else ' not unmasked'})"
                           for e in p.entries)
        problems = [x for e in p.entries for x in e.problems]
        table.add_row(p.learner, str(p.rounds), f"{p.epsilon:.4f}",
                      "-" if p.budget is None else f"{p.budget:g}", rounds,
                      "[bold red]✗ " + "; ".join(problems) + "[/]" if problems
                      else "[green]✓[/]")
    console.print(table)


def print_privacy(report: AuditReport, console: Console) -> None:
    """The ε ledger's summary table (nothing when no learner reported differential privacy)."""
    if not report.privacy:
        return
    table = Table(title="differential privacy: each learner's ε, recomputed from its reports")
    for i, name in enumerate(PRIVACY_COLUMNS):
        table.add_column(name, justify="left" if i == 0 else "right")
    for p, row in zip(report.privacy, privacy_rows(report), strict=True):
        style = _STYLES[OK] if p.ok else _STYLES[FAILED]
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    console.print(table)


def _state(report: AuditReport) -> str:
    if report.genesis_cid is None:
        return "waiting for genesis"
    if report.finished_after is not None:
        return f"finished after round {report.finished_after}"
    return f"in progress: round {report.open_round} open"


def _verdict(report: AuditReport) -> str:
    if not report.verified:
        return "not verified"
    return "FAILED" if report.failures() else "INCOMPLETE" if report.unfetchable() else "VERIFIED"


def print_report(report: AuditReport, console: Console) -> None:
    """The round table and every failed, unfetchable or noted check, for a person to read."""
    console.print(f"[bold]FedChain {report.contract}[/] on chain {report.chain_id} "
                  f"({report.chain}), blocks {report.from_block}–{report.head_block}")  # fmt: skip
    plan = (report.plan or {}).get("strategy")
    params = " ".join(f"{k}={v}" for k, v in (plan or {}).get("params", {}).items())
    if report.plan and report.plan.get("privacy") == "secagg":
        secagg = report.plan.get("secagg") or {}
        params += "; secure aggregation " + " ".join(f"{k}={v}" for k, v in secagg.items())
    for key, value in (
        ("owner", report.owner),
        ("aggregator", report.aggregator),
        ("learners", f"{len(report.learners)}; {_state(report)}"),
        ("genesis", report.genesis_cid or "-"),
        ("plan", f"{report.plan_cid} ({plan['name']} {params})" if plan else report.plan_cid),
    ):
        console.print(f"{key:<11}{value or '-'}", highlight=False)
    table = Table(title="rounds")
    for i, name in enumerate(_columns(report)):
        table.add_column(name, justify="right" if i in (0, 2, 4, 5, 6) else "left")
    for r, row in zip(report.rounds, round_rows(report), strict=True):
        table.add_row(*row[:-1], f"[{_STYLES[r.status]}]{row[-1]}[/]")
    console.print(table)
    print_privacy(report, console)
    print_distributed(report, console)
    for c in report.all_checks():
        if c.status == OK:
            continue
        where = [f"round {c.round}"] if c.round is not None else []
        where += [c.learner] if c.learner else []
        # Details that already name their subject ("global model differs …") say it once.
        what = [] if c.detail.startswith(c.what) else [c.what]
        console.print(f"[{_STYLES[c.status]}]{c.status:>12}[/] " + ": ".join(
            [*where, *what, c.detail]), highlight=False)  # fmt: skip
    for r in report.rounds:
        for ev, problem in r.ignored_evaluations:
            console.print(f"[{_STYLES[NOTE]}]{'ignored':>12}[/] round {r.round}: {ev.learner}: "
                          f"evaluation report left out: {problem}", highlight=False)
    gas = f", {report.gas_total:,} gas" if report.gas_total is not None else ""
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    console.print(f"{len(report.rounds)} rounds{gas}; read in {timing}")
    explain = {
        "not verified": "run with --verify to re-compute every round",
        "FAILED": f"[bold red]{len(report.failures())} check(s) failed[/]",
        "INCOMPLETE": f"[yellow]{len(report.unfetchable())} check(s) could not run (content "
        "unavailable or state unknown)[/]; nothing failed, but rounds "
        f"{', '.join(map(str, report.unverified_rounds())) or '-'} stay unverified: no pass",
        "VERIFIED": "[green]every published round recomputes bit-identically[/]",
    }
    verdict = _verdict(report)
    console.print(f"{verdict}: {explain[verdict]}")


# --- files ---------------------------------------------------------------------------


def write_json(report: AuditReport, path: str | Path) -> Path:
    """The whole report as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a NaN or Infinity a learner reported is written as null.
    path.write_text(json.dumps(strict_json(report.to_dict()), indent=2, allow_nan=False) + "\n")
    return path


def _plots(report: AuditReport) -> list[tuple[str, str]]:
    """(title, base64 PNG) of the reported metrics and the gas per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    failed = {r.round for r in report.rounds if r.status == FAILED}
    loss = [(r.round, r.loss) for r in report.rounds if r.loss is not None]
    series: list[tuple[str, list[tuple[int, float]]]] = [("loss (mean of reports)", loss)]
    for name in sorted({k for r in report.rounds for k in r.metrics}):
        values = [(r.round, r.metrics[name]) for r in report.rounds if name in r.metrics]
        series.append((f"{name} (mean of reports)", values))
    if report.gas_total is not None:
        series.append(("gas per round", [(r.round, float(r.gas)) for r in report.rounds]))
    out = []
    for title, points in series:
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, "o-", markersize=3)
        bad = [(x, y) for x, y in points if x in failed]
        if bad:
            ax.plot(*zip(*bad, strict=True), "x", color="red", markersize=9, label="failed check")
            ax.legend()
        if title == "gas per round":
            ax.set_ylim(bottom=0)  # from zero: a 0.3 % swing stays a 0.3 % swing
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out.append((title, base64.b64encode(buf.getvalue()).decode()))
    return out


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}code{font-size:12px}.ok{color:#1a7f37}.failed{color:#c00;font-weight:bold}
.unfetchable,.unverifiable{color:#b58900}.note,.unverified{color:#777}.open{color:#0a6ebd}
img{margin:4px;border:1px solid #eee}details{margin:.3em 0}"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _code(text: str) -> str:
    return f"<code>{html.escape(text)}</code>"


def _status(status: str, text: str | None = None) -> str:
    return f'<span class="{status}">{html.escape(text or status)}</span>'


def _check_rows(checks: list[Check]) -> list[list[str]]:
    e = html.escape
    return [[_status(c.status), e(c.what), e(c.learner or ""), e(c.detail)] for c in checks]


def _round_details(r: RoundAudit) -> str:
    """One round's submissions, evaluations and checks, folded."""
    subs = [
        [
            _code(s.learner),
            _code(s.cid),
            str(s.num_examples),
            str(s.block),
            _code(s.tx),
            f"{s.gas or '-'}",
            "yes" if s.included else "no",
        ]
        for s in r.submissions
    ]
    problems = [v.problem(r.round) for v in r.evaluations]
    evals = [[_code(v.learner), str(v.num_examples), _code(json.dumps(v.metrics)),
              str(v.block), f"{v.gas or '-'}",
              "yes" if p is None else _status(NOTE, f"no: {p}")]
             for v, p in zip(r.evaluations, problems, strict=True)]  # fmt: skip
    parts = [
        f'<details id="round-{r.round}"><summary>round {r.round}: {_status(r.status)}, global '
        f"{_code(r.global_cid or 'not published')}</summary>",
        _table(["learner", "update CID", "examples", "block", "tx", "gas", "included"], subs),
    ]
    if evals:
        parts.append(_table(["learner", "examples", "metrics", "block", "gas", "counted"], evals))
    if r.checks:
        parts.append(_table(["status", "check", "learner", "detail"], _check_rows(r.checks)))
    return "".join(parts) + "</details>"


def write_html(report: AuditReport, path: str | Path) -> Path:
    """A self-contained HTML page: summary, plots, the round table, every round and check."""
    e = html.escape
    plan = f"{report.plan_cid or '-'} {json.dumps(report.plan) if report.plan else ''}"
    info = [
        ("contract", report.contract), ("chain", f"{report.chain_id} ({report.chain})"),
        ("blocks", f"{report.from_block}–{report.head_block}"), ("owner", report.owner),
        ("aggregator", report.aggregator), ("learners", str(len(report.learners))),
        ("state", _state(report)), ("genesis", report.genesis_cid or "-"), ("plan", plan),
        ("gas", f"{report.gas_total:,}" if report.gas_total is not None else "-"),
        ("verification", _verdict(report)),
    ]  # fmt: skip
    parts = [
        f"<h1>fedchain audit of {e(report.contract)}</h1>",
        _table(["", ""], [[e(k), _code(v)] for k, v in info]),
        *(f'<img alt="{e(t)}" src="data:image/png;base64,{png}">' for t, png in _plots(report)),
    ]
    # The learners' addresses after the summary, folded: hundreds of them would bury it.
    parts.append(f"<details><summary>{len(report.learners)} learners</summary><p>"
                 + ", ".join(_code(a) for a in report.learners) + "</p></details>")
    if report.checks:
        parts += [
            "<h2>federation checks</h2>",
            _table(["status", "check", "learner", "detail"], _check_rows(report.checks)),
        ]
    if report.privacy:
        ledger = privacy_rows(report)
        for p, row in zip(report.privacy, ledger, strict=True):
            row[0] = _code(row[0])
            row[-1] = _status(OK if p.ok else FAILED, row[-1])
        parts += ["<h2>differential privacy (ε recomputed from each learner's reports)</h2>",
                  _table(PRIVACY_COLUMNS, ledger)]
    rows = round_rows(report)
    for r, row in zip(report.rounds, rows, strict=True):
        row[3] = f'<code title="{e(r.global_cid or "")}">{e(row[3])}</code>'
        row[-1] = _status(r.status, f"{row[-1]} {r.status}")
    parts += ["<h2>rounds</h2>", _table(_columns(report), rows)]
    parts += [_round_details(r) for r in report.rounds]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>fedchain audit '
        f"{e(report.contract)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
