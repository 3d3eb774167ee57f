"""Secure aggregation in real rounds (SPEC.md §14): the contract's postSecagg on every chain,
whole federations with a committee of three on the embedded chain and on Anvil, a third of a
round dropping after posting its keys, and what the public view does and does not reveal.

Learners are the deterministic numpy learners of fedmodels.py (and a wider one here), so the
test knows each learner's update and can check the published model against the plain mean of
the learners' differences, to within the quantization step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fixtures.chains import Federation

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import audit_federation
from fedchain.errors import (
    ConfigError,
    FedChainError,
    NotAggregator,
    PrivacyError,
    SecaggMessage,
    UpdateDeadlinePassed,
)
from fedchain.eth.accounts import aggregator_index
from fedchain.eth.contract import RoundParams
from fedchain.eth.events import SecaggPosted
from fedchain.federation.config import RunConfig
from fedchain.federation.learner import EvalResult, Learner, TrainResult
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode
from fedchain.privacy import quantize as Q
from fedchain.privacy import secagg as S
from fedchain.privacy.prg import prg_words
from fedchain.protocol import rules
from fedchain.protocol.ledger import Ledger
from fedchain.protocol.params import Plan
from fedchain.protocol.secure import (
    KEYS,
    MASKED_LAYER,
    REVEAL,
    SecureRound,
    master_secret,
)

CLIP, RANGE = 0.5, (1 << 15) - 1
WIDTH = 256


def secure_config(rounds: int, learners: int, updates: int = 60, **secagg: object) -> RunConfig:
    """A secure plan whose windows fit py-evm's clock: every block is stamped a second after
    its parent, so a busy key phase runs the chain's clock ahead (the phases end early once
    everyone is in, so long windows cost nothing; `updates`: the seconds after the key
    deadline for the masked updates, which a round with dropouts waits for)."""
    keys = 2 * learners + 20
    return RunConfig(strategy=FedAvg(), rounds=rounds, min_updates=1,
                     update_window=keys + updates, vote_window=120, privacy="secagg",
                     secagg={"clip": CLIP, "range": RANGE, "key_window": keys,
                             "reveal_window": 60, **secagg})


class WideLearner(Learner):
    """A learner whose update moves each of WIDTH weights by its own seeded step (|step| <
    CLIP), so that the test knows every update; a float32 layer and an int64 counter."""

    def __init__(self, i: int, fail: bool = False) -> None:
        self.i, self.fail = i, fail

    def get_weights(self):  # type: ignore[no-untyped-def]
        return wide_initial()

    def set_weights(self, weights):  # type: ignore[no-untyped-def]
        pass

    def step(self, round: int) -> np.ndarray:
        rng = np.random.default_rng(1000 * round + self.i)
        return rng.uniform(-0.4, 0.4, WIDTH).astype(np.float32)

    def train(self, weights, config):  # type: ignore[no-untyped-def]
        if self.fail:
            raise RuntimeError("this learner vanishes after posting its keys")
        w = (weights["w"] + self.step(int(config["round"]))).astype(np.float32)
        return TrainResult({"w": w, "n": weights["n"] + 1}, 10 + self.i)

    def evaluate(self, weights, config):  # type: ignore[no-untyped-def]
        return EvalResult(float(np.abs(weights["w"]).mean()), 10, {})


def wide_initial() -> dict[str, np.ndarray]:
    return {"w": np.zeros(WIDTH, np.float32), "n": np.zeros((), np.int64)}


# --- the contract --------------------------------------------------------------------------


def test_post_secagg_checks_roles_kinds_and_the_update_deadline(federation: Federation) -> None:
    fed = federation
    plan = Plan(strategy={"name": "FedAvg"}, rounds=2, update_window=300, vote_window=300,
                privacy="secagg", secagg={"clip": 1.0, "key_window": 100, "reveal_window": 100})
    fed.aggregator.set_genesis(b"\x12\x20" + bytes(32), b"\x12\x20" + bytes([1]) * 32,
                               RoundParams.from_plan(plan))
    keys = bytes(range(64))
    fed.aggregator.post_secagg(1, KEYS, keys)  # a member's keys
    fed.learners[0].post_secagg(1, KEYS, keys + b"dealing")  # a learner's, with a dealing
    with pytest.raises(NotAggregator):
        fed.stranger.post_secagg(1, KEYS, keys)  # neither a learner nor a member
    with pytest.raises(NotAggregator):
        fed.learners[0].post_secagg(1, REVEAL, b"x" * 25)  # revelations are the committee's
    with pytest.raises(SecaggMessage):
        fed.aggregator.post_secagg(1, 2, b"")  # no such kind
    fed.aggregator.post_secagg(1, REVEAL, b"revealed")
    fed.chain.advance_time(301)
    with pytest.raises(UpdateDeadlinePassed):
        fed.learners[1].post_secagg(1, KEYS, keys)  # keys only by the update deadline
    fed.aggregator.post_secagg(1, REVEAL, b"again")  # revelations after it, too
    posted = [e for e in fed.owner.events("SecaggPosted") if isinstance(e, SecaggPosted)]
    assert [(e.sender, e.kind, e.data) for e in posted] == [
        (fed.aggregator.account.address, KEYS, keys),
        (fed.learners[0].account.address, KEYS, keys + b"dealing"),
        (fed.aggregator.account.address, REVEAL, b"revealed"),
        (fed.aggregator.account.address, REVEAL, b"again"),
    ]


def test_a_secure_plan_refuses_what_it_cannot_do() -> None:
    base = {"strategy": {"name": "FedAvg"}, "rounds": 1, "update_window": 60,
            "vote_window": 60, "privacy": "secagg"}
    ok = {"clip": 1.0, "key_window": 10, "reveal_window": 10}
    Plan(**base, secagg=ok)
    for secagg, why in [
        (None, "needs a secagg object"),
        ({"clip": 1.0, "key_window": 10}, "needs reveal_window"),
        ({**ok, "clip": -1.0}, "clip must be a positive"),
        ({**ok, "key_window": 60}, "must end before the update deadline"),
        ({**ok, "reveal_window": 60}, "must end before the vote deadline"),
        ({**ok, "combine": "median"}, "needs groups"),
        ({**ok, "degree": 3}, "even"),
        ({**ok, "noise": 1}, "unknown secagg parameters"),
    ]:
        with pytest.raises(ConfigError, match=why):
            Plan(**base, secagg=secagg)
    with pytest.raises(ConfigError, match="plain FedAvg"):
        Plan(**{**base, "strategy": {"name": "FedAvg", "params": {"clip": 2.0}}}, secagg=ok)
    with pytest.raises(ConfigError, match="deadlines"):
        Plan(**{**base, "update_window": 0}, secagg=ok)


# --- whole federations ---------------------------------------------------------------------


def test_a_secure_federation_publishes_the_mean_and_no_update(own_clock_chain) -> None:
    n = 5
    result = simulate(lambda i, _: WideLearner(i), n, config=secure_config(2, n),
                      chain=own_clock_chain, initial_weights=wide_initial(), aggregators=3,
                      engine="threads", timeout=600)
    contract, store = result.contract, result.store
    learners = [WideLearner(i) for i in range(n)]
    previous = wide_initial()
    for round in (1, 2):
        published = contract.published(round)
        assert published is not None and len(published.included) == n
        new = decode(store.get(published.model_cid.require(), 1 << 20))
        # The plain mean of the learners' differences, to within one quantization step.
        mean = np.mean([x.step(round).astype(np.float64) for x in learners], axis=0)
        assert np.max(np.abs(new["w"] - (previous["w"] + mean))) <= CLIP / RANGE + 1e-6
        assert new["n"] == previous["n"]  # integer layers are carried over
        # What the store holds for each learner is its masked vector, not its update.
        for s in contract.updates(round):
            masked = decode(store.get(s.model_cid.require(), 1 << 20))
            assert list(masked) == [MASKED_LAYER] and masked[MASKED_LAYER].dtype == np.int32
        previous = new
    # Every learner re-derived every round, and the audit re-derives them from public data.
    assert all(node.verified == {1: True} for node in result.learners)
    report = audit_federation(contract, store)
    assert report.exit_status() == 0, report.failures()
    checks = [c for r in report.rounds for c in r.checks if c.what == "global model"]
    assert [c.detail for c in checks] == ["bit-identical to the recomputation"] * 2


def test_a_third_of_the_round_drops_after_posting_keys() -> None:
    n, dropping = 10, {2, 5, 8}
    result = simulate(lambda i, _: WideLearner(i, fail=i in dropping), n,
                      config=secure_config(1, n, updates=25), initial_weights=wide_initial(),
                      aggregators=3, engine="threads", timeout=600)
    contract, store = result.contract, result.store
    ledger = Ledger(contract)
    record = ledger.record(1, facts=True)
    plan = Plan.load(store, contract.plan())
    view = SecureRound.of(plan, record)
    gone = {result.learners[i].address.lower() for i in dropping}
    assert set(view.learners) >= gone  # they posted keys and shares, then vanished
    published = contract.published(1)
    assert published is not None
    assert {a.lower() for a in published.included} == set(view.learners) - gone
    # Each holder revealed the private-key share of the dropped, the self-mask share of the
    # others: never both for one learner.
    assert len(view.revealed) == 3
    for by_dealer in view.revealed.values():
        assert {d for d, (kind, _) in by_dealer.items() if kind == S.KEY} == gone
        assert {d for d, (kind, _) in by_dealer.items() if kind == S.SELF} == \
            set(view.learners) - gone
    mean = np.mean([WideLearner(i).step(1).astype(np.float64)
                    for i in range(n) if i not in dropping], axis=0)
    new = decode(store.get(published.model_cid.require(), 1 << 20))
    assert np.max(np.abs(new["w"] - mean)) <= CLIP / RANGE + 1e-6
    assert audit_federation(contract, store).exit_status() == 0


def test_the_public_view_reveals_the_sum_and_no_single_update() -> None:
    n = 4
    result = simulate(lambda i, _: WideLearner(i), n, config=secure_config(1, n),
                      initial_weights=wide_initial(), aggregators=3, engine="threads",
                      timeout=600)
    contract, store = result.contract, result.store
    plan = Plan.load(store, contract.plan())
    record = Ledger(contract).record(1, facts=True)
    view = SecureRound.of(plan, record)
    assert view.threshold == 2 and len(view.holders) == 3
    masked = {s.learner.lower(): decode(store.get(s.model_cid.require(), 1 << 20))[
        MASKED_LAYER].astype(np.uint64) for s in record.submissions}
    # Each learner's quantized difference, as only the learner itself can compute it (its
    # rounding seed comes from its own secret).
    quantized = {}
    for node, learner in zip(result.learners, range(n), strict=True):
        keys = S.RoundKeys.derive(master_secret(bytes(node.contract.account.key)),
                                  node.address, view.ctx)
        q = Q.quantize(WideLearner(learner).step(1).astype(np.float64), CLIP, RANGE,
                       keys.rounding_seed)
        quantized[keys.learner] = q
    mod = np.uint64((1 << view.bits) - 1)
    # The public view gives the exact sum: anyone unmasks Σ q_i from chain and store alone.
    revealed = {h: {d: k for d, (_, k) in by.items()} for h, by in view.revealed.items()}
    total = S.unmask_public(masked, view.announcements, view.dealings, revealed,
                            view.holders, view.graph, view.ctx, view.bits).total
    assert np.array_equal(total, sum(quantized.values()) & mod)
    for i in view.learners:
        # Everything public about learner i's vector: its self mask is public once revealed,
        # but what remains carries the pairwise masks of its (finished) neighbours...
        b_i = S.recover_secret(view.dealings[i], view.announcements[i], S.SELF,
                               {h: by[i] for h, by in revealed.items()}, view.holders, view.ctx)
        residual = (masked[i] - prg_words(b_i, WIDTH, view.bits)) & mod
        assert np.mean(residual == quantized[i]) < 0.05
        # ...whose seeds need a private key, and no revealed key opens a private-key share.
        with pytest.raises(PrivacyError):
            S.recover_secret(view.dealings[i], view.announcements[i], S.KEY,
                             {h: by[i] for h, by in revealed.items()}, view.holders, view.ctx)
    # Holders that collude pool the private-key shares they hold (each opens its own).
    chain = contract.chain
    members = [chain.account(aggregator_index(k)) for k in range(3)]
    holder_keys = {m.address.lower(): S.RoundKeys.derive(master_secret(bytes(m.key)),
                                                         m.address, view.ctx) for m in members}
    assert set(holder_keys) == set(view.holders)
    i = view.learners[0]
    pooled = {h: S.reveal_key(k, view.dealings[i], S.KEY, view.ctx)
              for h, k in sorted(holder_keys.items())}
    one, two = dict(list(pooled.items())[:1]), dict(list(pooled.items())[:2])
    # Below the threshold (one holder of three, t = 2): no private key, so no pairwise mask.
    with pytest.raises(PrivacyError, match="1 valid key shares of .*, 2 needed"):
        S.recover_secret(view.dealings[i], view.announcements[i], S.KEY, one, view.holders,
                         view.ctx)
    # At the threshold the private key comes out, and with it the learner's update: t is
    # exactly the trust the plan places in the committee.
    sk = S.recover_secret(view.dealings[i], view.announcements[i], S.KEY, two, view.holders,
                          view.ctx)
    b_i = S.recover_secret(view.dealings[i], view.announcements[i], S.SELF,
                           {h: by[i] for h, by in revealed.items()}, view.holders, view.ctx)
    y = (masked[i] - prg_words(b_i, WIDTH, view.bits)) & mod
    pk = view.announcements[i].public_key
    for j in view.graph[i]:
        words = prg_words(S.pairwise_seed(sk, i, pk, j, view.announcements[j].public_key,
                                          view.ctx), WIDTH, view.bits)
        y = (y - words) & mod if j > i else (y + words) & mod
    assert np.array_equal(y, quantized[i])


class AlignedWide(WideLearner):
    """Honest learners that agree: the round's direction and a little noise of their own."""

    def step(self, round: int) -> np.ndarray:
        common = np.random.default_rng(round).uniform(-0.2, 0.2, WIDTH)
        own = np.random.default_rng(1000 * round + self.i).normal(0, 0.02, WIDTH)
        return (common + own).astype(np.float32)


