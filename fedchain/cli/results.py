"""results.json of `fedchain aggregator`: complete, and never destroyed by a later run.

An aggregator process may have run only part of a federation (it was restarted, or started
on a federation that had already finished). Its results.json still lists every round: the
rounds it ran itself, else those an earlier results.json in the same directory recorded for
the same global models, else rounds rebuilt from the chain's events (global CIDs, included
learners, updates received; the learners' evaluations are on chain too). Centralized metrics
are not on chain: they come from this process or from the earlier file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FedChainError
from ..eth.contract import FedChainReader
from ..federation.history import History, Rejected, RoundResult
from ..protocol.ledger import Ledger

log = logging.getLogger("fedchain")


def read_results(out: str | Path) -> dict[str, Any] | None:
    """The results.json in `out`, if there is a readable one."""
    path = Path(out) / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} exists but is not readable JSON ({exc}); it is left as it "
                          "is: move it away, or pass --output DIR") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} exists but is not a fedchain results file; it is left as it "
                          "is: move it away, or pass --output DIR")
    return data


def published_rounds(contract: FedChainReader,
                     ledger: Ledger | None = None) -> dict[int, RoundResult]:
    """Every published round as the chain records it (no rejection reasons: not on chain).

    `seconds` is left at 0: `with_seconds` fills it in from block timestamps, for the rounds
    that need it. `ledger`: one to bring up to date instead of reading from the start.
    """
    ledger = Ledger(contract) if ledger is None else ledger
    ledger.refresh()
    rounds: dict[int, RoundResult] = {}
    if ledger.genesis is None:
        return rounds
    opened = ledger.genesis.block
    for record in ledger.records():
        e = record.published
        if e is None:
            continue
        rounds[e.round] = RoundResult(e.round, e.model_cid.text, list(e.included), [],
                                      len(record.submissions), 0.0,
                                      extra={"blocks": (opened, e.block)})
        opened = e.block
    return rounds


def with_seconds(r: RoundResult, contract: FedChainReader) -> RoundResult:
    """A round from `published_rounds` with its duration: from the block that opened it to
    the block that published it."""
    chain = contract.chain
    start, end = r.extra.pop("blocks", (None, None))
    if start is not None and end is not None:
        def stamp(block: int) -> int:
            return int(chain.call(lambda: chain.w3.eth.get_block(block)["timestamp"]))

        r.seconds = float(stamp(end) - stamp(start))
    return r


def same_federation(
    old: dict[str, Any] | None, contract: FedChainReader,
    on_chain: dict[int, RoundResult] | None = None,
) -> bool:
    """True if an earlier results.json is of this federation: the same contract, and each
    round it records has the global model the chain records (a restarted dev chain reuses
    contract addresses)."""
    if not old or str(old.get("contract", "")).lower() != contract.address.lower():
        return False
    on_chain = published_rounds(contract) if on_chain is None else on_chain
    return all(n in on_chain and r.get("global") == on_chain[n].global_cid
               for n, r in _old_rounds(old).items())


def _old_rounds(old: dict[str, Any]) -> dict[int, dict[str, Any]]:
    rounds = {}
    for r in old.get("rounds", []):
        if isinstance(r, dict) and isinstance(r.get("round"), int):
            rounds[r["round"]] = r
    return rounds


def complete_history(
    history: History, contract: FedChainReader, old: dict[str, Any] | None,
    ledger: Ledger | None = None,
) -> tuple[History, int]:
    """`history` with every published round; returns it and the number of rounds taken from
    the chain or the earlier file (`ledger` as in `published_rounds`)."""
    on_chain = published_rounds(contract, ledger)
    ran = {r.round: r for r in history.rounds}
    before = _old_rounds(old) if old and same_federation(old, contract, on_chain) else {}
    trusted = set(before)
    full = History()
    added = 0
    for n in sorted(on_chain):
        if n in ran:
            full.add_round(ran[n])
            continue
        added += 1
        chain_round = on_chain[n]
        if n not in trusted:
            with_seconds(chain_round, contract)
        else:
            chain_round.extra.pop("blocks", None)
            r = before[n]
            chain_round.rejected = [
                Rejected(str(x.get("learner")), str(x.get("cid")), str(x.get("reason")))
                for x in r.get("rejected") or [] if isinstance(x, dict)
            ]
            if isinstance(r.get("seconds"), int | float):
                chain_round.seconds = float(r["seconds"])
        full.add_round(chain_round)
    ran_centralized = {n for n, _ in history.losses_centralized}
    old_metrics = _old_centralized(old, trusted) if old else {}
    for n in sorted(set(ran_centralized) | set(old_metrics)):
        if n in ran_centralized:
            loss = dict(history.losses_centralized)[n]
            metrics = {k: dict(v)[n] for k, v in history.metrics_centralized.items()
                       if n in dict(v)}
        else:
            loss, metrics = old_metrics[n]
        full.add_centralized(n, loss, metrics)
    return full, added


def _old_centralized(
    old: dict[str, Any], trusted: set[int]
) -> dict[int, tuple[float, dict[str, float]]]:
    """The earlier file's centralized evaluation of the rounds it shares with this run."""
    out: dict[int, tuple[float, dict[str, float]]] = {}
    try:
        for n, loss in old.get("losses_centralized") or []:
            if n in trusted:
                out[n] = (float(loss), {})
        for name, series in (old.get("metrics_centralized") or {}).items():
            for n, value in series:
                if n in out:
                    out[n][1][name] = float(value)
    except (TypeError, ValueError, AttributeError):
        log.warning("the earlier results.json has centralized metrics in a form this version "
                    "does not read: they are not carried over")
        return {}
    return out


