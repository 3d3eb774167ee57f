"""ChainWatcher: every event of a run once and in order, subscribers woken without polling,
node restarts ridden out; Chain.batch answers several reads in one JSON-RPC request."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import requests
from fixtures.chains import Federation, dev

from fedchain.cli import devnet
from fedchain.errors import ChainUnavailable
from fedchain.eth.accounts import DEV_MNEMONIC
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain
from fedchain.eth.events import Event, Finished, GlobalModelPublished
from fedchain.eth.reverts import AlreadySubmitted
from fedchain.eth.watcher import ChainWatcher, Snapshot, WatchedFedChain, WatcherStopped
from fedchain.npm import node_bin

#: Deadlines: generous, never reached when all is well.
PATIENCE = 120.0
CID = b"\x01\x55\x12\x20" + bytes(range(32))


def run_rounds(fed: Federation, rounds: int = 2) -> None:
    """A small federation's whole life, straight through the contract (the last round
    closing finishes it)."""
    fed.aggregator.set_genesis(CID, CID, rounds)
    for r in range(1, rounds + 1):
        for learner in fed.learners:
            learner.submit_update(r, CID, 10 + r)
        fed.aggregator.publish_global(r, CID, [c.account.address for c in fed.learners])
        for learner in fed.learners:
            learner.report_evaluation(r, 5, b'{"loss":1.0}')


def key(e: Event) -> tuple[int, int]:
    return e.block, e.log_index


def test_the_watcher_sees_every_event_of_a_run_once_and_in_chain_order(
    federation: Federation,
) -> None:
    watcher = ChainWatcher(federation.owner, interval=0.02, from_block=federation.block)
    delivered: list[Event] = []
    snapshots: list[Snapshot] = []

    def on_change(snap: Snapshot, events: list[Event]) -> None:
        delivered.extend(events)
        snapshots.append(snap)

    watcher.subscribe(on_change)
    with watcher:
        run_rounds(federation)  # while the watcher follows the chain on its own thread
        expected = list(federation.owner.events(from_block=federation.block))
        final = watcher.wait_until(lambda s: s.events >= len(expected), timeout=PATIENCE)

    kept, cursor = watcher.events_since(0)
    assert kept == expected  # every event, in chain order
    assert delivered == expected  # callbacks too: each event once
    assert len({key(e) for e in delivered}) == len(delivered)
    assert cursor == final.events == len(expected)
    assert any(isinstance(e, Finished) for e in expected)
    assert final.round == 3 and final.finished
    assert [s.version for s in snapshots] == sorted({s.version for s in snapshots})
    # A cursor picks up where it left off.
    later, _ = watcher.events_since(cursor - 1)
    assert later == expected[-1:]


def test_a_subscriber_sleeps_until_the_event_it_waits_for(federation: Federation) -> None:
    watcher = ChainWatcher(federation.owner, interval=0.02).start()
    checks: list[int] = []
    seen: list[Snapshot] = []

    def published(snap: Snapshot) -> bool:
        checks.append(snap.version)
        return snap.round >= 2

    waiter = threading.Thread(
        target=lambda: seen.append(watcher.wait_until(published, timeout=PATIENCE)))
    try:
        waiter.start()
        run_rounds(federation, rounds=1)
        waiter.join(PATIENCE)
    finally:
        watcher.stop()
    assert seen and seen[0].round >= 2
    # Woken only when something changed: one check per snapshot, never a spin.
    assert len(checks) == len(set(checks))
    assert len(checks) <= seen[0].version + 1
    # The round it was woken for is in the events the watcher kept.
    events, _ = watcher.events_since(0)
    assert any(isinstance(e, GlobalModelPublished) and e.round == 1 for e in events)


def test_wait_returns_the_next_snapshot_and_a_stopped_watcher_wakes_its_waiters(
    federation: Federation,
) -> None:
    watcher = ChainWatcher(federation.owner, interval=0.02).start()
    before = watcher.snapshot()
    federation.aggregator.set_genesis(CID, CID, 5)
    after = watcher.wait(before.version, timeout=PATIENCE)
    assert after.version > before.version and after.block > before.block

    errors: list[BaseException] = []

    def wait_forever() -> None:
        try:
            watcher.wait_until(lambda s: False)
        except WatcherStopped as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    watcher.stop()
    waiter.join(PATIENCE)
    assert not waiter.is_alive() and errors


# -- batches ----------------------------------------------------------------------------

class Posts:
    """HTTP POSTs the calling thread sends from now on (a JSON-RPC batch is one); a
    watcher's own thread is not counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        #: The JSON-RPC methods those POSTs asked for, in order.
        self.methods: list[str] = []
        thread = threading.get_ident()
        original = requests.Session.post

        def post(session: requests.Session, *a: object, **kw: object) -> object:
            if threading.get_ident() == thread:
                self.count += 1
                body = kw.get("data") or kw.get("json")
                try:
                    parsed = json.loads(body) if isinstance(body, bytes | str) else body
                except ValueError:
                    parsed = None
                calls = parsed if isinstance(parsed, list) else [parsed]
                self.methods += [c["method"] for c in calls if isinstance(c, dict)]
            return original(session, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(requests.Session, "post", post)


def test_a_batch_answers_as_single_calls_do_in_one_request_where_the_node_takes_batches(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, contract = federation.chain, federation.owner
    head = chain.block_number()
    fns = contract.contract.functions
    params = {"address": contract.address, "fromBlock": federation.block, "toBlock": head}
    single = (list(chain.w3.eth.get_logs(params)), contract.current_round(),  # type: ignore[arg-type]
              contract.learner_count(), contract.finished())
    posts = Posts(monkeypatch)
    answers = chain.batch([
        partial(chain.w3.eth.get_logs, params),  # type: ignore[arg-type]
        partial(fns.currentRound().call, block_identifier=head),
        partial(fns.learnerCount().call, block_identifier=head),
        partial(fns.finished().call, block_identifier=head),
    ])
    assert [contract.decode_log(x) for x in answers[0]] == [contract.decode_log(x)
                                                             for x in single[0]]
    assert tuple(answers[1:]) == single[1:]
    # Anvil and Ganache take JSON-RPC batches: four reads, one HTTP request.
    assert posts.count == (1 if chain.backend.supports_batch else 0)


def test_a_contract_view_is_one_http_request(anvil_chain: Chain,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    contract, _ = FedChain.deploy(anvil_chain, dev(anvil_chain, 0))
    contract.current_round()  # this thread's first call also asks for the chain id
    posts = Posts(monkeypatch)
    for _ in range(5):
        contract.current_round()
    assert posts.count == 5  # web3 asked eth_chainId twice more before each eth_call


# -- outages ----------------------------------------------------------------------------

class StatefulAnvil:
    """Anvil on a fixed port that keeps its chain in a state file across restarts."""

    def __init__(self) -> None:
        self.port = devnet.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="fedchain-anvil-state-"))
        self.node: devnet.DevNode | None = None

    def start(self) -> None:
        argv = [
            str(node_bin("@foundry-rs/anvil-linux-amd64/bin/anvil")), "--host", "127.0.0.1",
            "--port", str(self.port), "--mnemonic", DEV_MNEMONIC, "--silent",
            "--state", str(self.dir / "state.json"), "--preserve-historical-states",
        ]
        self.node = devnet._spawn("anvil", argv, self.url, devnet._rpc_ready(self.url), 60)

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()  # SIGTERM: Anvil writes its state file as it exits


@pytest.mark.anvil
def test_the_watcher_rides_out_a_node_restart_and_misses_nothing(caplog) -> None:
    anvil = StatefulAnvil()
    anvil.start()
    try:
        chain = connect(anvil.url)
        owner, aggregator = chain.account(0), chain.account(1)
        contract, receipt = FedChain.deploy(chain, owner, aggregator.address)
        learners = [chain.account(i) for i in (2, 3, 4)]
        contract.add_learners([a.address for a in learners])
        fed = Federation(chain, contract, contract.with_account(aggregator),
                         [contract.with_account(a) for a in learners],
                         contract.with_account(chain.account(5)), receipt.block_number)
        watcher = ChainWatcher(contract, interval=0.05, from_block=receipt.block_number,
                               first_delay=0.1, max_delay=0.5, max_outage=PATIENCE)
        with caplog.at_level(logging.WARNING, logger="fedchain.watcher"), watcher:
            fed.aggregator.set_genesis(CID, CID, 5)
            watcher.wait_until(lambda s: s.round == 1, timeout=PATIENCE)
            anvil.stop()
            # The watcher meets the dead node (and says so) before it comes back.
            watcher_saw_outage = _wait_for(lambda: "ChainUnavailable" in caplog.text)
            anvil.start()
            for learner in fed.learners:
                learner.submit_update(1, CID, 7)
            fed.aggregator.publish_global(1, CID, [c.account.address for c in fed.learners])
            final = watcher.wait_until(lambda s: s.round == 2, timeout=PATIENCE)
        assert watcher_saw_outage and "retrying" in caplog.text
        events, _ = watcher.events_since(0)
        assert events == list(contract.events(from_block=receipt.block_number))
        assert final.events == len(events)
    finally:
        anvil.stop()


def _wait_for(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Whether `condition` came true within `timeout` (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.anvil
def test_an_outage_longer_than_allowed_reaches_every_waiter() -> None:
    node = devnet.start_anvil()
    try:
        chain = connect(node.url)
        contract, _ = FedChain.deploy(chain, dev(chain, 0))
        watcher = ChainWatcher(contract, interval=0.05, first_delay=0.05, max_delay=0.1,
                               max_outage=1.0).start()
    finally:
        node.stop()
    with pytest.raises(ChainUnavailable):
        watcher.wait_until(lambda s: False, timeout=PATIENCE)
    assert isinstance(watcher.error, ChainUnavailable)
    watcher.stop()



# -- a learner's views from the watcher -------------------------------------------------

def test_a_watched_binding_answers_a_learners_views_without_asking_the_node(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = federation
    fed.aggregator.set_genesis(CID, CID, 5)
    fed.learners[0].submit_update(1, CID, 3)
    fed.learners[1].submit_update(1, CID, 3)
    fed.aggregator.publish_global(1, CID, [c.account.address for c in fed.learners[:2]])
    fed.learners[0].report_evaluation(1, 5, b"{}")
    plain = fed.learners[2]
    with ChainWatcher(fed.owner, interval=0.02, from_block=fed.block) as watcher:
        watcher.wait_until(lambda s: s.events >= 8 and s.round == 2, timeout=PATIENCE)
        watched = WatchedFedChain.bind(fed.owner, plain.account, watcher)
        learners = [c.account.address for c in fed.learners]
        questions = [
            lambda c: c.current_round(), lambda c: c.finished(),
            lambda c: c.global_model(0), lambda c: c.global_model(1),
            *[lambda c, a=a, r=r: c.has_submitted(r, a) for a in learners for r in (1, 2)],
            *[lambda c, a=a: c.has_reported(1, a) for a in learners],
        ]
        expected = [q(plain) for q in questions]
        posts = Posts(monkeypatch)
        answers = [q(watched) for q in questions]
    assert answers == expected
    assert posts.count == 0  # all from what the watcher had read
    assert expected[4:6] == [True, False] and expected[-3:] == [True, False, False]


@pytest.mark.anvil
def test_fees_from_the_watcher_and_a_gas_policy_leave_only_the_send_and_its_receipt(
    anvil_chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = anvil_chain
    contract, receipt = FedChain.deploy(chain, dev(chain, 0), dev(chain, 1).address)
    learner = dev(chain, 2)
    contract.add_learners([learner.address])
    aggregator = contract.with_account(dev(chain, 1))
    aggregator.set_genesis(CID, CID, 5)
    mine = contract.with_account(learner)
    with ChainWatcher(contract, interval=0.02) as watcher:
        monkeypatch.setattr(chain, "fee_source", watcher.fees)
        monkeypatch.setattr(chain, "gas_policy", lambda tx: 200_000)
        chain.block_number()  # this thread's first request asks for the chain id
        mine_nonce = chain._next_nonce(learner.address)  # the nonce is known from now on
        chain._resync_nonce(learner.address, mine_nonce)
        posts = Posts(monkeypatch)
        sent = mine.submit_update(1, CID, 9)
        used = list(posts.methods)
        # A revert is still the contract's own error, found in the mined transaction.
        with pytest.raises(AlreadySubmitted):
            mine.submit_update(1, CID, 9)
    assert sent.status == 1 and contract.has_submitted(1, learner.address)
    # Sent, then its receipt asked for (more than once if the node had not mined it yet):
    # no gas estimate and no fee requests.
    assert used[0] == "eth_sendRawTransaction"
    assert used[1:] and set(used[1:]) == {"eth_getTransactionReceipt"}


@pytest.mark.anvil
def test_a_chain_that_goes_back_is_followed(caplog) -> None:
    node = devnet.start_anvil()
    try:
        chain = connect(node.url)
        contract, _ = FedChain.deploy(chain, dev(chain, 0))
        rpc = chain.w3.provider.make_request
        with caplog.at_level(logging.WARNING, logger="fedchain.watcher"), \
                ChainWatcher(contract, interval=0.02) as watcher:
            saved = rpc("evm_snapshot", [])["result"]  # type: ignore[arg-type]
            before = chain.block_number()
            contract.add_learners([dev(chain, 2).address])
            watcher.wait_until(lambda s: s.block > before, timeout=PATIENCE)
            rpc("evm_revert", [saved])  # type: ignore[arg-type]
            back = watcher.wait_until(lambda s: s.block == before, timeout=PATIENCE)
            chain._resync_nonce(dev(chain, 0).address)
            contract.add_learners([dev(chain, 3).address])
            later = watcher.wait_until(lambda s: s.block > before, timeout=PATIENCE)
        assert back.block == before and later.block == before + 1
        assert caplog.text.count("went back") == 1
        events, _ = watcher.events_since(0)
        assert [e.learner for e in events] == [dev(chain, 2).address, dev(chain, 3).address]
    finally:
        node.stop()
