"""Learner-level differential privacy under secure aggregation (SPEC.md §14.16): the Skellam
accountant against the exact Rényi divergence, the plan's refusals, the learners' noise, and
whole federations whose published models carry the planned noise, whose ε the audit
recomputes from the plan and the chain, and whose learners stop at the plan's budget."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import special  # scikit-learn's dependency: always installed
from test_secure_rounds import CLIP, RANGE, WIDTH, WideLearner, secure_config, wide_initial

from fedchain.audit import audit_federation
from fedchain.cli import devnet
from fedchain.cli import main as cli_main
from fedchain.errors import ConfigError, PrivacyError
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode
from fedchain.privacy import accountant
from fedchain.privacy import quantize as Q
from fedchain.privacy.distributed import (
    DistributedDP,
    Noise,
    add_noise,
    centred,
    clip_l2,
    distributed_ledger,
)
from fedchain.protocol.ledger import Ledger
from fedchain.protocol.params import Plan
from fedchain.protocol.secure import SecureRound

# --- the accountant -------------------------------------------------------------------------


def exact_skellam_rdp(alpha: int, shift: int, variance: float) -> float:
    """D_α(Sk + shift ‖ Sk) for symmetric Skellam noise of `variance`, summed over the
    integers: Sk(λ, λ) with λ = variance/2 has P(k) = e^(−2λ) I_|k|(2λ) = ive(|k|, 2λ)."""
    lam = variance / 2
    width = int(60 * math.sqrt(variance)) + 60 + abs(shift)
    k = np.arange(-width, width + 1)
    p, q = special.ive(np.abs(k), 2 * lam), special.ive(np.abs(k - shift), 2 * lam)
    keep = (p > 0) & (q > 0)  # where either underflows, its term is far below the sum's
    terms = alpha * np.log(q[keep]) + (1 - alpha) * np.log(p[keep])
    top = terms.max()
    return float((top + np.log(np.exp(terms - top).sum())) / (alpha - 1))


@pytest.mark.parametrize("variance", [2.0, 20.0, 400.0])
def test_the_skellam_bound_holds_and_is_close_to_the_exact_divergence(variance: float) -> None:
    """One coordinate, sensitivity Δ: the bound (Agarwal et al. 2021, Thm 3.5) is never below
    the exact Rényi divergence, and within the discretisation term of it."""
    shift = 3
    bound = accountant.skellam_rdp(shift, shift, variance)
    for i, alpha in enumerate(accountant.ORDERS):
        if not float(alpha).is_integer() or alpha > 40:
            continue
        exact = exact_skellam_rdp(int(alpha), shift, variance)
        assert bound[i] >= exact * (1 - 1e-9)
        gaussian = alpha * shift ** 2 / (2 * variance)
        assert bound[i] - gaussian <= 3 * shift / (2 * variance) + 1e-12
    # Fractional orders are left out (∞), which only raises ε.
    assert all(r == math.inf for a, r in zip(accountant.ORDERS, bound, strict=True)
               if not float(a).is_integer())


def test_with_much_noise_the_skellam_epsilon_is_the_gaussian_mechanisms() -> None:
    """Skellam noise of variance (σΔ)² tends to the Gaussian mechanism of multiplier σ: the
    ε of 10 releases agrees with the Gaussian accountant's (q = 1) over the same (integer)
    orders to 0.1 %, and with its full list of orders to 3 %."""
    sigma, delta2 = 1.1, 1000.0
    curve = accountant.skellam_rdp(delta2 * 30, delta2, (sigma * delta2) ** 2)
    skellam = accountant.epsilon_of_rdp([10 * r for r in curve], 1e-5)
    gaussian = accountant.rdp_step(1.0, sigma)
    integer = [10 * g if float(a).is_integer() else math.inf
               for a, g in zip(accountant.ORDERS, gaussian, strict=True)]
    assert skellam == pytest.approx(accountant.epsilon_of_rdp(integer, 1e-5), rel=1e-3)
    assert skellam >= accountant.epsilon_of_rdp(integer, 1e-5)  # discrete: never cheaper
    assert skellam == pytest.approx(accountant.epsilon(sigma, 1.0, 10, 1e-5), rel=0.03)


def test_the_spec_vector_of_the_ledger() -> None:
    """SPEC.md §14.16's vector: clip 0.5, range 32767, C = 1, z = 1, m = 5, d = 6378, δ = 1e-5:
    the figures a third party's implementation must reproduce."""
    dp = DistributedDP(clip_norm=1.0, noise_multiplier=1.0, min_learners=5, budget=11.0,
                       dimension=6378)
    noise = Noise.of(dp, 0.5, RANGE, 6378)
    assert noise.delta2 == 65534.0 * 1.0 + math.sqrt(6378) + 1.0
    assert noise.headroom == 293449
    assert noise.lam == pytest.approx(430531016.536056, rel=1e-12)
    one = noise.epsilon(noise.round_rdp(4))
    assert one == pytest.approx(5.37773, abs=5e-5)
    assert noise.epsilon(noise.round_rdp(99)) == pytest.approx(0.901758, abs=5e-6)
    assert noise.max_rounds() == 3


