"""The ε ledger: each learner's differential privacy, recomputed from the chain alone.

A learner training with DP-SGD (`fedchain.privacy.dpsgd`) publishes with its evaluation
report of each round its noise multiplier σ, sampling rate q, the round's steps, its steps
so far, δ, its claimed ε(δ) and its budget (`dp_…` keys). The ledger recomputes each claimed
ε from σ, q, the total steps and δ (`privacy.accountant`), and flags a claim that does not
match to 3 significant digits, a learner past its own budget, parameters that change
between reports (the ledger composes one mechanism), totals that do not add up, and an
update submitted in a round whose report claims no training.

No amplification by sampling *across learners* is claimed: which learners took part in a
round is public (their updates are on chain), so a learner's ε is that of its own records
under its own DP-SGD, whether or not it was chosen. The amplification inside DP-SGD (each
step's Poisson sample of the learner's records) stands: that sample is drawn from the
learner's private generator and never published.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..privacy.dpsgd import PREFIX, recompute

#: Claimed and recomputed ε agree when within this relative difference (3 significant digits).
TOLERANCE = 1e-3
_NUMBERS = ("dp_sigma", "dp_q", "dp_steps", "dp_total_steps", "dp_delta", "dp_epsilon")


@dataclass
class PrivacyEntry:
    """One learner's privacy report of one round, and what recomputing it found."""

    round: int
    sigma: float
    q: float
    steps: int
    total_steps: int
    delta: float
    claimed: float
    budget: float | None
    #: Whether the learner submitted an update in this round (participation is public).
    submitted: bool = False
    recomputed: float | None = None
    #: What is wrong with this report (empty: nothing).
    problems: list[str] = field(default_factory=list)
    #: Remarks that are not failures (steps taken in rounds without a report).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "noise_multiplier": self.sigma, "q": self.q,
                "steps": self.steps, "total_steps": self.total_steps, "delta": self.delta,
                "claimed_epsilon": self.claimed, "recomputed_epsilon": self.recomputed,
                "budget": self.budget, "submitted": self.submitted, "problems": self.problems,
                "notes": self.notes}


@dataclass
class LearnerPrivacy:
    """A learner's ε ledger: its privacy report of every round, in order."""

    learner: str
    entries: list[PrivacyEntry] = field(default_factory=list)
    #: Reports whose privacy fields could not be read: (round, why).
    malformed: list[tuple[int, str]] = field(default_factory=list)
    #: Rounds in which it submitted an update but published no privacy report.
    unreported: list[int] = field(default_factory=list)

    @property
    def epsilon(self) -> float | None:
        """The learner's ε after its last report, recomputed (None: nothing to recompute)."""
        for e in reversed(self.entries):
            if e.recomputed is not None:
                return e.recomputed
        return None

    @property
    def budget(self) -> float | None:
        return self.entries[-1].budget if self.entries else None

    @property
    def ok(self) -> bool:
        return not self.malformed and not any(e.problems for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"learner": self.learner, "epsilon": self.epsilon, "budget": self.budget,
                "ok": self.ok, "entries": [e.to_dict() for e in self.entries],
                "malformed": [{"round": r, "problem": p} for r, p in self.malformed],
                "unreported_updates": self.unreported}


def _entry(round: int, metrics: Mapping[str, Any]) -> PrivacyEntry:
    """The privacy fields of a report; ConfigError naming what is missing or malformed."""
    values: dict[str, float] = {}
    for key in (*_NUMBERS, "dp_budget"):
        if key not in metrics:
            if key == "dp_budget":
                continue
            raise ConfigError(f"no {key}")
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                float(value)):
            raise ConfigError(f"{key} is {value!r}, not a finite number")
        values[key] = float(value)
    for key in ("dp_steps", "dp_total_steps"):
        if not values[key].is_integer() or values[key] < 0:
            raise ConfigError(f"{key} is {values[key]!r}, not a whole number of steps")
    if not values["dp_sigma"] > 0:
        raise ConfigError(f"dp_sigma is {values['dp_sigma']!r}, not positive")
    if not 0 <= values["dp_q"] <= 1:
        raise ConfigError(f"dp_q is {values['dp_q']!r}, not a probability")
    if not 0 < values["dp_delta"] < 1:
        raise ConfigError(f"dp_delta is {values['dp_delta']!r}, not between 0 and 1")
    return PrivacyEntry(round, values["dp_sigma"], values["dp_q"], int(values["dp_steps"]),
                        int(values["dp_total_steps"]), values["dp_delta"], values["dp_epsilon"],
                        values.get("dp_budget"))