class RogueWide(AlignedWide):
    """A rogue that runs the quantizer: ten times the negated direction, which quantization
    clips to ±CLIP per coordinate. (One that masks arbitrary integers instead can move its
    group's mean within ±CLIP: bench/secagg.py --part forge.)"""

    def step(self, round: int) -> np.ndarray:
        return (-10 * np.random.default_rng(round).uniform(-0.2, 0.2, WIDTH)).astype(np.float32)


def test_groups_and_the_median_bound_a_rogue_inside_its_group() -> None:
    n, rogue = 9, 4
    config = secure_config(1, n, group_size=3, combine="median")
    result = simulate(lambda i, _: RogueWide(i) if i == rogue else AlignedWide(i), n,
                      config=config, initial_weights=wide_initial(), aggregators=3,
                      engine="threads", timeout=600)
    contract, store = result.contract, result.store
    plan = Plan.load(store, contract.plan())
    view = SecureRound.of(plan, Ledger(contract).record(1, facts=True))
    assert [len(g) for g in view.groups] == [3, 3, 3]
    published = contract.published(1)
    assert published is not None and len(published.included) == n
    new = decode(store.get(published.model_cid.require(), 1 << 20))["w"].astype(np.float64)
    honest = np.mean([AlignedWide(i).step(1) for i in range(n) if i != rogue], axis=0)
    mean = np.mean([np.clip((RogueWide(i) if i == rogue else AlignedWide(i)).step(1),
                            -CLIP, CLIP) for i in range(n)], axis=0)
    # The median of the group means stays with the honest groups; a mean is dragged away.
    assert np.linalg.norm(new - honest) < 0.3 * np.linalg.norm(mean - honest)
    assert audit_federation(contract, store).exit_status() == 0


