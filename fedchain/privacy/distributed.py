"""Learner-level differential privacy under secure aggregation (SPEC.md §14.16).

With `secagg.dp` in the plan, every learner of a secure round clips its difference from the
global model to an L2 norm C (`clip_norm`), quantizes it as §14.1 says, and adds to each
integer coordinate its share of Skellam noise, Sk(λ, λ) (the difference of two Poisson(λ)
draws from its own, secret, generator), before masking. A sum of independent Skellam
variables is Skellam, so a group's unmasked sum carries noise of variance n·2λ from its n
finished learners, although no party ever saw, or could remove, any learner's share.

The noise is sized by the plan alone: a learner's share has standard deviation z·Δ2/√m (z the
noise multiplier, m `min_learners`, Δ2 the integer-domain L2 sensitivity below), so m
learners give z·Δ2 together; and honest holders unmask no group with fewer than m finished
learners (§14.16), so every sum that is released carries at least that. A learner's privacy
in a round comes from the *other* learners' shares (its own is no secret to itself, and a
learner can drop out of a group or add no noise at all): the accountant counts the noise of
the n − 1 others of its group, assumed to follow the protocol.

    s  = F64(range) ⊘ F64(clip)                       (the quantizer's scale, §14.1)
    Δ2 = s·C + √d + 1                                 (‖round(s·x)‖₂ ≤ s‖x‖₂ + √d; +1 for float)
    Δ1 = min(√d·Δ2, Δ2²)                              (an integer vector's L1 ≤ its squared L2)
    σ_share = z·Δ2 / √m,  λ = σ_share² / 2           (each learner's Sk(λ, λ))
    h  = ⌈10·σ_share⌉ + 10                            (headroom per learner in the modulus)

Noise drawn from public randomness (a seed on chain, the round's seed, a learner's address)
would be no privacy at all: anyone could draw it again and subtract it. The plan therefore has
no noise seed, and refuses one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ConfigError, PrivacyError
from . import accountant
from . import quantize as Q

#: Keys a plan's dp object may not have: noise from a public seed can be subtracted by anyone.
_PUBLIC_NOISE = ("seed", "noise_seed", "rng_seed", "random_seed")
#: The largest clip_norm / clip: Δ2 stays far below 2^53 (exact integer bounds in F64).
MAX_NORM_RATIO = float(1 << 20)
#: The largest model (floating elements) distributed DP takes: a norm computed in binary64
#: over at most 2^32 terms is off by far less than CLIP_SLACK (so Δ2 bounds the real norm).
MAX_DIMENSION = 1 << 32
#: Learners clip to C·(1 − CLIP_SLACK): the float error of computing a norm stays inside C.
CLIP_SLACK = 2.0 ** -20
#: The largest Poisson mean λ a learner draws (numpy's sampler takes up to about 9.2e18).
MAX_LAMBDA = 1e18
_CHUNK = 1 << 16


def _positive(value: Any, high: float = 1e300) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0 < value < high)


@dataclass(frozen=True, kw_only=True)
class DistributedDP:
    """The plan's `secagg.dp` object: learner-level DP with noise from the learners."""

    #: C: a learner's difference from the global model is scaled down to this L2 norm.
    clip_norm: float
    #: z: a released sum carries Skellam noise of standard deviation ≥ z·Δ2 (integer units).
    noise_multiplier: float
    #: m ≥ 2: each learner adds 1/m of that variance, and no group with fewer than m
    #: finished learners is unmasked.
    min_learners: int
    #: The δ of the (ε, δ) the ledger reports.
    delta: float = 1e-5
    #: ε a learner may reach; with it, a learner takes part in at most `max_rounds` rounds.
    budget: float | None = None
    #: d: the model's floating coordinates (0 in a job file: genesis fills it in from the
    #: initial model, so the plan alone gives every figure of the ledger).
    dimension: int = 0

    @classmethod
    def parse(cls, raw: Any) -> DistributedDP:
        if not isinstance(raw, dict):
            raise ConfigError("malformed plan: secagg.dp must be an object with clip_norm, "
                              "noise_multiplier and min_learners")
        public = sorted(set(raw) & set(_PUBLIC_NOISE))
        if public:
            raise ConfigError(f"malformed plan: secagg.dp.{public[0]}: noise drawn from a "
                              "public seed gives no privacy (anyone can draw it again and "
                              "subtract it); each learner draws its share from its own "
                              "secret randomness")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"malformed plan: unknown secagg.dp parameters {unknown}")
        for name in ("clip_norm", "noise_multiplier", "min_learners"):
            if name not in raw:
                raise ConfigError(f"malformed plan: secagg.dp needs {name}")
        checks = {
            "clip_norm": ("a positive finite number", _positive),
            "noise_multiplier": ("a number in 0.01 … 1e6 (less gives no meaningful privacy)",
                                 lambda v: _positive(v, 1e6) and v >= 0.01),
            "min_learners": ("an integer in 2..1048576", lambda v: isinstance(v, int)
                             and not isinstance(v, bool) and 2 <= v <= 1 << 20),
            "delta": ("a number between 0 and 1", lambda v: _positive(v, 1.0)),
            "budget": ("a positive number", lambda v: v is None or _positive(v)),
            "dimension": ("an integer in 0..2^32", lambda v: isinstance(v, int)
                          and not isinstance(v, bool) and 0 <= v <= MAX_DIMENSION),
        }
        for name, value in raw.items():
            what, ok = checks[name]
            if not ok(value):
                raise ConfigError(f"malformed plan: secagg.dp.{name} must be {what}, "
                                  f"not {value!r}")
        values = dict(raw)
        for name in ("clip_norm", "noise_multiplier", "delta", "budget"):
            if values.get(name) is not None:
                values[name] = float(values[name])
        return cls(**values)


