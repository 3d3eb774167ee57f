"""Aggregation strategies: how a round's updates become the next global model.

A strategy is a small frozen dataclass whose fields are its parameters; `to_plan()` records
it in the federation's plan and `strategy_from_plan` rebuilds it, so an auditor re-runs every
round with the same parameters. The arithmetic lives in `fedchain.aggregation.rules`, whose
docstring states the determinism and dtype rules every strategy follows.

No strategy returns a model (or server state) with a NaN or infinite floating value: the
result is checked before it is returned and AggregationError names the layer, so the
aggregator carries the previous model over instead of publishing it.

Byzantine bounds (FedAvg and the FedOpt family): `clip` bounds each update's difference from
the previous model to `clip` × the round's median difference norm, and `examples_cap` bounds
what one num_examples claim counts for, to `examples_cap` × the round's median claim (see
`streaming.bounded_mean`; they stream in two passes); `align` weighs each update by the cosine
of its difference with the round's direction, 0 if negative (`streaming.aligned_mean`, three
passes). All default to None (plain FedAvg, whose plan is unchanged); `ROBUST_FEDAVG` is the
recommended configuration for federations that trust no single learner.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, final

import numpy as np

from ..errors import AggregationError, ConfigError
from ..model.codec import Weights
from .rules import (
    ACCUMULATORS,
    SCALINGS,
    Update,
    aggregate_median,
    aggregate_trimmed_mean,
    capped_counts,
    collect_updates,
    krum_select,
    learner_key,
    require_finite,
)
from .streaming import aligned_mean, bounded_mean

__all__ = [
    "ROBUST_FEDAVG",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "Strategy",
    "Update",
    "Weights",
    "learner_key",
    "strategy_from_plan",
]


# --- strategies ----------------------------------------------------------------------


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {allowed}, got {value!r}")


def _number(field: str, value: object, low: float, high: float, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{field} must be {kind} in [{low}, {high}], got {value!r}")


def _bound(strategy: Strategy, field: str) -> None:
    """A Byzantine bound: None (off) or a positive finite number, kept as a float (so that
    `clip = 2` and `clip = 2.0` give one plan)."""
    value = getattr(strategy, field)
    if value is not None:
        _number(field, value, 0.0, 1e6)
        if value == 0:
            raise ConfigError(f"{field} must be positive (or None to turn it off), got 0")
        object.__setattr__(strategy, field, float(value))


def _examples_cap(strategy: Strategy, scaling: str) -> None:
    _bound(strategy, "examples_cap")
    if getattr(strategy, "examples_cap", None) is not None and scaling != "num_examples":
        raise ConfigError("examples_cap bounds num_examples weights: it needs scaling "
                          f"'num_examples', not {scaling!r}")


def _in_order(previous: Weights, result: Weights) -> Weights:
    """`result` with its layers in the previous global model's order (the model's own)."""
    return {name: result[name] for name in previous}


@dataclass(frozen=True)
class Strategy(ABC):
    """Turns the previous global model and a round's updates into the next global model."""

    name: ClassVar[str]
    #: Whether aggregate() carries server-optimizer state from round to round.
    stateful: ClassVar[bool] = False

    #: Parameters left out of the plan while they are None (their default): adding an
    #: optional bound to a strategy does not change the plans, and CIDs, of those without it.
    _optional: ClassVar[tuple[str, ...]] = ()

    @property
    def streams(self) -> bool:
        """Whether `aggregate` folds updates in one at a time (memory: about two models and
        the sum, whatever N) rather than holding the whole round (memory: N models)."""
        return False

    def to_plan(self) -> dict[str, Any]:
        """The strategy as JSON-able data: {"name": ..., "params": {...}}."""
        params = dataclasses.asdict(self)
        for name in self._optional:
            if params.get(name) is None:
                params.pop(name, None)
        return {"name": self.name, "params": params}

    @final
    def aggregate(
        self, previous: Weights, updates: Iterable[Update], state: Weights | None = None
    ) -> tuple[Weights, Weights | None]:
        """(new global model, new server-optimizer state or None) from the updates, in order.

        `updates` must come in ascending learner order; with no updates the result is
        (`previous`, `state`) unchanged. AggregationError if the new model or state has a
        non-finite floating value (the layer is named): it must not be published.
        """
        # Overflows are expected from hostile updates, and caught right below: no warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            new, new_state = self._aggregate(previous, updates, state)
        if new is not previous:
            require_finite(new, f"{self.name} result")
        if new_state is not None and new_state is not state:
            require_finite(new_state, f"{self.name} server state")
        return new, new_state

    @abstractmethod
    def _aggregate(
        self, previous: Weights, updates: Iterable[Update], state: Weights | None
    ) -> tuple[Weights, Weights | None]:
        """`aggregate` without the final check."""


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Weighted mean of the updates, by num_examples or uniform; streams the updates (with
    `clip` or `examples_cap`, in two passes: see `streaming.bounded_mean`)."""

    name: ClassVar[str] = "FedAvg"
    _optional: ClassVar[tuple[str, ...]] = ("clip", "examples_cap", "align")
    scaling: str = "num_examples"
    accumulator: str = "float32"
    #: Bound each update's difference from the previous model to clip × the round's median
    #: difference norm (None: no bound). Sums differences in float64 whatever `accumulator`.
    clip: float | None = None
    #: Count each num_examples as at most examples_cap × the round's median claim (None: as
    #: claimed). Only with scaling "num_examples".
    examples_cap: float | None = None
    #: Weight each update by the cosine of its difference with the sum of the round's unit
    #: differences, 0 if negative (None or False: off). See `streaming.alignment_factors`.
    align: bool | None = None

    def __post_init__(self) -> None:
        _choice("scaling", self.scaling, SCALINGS)
        _choice("accumulator", self.accumulator, ACCUMULATORS)
        _bound(self, "clip")
        _examples_cap(self, self.scaling)
        if self.align is not None and not isinstance(self.align, bool):
            raise ConfigError(f"align must be true or false, got {self.align!r}")
        if self.align is False:  # off: the plan of a strategy without it
            object.__setattr__(self, "align", None)

    @property
    def streams(self) -> bool:
        """Always: the bounds need the round's medians first, so a bounded mean streams the
        round twice (statistics, then the fold; `streaming.two_pass_mean`), re-reading the
        updates from a spill file instead of holding them; `align` reads it once more (its
        direction and cosines, `streaming.aligned_mean`)."""
        return True

    def _mean(self, previous: Weights, updates: Iterable[Update]) -> Weights | None:
        if self.align:
            return aligned_mean(previous, updates, clip=self.clip,
                                examples_cap=self.examples_cap, scaling=self.scaling)
        return bounded_mean(previous, updates, clip=self.clip, examples_cap=self.examples_cap,
                            scaling=self.scaling, accumulator=self.accumulator)

    def _aggregate(
        self, previous: Weights, updates: Iterable[Update], state: Weights | None
    ) -> tuple[Weights, Weights | None]:
        mean = self._mean(previous, updates)
        return (previous, state) if mean is None else (mean, None)


class _WholeRound(Strategy):
    """A strategy that needs every update of the round at once (robust rules)."""

    def _aggregate(
        self, previous: Weights, updates: Iterable[Update], state: Weights | None
    ) -> tuple[Weights, Weights | None]:
        collected = collect_updates(previous, updates)
        if not collected:
            return previous, state
        return self._combine(previous, collected), None

    @abstractmethod
    def _combine(self, previous: Weights, updates: list[Update]) -> Weights:
        """The new global model from the round's checked updates (at least one)."""


