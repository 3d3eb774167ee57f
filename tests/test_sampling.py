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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from fedmodels import LinearLearner, initial_weights
from fixtures.chains import dev
from web3.types import RPCEndpoint

from fedchain.aggregation.strategy import FedAvg
from fedchain.cli import devnet
from fedchain.errors import ChainError, FedChainError, NotSelected, SeedNotReady, VotingNotOpen
from fedchain.eth import events as ev
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain, RoundParams
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.simulation import simulate
from fedchain.protocol.rules import (
    draw_seed,
    fraction_to_ppm,
    is_selected,
    pending_seed_block,
    plan_min_updates,
    sample_of,
    sample_position,
    sample_size,
    seed_anchor,
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


def test_the_seed_anchor_is_the_opening_block_then_one_per_256_blocks() -> None:
    assert [seed_anchor(100, b) for b in (101, 356, 357, 612, 613)] == [100, 100, 356, 356, 612]
    with pytest.raises(ChainError, match="after its opening block 100"):
        seed_anchor(100, 100)  # in the opening block the seed cannot be known
    # The seed is keccak256(abi.encode(blockhash, contract, round)) with n and k in its low bits.
    seed = draw_seed(b"\x11" * 32, "0x" + "22" * 20, 3, 10, 5)
    assert sample_of(seed) == (10, 5) and pending_seed_block(seed) is None
    word = ((1234 << 64) | (10 << 32) | 5).to_bytes(32, "big")  # roundSeed() in block 1234
    assert pending_seed_block(word) == 1234 and sample_of(word) == (10, 5)


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


# --- the seed: drawn from the opening block's hash, in a later block (issue 18, item 9) -------


def test_the_seed_is_known_before_anyone_submits_and_not_in_the_opening_block(
    chain: Chain,
) -> None:
    # In the opening block (the head, on these automining nodes) the contract's views cannot
    # know the seed; fedchain computes it from the block's hash, and the first submission
    # draws exactly that.
    contract, agg, accounts = _deploy(chain, 8)
    ppm = fraction_to_ppm(0.5)
    opening = agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    assert chain.block_number() == opening.block_number
    assert pending_seed_block(bytes(contract._view("roundSeed"))) == opening.block_number
    assert contract.seed_block() == opening.block_number
    try:  # eth_call runs in the head block: the opening one
        contract._view("isSelected", accounts[0].address)
        refused: Exception | None = None
    except Exception as exc:  # the node's own exception type: decoded as fedchain does
        refused = contract.decode_revert(exc)
    assert isinstance(refused, SeedNotReady), refused
    block_hash = bytes(chain.w3.eth.get_block(opening.block_number)["hash"])
    seed = draw_seed(block_hash, contract.address, 1, 8, 4)
    assert contract.round_seed() == seed
    chosen = [a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm)]
    assert [contract.is_selected(a.address) for a in accounts] == [
        a in chosen for a in accounts]
    assert not list(contract.events("RoundSeeded"))  # nobody drew it yet
    first = contract.with_account(chosen[0]).submit_update(1, cid("u"), 10)
    [seeded] = contract.events("RoundSeeded")
    assert isinstance(seeded, ev.RoundSeeded) and (seeded.round, seeded.seed) == (1, seed)
    assert seeded.block == first.block_number > opening.block_number
    assert contract.seed_block() == 0 and contract.round_seed() == seed


def test_the_audit_reads_a_round_nobody_drew_the_seed_of_from_its_opening_block(
    chain: Chain,
) -> None:
    from fedchain.audit import read_federation

    contract, agg, accounts = _deploy(chain, 6)
    ppm = fraction_to_ppm(0.5)
    agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    undrawn = contract.round_seed()
    agg.publish_global(1, cid("g1"), [])  # round 1 closes with no submission: no seed drawn
    drawn = contract.round_seed()
    learner = next(a for i, a in enumerate(accounts, 1) if is_selected(drawn, i, ppm))
    contract.with_account(learner).submit_update(2, cid("u2"), 10)
    report = read_federation(contract, gas=False)
    notes = {c.round: (c.status, c.detail) for c in report.all_checks() if c.what == "selection"}
    assert notes == {
        1: ("note", "3 of 6 learners selected by the seed its opening block's hash gives (no "
                    f"submission drew it) 0x{undrawn.hex()[:16]}…"),
        2: ("note", f"3 of 6 learners selected by the round's seed 0x{drawn.hex()[:16]}…"),
    }


@pytest.fixture(scope="module")
def own_anvil() -> Iterator[Chain]:
    """An Anvil node of this module's own: its tests switch automine off and mine hundreds
    of blocks."""
    node = devnet.start_anvil()
    try:
        yield connect(node.url)
    finally:
        node.stop()


def _rpc(chain: Chain, method: str, *params: object) -> object:
    answer = chain.w3.provider.make_request(RPCEndpoint(method), list(params))
    assert "error" not in answer, answer
    return answer.get("result")