@dataclass(frozen=True)
class Noise:
    """What a DP plan's parameters make of a model of d coordinates (module docstring)."""

    dp: DistributedDP
    d: int
    delta2: float
    delta1: float
    #: A learner's share's standard deviation (integer units), and its Poisson mean λ.
    share_sd: float
    lam: float
    headroom: int

    @classmethod
    def of(cls, dp: DistributedDP, clip: float, qrange: int, d: int) -> Noise:
        if dp.dimension and d != dp.dimension:
            raise PrivacyError(f"the model has {d} floating coordinates; the plan's "
                               f"secagg.dp.dimension says {dp.dimension}")
        if not 1 <= d <= MAX_DIMENSION:
            raise PrivacyError(f"distributed DP takes models of 1 to 2^32 floating "
                               f"coordinates, not {d}")
        s = Q.scale(clip, qrange)
        delta2 = s * dp.clip_norm + math.sqrt(d) + 1.0
        delta1 = min(math.sqrt(d) * delta2, delta2 * delta2)
        share_sd = dp.noise_multiplier * delta2 / math.sqrt(dp.min_learners)
        lam = share_sd * share_sd / 2.0
        if not lam <= MAX_LAMBDA:
            raise PrivacyError(f"noise of standard deviation {share_sd:.4g} per learner is "
                               "more than a learner can draw (Poisson mean above 1e18): "
                               "lower noise_multiplier or clip_norm / clip")
        headroom = math.ceil(10.0 * share_sd) + 10
        return cls(dp, d, delta2, delta1, share_sd, lam, headroom)

    def round_rdp(self, others: int) -> tuple[float, ...]:
        """A learner's RDP from one released sum that holds the shares of `others` other
        learners (their variance: others · share_sd²)."""
        return accountant.skellam_rdp(self.delta1, self.delta2,
                                      others * self.share_sd * self.share_sd)

    def worst_round(self) -> tuple[float, ...]:
        """A round's RDP at the fewest learners a released sum can have (m − 1 others)."""
        return self.round_rdp(self.dp.min_learners - 1)

    def epsilon(self, curve: Sequence[float]) -> float:
        return accountant.epsilon_of_rdp(list(curve), self.dp.delta)

    def max_rounds(self, cap: int = 1 << 20) -> int | None:
        """The most rounds a learner can take part in within its budget, each counted at
        the worst a released sum allows (None: no budget)."""
        if self.dp.budget is None:
            return None
        worst = self.worst_round()

        def within(k: int) -> bool:
            return self.epsilon([k * r for r in worst]) <= self.dp.budget  # type: ignore[operator]

        if not within(1):
            return 0
        low, high = 1, 2
        while high <= cap and within(high):
            low, high = high, high * 2
        if high > cap:
            high = cap + 1
            if within(cap):
                return cap
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if within(mid) else (low, mid)
        return low


def clip_l2(vector: np.ndarray, norm: float) -> np.ndarray:
    """`vector` scaled down to L2 norm `norm`·(1 − CLIP_SLACK) if longer (F64): the slack
    absorbs the rounding of the norm's computation, so the result's exact norm is ≤ `norm`."""
    v = np.asarray(vector, np.float64)
    length = float(np.sqrt(np.dot(v, v)))
    bound = norm * (1.0 - CLIP_SLACK)
    if length > bound:
        v = v * (bound / length)
    return v


