"""The privacy accountant of DP-SGD: Rényi DP of the Poisson-subsampled Gaussian mechanism.

One step of DP-SGD samples each of a learner's records independently with probability `q`,
clips each sampled record's gradient to norm C and adds Gaussian noise of standard deviation
σ·C to their sum. Its Rényi divergence of order α (Mironov, Talwar and Zhang, "Rényi
Differential Privacy of the Sampled Gaussian Mechanism", 2019) is

    RDP(α) = log A_α / (α − 1),

for an integer α the finite sum  A_α = Σ_k C(α, k) (1−q)^(α−k) q^k exp((k² − k) / 2σ²),  for a
fractional α the paper's two convergent series with erfc factors (§3.3). Steps compose by
adding their RDP order by order; an RDP curve converts to (ε, δ)-DP by the bound of Balle et
al. 2020 (Prop. 12, also Canonne, Kamath and Steinke 2020, eq. 20), minimised over the orders:

    ε = RDP(α) + log(1 − 1/α) − (log δ + log α) / (α − 1).

Everything is plain float arithmetic over a fixed list of orders (the same as Google's
`dp-accounting` uses by default, so the two agree: tests/test_dp.py checks it against figures
`dp-accounting` 0.6.0 computed, scripts/dp_reference.py), so anyone recomputes a learner's ε
from (σ, q, steps, δ) alone: `fedchain privacy` and the audit do.
"""

from __future__ import annotations

import functools
import math

from ..errors import ConfigError

#: The Rényi orders the bound is minimised over: 1.1 … 10.9 by tenths, 11 … 63, and
#: 128, 256, 512, 1024 (dp-accounting's default list).
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10 for x in range(1, 100)] + [float(a) for a in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0])

#: A series term below exp(STOP) relative to the sum no longer changes A_α.
_STOP = -30.0
#: Terms of a fractional order's series before it is given up (RDP ∞: the order is left out,
#: which can only raise ε). The series converge within a few hundred terms in DP-SGD's regimes.
_MAX_TERMS = 100_000


def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b)."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_erfc(x: float) -> float:
    """log erfc(x), also where erfc(x) underflows (x beyond ~26: its asymptotic series)."""
    value = math.erfc(x)
    if value > 1e-300:
        return math.log(value)
    # erfc(x) = e^(−x²) / (x √π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) …), x ≫ 1
    x2 = x * x
    return (-x2 - math.log(x) - 0.5 * math.log(math.pi)
            + math.log1p(-1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 ** 3)))


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_α for an integer α ≥ 2: the binomial expansion, summed in log space."""
    total = -math.inf
    log_q, log_1q = math.log(q), math.log1p(-q)
    for k in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        term = log_binom + k * log_q + (alpha - k) * log_1q + (k * k - k) / (2 * sigma ** 2)
        total = _log_add(total, term)
    return total


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_α for a fractional α > 1: the two series of Mironov et al. §3.3, split at
    z₀ = σ² log(1/q − 1) + 1/2, their generalised binomial coefficients alternating in sign
    past α (positive and negative terms are summed apart, in log space)."""
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    log_q, log_1q = math.log(q), math.log1p(-q)
    root = math.sqrt(2) * sigma
    positive, negative = -math.inf, -math.inf
    coef, i = 1.0, 0  # coef = C(α, i), by C(α, i+1) = C(α, i) (α − i) / (i + 1)
    while True:
        j = alpha - i
        log_coef = math.log(abs(coef))
        first = (log_coef + i * log_q + j * log_1q + (i * i - i) / (2 * sigma ** 2)
                 + math.log(0.5) + _log_erfc((i - z0) / root))
        second = (log_coef + j * log_q + i * log_1q + (j * j - j) / (2 * sigma ** 2)
                  + math.log(0.5) + _log_erfc((z0 - j) / root))
        if coef > 0:
            positive = _log_add(_log_add(positive, first), second)
        else:
            negative = _log_add(_log_add(negative, first), second)
        if i > alpha and max(first, second) < positive + _STOP:
            break
        coef *= (alpha - i) / (i + 1)
        i += 1
        if coef == 0:
            break
        if i > _MAX_TERMS:
            return math.inf
    if negative == -math.inf:
        return positive
    return positive + math.log1p(-math.exp(negative - positive))


def _check(q: float, sigma: float) -> None:
    if not (isinstance(q, int | float) and 0 <= q <= 1):
        raise ConfigError(f"the sampling rate q must be in [0, 1], got {q!r}")
    if not (isinstance(sigma, int | float) and sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"the noise multiplier must be a positive number, got {sigma!r}")