def _forget_nonces(chain: Chain) -> None:
    """After raw transactions or a reverted snapshot: the Chain reads its senders' nonces from
    the node again."""
    with chain._nonce_lock:
        chain._nonces.clear()


def _signed(chain: Chain, contract: FedChain, account: LocalAccount, fn: str,
            *args: object) -> bytes:
    """A signed call of `fn` with a fixed gas limit (nothing estimated: the node mines it
    when told)."""
    tx = {"to": contract.address, "data": contract._encode(fn, args), "gas": 500_000,
          "nonce": chain.w3.eth.get_transaction_count(account.address, "pending"),
          "chainId": chain.chain_id, "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}
    return bytes(account.sign_transaction(tx).raw_transaction)


def _old_seed(parent_hash: bytes, prevrandao: bytes, round: int, n: int, k: int) -> bytes:
    """The seed the contract drew before issue 18: the closing block's parent hash and its
    prevrandao, both known before the closing vote is sent."""
    x = int.from_bytes(keccak(abi_encode(["bytes32", "bytes32", "uint256"],
                                         [parent_hash, prevrandao, round])), "big")
    return (((x >> 64) << 64) | (n << 32) | k).to_bytes(32, "big")


@pytest.mark.anvil
def test_the_closing_member_cannot_choose_the_seed_its_vote_opens(own_anvil: Chain) -> None:
    # The attack: the member whose vote closes round 1 (and so opens round 2) wants learner X
    # in round 2's sample. Before issue 18 it could compute the seed from what it knew before
    # sending (the latest block's hash, the next block's prevrandao) and send when the seed
    # suited it. Now the seed is the hash of the block its vote lands in: the same vote, sent
    # at the same moment, sealed once alone and once with one more transaction in its block,
    # opens the round with two different seeds, each the hash of the sealed block.
    chain = own_anvil
    contract, agg, accounts = _deploy(chain, 16)
    ppm = fraction_to_ppm(0.25)
    agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    snapshot = _rpc(chain, "evm_snapshot")
    seeds = []
    try:
        for extra in (False, True):
            _rpc(chain, "evm_revert", snapshot)
            _forget_nonces(chain)
            snapshot = _rpc(chain, "evm_snapshot")
            parent = chain.w3.eth.get_block("latest")
            _rpc(chain, "evm_setAutomine", False)
            vote = chain.w3.eth.send_raw_transaction(_signed(
                chain, contract, dev(chain, 1), "publishGlobal", 1, cid("g1"), b"", [0], [0]))
            if extra:  # what the block's proposer adds, which the member cannot know
                chain.w3.eth.send_raw_transaction(_signed(
                    chain, contract, dev(chain, 0), "addLearners", [dev(chain, 40).address]))
            _rpc(chain, "evm_mine")
            _rpc(chain, "evm_setAutomine", True)
            _forget_nonces(chain)
            receipt = chain.w3.eth.get_transaction_receipt(vote)
            assert receipt["status"] == 1 and receipt["blockNumber"] == parent["number"] + 1
            sealed = chain.w3.eth.get_block(receipt["blockNumber"])
            assert contract.current_round() == 2 and contract.seed_block() == sealed["number"]
            seed = contract.round_seed()
            assert seed == draw_seed(bytes(sealed["hash"]), contract.address, 2, 16, 4)
            # What the member could compute before sending no longer gives the seed.
            assert seed != _old_seed(bytes(parent["hash"]), bytes(sealed["mixHash"]), 2, 16, 4)
            chosen = [a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm)]
            contract.with_account(chosen[0]).submit_update(2, cid("u2"), 10)
            [seeded] = contract.events("RoundSeeded")
            assert isinstance(seeded, ev.RoundSeeded) and seeded.seed == seed
            seeds.append(seed)
    finally:
        _rpc(chain, "evm_setAutomine", True)
        _forget_nonces(chain)
    assert seeds[0] != seeds[1]