def add_noise(quantized: np.ndarray, noise: Noise, bits: int,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """A learner's shifted quantized values (uint64, §14.1) with its Skellam share added to
    each coordinate, reduced mod 2^bits (uint64). Unless `rng` is given (tests give one;
    never a public seed), each chunk of _CHUNK coordinates is drawn by a generator seeded
    afresh with 256 bits of the operating system's entropy (`secrets`), so no run of outputs
    of one generator state spans more than a chunk."""
    q = np.asarray(quantized, np.uint64)
    out = np.empty(q.size, np.uint64)
    modulus_mask = np.uint64((1 << bits) - 1)
    for start in range(0, q.size, _CHUNK):
        m = min(_CHUNK, q.size - start)
        gen = rng if rng is not None else np.random.default_rng(secrets.randbits(256))
        try:
            z = gen.poisson(noise.lam, m).astype(np.int64) - gen.poisson(noise.lam, m)
        except ValueError as exc:  # numpy's own bound on λ: Noise.of keeps far below it
            raise PrivacyError(f"cannot draw the noise: {exc}") from exc
        y = q[start:start + m].astype(np.int64) + z
        out[start:start + m] = y.astype(np.uint64) & modulus_mask  # two's complement mod 2^k
    return out


def centred(total: np.ndarray, count: int, qrange: int, bits: int, headroom: int) -> np.ndarray:
    """A group's signed sum from its unmasked total mod 2^bits: (total − count·range) read in
    [−2^(bits−1), 2^(bits−1)) (int64). PrivacyError if a coordinate's magnitude is past
    count·(range + headroom): a learner masked out of range (honest noise never gets there)."""
    t = np.asarray(total, np.uint64).astype(np.int64)
    c = (t - np.int64(count * qrange)) & np.int64((1 << bits) - 1)
    half = np.int64(1 << (bits - 1))
    c[c >= half] -= np.int64(1 << bits)
    limit = count * (qrange + headroom)
    if c.size and int(np.abs(c).max()) > limit:
        raise PrivacyError("the unmasked sum is out of range: a learner masked inconsistently")
    return c


# --- the ledger ---------------------------------------------------------------------------


@dataclass
class DistributedEntry:
    """One round of a learner under distributed DP."""

    round: int
    #: Finished learners of its group (its own update among them).
    group: int
    #: Whether its group's sum could be released (≥ min_learners finished).
    released: bool
    #: Its ε(δ) after this round, every released round so far composed.
    epsilon: float
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "group": self.group, "released": self.released,
                "epsilon": self.epsilon, "problems": self.problems}


@dataclass
class DistributedLedger:
    """A learner's ε under the plan's distributed DP, recomputed from the plan and the chain."""

    learner: str
    budget: float | None
    entries: list[DistributedEntry] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return self.entries[-1].epsilon if self.entries else 0.0

    @property
    def rounds(self) -> int:
        return sum(1 for e in self.entries if e.released)

    @property
    def ok(self) -> bool:
        return not any(e.problems for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"learner": self.learner, "epsilon": self.epsilon, "budget": self.budget,
                "rounds": self.rounds, "ok": self.ok,
                "entries": [e.to_dict() for e in self.entries]}


def distributed_ledger(
    noise: Noise,
    rounds: Iterable[tuple[int, Sequence[Sequence[str]], Iterable[int]]],
    names: Mapping[str, str] | None = None,
) -> list[DistributedLedger]:
    """Every learner's ε after each secure round it finished: `rounds` gives, in order, each
    round's groups of finished learners, and the indices of the groups whose sum the
    revealed keys expose although they are too small (rogue holders). A round counts for
    a learner when its group had at least min_learners finished (honest holders reveal
    nothing otherwise) or is exposed, with the noise of the others of its group; an infinite
    ε (a group exposed with no other learner's noise) fails. `names`: learner key → how to
    print it."""
    names = names or {}
    dp = noise.dp
    ledgers: dict[str, DistributedLedger] = {}
    curves: dict[str, tuple[float, ...]] = {}
    for round, groups, exposed_groups in rounds:
        exposed = set(exposed_groups)
        for j, group in enumerate(groups):
            n = len(group)
            released = n >= dp.min_learners or j in exposed
            step = noise.round_rdp(n - 1) if released else None
            for learner in group:
                ledger = ledgers.setdefault(learner, DistributedLedger(
                    names.get(learner, learner), dp.budget))
                if step is not None:
                    curves[learner] = accountant.compose(curves.get(learner, ()), step)
                eps = noise.epsilon(curves[learner]) if learner in curves else 0.0
                entry = DistributedEntry(round, n, released, eps)
                if eps == math.inf:
                    entry.problems.append("a released sum with no other learner's noise: no "
                                          "privacy (epsilon infinite)")
                elif dp.budget is not None and eps > dp.budget * (1 + 1e-9):
                    entry.problems.append(f"epsilon {eps:.4g} is past the plan's budget "
                                          f"{dp.budget:g}")
                ledger.entries.append(entry)
    return sorted(ledgers.values(), key=lambda x: x.learner.lower())