def privacy_ledger(
    rounds: Iterable[tuple[int, Iterable[tuple[str, Mapping[str, Any]]], Iterable[str]]],
) -> list[LearnerPrivacy]:
    """Every learner's ε ledger from the rounds' (round, [(learner, report metrics)],
    [learners that submitted]), in round order. Learners that never reported a `dp_…` key
    (no differential privacy claimed) are left out."""
    ledgers: dict[str, LearnerPrivacy] = {}
    submitted_in: dict[str, list[int]] = {}
    for round, reports, submitters in rounds:
        for learner in submitters:
            submitted_in.setdefault(learner, []).append(round)
        for learner, metrics in reports:
            if not any(str(k).startswith(PREFIX) for k in metrics):
                continue
            ledger = ledgers.setdefault(learner, LearnerPrivacy(learner))
            try:
                ledger.entries.append(_entry(round, metrics))
            except ConfigError as exc:
                ledger.malformed.append((round, str(exc)))
    for learner, ledger in ledgers.items():
        _check(ledger, set(submitted_in.get(learner, ())))
    return sorted(ledgers.values(), key=lambda x: x.learner.lower())


def _check(ledger: LearnerPrivacy, submitted: set[int]) -> None:
    reported = {e.round for e in ledger.entries} | {r for r, _ in ledger.malformed}
    ledger.unreported = sorted(submitted - reported)
    previous: PrivacyEntry | None = None
    for e in ledger.entries:
        e.submitted = e.round in submitted
        try:
            e.recomputed = recompute({"dp_sigma": e.sigma, "dp_q": e.q,
                                      "dp_total_steps": e.total_steps, "dp_delta": e.delta})
        except ConfigError as exc:
            e.problems.append(f"cannot recompute epsilon: {exc}")
        else:
            if not math.isclose(e.claimed, e.recomputed, rel_tol=TOLERANCE, abs_tol=1e-9):
                e.problems.append(f"claims epsilon {e.claimed:.6g}; its parameters give "
                                  f"{e.recomputed:.6g}")
            if e.budget is not None and e.recomputed > e.budget * (1 + 1e-9):
                e.problems.append(f"epsilon {e.recomputed:.4g} is past its declared budget "
                                  f"{e.budget:g}")
        if e.submitted and e.steps == 0:
            e.problems.append("submitted an update in this round but reports no DP-SGD step "
                              "for it")
        if e.steps > e.total_steps:
            e.problems.append(f"{e.steps} steps this round but {e.total_steps} in all")
        if previous is not None:
            changed = [name for name, a, b in (
                ("noise multiplier", previous.sigma, e.sigma), ("q", previous.q, e.q),
                ("delta", previous.delta, e.delta), ("budget", previous.budget, e.budget))
                if a != b]
            if changed:
                e.problems.append(f"{', '.join(changed)} changed since round {previous.round}: "
                                  "a ledger composes one mechanism, under one budget")
            expected = previous.total_steps + e.steps
            if e.total_steps < expected:
                e.problems.append(f"{e.total_steps} steps in all, fewer than the "
                                  f"{previous.total_steps} reported by round {previous.round} "
                                  f"and this round's {e.steps}")
            elif e.total_steps > expected:
                e.notes.append(f"{e.total_steps - expected} steps taken in rounds "
                               f"{previous.round + 1}–{e.round - 1}, which have no report")
        elif e.total_steps > e.steps:
            e.notes.append(f"{e.total_steps - e.steps} steps taken before round {e.round}, in "
                           "rounds without a report")
        previous = e

