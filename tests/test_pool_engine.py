"""simulate(engine="pool"): the same federation as a thread per learner, sampled learners made
only when selected, learners past the dev node's accounts; and what the pool leans on: sends
batched and receipts polled by one thread (typed reverts, a dead node failing its waiters),
the chain watcher, a scratch LocalStore that still refuses damaged content."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmodels import LinearLearner, initial_weights
from fixtures.chains import NODE_PARAMS, dev

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import audit_federation
from fedchain.cli import devnet
from fedchain.errors import ChainUnavailable, ContentMismatch
from fedchain.eth.accounts import DEV_NODE_ACCOUNTS, FIRST_LEARNER_INDEX, dev_account
from fedchain.eth.chain import Chain, Receipt, connect
from fedchain.eth.contract import FedChain
from fedchain.eth.events import EvaluationReported, LearnerAdded, RoundSeeded
from fedchain.eth.gas import flat_gas_policy
from fedchain.eth.reverts import AlreadySubmitted
from fedchain.eth.watcher import ChainWatcher
from fedchain.federation.config import RunConfig
from fedchain.federation.learner import Learner
from fedchain.federation.simulation import SimulationResult, simulate, simulation_account
from fedchain.protocol.rules import fraction_to_ppm, is_selected
from fedchain.storage.cid import to_cid
from fedchain.storage.local import LocalStore

#: Deadlines: generous, never reached when all is well.
PATIENCE = 120.0
TRAIN = {"lr": 0.1, "steps": 3}
CID = b"\x01\x55\x12\x20" + bytes(range(32))
ANVIL = [pytest.mark.anvil, pytest.mark.xdist_group("anvil")]


@pytest.fixture
def anvil(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Chain:
    """The session's Anvil Chain; receipt polling and batched sends switched on during the test
    (by simulate's pool engine or the test itself) are switched off again after it."""
    chain: Chain = request.getfixturevalue("anvil_chain")
    return scoped(chain, monkeypatch)


def scoped(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> Chain:
    for name in ("receipts", "sends", "fee_source", "gas_policy"):
        monkeypatch.setattr(chain, name, getattr(chain, name))
    return chain


def polled(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> Chain:
    """`chain` with shared receipt polling and batched sends, for this test only."""
    scoped(chain, monkeypatch)
    chain.share_receipt_polling()
    assert chain.receipts is not None and chain.sends is not None
    return chain


class Made:
    """A make_learner that counts the learners it made (the pool makes them lazily)."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, i: int, n: int) -> Learner:
        with self._lock:
            self.calls.append(i)
        return LinearLearner(i, **self.kw)


def run(chain: str | Chain, tmp_path: Path, n: int, rounds: int, engine: str,
        make: Made | None = None, **config: Any) -> SimulationResult:
    """simulate's run of `n` LinearLearners with FedAvg; every learner needed unless
    `min_updates` says otherwise. The initial weights are given: simulate would otherwise
    make learner 0 once more just to read them."""
    store = LocalStore(tmp_path / f"store-{engine}", durable=False)
    settings = {"poll_interval": 0.05, "round_timeout": PATIENCE,
                "evaluation_timeout": PATIENCE, "min_updates": n, **config}
    return simulate(make or Made(), n, FedAvg(), rounds, chain=chain, store=store,
                    config=RunConfig(**settings), train_config=TRAIN,
                    initial_weights=initial_weights(), engine=engine,
                    workers=4, timeout=PATIENCE)


def published(result: SimulationResult, rounds: int) -> list[str]:
    """The global model CID of every round, as the chain records it."""
    return [str(to_cid(result.contract.global_model(r))) for r in range(1, rounds + 1)]


def learner_address(i: int) -> str:
    """simulate's learner i: dev accounts from FIRST_LEARNER_INDEX, then derived keys."""
    if FIRST_LEARNER_INDEX + i < DEV_NODE_ACCOUNTS:
        return dev_account(FIRST_LEARNER_INDEX + i).address
    return simulation_account(i).address


# -- the pool engine runs the federation the threads engine runs ----------------------------

@pytest.mark.parametrize("backend", [pytest.param("embedded"),
                                     pytest.param("anvil", marks=ANVIL)])
def test_the_pool_engine_publishes_the_federation_a_thread_per_learner_publishes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    n, rounds = 8, 2
    chain: str | Chain = "embedded" if backend == "embedded" else request.getfixturevalue("anvil")
    results = {engine: run(chain, tmp_path, n, rounds, engine) for engine in ("threads", "pool")}
    threads, pool = results["threads"], results["pool"]

    # Bit for bit the same global models, round after round.
    assert published(pool, rounds) == published(threads, rounds)
    assert [r.global_cid for r in pool.rounds] == published(pool, rounds)
    everyone = sorted(learner_address(i) for i in range(n))
    for result in (threads, pool):
        assert result.contract.finished()
        assert sorted(result.contract.learners()) == everyone
        assert [sorted(r.included) for r in result.rounds] == [everyone] * rounds
        reports = Counter(e.round for e in result.contract.events("EvaluationReported")
                          if isinstance(e, EvaluationReported))
        assert reports == dict.fromkeys(range(1, rounds + 1), n)  # each model evaluated by all
    assert audit_federation(pool.contract, pool.store).exit_status() == 0


# -- sampling: only the selected learners are made, and only they submit --------------------

@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_a_sampled_pool_makes_and_runs_only_the_learners_the_contract_selects(
    anvil: Chain, tmp_path: Path,
) -> None:
    n, rounds, fraction = 40, 2, 0.25
    made = Made(num_examples=8)
    # Learners never selected are never made, so they never evaluate: with sampling the
    # aggregator waits only for the reports of the round's participants.
    result = run(anvil, tmp_path, n, rounds, "pool", made, fraction=fraction,
                 min_updates=1, evaluation_timeout=2.0)
    contract = result.contract

    seeded = [e for e in contract.events("RoundSeeded") if isinstance(e, RoundSeeded)]
    seeds = {e.round: e.seed for e in seeded}
    assert sorted(seeds) == list(range(1, rounds + 1))
    # Each round's first submission drew its seed (from the round's opening block's hash): the
    # pool knew whom to make before any RoundSeeded event said.
    assert {e.round: e.block for e in seeded} == {
        r: min(u.block for u in contract.updates(r)) for r in seeds}
    ppm = contract.params().select_ppm
    assert ppm == fraction_to_ppm(fraction)
    index = {e.learner: e.index for e in contract.events("LearnerAdded")
             if isinstance(e, LearnerAdded)}
    assert sorted(index) == sorted(learner_address(i) for i in range(n))
    chosen = {r: {a for a, k in index.items() if is_selected(seeds[r], k, ppm)} for r in seeds}
    assert all(chosen.values())  # 40 learners at 25%: nobody selected would be a 1e-5 fluke

    for r in range(1, rounds + 1):
        submitters = {e.learner for e in contract.updates(r)}
        assert submitters == chosen[r], f"round {r}"
        assert set(result.rounds[r - 1].included) == chosen[r]
    # Every learner the pool made was selected in some round, and made once.
    made_addresses = {learner_address(i) for i in made.calls}
    assert made_addresses == set().union(*chosen.values())
    assert Counter(made.calls).most_common(1)[0][1] == 1
    assert len(made.calls) < n
    report = audit_federation(contract, result.store)
    assert report.exit_status() == 0
    # The audit re-derives each round's selection from its seed and says how many it chose.
    notes = {c.round: c.detail for c in report.all_checks() if c.what == "selection"}
    assert notes == {r: f"{len(chosen[r])} of {n} learners selected by the round's seed "
                        f"0x{seeds[r].hex()[:16]}…" for r in seeds}


# -- more learners than the dev node has accounts -------------------------------------------

@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_learners_past_the_dev_nodes_accounts_take_part_with_derived_keys(
    anvil: Chain, tmp_path: Path,
) -> None:
    n = 110
    dev_slots = DEV_NODE_ACCOUNTS - FIRST_LEARNER_INDEX
    assert n > dev_slots
    result = run(anvil, tmp_path, n, 1, "pool", Made(num_examples=8))

    [round_one] = result.rounds
    registered = result.contract.learners()  # in the order simulate registered them
    assert len(registered) == n
    assert registered[:dev_slots] == [dev_account(FIRST_LEARNER_INDEX + i).address
                                      for i in range(dev_slots)]
    assert registered[dev_slots:] == [simulation_account(i).address for i in range(dev_slots, n)]
    assert not set(registered) & {dev_account(k).address for k in range(FIRST_LEARNER_INDEX)}
    assert not set(registered[dev_slots:]) & {dev_account(k).address
                                              for k in range(DEV_NODE_ACCOUNTS)}
    # Every one of them, derived keys too, submitted and was included.
    assert {e.learner for e in result.contract.updates(1)} == set(registered)
    assert sorted(round_one.included) == sorted(registered)
    assert result.contract.finished()


# -- batched sends and shared receipt polling -----------------------------------------------

@pytest.mark.parametrize("chain", NODE_PARAMS, indirect=True)
def test_batched_sends_and_shared_receipts_serve_many_threads_and_report_typed_reverts(
    chain: Chain, monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 20
    polled(chain, monkeypatch)
    contract, _ = FedChain.deploy(chain, dev(chain, 0), dev(chain, 1).address)
    accounts = [dev(chain, FIRST_LEARNER_INDEX + i) for i in range(n)]
    contract.register_learners([a.address for a in accounts])
    contract.with_account(dev(chain, 1)).set_genesis(CID, CID, 2)
    # Flat gas, no estimate: a call that reverts is mined, and its receipt tells.
    monkeypatch.setattr(chain, "gas_policy", flat_gas_policy(contract))

    start = threading.Barrier(n, timeout=PATIENCE)
    receipts: dict[int, Receipt | BaseException] = {}

    def submit(i: int) -> None:
        try:
            start.wait()
            receipts[i] = contract.with_account(accounts[i]).submit_update(1, CID, 10 + i)
        except BaseException as exc:  # checked below
            receipts[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(r, Receipt) and r.status == 1 for r in receipts.values()), receipts
    # Each thread got its own transaction's receipt, not a neighbour's from the same batch.
    senders = {i: chain.w3.eth.get_transaction(r.tx_hash)["from"]  # type: ignore[arg-type]
               for i, r in receipts.items() if isinstance(r, Receipt)}
    assert senders == {i: a.address for i, a in enumerate(accounts)}
    assert {e.learner for e in contract.updates(1)} == {a.address for a in accounts}
    assert chain.sends is not None and chain.receipts is not None
    assert 1 <= chain.sends.requests <= n and chain.receipts.requests >= 1

    # A second update in the round is mined, reverts, and comes back as the contract's error.
    with pytest.raises(AlreadySubmitted) as err:
        contract.with_account(accounts[0]).submit_update(1, CID, 99)
    assert err.value.tx_hash is not None
    mined = chain.w3.eth.get_transaction_receipt(err.value.tx_hash)  # type: ignore[arg-type]
    assert mined["status"] == 0
    assert len(contract.updates(1)) == n
    # Ganache has no eth_getBlockReceipts: its receipts were found by hash instead.
    assert chain.receipts._by_block is ("ganache" not in chain.w3.client_version.lower())


@pytest.fixture
def own_anvil() -> Iterator[devnet.DevNode]:
    """An Anvil of the test's own, mining a block only every ten minutes: a transaction sent
    to it stays pending."""
    node = devnet.start_anvil(block_time=600)
    yield node
    node.stop()


@pytest.mark.anvil
def test_a_node_that_dies_fails_the_transactions_waiting_on_it_instead_of_hanging(
    own_anvil: devnet.DevNode,
) -> None:
    chain = connect(own_anvil.url)
    chain.share_receipt_polling()
    sender, recipient = chain.account(0), chain.account(3).address
    before = chain.w3.eth.get_transaction_count(sender.address, "pending")
    outcome: list[BaseException | Receipt] = []
    ended = threading.Event()

    def send() -> None:
        try:
            outcome.append(chain.transact(sender, {"to": recipient, "value": 1},
                                          timeout=PATIENCE))
        except BaseException as exc:  # checked below
            outcome.append(exc)
        ended.set()

    waiter = threading.Thread(target=send, daemon=True)
    waiter.start()
    deadline = time.monotonic() + PATIENCE
    while chain.w3.eth.get_transaction_count(sender.address, "pending") == before:
        assert time.monotonic() < deadline, "the transaction never reached the node"
        assert not ended.is_set(), outcome
        time.sleep(0.05)
    own_anvil.stop()  # the transaction is in the node's pool, its sender waiting
    stopped = time.monotonic()

    assert ended.wait(PATIENCE)
    # Failed as soon as the poller met the dead node, long before the transaction's timeout.
    assert time.monotonic() - stopped < PATIENCE / 2
    [error] = outcome
    assert isinstance(error, ChainUnavailable), error
    # And a new transaction fails at once, the same way.
    with pytest.raises(ChainUnavailable):
        chain.transact(sender, {"to": recipient, "value": 1}, timeout=PATIENCE)


# -- known faults (strict: remove the mark once fixed) ---------------------------------------

@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_one_error_answer_from_the_node_does_not_stop_receipt_polling(
    anvil: Chain, monkeypatch: pytest.MonkeyPatch,
) -> None:
    chain = polled(anvil, monkeypatch)
    provider: Any = chain.w3.provider
    real = provider.make_batch_request
    refused: list[Any] = []

    def once_rate_limited(calls: list[Any]) -> Any:
        if calls and calls[0][0] == "eth_blockNumber" and not refused:
            refused.append(calls)
            return [{"jsonrpc": "2.0", "id": 0,
                     "error": {"code": -32005, "message": "rate limited"}}]
        return real(calls)

    monkeypatch.setattr(provider, "make_batch_request", once_rate_limited)
    sender, recipient = dev(chain, 9), dev(chain, 10).address
    with contextlib.suppress(ChainUnavailable):  # the one waiting then may be failed
        chain.transact(sender, {"to": recipient, "value": 1}, timeout=5.0)
    assert refused
    assert chain.transact(sender, {"to": recipient, "value": 1}, timeout=5.0).status == 1


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_receipts_found_by_the_shared_poller_are_the_receipts_a_single_wait_gives(
    anvil: Chain, monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain_contract, plain_deploy = FedChain.deploy(anvil, dev(anvil, 0))
    plain = plain_contract.add_learners([dev(anvil, 2).address])
    polled(anvil, monkeypatch)
    contract, deploy = FedChain.deploy(anvil, dev(anvil, 0))
    added = contract.add_learners([dev(anvil, 2).address])

    assert plain_deploy.contract_address == plain_contract.address
    assert deploy.contract_address == contract.address  # checksummed, as without polling
    assert type(added.logs[0]) is type(plain.logs[0])
    [event] = [contract.decode_log(log) for log in added.logs]
    assert isinstance(event, LearnerAdded) and event.learner == dev(anvil, 2).address


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_a_watcher_follows_a_read_only_binding_on_a_node(anvil: Chain) -> None:
    contract, receipt = FedChain.deploy(anvil, dev(anvil, 0), dev(anvil, 1).address)
    contract.add_learners([dev(anvil, 2).address])
    reader = FedChain.at(anvil, contract.address)
    with ChainWatcher(reader, interval=0.02, from_block=receipt.block_number) as watcher:
        assert watcher.snapshot().round == 0
        contract.with_account(dev(anvil, 1)).set_genesis(CID, CID, 2)
        assert watcher.wait_until(lambda s: s.round == 1, timeout=PATIENCE).round == 1


# -- a scratch store ------------------------------------------------------------------------

def test_a_store_that_skips_fsync_still_refuses_content_damaged_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = LocalStore(tmp_path / "scratch", durable=False)
    model = bytes(range(256)) * 1_000
    cid = store.put(model)
    assert synced == []  # nothing flushed: that is the point of a scratch store
    assert store.get(cid) == model

    damaged = bytearray(model)
    damaged[len(damaged) // 2] ^= 1
    store.path_of(cid).write_bytes(damaged)
    with pytest.raises(ContentMismatch):
        store.get(cid)
    store.path_of(cid).write_bytes(model[: len(model) // 2])  # cut short, as by a crash
    with pytest.raises(ContentMismatch):
        store.get(cid)

    durable = LocalStore(tmp_path / "durable")
    durable.put(b"flushed")
    assert synced  # the default store does flush