def covers(old: dict[str, Any] | None, contract: FedChainReader) -> bool:
    """True if an earlier results.json records every published round of this federation."""
    on_chain = published_rounds(contract)
    return same_federation(old, contract, on_chain) and set(_old_rounds(old or {})) == set(
        on_chain)


def recording(aggregator_class: type, out: str | Path, old: dict[str, Any] | None) -> type:
    """`aggregator_class` writing results.json after every round it runs (every published
    round, centralized metrics from this process and `old`, the earlier results.json), so a
    process killed mid-federation (kill -9, a crash, a power cut) leaves the rounds it ran
    and their centralized metrics, which the chain does not hold, for its successor."""

    class Recording(aggregator_class):  # type: ignore[misc, valid-type]
        #: The chain's events, read incrementally round after round (not from genesis).
        _ledger: Ledger | None = None

        def run_round(self, round: int) -> RoundResult:
            result = super().run_round(round)
            from ..federation.results import write_results_json

            try:
                if self._ledger is None:
                    self._ledger = Ledger(self.contract)
                history, _ = complete_history(self.history, self.contract, old, self._ledger)
                write_results_json(out, history, self.contract, store_url=self.store.url,
                                   plan=self.plan, ledger=self._ledger)
            except (OSError, FedChainError) as exc:  # the round stands; the file catches up
                log.warning("[ROUND %d] results.json not updated: %s", round, exc)
            return result

    Recording.__name__ = Recording.__qualname__ = aggregator_class.__name__
    return Recording


def carried_over(history: History, ran: History) -> list[int]:
    """The rounds of `history` with centralized metrics that `ran` (this process) did not
    evaluate: those taken from the earlier results.json."""
    mine = {n for n, _ in ran.losses_centralized}
    return [n for n, _ in history.losses_centralized if n not in mine]


def spans(rounds: list[int]) -> str:
    """[1, 2, 3, 5] → "1–3, 5"."""
    out: list[str] = []
    for n in sorted(rounds):
        if out and out[-1].split("–")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def evaluate_unrecorded(
    history: History, contract: FedChainReader, store: Any, old: dict[str, Any] | None,
    evaluate_fn: Any, max_bytes: int,
) -> list[int]:
    """Evaluates the published rounds no earlier results.json records (a process killed
    between publishing a round and writing the file, or before its first write): the
    centralized metrics the chain does not hold, computed again from the rounds' global
    models. Adds them to `history`; returns the rounds evaluated."""
    from ..model.fetch import fetch_model

    if evaluate_fn is None:
        return []
    on_chain = published_rounds(contract)
    recorded: set[int] = set()
    if old is not None and same_federation(old, contract, on_chain):
        recorded = set(_old_centralized(old, set(_old_rounds(old))))
    done = []
    for n in sorted(set(on_chain) - recorded):
        weights = fetch_model(store, on_chain[n].global_cid, max_bytes=max_bytes)
        evaluated = evaluate_fn(n, weights)
        if evaluated is None:
            continue
        loss, metrics = evaluated
        history.add_centralized(n, float(loss), {k: float(v) for k, v in metrics.items()})
        log.info("[ROUND %d] centralized evaluation (of a round published before this process "
                 "started that results.json lacks): loss=%.4f %s", n, loss,
                 " ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
        done.append(n)
    return done
