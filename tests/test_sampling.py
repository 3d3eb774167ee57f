"""Exact-count client sampling: a round with sampling selects exactly ⌈f·n⌉ of its n learner
indices, by a permutation its seed draws (four Feistel rounds over keccak256, cycle-walking),
and fedchain.protocol.rules mirrors the contract bit for bit.

- pure: for many seeds and sizes, exactly k of n selected, and the positions a permutation;
- the contract (embedded chain, Anvil, Ganache): `samplePosition` equals the mirror for random
  seeds and indices; real rounds' seeds carry n and k and select exactly k;
- a federation with fraction 0.5 of 10 learners aggregates every round (the Bernoulli draws
  it replaces picked 2 of 10 in a round, below the quorum, and the round carried over).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from fedmodels import LinearLearner, initial_weights
from fixtures.chains import dev

from fedchain.aggregation.strategy import FedAvg
from fedchain.errors import NotSelected, VotingNotOpen
from fedchain.eth import events as ev
from fedchain.eth.chain import Chain
from fedchain.eth.contract import FedChain, RoundParams
from fedchain.federation.config import RunConfig
from fedchain.federation.simulation import simulate
from fedchain.protocol.rules import (
    fraction_to_ppm,
    is_selected,
    plan_min_updates,
    sample_of,
    sample_position,
    sample_size,
)
from fedchain.storage.local import LocalStore


def cid(tag: str) -> bytes:
    return b"\x01\x55\x12\x20" + hashlib.sha256(tag.encode()).digest()


def packed_seed(rng: random.Random, n: int, k: int) -> bytes:
    """A seed as the contract makes one: 192 random bits, then n and k in the low 64."""
    return ((rng.getrandbits(192) << 64) | (n << 32) | k).to_bytes(32, "big")


# --- the rule --------------------------------------------------------------------------------


def test_sample_size_is_the_ceiling_of_the_share_in_integer_arithmetic() -> None:
    assert sample_size(fraction_to_ppm(0.5), 10) == 5
    assert sample_size(fraction_to_ppm(0.1), 30) == 3  # 0.1 * 30 is 3.0000000000000004
    assert sample_size(fraction_to_ppm(0.25), 10) == 3
    assert sample_size(fraction_to_ppm(0.001), 10) == 1  # never empty while anyone is there
    assert sample_size(fraction_to_ppm(1.0), 10) == 10 and sample_size(0, 7) == 7
    assert sample_size(fraction_to_ppm(0.5), 0) == 0
    # The default quorum is two thirds of the sample, so a full sample always reaches it.
    assert plan_min_updates(10, 0.5) == 4 and plan_min_updates(30, 0.1) == 2
    assert plan_min_updates(1000, 0.1) == 67 and plan_min_updates(10) == 7
    for n in range(1, 60):
        for f in (0.05, 0.1, 0.25, 1 / 3, 0.5, 0.9):
            assert 1 <= plan_min_updates(n, f) <= sample_size(fraction_to_ppm(f), n)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 16, 17, 64, 65, 255, 256, 257, 1000])
def test_every_seed_selects_exactly_k_of_n_by_a_permutation(n: int) -> None:
    rng = random.Random(n)
    for _ in range(40 if n <= 300 else 8):
        k = sample_size(rng.randrange(1, 1_000_001), n)
        seed = packed_seed(rng, n, k)
        assert sample_of(seed) == (n, k)
        positions = [sample_position(seed, i) for i in range(1, n + 1)]
        assert sorted(positions) == list(range(n))  # type: ignore[type-var]
        selected = [i for i in range(1, n + 1) if is_selected(seed, i, 1)]
        assert len(selected) == k
        assert not is_selected(seed, 0, 1) and not is_selected(seed, n + 1, 1)
        assert sample_position(seed, 0) is None and sample_position(seed, n + 1) is None
        assert all(is_selected(seed, i, 0) for i in range(n + 2))  # sampling off: everyone


def test_the_sample_changes_with_the_seed_and_spreads_over_the_learners() -> None:
    rng = random.Random(7)
    n, k, seeds = 10, 5, 2000
    picked = [0] * (n + 1)
    samples = set()
    for _ in range(seeds):
        seed = packed_seed(rng, n, k)
        chosen = tuple(i for i in range(1, n + 1) if is_selected(seed, i, 500_000))
        samples.add(chosen)
        for i in chosen:
            picked[i] += 1
    # Each learner is in about half the rounds (binomial sd 22: ±120 is over 5 sd), and the
    # seeds draw many different samples of the 252 possible.
    assert all(abs(picked[i] - seeds // 2) < 120 for i in range(1, n + 1)), picked
    assert len(samples) > 200


# --- the contract ----------------------------------------------------------------------------


def _deploy(chain: Chain, learners: int) -> tuple[FedChain, FedChain, list]:
    owner, aggregator = dev(chain, 0), dev(chain, 1)
    accounts = [dev(chain, i) for i in range(2, 2 + learners)]
    chain.fund([aggregator.address, *(a.address for a in accounts)])
    contract, _ = FedChain.deploy(chain, owner, aggregator.address)
    contract.add_learners([a.address for a in accounts])
    return contract, contract.with_account(aggregator), accounts


def test_the_contract_places_learners_as_the_mirror_does(chain: Chain) -> None:
    contract, _, _ = _deploy(chain, 0)
    rng = random.Random(2024)
    cases = []
    for n in (1, 2, 3, 5, 10, 16, 17, 100, 256, 1000, 4097, 70_000, 2**32 - 1):
        for _ in range(3):
            seed = packed_seed(rng, n, sample_size(rng.randrange(1, 1_000_001), n))
            indices = {0, 1, n, n + 1, *(rng.randrange(1, n + 1) for _ in range(3))}
            cases += [(seed, i) for i in sorted(indices)]
    for seed, index in cases:
        mirror = sample_position(seed, index)
        assert contract.sample_position(seed, index) == mirror, (seed.hex(), index)


def test_each_round_selects_exactly_half_of_ten_and_only_they_submit(chain: Chain) -> None:
    contract, agg, accounts = _deploy(chain, 10)
    ppm = fraction_to_ppm(0.5)
    agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    seen, seeds = set(), []
    for r in range(1, 5):
        seed = contract.round_seed()  # known before anyone submits (and draws it)
        assert sample_of(seed) == (10, 5)
        seeds.append(seed)
        chosen = [a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm)]
        assert [contract.is_selected(a.address) for a in accounts] == [
            a in chosen for a in accounts]
        assert len(chosen) == 5
        seen.add(seed)
        for a in chosen:
            contract.with_account(a).submit_update(r, cid(f"{r}/{a.address}"), 10)
        outsider = next(a for a in accounts if a not in chosen)
        with pytest.raises(NotSelected):
            contract.with_account(outsider).submit_update(r, cid("out"), 10)
        agg.publish_global(r, cid(f"g{r}"), [a.address for a in chosen])
    seeded = [e for e in contract.events("RoundSeeded") if isinstance(e, ev.RoundSeeded)]
    # Each round's first submission draws its seed; round 5 had none yet.
    assert [e.round for e in seeded] == [1, 2, 3, 4] and len(seen) == 4
    assert [e.seed for e in seeded] == list(seeds)


def test_a_sample_is_fixed_when_its_round_opens(chain: Chain) -> None:
    contract, agg, accounts = _deploy(chain, 4)
    ppm = fraction_to_ppm(0.5)
    agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    seed = contract.round_seed()
    late = dev(chain, 20)
    contract.add_learners([late.address])  # mid-round: not in this round's permutation
    assert contract.round_seed() == seed and sample_of(seed) == (4, 2)
    assert not contract.is_selected(late.address)
    agg.publish_global(1, cid("g1"), [])
    assert sample_of(contract.round_seed()) == (5, 3)  # the next round counts it


def test_the_whole_sample_in_opens_the_vote_before_the_update_deadline(chain: Chain) -> None:
    contract, agg, accounts = _deploy(chain, 6)
    ppm = fraction_to_ppm(0.5)
    agg.set_genesis(cid("genesis"), cid("plan"),
                    RoundParams(10, update_window=600, vote_window=600, select_ppm=ppm))
    seed = contract.round_seed()
    chosen = [a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm)]
    assert len(chosen) == 3
    for a in chosen[:2]:
        contract.with_account(a).submit_update(1, cid(a.address), 10)
    with pytest.raises(VotingNotOpen):  # one of the sample is missing
        agg.publish_global(1, cid("g1"), [a.address for a in chosen[:2]])
    contract.with_account(chosen[2]).submit_update(1, cid(chosen[2].address), 10)
    agg.publish_global(1, cid("g1"), [a.address for a in chosen])  # 3 of 6: all it selected
    assert contract.current_round() == 2


# --- a federation ----------------------------------------------------------------------------


def test_a_federation_sampling_half_of_ten_aggregates_every_round(tmp_path: Path) -> None:
    n, rounds = 10, 4
    result = simulate(
        lambda i, _: LinearLearner(i, num_examples=8), n, FedAvg(), rounds,
        store=LocalStore(tmp_path / "store", durable=False),
        config=RunConfig(fraction=0.5, poll_interval=0.05, round_timeout=120.0,
                         evaluation_timeout=5.0),
        train_config={"lr": 0.1, "steps": 1}, initial_weights=initial_weights(),
        engine="pool", workers=4, timeout=300.0,
    )
    contract = result.contract
    assert contract.finished()
    published = {e.round: e for e in contract.events("GlobalModelPublished")
                 if isinstance(e, ev.GlobalModelPublished)}
    assert sorted(published) == list(range(1, rounds + 1))
    assert not list(contract.events("RoundTimedOut"))
    for r in range(1, rounds + 1):
        submitters = {u.learner for u in contract.updates(r)}
        assert len(submitters) == 5, f"round {r}"
        # Aggregated (not carried over): the quorum of 4 of the 5 sampled was reached.
        assert set(published[r].included) == submitters, f"round {r}"
    assert [len(r.included) for r in result.rounds] == [5] * rounds