@pytest.mark.anvil
def test_a_submission_in_the_opening_block_reverts_seed_not_ready(own_anvil: Chain) -> None:
    chain = own_anvil
    contract, agg, accounts = _deploy(chain, 4)
    ppm = fraction_to_ppm(0.5)
    agg.set_genesis(cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    seed = contract.round_seed()
    chosen = [a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm)]
    submitted = contract.with_account(chosen[0])
    submitted.submit_update(1, cid("u1"), 10)
    # The learner saw round 1's result coming and sends its round-2 update into the very block
    # whose hash draws round 2's seed.
    try:
        _rpc(chain, "evm_setAutomine", False)
        vote = chain.w3.eth.send_raw_transaction(_signed(
            chain, contract, dev(chain, 1), "publishGlobal", 1, cid("g1"), b"",
            [1 << (accounts.index(chosen[0]))], [1 << (accounts.index(chosen[0]))]))
        early = chain.w3.eth.send_raw_transaction(_signed(
            chain, contract, chosen[1], "submitUpdate", 2, cid("u2"), 10))
        _rpc(chain, "evm_mine")
    finally:
        _rpc(chain, "evm_setAutomine", True)
        _forget_nonces(chain)
    voted = chain.w3.eth.get_transaction_receipt(vote)
    refused = chain.w3.eth.get_transaction_receipt(early)
    assert voted["blockNumber"] == refused["blockNumber"]
    assert voted["status"] == 1 and refused["status"] == 0
    reason = chain.backend.revert_data(chain.w3, early.to_0x_hex())
    assert reason == keccak(text="SeedNotReady(uint256)")[:4] + (2).to_bytes(32, "big")
    assert contract.current_round() == 2 and not contract.has_submitted(2, chosen[1].address)
    # In the next block the seed is known, and whoever it selects submits.
    seed = contract.round_seed()
    learner = next(a for i, a in enumerate(accounts, 1) if is_selected(seed, i, ppm))
    contract.with_account(learner).submit_update(2, cid("u2"), 10)
    assert [e.round for e in contract.events("RoundSeeded")] == [1, 2]


@pytest.mark.anvil
def test_past_256_blocks_the_seed_comes_from_the_anchor_block_fedchain_predicts(
    own_anvil: Chain,
) -> None:
    chain = own_anvil
    ppm = fraction_to_ppm(0.5)
    late, _, accounts = _deploy(chain, 8)
    opening = late.with_account(dev(chain, 1)).set_genesis(
        cid("genesis"), cid("plan"), RoundParams(10, select_ppm=ppm))
    # A second federation whose seed a committee member draws (seedRound) in time.
    kept, kept_agg, _ = _deploy(chain, 8)
    kept_opening = kept_agg.set_genesis(cid("genesis"), cid("plan"),
                                        RoundParams(10, select_ppm=ppm))
    kept_seed = kept.round_seed()
    kept.seed_round(1)
    [drawn] = kept.events("RoundSeeded")
    assert isinstance(drawn, ev.RoundSeeded) and drawn.seed == kept_seed
    opened = opening.block_number
    first = late.round_seed()
    assert first == draw_seed(bytes(chain.w3.eth.get_block(opened)["hash"]), late.address, 1,
                              8, 4)
    _rpc(chain, "anvil_mine", hex(300))  # nobody submits for 300 blocks
    head = chain.block_number()
    anchor = seed_anchor(opened, head + 1)
    assert anchor == opened + 256 and head + 1 - anchor <= 256
    predicted = late.round_seed()
    assert predicted == draw_seed(bytes(chain.w3.eth.get_block(anchor)["hash"]), late.address,
                                  1, 8, 4)
    assert predicted != first
    learner = next(a for i, a in enumerate(accounts, 1) if is_selected(predicted, i, ppm))
    receipt = late.with_account(learner).submit_update(1, cid("late"), 10)
    assert receipt.block_number == head + 1
    [seeded] = late.events("RoundSeeded")
    assert isinstance(seeded, ev.RoundSeeded) and seeded.seed == predicted
    # The federation whose seed was drawn in time keeps it, however late its submissions.
    assert kept.round_seed() == kept_seed and kept.seed_block() == 0
    assert kept_opening.block_number < head - 256


@pytest.mark.anvil
def test_a_member_draws_the_seed_itself_when_nobody_submits_for_128_blocks(
    own_anvil: Chain, tmp_path: Path,
) -> None:
    # Learners computed who is selected from the opening block's hash; if nobody drew the
    # seed within 256 blocks the contract could no longer reach that hash, so the member
    # waiting for updates draws it (seedRound) once 128 blocks passed.
    chain = own_anvil
    contract, _, _ = _deploy(chain, 6)
    config = RunConfig(strategy=FedAvg(), rounds=3, min_updates=1, fraction=0.5,
                       round_timeout=300.0, poll_interval=0.05, verify="off")
    agg = Aggregator(contract.with_account(dev(chain, 1)), LocalStore(tmp_path / "store"),
                     config, initial_weights=initial_weights())
    agg.start()
    opened = contract.seed_block()
    assert opened == chain.block_number()
    predicted = contract.round_seed()
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            agg.wait_for_updates(1)
        except FedChainError:  # stopped below
            pass
        except BaseException as exc:
            failures.append(exc)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    try:
        _rpc(chain, "anvil_mine", hex(130))
        deadline = time.monotonic() + 60
        while contract.seed_block() != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        agg.stop_event.set()
        waiting.join(30)
    assert not failures, failures
    [seeded] = contract.events("RoundSeeded")
    assert isinstance(seeded, ev.RoundSeeded) and seeded.seed == predicted
    assert opened + 128 <= seeded.block <= opened + 256
    _rpc(chain, "anvil_mine", hex(300))  # however late the first submission now comes
    assert contract.round_seed() == predicted


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