def test_the_spec_vector_recomputed_from_the_text_alone() -> None:
    """SPEC.md §14.16.2 and §14.16.5 implemented again from the text with the standard
    library only (no fedchain code), on the section's vector."""
    c, r, clip_norm, z, L, d, delta = 0.5, 32767, 1.0, 1.0, 5, 6378, 1e-5
    s = float(r) / c
    delta2 = (s * clip_norm + math.sqrt(d)) + 1.0
    delta1 = min(math.sqrt(d) * delta2, delta2 * delta2)
    sigma = (z * delta2) / math.sqrt(L)
    orders = [*range(2, 64), 128, 256, 512, 1024]

    def rdp(others: int) -> list[float]:
        mu = others * sigma * sigma
        return [a * delta2 ** 2 / (2 * mu) + min(((2 * a - 1) * delta2 ** 2 + 6 * delta1)
                                                   / (4 * mu * mu), 3 * delta1 / (2 * mu))
                for a in orders]

    def eps(curve: list[float]) -> float:
        if any(delta ** 2 + math.expm1(-x) > 0 for x in curve):
            return 0.0
        return max(0.0, min(x + math.log(1 - 1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
                            for a, x in zip(orders, curve, strict=True)))

    assert math.ceil(10 * sigma) + 10 == 293449
    assert sigma * sigma / 2 == pytest.approx(430531016.536056, rel=1e-12)
    assert eps(rdp(4)) == pytest.approx(5.37773, abs=5e-5)
    assert eps(rdp(99)) == pytest.approx(0.901758, abs=5e-6)
    worst = rdp(L - 1)
    assert max(k for k in range(1, 50) if eps([k * x for x in worst]) <= 11.0) == 3


# --- the plan -------------------------------------------------------------------------------


def test_a_dp_plan_refuses_public_noise_and_what_cannot_hold() -> None:
    base = {"strategy": {"name": "FedAvg"}, "rounds": 1, "update_window": 60,
            "vote_window": 60, "privacy": "secagg"}
    ok = {"clip": 1.0, "key_window": 10, "reveal_window": 10}
    dp = {"clip_norm": 1.0, "noise_multiplier": 1.0, "min_learners": 3}
    Plan(**base, secagg={**ok, "dp": dp})
    for bad, why in [
        ({**dp, "noise_seed": "0x01"}, "public seed gives no privacy"),
        ({**dp, "seed": 7}, "public seed gives no privacy"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0}, "needs min_learners"),
        ({**dp, "min_learners": 1}, "min_learners must be an integer in 2"),
        ({**dp, "noise_multiplier": 0}, "noise_multiplier must be a number in 0.01"),
        ({**dp, "noise_multiplier": 1e-200}, "less gives no meaningful privacy"),
        ({**dp, "delta": 1.5}, "delta must be a number between 0 and 1"),
        ({**dp, "budget": -1}, "budget must be a positive"),
        ({**dp, "epsilon": 3}, "unknown secagg.dp parameters"),
        ({**dp, "clip_norm": 1e7}, "more than 2\\^20 times"),
    ]:
        with pytest.raises(ConfigError, match=why):
            Plan(**base, secagg={**ok, "dp": bad})
    with pytest.raises(ConfigError, match="more than group_size"):
        Plan(**base, secagg={**ok, "group_size": 2, "dp": dp})


# --- the learners' noise ------------------------------------------------------------------


def test_the_shares_sum_to_the_planned_noise_and_decode_signed() -> None:
    """m learners' shares have the planned variance (z·Δ2)² together; a sum that goes below
    zero mod 2^k reads back signed; one out of range is refused."""
    dp = DistributedDP(clip_norm=0.01, noise_multiplier=0.5, min_learners=4)
    d = 50_000
    noise = Noise.of(dp, CLIP, RANGE, d)
    bits = Q.bits_needed(4, RANGE + noise.headroom)
    rng = np.random.default_rng(7)
    zero = np.full(d, RANGE, np.uint64)  # a difference of zero, shifted (§14.1)
    shares = [add_noise(zero, noise, bits, rng) for _ in range(4)]
    total = np.zeros(d, np.uint64)
    for s in shares:
        total = (total + s) & np.uint64((1 << bits) - 1)
    c = centred(total, 4, RANGE, bits, noise.headroom)
    assert c.min() < 0 < c.max()  # noise below zero came back signed
    assert np.std(c) == pytest.approx(dp.noise_multiplier * noise.delta2, rel=0.02)
    assert abs(float(np.mean(c))) < 0.05 * np.std(c)
    bad = total.copy()
    # Centred at −2^(k−1): far outside what 4 honest learners can give.
    bad[0] = np.uint64((4 * RANGE + (1 << (bits - 1))) % (1 << bits))
    with pytest.raises(PrivacyError, match="out of range"):
        centred(bad, 4, RANGE, bits, noise.headroom)
    v = np.full(100, 1.0)
    assert float(np.linalg.norm(clip_l2(v, 2.0))) == pytest.approx(2.0)
    assert np.array_equal(clip_l2(v * 0.01, 2.0), v * 0.01)