@functools.lru_cache(maxsize=256)
def rdp_step(q: float, sigma: float) -> tuple[float, ...]:
    """The RDP of one step of the Poisson-subsampled Gaussian mechanism (sampling rate q,
    noise multiplier σ) at each of ORDERS."""
    _check(q, sigma)
    if q == 0:
        return tuple(0.0 for _ in ORDERS)
    if q == 1:  # no sampling: the Gaussian mechanism, α / 2σ²
        return tuple(a / (2 * sigma ** 2) for a in ORDERS)
    out = []
    for alpha in ORDERS:
        if float(alpha).is_integer():
            log_a = _log_a_integer(q, sigma, int(alpha))
        else:
            log_a = _log_a_fractional(q, sigma, alpha)
        out.append(max(log_a, 0.0) / (alpha - 1))
    return tuple(out)


def epsilon_of_rdp(rdp: tuple[float, ...] | list[float], delta: float) -> float:
    """The smallest ε over ORDERS of an RDP curve, at δ (Balle et al. 2020, Prop. 12)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be between 0 and 1, got {delta!r}")
    best = math.inf
    for alpha, r in zip(ORDERS, rdp, strict=True):
        if r == math.inf:
            continue
        if delta ** 2 + math.expm1(-r) > 0:  # δ ≥ √(1 − e^(−KL)): ε = 0 already
            return 0.0
        if alpha > 1.01:  # the bound is numerically unstable as α → 1
            eps = r + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
            best = min(best, eps)
    return max(0.0, best)


def epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """ε(δ) after `steps` steps of DP-SGD with noise multiplier σ and sampling rate q."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps!r}")
    if steps == 0:
        _check(q, sigma)
        return 0.0
    return epsilon_of_rdp([steps * r for r in rdp_step(q, sigma)], delta)


def noise_for_epsilon(target: float, q: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier σ, to 4 decimals (rounded up), for which `steps` steps at
    sampling rate q stay within ε = target at δ."""
    if not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"the target epsilon must be a positive number, got {target!r}")
    low, high = 0.05, 1.0
    while epsilon(high, q, steps, delta) > target:
        low, high = high, high * 2
        if high > 1e6:
            raise ConfigError(f"no noise multiplier reaches epsilon {target} in {steps} steps")
    while high - low > 5e-5:
        mid = (low + high) / 2
        low, high = (low, mid) if epsilon(mid, q, steps, delta) <= target else (mid, high)
    sigma = math.ceil(high * 1e4) / 1e4
    while epsilon(sigma, q, steps, delta) > target:  # rounding must not cross the target
        sigma = round(sigma + 1e-4, 4)
    return sigma


# --- the Skellam mechanism (distributed DP with secure aggregation) -------------------------
#
# An integer vector released with independent symmetric Skellam noise of variance μ per
# coordinate (the difference of two Poisson(μ/2)) is, for every integer order α > 1,
# (α, ε(α))-RDP with (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially
# Private Federated Learning", NeurIPS 2021, Theorem 3.5 at scale 1)
#
#     ε(α) = α Δ2² / (2μ) + min( ((2α − 1) Δ2² + 6 Δ1) / (4μ²),  3 Δ1 / (2μ) ),
#
# Δ1 and Δ2 the L1 and L2 sensitivities of the integer vector. The first term is the
# Gaussian mechanism's of the same variance; the second what being discrete costs. The bound
# holds for integer orders only: fractional ones are left out (RDP ∞), which can only raise ε.


def skellam_rdp(delta1: float, delta2: float, variance: float) -> tuple[float, ...]:
    """The RDP of one release with Skellam noise of `variance` per coordinate, L1 and L2
    sensitivities Δ1 and Δ2, at each of ORDERS (∞ at the fractional ones; ∞ everywhere
    without noise)."""
    for name, value in (("L1 sensitivity", delta1), ("L2 sensitivity", delta2)):
        if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
            raise ConfigError(f"the {name} must be a non-negative number, got {value!r}")
    if not (isinstance(variance, int | float) and variance >= 0 and math.isfinite(variance)):
        raise ConfigError(f"the noise variance must be a non-negative number, got {variance!r}")
    if delta2 == 0:
        return tuple(0.0 for _ in ORDERS)
    if variance == 0:
        return tuple(math.inf for _ in ORDERS)
    mu, d1, d2sq = float(variance), float(delta1), float(delta2) ** 2
    out = []
    for alpha in ORDERS:
        if not float(alpha).is_integer():
            out.append(math.inf)
            continue
        out.append(alpha * d2sq / (2 * mu)
                   + min(((2 * alpha - 1) * d2sq + 6 * d1) / (4 * mu * mu), 3 * d1 / (2 * mu)))
    return tuple(out)


def compose(*curves: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """The RDP of releases in sequence: their curves added order by order."""
    total = [0.0] * len(ORDERS)
    for curve in curves:
        for i, r in enumerate(curve):
            total[i] += r
    return tuple(total)
