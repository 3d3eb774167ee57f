"""RunConfig: one federation run's settings, built once and used by every way of running it.

The CLI builds it from a job file and flags, `simulate` from its arguments, the examples from
theirs; the aggregator takes it whole. At genesis it becomes the plan published on chain; on a
federation that already started, the plan on chain is binding and the config only supplies
the aggregator's local settings (polling, timeouts, when to stop early).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..aggregation.strategy import Strategy
from ..errors import ConfigError
from ..model.codec import DEFAULT_MAX_BYTES, Weights
from ..protocol.params import MAX_MODEL_BYTES, Plan, ProtocolFields
from ..protocol.rules import (
    committee_windows,
    duplicates_without_commit_reveal,
    fraction_to_ppm,
    plan_min_updates,
    sample_size,
)


@dataclass
class Termination:
    """When to stop (MetisFL's termination signals): rounds, wall clock, or a metric target."""

    rounds: int
    wall_clock_seconds: float | None = None
    metric: str | None = None
    target: float | None = None
    mode: str = "max"

    def reached(self, round: int, started: float, value: float | None) -> str | None:
        if round >= self.rounds:
            return f"{self.rounds} rounds done"
        elapsed = time.monotonic() - started
        if self.wall_clock_seconds is not None and elapsed >= self.wall_clock_seconds:
            return f"wall-clock cutoff of {self.wall_clock_seconds:.0f}s reached"
        if self.target is not None and value is not None:
            hit = value >= self.target if self.mode == "max" else value <= self.target
            if hit:
                return f"{self.metric} reached {value:.4f} (target {self.target})"
        return None


#: Rounds of a federation whose configuration names none.
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class RunConfig(ProtocolFields):
    """What a federation runs (published in the plan) and how this aggregator runs it.

    The protocol's fields (deadlines, sampling, asynchronous rounds, learners' verification,
    duplicates) are `fedchain.protocol.params.ProtocolFields`, given as keywords."""

    #: Published in the plan at genesis. None: the plan on chain's (resuming); genesis needs
    #: one (`simulate` and job files default to `aggregation.strategy.ROBUST_FEDAVG`).
    strategy: Strategy | None = None
    #: None: DEFAULT_ROUNDS at genesis, whatever the plan says when resuming.
    rounds: int | None = None
    #: Updates a round needs; None: `protocol.rules.plan_min_updates` of the learners
    #: registered at genesis (a two-thirds quorum of a round's sample, at most `buffer_size`).
    min_updates: int | None = None
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    #: The largest model (update or global) anyone fetches, in bytes; None: 2 GiB.
    max_model_bytes: int | None = None
    #: The aggregator's own settings.
    round_timeout: float = 300.0
    #: Seconds past `round_timeout` by which a round's updates must have been fetched: an
    #: update not fetched by then is left out of the round as unavailable.
    fetch_timeout: float = 600.0
    wall_clock: float | None = None
    target_metric: str | None = None
    target: float | None = None
    target_mode: str = "max"
    poll_interval: float = 0.2
    evaluation_timeout: float = 30.0
    max_outage: float = 600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds is not None and (
            isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1
        ):
            raise ConfigError(f"rounds must be a positive integer, got {self.rounds!r}")
        if self.min_updates is not None and (
            isinstance(self.min_updates, bool)
            or not isinstance(self.min_updates, int)
            or self.min_updates < 0
        ):
            raise ConfigError(
                f"min_updates must be a non-negative integer, got {self.min_updates!r}"
            )
        if self.max_model_bytes is not None and (
            isinstance(self.max_model_bytes, bool)
            or not isinstance(self.max_model_bytes, int)
            or not 1 <= self.max_model_bytes <= MAX_MODEL_BYTES
        ):
            raise ConfigError(
                f"max_model_bytes must be an integer in 1..{MAX_MODEL_BYTES}, "
                f"got {self.max_model_bytes!r}"
            )
        why = duplicates_without_commit_reveal(self.exclude_duplicates, self.reveal_window)
        if why is not None:
            raise ConfigError(why)
        for name in ("round_timeout", "fetch_timeout", "poll_interval", "evaluation_timeout",
                     "max_outage"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")

    def plan(self, learners: int, committee: int = 1, model: Weights | None = None) -> Plan:
        """The plan published at genesis for a federation of `learners` registered learners,
        run by a committee of `committee` members (more than one: the plan has update and vote
        deadlines, `protocol.rules.committee_windows`); `model`, the genesis model, fills in
        what the plan says of it (distributed DP's dimension, SPEC.md §14.16)."""
        if self.strategy is None:
            raise ConfigError("genesis needs a strategy")
        min_updates = self.min_updates
        if min_updates is None:
            min_updates = plan_min_updates(learners, self.fraction, self.buffer_size)
        plan = Plan(
            strategy=self.strategy.to_plan(),
            rounds=self.rounds or DEFAULT_ROUNDS,
            min_updates=min_updates,
            train=dict(self.train),
            evaluate=dict(self.evaluate),
            max_model_bytes=self.max_model_bytes or DEFAULT_MAX_BYTES,
            **self._protocol(committee),
        )
        if model is not None:
            from ..protocol.secure import with_dimension

            plan = with_dimension(plan, model)
        dp = (plan.secagg or {}).get("dp") if plan.privacy == "secagg" else None
        if isinstance(dp, dict) and not (plan.secagg or {}).get("group_size"):
            most = sample_size(fraction_to_ppm(self.fraction), learners)
            if dp.get("min_learners", 0) > most:
                raise ConfigError(f"secagg.dp.min_learners is {dp['min_learners']}, but at most "
                                  f"{most} learners take part in a round: no round could be "
                                  "unmasked")
        return plan

    def _protocol(self, committee: int) -> dict[str, Any]:
        fields = self.protocol()
        if committee > 1 and not (self.update_window and self.vote_window):
            fields["update_window"], fields["vote_window"] = committee_windows(
                self.round_timeout, self.update_window, self.vote_window)
        return fields

    def termination(self) -> Termination:
        return Termination(
            self.rounds or DEFAULT_ROUNDS,
            self.wall_clock,
            self.target_metric,
            self.target,
            self.target_mode,
        )