def test_the_ledger_counts_released_rounds_with_the_others_noise() -> None:
    dp = DistributedDP(clip_norm=1.0, noise_multiplier=1.0, min_learners=3, budget=30.0,
                       dimension=100)
    noise = Noise.of(dp, CLIP, RANGE, 100)
    rounds = [(1, [["a", "b", "c"]], ()), (2, [["a", "b"]], ()), (3, [["a", "b", "c", "d"]], ())]
    ledgers = {x.learner: x for x in distributed_ledger(noise, rounds)}
    a = ledgers["a"]
    assert [e.released for e in a.entries] == [True, False, True]
    assert a.rounds == 2
    want = noise.epsilon(accountant.compose(noise.round_rdp(2), noise.round_rdp(3)))
    assert a.epsilon == pytest.approx(want)
    assert ledgers["d"].epsilon == pytest.approx(noise.epsilon(noise.round_rdp(3)))
    assert a.entries[1].epsilon == a.entries[0].epsilon  # the unreleased round adds nothing


# --- whole federations ---------------------------------------------------------------------


def dp_config(rounds: int, learners: int, **dp: object) -> object:
    return secure_config(rounds, learners, updates=10,
                         dp={"clip_norm": 2.0, "noise_multiplier": 0.5, "min_learners": 3,
                             **dp})


def test_a_dp_federation_publishes_the_noisy_mean_and_stops_at_the_budget(tmp_path,
                                                                          capsys) -> None:
    """5 learners on an Anvil node of the test's own, the budget of exactly one round: round
    1's model is the mean of the clipped differences plus Skellam noise of the planned
    spread; nobody takes part in round 2; the audit and `fedchain privacy` recompute every
    learner's ε from the plan and the chain."""
    n = 5
    dp = DistributedDP(clip_norm=2.0, noise_multiplier=0.5, min_learners=3, dimension=WIDTH)
    probe = Noise.of(dp, CLIP, RANGE, WIDTH)
    one = probe.epsilon(probe.worst_round())
    two = probe.epsilon([2 * r for r in probe.worst_round()])
    budget = round((one + two) / 2, 3)
    node = devnet.start_anvil()
    try:
        store_url = f"file://{tmp_path / 'store'}"
        result = simulate(lambda i, _: WideLearner(i), n, config=dp_config(2, n, budget=budget),
                          initial_weights=wide_initial(), aggregators=3, engine="threads",
                          chain=node.url, store=store_url, timeout=600)
        contract, store = result.contract, result.store
        report = audit_federation(contract, store)
        out = tmp_path / "privacy.json"
        status = cli_main(["privacy", "--chain", node.url, "--contract", contract.address,
                           "--store", store_url, "--json", str(out)])
        plan = Plan.load(store, contract.plan())
        published = contract.published(1)
        round_one, updates = contract.updates(1), contract.updates(2)
    finally:
        node.stop()
    assert plan.secagg is not None and plan.secagg["dp"]["dimension"] == WIDTH  # genesis filled
    assert published is not None and len(published.included) == n
    new = decode(store.get(published.model_cid.require(), 1 << 20))["w"].astype(np.float64)
    clipped = np.mean([clip_l2(WideLearner(i).step(1).astype(np.float64), 2.0)
                       for i in range(n)], axis=0)
    s = RANGE / CLIP
    spread = probe.share_sd * math.sqrt(n) / s / n  # n shares, dequantized, averaged
    error = new - clipped
    assert np.std(error) == pytest.approx(spread, rel=0.25)
    assert abs(float(np.mean(error))) < 5 * spread / math.sqrt(WIDTH)
    # Round 2: every learner's budget allows one round, so nobody took part.
    assert updates == []
    assert {u.num_examples for u in round_one} == {1}  # record counts are not published
    assert all(x.budget_spent == 2 for x in result.learners)
    assert report.exit_status() == 0, report.failures()
    ledgers = report.distributed
    assert len(ledgers) == n
    want = probe.epsilon(probe.round_rdp(n - 1))
    for ledger in ledgers:
        assert ledger.rounds == 1 and ledger.epsilon == pytest.approx(want, rel=1e-3)
        assert ledger.epsilon <= budget
    # `fedchain privacy` prints and writes the same ledger, and passes.
    assert status == 0
    shown = json.loads(out.read_text())["distributed"]
    assert [x["epsilon"] for x in shown] == pytest.approx([x.epsilon for x in ledgers])
    assert all(x["ok"] and x["rounds"] == 1 for x in shown)
    assert "distributed DP" in capsys.readouterr().out