def test_a_learner_that_masks_garbage_fails_its_group_only(tmp_path) -> None:
    """The rule on a real round whose submissions are then replaced: one learner's masked
    update swapped for random values (as a learner that masks wrongly would send). With
    groups, its group is left out and named; with one group, the round carries over."""
    from dataclasses import replace as swap

    from fedchain.eth.events import ChainCid
    from fedchain.model.codec import encode
    from fedchain.protocol.fetching import fetch_updates
    from fedchain.protocol.round import run_round

    n = 6
    for group_size, carried in ((3, False), (0, True)):
        result = simulate(lambda i, _: WideLearner(i), n,
                          config=secure_config(1, n, group_size=group_size),
                          initial_weights=wide_initial(), aggregators=3, engine="threads",
                          timeout=600)
        contract, store = result.contract, result.store
        plan = Plan.load(store, contract.plan())
        record = Ledger(contract).record(1, facts=True)
        view = SecureRound.of(plan, record)
        victim = record.submissions[0]
        garbage = np.random.default_rng(7).integers(0, 1 << view.bits, WIDTH).astype(np.int32)
        cid = store.put(encode({MASKED_LAYER: garbage}))
        record.submissions[0] = swap(victim, model_cid=ChainCid(bytes(cid)))

        def fetch(subs, reference, store=store):  # type: ignore[no-untyped-def]
            return fetch_updates(store, subs, max_bytes=1 << 20, reference=reference)

        outcome = run_round(plan, FedAvg(), record, fetch, wide_initial())
        reasons = {r.learner: r.reason for r in outcome.excluded}
        if carried:
            assert outcome.carried_over is not None and not outcome.included
            assert "out of range" in outcome.carried_over_because
        else:
            (group,) = [g for g in view.groups if victim.learner.lower() in g]
            assert {a.lower() for a in reasons} == set(group)
            assert all("cannot be unmasked" in why for why in reasons.values())
            assert len(outcome.included) == n - len(group)