@dataclass(frozen=True)
class FedMedian(_WholeRound):
    """Coordinate-wise median of the updates (num_examples is ignored)."""

    name: ClassVar[str] = "FedMedian"

    def _combine(self, previous: Weights, updates: list[Update]) -> Weights:
        return _in_order(previous, aggregate_median([u.weights for u in updates]))


@dataclass(frozen=True)
class FedTrimmedAvg(_WholeRound):
    """Coordinate-wise mean without the beta fraction of lowest and of highest values."""

    name: ClassVar[str] = "FedTrimmedAvg"
    beta: float = 0.2

    def __post_init__(self) -> None:
        _number("beta", self.beta, 0.0, 0.5)
        if self.beta == 0.5:
            raise ConfigError("beta must be below 0.5: trimming half from each side keeps nothing")

    def _combine(self, previous: Weights, updates: list[Update]) -> Weights:
        return _in_order(previous, aggregate_trimmed_mean([u.weights for u in updates], self.beta))


@dataclass(frozen=True)
class Krum(_WholeRound):
    """Krum (m=1: the most central update) or multi-Krum (FedAvg of the m most central)."""

    name: ClassVar[str] = "Krum"
    _optional: ClassVar[tuple[str, ...]] = ("examples_cap",)
    f: int = 1
    m: int = 1
    scaling: str = "num_examples"
    accumulator: str = "float32"
    #: multi-Krum's mean counts each num_examples as at most examples_cap × the median claim
    #: of the whole round (None: as claimed).
    examples_cap: float | None = None

    def __post_init__(self) -> None:
        _number("f", self.f, 0, 2**31, integer=True)
        _number("m", self.m, 1, 2**31, integer=True)
        _choice("scaling", self.scaling, SCALINGS)
        _choice("accumulator", self.accumulator, ACCUMULATORS)
        _examples_cap(self, self.scaling)

    def _combine(self, previous: Weights, updates: list[Update]) -> Weights:
        chosen = krum_select([u.weights for u in updates], self.f, self.m)
        if len(chosen) == 1:
            chosen_weights = updates[chosen[0]].weights
            return {k: chosen_weights[k].copy() for k in previous}
        if self.examples_cap is not None:
            counts = capped_counts([u.num_examples for u in updates], self.examples_cap)
            updates = [dataclasses.replace(u, num_examples=c)
                       for u, c in zip(updates, counts, strict=True)]
        mean = bounded_mean(previous, [updates[i] for i in chosen], scaling=self.scaling,
                            accumulator=self.accumulator)
        assert mean is not None  # m >= 2 updates were kept
        return mean