@pytest.mark.parametrize("holders", ["honest", "rogue"])
def test_a_group_below_min_learners_is_not_unmasked(holders: str, monkeypatch) -> None:
    """min_learners 4, two of five learners vanish after posting keys: the three that
    finished are too few, so honest holders reveal no key of theirs and the round carries
    over. Rogue holders that reveal anyway (all three: the threshold) do not change the
    outcome, but their keys make the three learners' noisy sum public: the audit fails them
    and counts the round against the learners, with the noise of the two others."""
    if holders == "rogue":
        from fedchain.federation import aggregator
        from fedchain.protocol import secure

        def reveal_anyway(view, keys, record):  # type: ignore[no-untyped-def]
            blind = dataclasses.replace(view, params=dataclasses.replace(view.params, dp=None))
            return secure.holder_revelation(blind, keys, record)

        monkeypatch.setattr(aggregator, "holder_revelation", reveal_anyway)
    n = 5
    result = simulate(lambda i, _: WideLearner(i, fail=i in (1, 3)), n,
                      config=dp_config(1, n, min_learners=4), initial_weights=wide_initial(),
                      aggregators=3, engine="threads", timeout=600)
    contract, store = result.contract, result.store
    published = contract.published(1)
    assert published is not None and published.included == ()  # carried over either way
    new = decode(store.get(published.model_cid.require(), 1 << 20))
    assert np.array_equal(new["w"], wide_initial()["w"])
    plan = Plan.load(store, contract.plan())
    view = SecureRound.of(plan, Ledger(contract).record(1, facts=True))
    report = audit_federation(contract, store)
    finished = {x.learner for x in report.distributed}
    assert len(finished) == 3
    if holders == "honest":
        assert all(not by for by in view.revealed.values())  # no key of the group revealed
        assert report.exit_status() == 0, report.failures()
        assert all(not e.released for x in report.distributed for e in x.entries)
        return
    assert len(view.revealed) == 3 and all(view.revealed.values())
    blamed = [c for c in report.failures() if "revealed keys of group 0" in c.detail]
    assert len(blamed) == 1 and all(h in blamed[0].detail for h in view.holders)
    noise = Noise.of(DistributedDP.parse(plan.secagg["dp"]), CLIP, RANGE, WIDTH)
    for x in report.distributed:
        assert [e.released for e in x.entries] == [True]
        assert x.epsilon == pytest.approx(noise.epsilon(noise.round_rdp(2)), rel=1e-3)


def test_genesis_refuses_a_dp_plan_that_cannot_hold_and_the_ledger_fails_no_noise() -> None:
    from fedchain.federation.config import RunConfig

    config = secure_config(1, 5, dp={"clip_norm": 1.0, "noise_multiplier": 1.0,
                                     "min_learners": 6})
    with pytest.raises(ConfigError, match="at most 5 learners take part"):
        config.plan(5, committee=3, model=wide_initial())
    assert config.plan(6, committee=3, model=wide_initial()).secagg["dp"]["dimension"] == WIDTH
    huge = dataclasses.replace(config, secagg={**config.secagg, "dp": {
        "clip_norm": 1e5, "noise_multiplier": 1e5, "min_learners": 2}})
    assert isinstance(huge, RunConfig)
    with pytest.raises(ConfigError, match="does not fit the initial model.*Poisson mean"):
        huge.plan(6, committee=3, model=wide_initial())
    with pytest.raises(ConfigError, match="the initial model has 256"):
        dataclasses.replace(config, secagg={**config.secagg, "dp": {
            **config.secagg["dp"], "dimension": 99}}).plan(6, committee=3, model=wide_initial())
    # A group exposed with no other learner in it: no noise protects it.
    dp = DistributedDP(clip_norm=1.0, noise_multiplier=1.0, min_learners=3, dimension=WIDTH)
    alone = distributed_ledger(Noise.of(dp, CLIP, RANGE, WIDTH), [(1, [["a"]], [0])])
    assert alone[0].epsilon == math.inf and not alone[0].ok
    # max_rounds never answers a cap it did not check.
    capped = Noise.of(dataclasses.replace(dp, budget=1e9), CLIP, RANGE, WIDTH)
    assert capped.max_rounds(cap=3) == 3
    tight = Noise.of(dataclasses.replace(dp, budget=capped.epsilon(
        [2.5 * r for r in capped.worst_round()])), CLIP, RANGE, WIDTH)
    assert tight.max_rounds(cap=3) == 2