def test_a_sampled_secure_round_takes_only_the_sample() -> None:
    n = 8
    config = secure_config(2, n)
    config = dataclasses.replace(config, fraction=0.5)
    result = simulate(lambda i, _: WideLearner(i), n, config=config,
                      initial_weights=wide_initial(), aggregators=3, engine="threads",
                      timeout=600)
    contract, store = result.contract, result.store
    plan = Plan.load(store, contract.plan())
    ledger = Ledger(contract)
    for round in (1, 2):
        record = ledger.record(round, facts=True)
        assert record.seed is not None  # the first keys message drew it
        view = SecureRound.of(plan, record)
        sampled = {a.lower() for a, i in record.facts.indices.items()
                   if rules.is_selected(record.seed, i, plan_ppm(plan))}
        assert set(view.learners) == sampled and len(sampled) == n // 2
        published = contract.published(round)
        assert published is not None and {a.lower() for a in published.included} == sampled
    assert audit_federation(contract, store).exit_status() == 0


def plan_ppm(plan: Plan) -> int:
    return rules.fraction_to_ppm(plan.fraction)


def test_a_secure_round_where_nobody_posted_keys_needs_no_chain_facts() -> None:
    """A learner that submits without posting keys (and nobody else posting any): the round's
    set is empty, so every re-derivation (a learner's, the audit's, which read no chain facts
    for a round without SecaggPosted events) carries it over, fetching nothing."""
    from fedchain.eth.events import ChainCid, UpdateSubmitted
    from fedchain.protocol.ledger import RoundRecord
    from fedchain.protocol.round import run_round

    plan = Plan(strategy={"name": "FedAvg"}, rounds=2, update_window=60, vote_window=60,
                privacy="secagg", secagg={"clip": 1.0, "key_window": 10, "reveal_window": 10})
    rogue = "0x" + "ab" * 20
    submission = UpdateSubmitted(7, "0x" + "00" * 32, 0, 1, rogue, ChainCid(b"\x01" * 36), 10)
    record = RoundRecord(1, ChainCid(b""), submissions=[submission])

    def fetch(subs, reference):  # type: ignore[no-untyped-def]
        raise AssertionError(f"nothing is to be fetched, not {subs}")

    outcome = run_round(plan, FedAvg(), record, fetch, wide_initial())
    assert outcome.carried_over is not None and not outcome.included
    (rejected,) = outcome.excluded
    assert rejected.learner == rogue and "posted no keys" in rejected.reason
    # With messages on record, the chain facts are required: a caller's error, said plainly.
    record.secagg = [SecaggPosted(7, "0x" + "00" * 32, 1, 1, rogue, KEYS, b"")]
    with pytest.raises(FedChainError, match="facts=True"):
        run_round(plan, FedAvg(), record, fetch, wide_initial())