def _server_step(
    previous: Weights,
    mean: Weights,
    step: Callable[[str, np.ndarray], np.ndarray],
) -> Weights:
    """previous + step(name, pseudo-gradient) for floating layers; the mean for the others."""
    new: Weights = {}
    for name, prev in previous.items():
        if prev.dtype.kind != "f":
            new[name] = mean[name]
            continue
        delta = mean[name].astype(np.float64)
        delta -= prev
        update = step(name, delta)
        update += prev
        new[name] = update.astype(prev.dtype)
    return new


def _state_array(state: Weights | None, key: str, like: np.ndarray) -> np.ndarray | None:
    if state is None or key not in state:
        return None
    if state[key].shape != like.shape:
        raise AggregationError(f"server state {key} has shape {state[key].shape}, not {like.shape}")
    if state[key].dtype != np.float64:
        raise AggregationError(f"server state {key} is {state[key].dtype}, not float64")
    return state[key]


#: The largest optimizer step count a server state may hold (SPEC: 0 <= step < 2**31).
MAX_STEP = 2**31 - 1


def _state_step(state: Weights | None) -> int:
    """The server state's step count: an int64 scalar in 0..MAX_STEP (AggregationError for
    anything else: a forged state must not crash, or hang, whoever re-runs the round)."""
    if state is None or "step" not in state:
        return 0
    step = state["step"]
    if step.shape != () or step.dtype != np.int64 or not 0 <= int(step) <= MAX_STEP:
        raise AggregationError(f"server state step is {step.dtype}{list(step.shape)} "
                               f"{step.ravel()[:1].tolist()}, not an int64 scalar in "
                               f"0..{MAX_STEP}")
    return int(step)


@dataclass(frozen=True)
class FedOpt(FedAvg):
    """FedAvg's mean as a pseudo-gradient Δ = mean − previous, then a server optimizer step
    (Reddi et al., 2021). Subclasses give the step; state is carried from round to round.

    The optimizer acts on floating layers; integer and bool layers take the FedAvg value.
    """

    stateful: ClassVar[bool] = True

    def _aggregate(
        self, previous: Weights, updates: Iterable[Update], state: Weights | None
    ) -> tuple[Weights, Weights | None]:
        mean = self._mean(previous, updates)
        if mean is None:
            return previous, state
        new_state, step = self._optimizer(state)
        return _server_step(previous, mean, step), new_state

    @abstractmethod
    def _optimizer(
        self, state: Weights | None
    ) -> tuple[Weights, Callable[[str, np.ndarray], np.ndarray]]:
        """(the new state, filled in by the step as it runs; step(layer, Δ) → the update)."""


@dataclass(frozen=True)
class FedAvgM(FedOpt):
    """FedAvg with server momentum: v = momentum·v + Δ; new = previous + lr·v.

    State: float64 "momentum/<layer>" arrays.
    """

    name: ClassVar[str] = "FedAvgM"
    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("server_lr", self.server_lr, 0.0, 1e6)
        _number("momentum", self.momentum, 0.0, 1.0)

    def _optimizer(
        self, state: Weights | None
    ) -> tuple[Weights, Callable[[str, np.ndarray], np.ndarray]]:
        new_state: Weights = {}

        def step(name: str, delta: np.ndarray) -> np.ndarray:
            velocity = _state_array(state, "momentum/" + name, delta)
            if velocity is not None:
                delta += self.momentum * velocity
            new_state["momentum/" + name] = delta.copy()
            delta *= self.server_lr
            return delta

        return new_state, step


@dataclass(frozen=True)
class FedAdam(FedOpt):
    """FedAvg with a server Adam step on the pseudo-gradient.

    m = β1·m + (1−β1)·Δ, v = β2·v + (1−β2)·Δ², new = previous + η_t·m / (√v + τ) with the
    bias-corrected η_t = η·√(1−β2^t) / (1−β1^t), t = 1 in the first round (Flower counts
    from t = 2). State: float64 "m/<layer>", "v/<layer>" and int64 "step".
    """

    name: ClassVar[str] = "FedAdam"
    eta: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-9

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("eta", self.eta, 0.0, 1e6)
        _number("beta1", self.beta1, 0.0, 1.0)
        _number("beta2", self.beta2, 0.0, 1.0)
        _number("tau", self.tau, 0.0, 1e6)
        if self.beta1 == 1.0 or self.beta2 == 1.0:
            raise ConfigError("beta1 and beta2 must be below 1")

    def _optimizer(
        self, state: Weights | None
    ) -> tuple[Weights, Callable[[str, np.ndarray], np.ndarray]]:
        t = 1 + _state_step(state)
        # powers by repeated multiplication: exactly rounded everywhere, unlike libm's pow;
        # once neither changes (0, or a subnormal fixed point) the rest would change nothing.
        power1 = power2 = 1.0
        for _ in range(t):
            next1, next2 = power1 * self.beta1, power2 * self.beta2
            if next1 == power1 and next2 == power2:
                break
            power1, power2 = next1, next2
        eta_t = self.eta * float(np.sqrt(1.0 - power2)) / (1.0 - power1)
        new_state: Weights = {"step": np.array(t, dtype=np.int64)}

        def step(name: str, delta: np.ndarray) -> np.ndarray:
            m = _state_array(state, "m/" + name, delta)
            v = _state_array(state, "v/" + name, delta)
            m = (1.0 - self.beta1) * delta + (0.0 if m is None else self.beta1 * m)
            v = (1.0 - self.beta2) * (delta * delta) + (0.0 if v is None else self.beta2 * v)
            new_state["m/" + name], new_state["v/" + name] = m, v
            return eta_t * m / (np.sqrt(v) + self.tau)

        return new_state, step


@dataclass(frozen=True)
class _AdaptiveNoBias(FedOpt):
    """The shared part of FedAdagrad and FedYogi (Reddi et al., 2021, without bias correction):
    m = β1·m + (1−β1)·Δ, v from the subclass's `_second`, new = previous + η·m / (√v + τ).
    State: float64 "m/<layer>" and "v/<layer>" (no step count)."""

    eta: float = 0.1
    beta1: float = 0.0
    tau: float = 1e-9

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("eta", self.eta, 0.0, 1e6)
        _number("beta1", self.beta1, 0.0, 1.0)
        _number("tau", self.tau, 0.0, 1e6)
        if self.beta1 == 1.0:
            raise ConfigError("beta1 must be below 1")

    @abstractmethod
    def _second(self, squared: np.ndarray, v: np.ndarray | None) -> np.ndarray:
        """The new second moment from Δ² and the previous one (None in the first round)."""

    def _optimizer(
        self, state: Weights | None
    ) -> tuple[Weights, Callable[[str, np.ndarray], np.ndarray]]:
        new_state: Weights = {}

        def step(name: str, delta: np.ndarray) -> np.ndarray:
            m = _state_array(state, "m/" + name, delta)
            v = _state_array(state, "v/" + name, delta)
            m = (1.0 - self.beta1) * delta + (0.0 if m is None else self.beta1 * m)
            v = self._second(delta * delta, v)
            new_state["m/" + name], new_state["v/" + name] = m, v
            return self.eta * m / (np.sqrt(v) + self.tau)

        return new_state, step


@dataclass(frozen=True)
class FedAdagrad(_AdaptiveNoBias):
    """FedAvg with a server Adagrad step: v = v + Δ² (SPEC §8.12)."""

    name: ClassVar[str] = "FedAdagrad"

    def _second(self, squared: np.ndarray, v: np.ndarray | None) -> np.ndarray:
        return squared + (0.0 if v is None else v)


@dataclass(frozen=True)
class FedYogi(_AdaptiveNoBias):
    """FedAvg with a server Yogi step: v = v − (1−β2)·Δ²·sign(v − Δ²) (SPEC §8.13)."""

    name: ClassVar[str] = "FedYogi"
    eta: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("beta2", self.beta2, 0.0, 1.0)
        if self.beta2 == 1.0:
            raise ConfigError("beta2 must be below 1")

    def _second(self, squared: np.ndarray, v: np.ndarray | None) -> np.ndarray:
        old = np.zeros_like(squared) if v is None else v
        return old - ((1.0 - self.beta2) * squared) * np.sign(old - squared)


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedAvg on the server; `proximal_mu` travels in the plan to the learners, which add
    μ/2·‖w − w_global‖² to their training loss (Li et al., 2020). The aggregation is FedAvg's."""

    name: ClassVar[str] = "FedProx"
    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("proximal_mu", self.proximal_mu, 0.0, 1e6)


#: The recommended strategy for a federation that trusts no single learner (templates and
#: `simulate` default to it): FedAvg whose updates are clipped to twice the round's median
#: difference norm, whose num_examples claims count for at most twice the round's median
#: claim, and whose updates weigh by their alignment with the round's direction (`align`).
#: See bench/robustness.py for how it and the alternatives fare against the attack suite.
ROBUST_FEDAVG = FedAvg(clip=2.0, examples_cap=2.0, align=True)

_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedMedian, FedTrimmedAvg, Krum, FedAvgM, FedAdam,
                              FedAdagrad, FedYogi, FedProx)
}


def strategy_from_plan(plan: Mapping[str, Any]) -> Strategy:
    """The strategy a plan's {"name", "params"} describes (the inverse of `to_plan`)."""
    name, params = plan.get("name"), plan.get("params", {})
    cls = _STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(_STRATEGIES)}")
    if not isinstance(params, Mapping):
        raise ConfigError(f"strategy {name} params must be a mapping, got {params!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"strategy {name} has no parameters {unknown}; it takes {sorted(fields)}")
    return cls(**params)
