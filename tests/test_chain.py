"""fedchain.eth.chain: backends, connecting, signing accounts, nonces under threads, fee styles,
funding dev accounts, and restarts while a transaction of the process is still pending."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_typing import HexStr
from fedmodels import LinearLearner
from fixtures.chains import dev

from fedchain.aggregation.strategy import FedAvg
from fedchain.cli import devnet
from fedchain.cli.devnet import free_port
from fedchain.errors import (
    AlreadySubmitted,
    ChainUnavailable,
    ConfigError,
    DeploymentNotFound,
    TransactionFailed,
    TransactionTimeout,
    WrongRound,
)
from fedchain.eth.accounts import dev_account, load_account
from fedchain.eth.chain import Chain, EmbeddedBackend, RpcBackend, connect
from fedchain.eth.contract import FedChain
from fedchain.eth.deploy import deploy, find_contract, load_record
from fedchain.federation.simulation import simulate
from fedchain.storage import ContentStore

KEY = HexStr("0x" + "5e" * 32)
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDCHAIN_KEY", raising=False)
    monkeypatch.delenv("FEDCHAIN_KEYSTORE_PASSWORD", raising=False)


def shown(exc: BaseException) -> str:
    """What a printed traceback says about `exc`: its message and every chained one shown."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        parts.extend(traceback.format_exception_only(current))
        hidden = current.__suppress_context__
        current = current.__cause__ or (None if hidden else current.__context__)
    return "".join(parts)


def _keystore(tmp_path: Path) -> Path:
    path = tmp_path / "keystore.json"
    # A cheap KDF: the default scrypt parameters take seconds per decryption.
    path.write_text(json.dumps(Account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1000)))
    return path


# --- connecting ----------------------------------------------------------------------------


def test_connecting_to_a_closed_port_raises_chain_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailable) as err:
        connect(url, timeout=2)
    assert str(err.value) == f"chain node at {url} is not reachable (ConnectionError)"
    assert (err.value.url, err.value.tx_hash) == (url, None)
    assert "urllib3" not in shown(err.value) and "requests" not in shown(err.value)


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_connect_picks_the_backend_from_the_url(anvil_node: devnet.DevNode) -> None:
    embedded, rpc = connect("embedded"), connect(anvil_node.url)
    assert isinstance(embedded.backend, EmbeddedBackend) and embedded.url == "embedded"
    assert isinstance(rpc.backend, RpcBackend) and rpc.url == anvil_node.url
    assert connect("embedded") is embedded and connect("embedded", fresh=True) is not embedded
    # What the layers above ask instead of "is this the embedded chain?"
    caps = ("keeps_records_in_process", "supports_batch", "concurrent_requests", "always_dev_chain")
    assert [getattr(embedded.backend, c) for c in caps] == [True, False, False, True]
    assert [getattr(rpc.backend, c) for c in caps] == [False, True, True, False]
    assert not hasattr(embedded, "embedded") and not hasattr(rpc, "embedded")
    assert embedded.is_dev_chain and rpc.is_dev_chain


def test_deploy_keeps_records_where_the_backend_says(tmp_path: Path) -> None:
    """The record's place follows the backend's capability, not the chain's URL."""

    class OnDisk(EmbeddedBackend):
        keeps_records_in_process = False

    in_process, on_disk = connect("embedded", fresh=True), Chain(OnDisk())
    owner = dev_account(0)
    _, kept, _ = deploy(in_process, owner, directory=tmp_path)
    assert load_record(in_process, tmp_path) == kept and not any(tmp_path.iterdir())
    _, written, _ = deploy(on_disk, owner, directory=tmp_path)
    path = tmp_path / f"{on_disk.chain_id}.json"
    assert json.loads(path.read_text()) == written == load_record(on_disk, tmp_path)
    with pytest.raises(DeploymentNotFound, match="in this process"):
        find_contract(connect("embedded", fresh=True), directory=tmp_path)


def test_an_unknown_chain_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown chain URL 'ws://127.0.0.1:8546'"):
        connect("ws://127.0.0.1:8546")


# --- accounts ------------------------------------------------------------------------------


def test_an_account_loads_from_a_key() -> None:
    assert load_account(key=KEY).address == Account.from_key(KEY).address
    assert load_account(key=f"  {KEY[2:]}\n").address == Account.from_key(KEY).address


def test_an_account_loads_from_the_fedchain_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCHAIN_KEY", KEY)
    assert load_account().address == Account.from_key(KEY).address


def test_an_account_loads_from_a_keystore_and_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _keystore(tmp_path)
    expected = Account.from_key(KEY).address
    assert load_account(keystore=path, password=PASSWORD).address == expected
    monkeypatch.setenv("FEDCHAIN_KEYSTORE_PASSWORD", PASSWORD)
    assert load_account(keystore=str(path)).address == expected


def test_an_account_loads_from_a_dev_index() -> None:
    # Dev account 0 of the well-known mnemonic, as Anvil, Hardhat and Ganache print it.
    assert load_account(dev_index=0).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert load_account(dev_index=3).address == dev_account(3).address


def test_a_bad_key_is_refused_without_echoing_it() -> None:
    bad = "0x" + "zz" + "5e" * 31
    with pytest.raises(ConfigError) as err:
        load_account(key=bad)
    assert "not a valid 32-byte hex key" in str(err.value)
    assert bad[2:] not in shown(err.value)


def test_a_wrong_keystore_password_is_refused_without_echoing_secrets(tmp_path: Path) -> None:
    path = _keystore(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_account(keystore=path, password="hunter2-not-it")
    assert str(err.value) == f"wrong password for keystore {path}"
    assert KEY[2:] not in shown(err.value) and "hunter2" not in shown(err.value)


def test_a_keystore_without_a_password_or_readable_file_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="needs a password"):
        load_account(keystore=_keystore(tmp_path))
    with pytest.raises(ConfigError, match="cannot read keystore"):
        load_account(keystore=tmp_path / "missing.json", password=PASSWORD)


@pytest.mark.parametrize("content", ["{}", "[]", '"x"', '{"version": 3, "crypto": {}}'])
def test_a_json_file_that_is_not_a_keystore_is_a_config_error(tmp_path: Path, content) -> None:
    path = tmp_path / "not-a-keystore.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="is not an Ethereum keystore"):
        load_account(keystore=path, password=PASSWORD)


def test_no_account_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no account"):
        load_account()


def test_dev_accounts_are_refused_on_a_chain_that_is_not_a_dev_chain() -> None:
    """A Chain whose chain id reads 1 (mainnet), faked by presetting the cached id.

    No mainnet node is reachable here; `chain_id` is only ever read through the cache.
    """
    chain = Chain(RpcBackend("http://127.0.0.1:9"))
    chain._chain_id = 1
    assert not chain.is_dev_chain
    with pytest.raises(ConfigError, match="chain 1 is not a dev chain"):
        chain.account(0)


# --- transactions --------------------------------------------------------------------------


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_threads_sending_from_one_account_get_distinct_nonces(anvil_chain: Chain) -> None:
    chain = anvil_chain
    owner = dev(chain, 0)
    fc, _ = FedChain.deploy(chain, owner, dev(chain, 1).address)
    receipts = []
    errors: list[BaseException] = []

    def send(thread: int) -> None:
        try:
            for i in range(5):
                learner = Account.from_key((thread * 100 + i + 1).to_bytes(32, "big")).address
                receipts.append(fc.add_learners([learner]))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(r.status == 1 for r in receipts) and len(receipts) == 20
    nonces = [chain.w3.eth.get_transaction(HexStr(r.tx_hash))["nonce"] for r in receipts]
    assert len(set(nonces)) == 20
    assert max(nonces) - min(nonces) == 19
    assert fc.learner_count() == 20


def test_transactions_mine_with_the_fee_style_the_node_offers(chain: Chain) -> None:
    fc, receipt = FedChain.deploy(chain, dev(chain, 0), dev(chain, 1).address)
    assert receipt.status == 1 and fc.owner() == dev(chain, 0).address
    tx = chain.w3.eth.get_transaction(HexStr(receipt.tx_hash))
    london = chain.w3.eth.get_block("latest").get("baseFeePerGas") is not None
    if london:
        assert tx["type"] == 2 and tx["maxFeePerGas"] >= tx["maxPriorityFeePerGas"]
    else:
        assert tx["type"] == 0 and tx["gasPrice"] > 0


def test_rpc_urls_are_shown_without_the_api_keys_they_carry() -> None:
    from fedchain.eth.chain import redact_url

    assert redact_url("https://mainnet.infura.io/v3/0123456789abcdef") == (
        "https://mainnet.infura.io/…")
    assert redact_url("https://user:secret@rpc.example.org:8545") == "https://rpc.example.org:8545/…"
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    with pytest.raises(ChainUnavailable) as err:
        connect(f"http://127.0.0.1:{free_port()}/v3/0123456789abcdef")
    assert "0123456789abcdef" not in str(err.value)


# --- funding -------------------------------------------------------------------------------

ETH = 10**18


def test_fund_tops_up_the_accounts_short_of_funds_and_only_those(chain: Chain) -> None:
    # Fresh keys, and a dev account past those any of these chains starts with.
    short = [Account.create().address, Account.create().address, dev(chain, 150).address]
    short = [a for a in short if chain.balance(a) < ETH // 10]
    rich = dev(chain, 2).address
    before = chain.balance(rich)
    receipts = chain.fund([*short, rich, *short], amount=ETH)
    assert len(receipts) == len(short) and all(r.status == 1 for r in receipts)
    assert all(chain.balance(a) >= ETH for a in short)
    assert chain.balance(rich) == before
    assert chain.fund(short, amount=ETH) == []  # nothing left to do


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_fund_on_a_chain_that_is_not_a_dev_chain_names_the_unfunded_accounts(
    anvil_chain: Chain,
) -> None:
    """Anvil with its chain id read as 4242: a chain whose accounts fedchain may not spend."""
    chain = Chain(RpcBackend(anvil_chain.url))
    chain._chain_id = 4242
    pauper, funded = Account.create().address, dev(anvil_chain, 3).address
    block = chain.block_number()
    with pytest.raises(ConfigError) as err:
        chain.fund([funded, pauper])
    assert pauper in str(err.value) and funded not in str(err.value)
    assert "chain 4242" in str(err.value) and err.value.url == chain.url
    assert chain.block_number() == block  # nothing was sent
    assert chain.fund([funded]) == []


@pytest.mark.parametrize("learners", [12, 25])
def test_simulations_of_any_size_run_on_the_embedded_chain(
    learners: int, store: ContentStore
) -> None:
    result = simulate(lambda i, n: LinearLearner(i, num_examples=8), learners, FedAvg(), 1,
                      store=store, train_config={"steps": 1})
    [round_one] = result.rounds
    assert len(round_one.included) == learners and result.contract.finished()


# --- errors say where they happened --------------------------------------------------------


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_transaction_errors_carry_the_chain_url_and_the_transaction_hash(
    anvil_chain: Chain,
) -> None:
    owner = dev(anvil_chain, 0)
    with pytest.raises(TransactionFailed) as err:  # refused by the node: never mined
        anvil_chain.transact(Account.create(), {"to": owner.address, "value": 1, "gas": 21_000})
    assert (err.value.url, err.value.tx_hash) == (anvil_chain.url, None)


# --- restarts with a transaction still pending ---------------------------------------------

BLOCK_TIME = 2.0


@pytest.fixture(scope="module")
def slow_node() -> Iterator[devnet.DevNode]:
    """An Anvil of the module's own that mines a block every BLOCK_TIME seconds."""
    node = devnet.start_anvil(block_time=BLOCK_TIME)
    yield node
    node.stop()


def _started_round(node: devnet.DevNode, learner_index: int) -> tuple[Chain, FedChain, FedChain]:
    """(chain, aggregator binding, learner binding) of a fresh FedChain in round 1."""
    chain = connect(node.url)
    owner, aggregator, learner = dev(chain, 0), dev(chain, 1), dev(chain, learner_index)
    fc, _ = FedChain.deploy(chain, owner, aggregator.address)
    fc.add_learners([learner.address])
    agg = fc.with_account(aggregator)
    agg.set_genesis(b"\x01\x55\x12\x20" + b"g" * 32, b"\x01\x55\x12\x20" + b"p" * 32, 10)
    return chain, agg, fc.with_account(learner)


class Background(threading.Thread):
    """`fn` in a thread, as the process that sent first; `result()` joins and re-raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.value, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # re-raised in the test's thread by result()
            self.error = exc

    def result(self) -> Any:
        self.join(60)
        if self.error is not None:
            raise self.error
        return self.value


def _just_after_a_block(chain: Chain) -> None:
    """Returns right after the node mined a block: the next one is BLOCK_TIME away."""
    block = chain.block_number()
    while chain.block_number() == block:
        time.sleep(0.02)


def _wait_until_pending(chain: Chain, address: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while chain.w3.eth.get_transaction_count(address, "pending") < count:
        assert time.monotonic() < deadline, "the first transaction never reached the pool"
        time.sleep(0.02)


CID = b"\x01\x55\x12\x20" + b"u" * 32


@pytest.mark.anvil
def test_a_restarted_learner_resending_its_pending_update_gets_already_submitted(
    slow_node: devnet.DevNode,
) -> None:
    """The process sends submitUpdate and dies before it is mined; restarted, it sends the
    same update again from a fresh Chain. The duplicate either fails as AlreadySubmitted,
    decoded (what the learner treats as done), or is never sent: never "no reason given"."""
    chain, _, learner = _started_round(slow_node, 2)
    sender = learner.account.address
    sent = chain.w3.eth.get_transaction_count(sender, "pending")
    _just_after_a_block(chain)
    first = Background(lambda: learner.submit_update(1, CID, 10))
    _wait_until_pending(chain, sender, sent + 1)
    restarted = FedChain.at(connect(slow_node.url), learner.address, learner.account)
    try:
        restarted.submit_update(1, CID, 10)
    except AlreadySubmitted as exc:
        assert exc.fields == {"round": 1, "learner": sender}
    assert first.result().status == 1 and learner.has_submitted(1, sender)
    assert len(learner.updates(1)) == 1


@pytest.mark.anvil
def test_a_duplicate_mined_after_the_pending_original_is_decoded_from_the_chain(
    slow_node: devnet.DevNode,
) -> None:
    """The duplicate skips estimation (an explicit gas limit) so it is certainly mined and
    reverts: the replay finds AlreadySubmitted and names the duplicate's transaction."""
    chain, _, learner = _started_round(slow_node, 3)
    sender = learner.account.address
    sent = chain.w3.eth.get_transaction_count(sender, "pending")
    _just_after_a_block(chain)
    first = Background(lambda: learner.submit_update(1, CID, 10))
    _wait_until_pending(chain, sender, sent + 1)
    restarted = connect(slow_node.url)
    data = learner.contract.functions.submitUpdate(1, CID, 10)._encode_transaction_data()
    with pytest.raises(AlreadySubmitted) as err:
        restarted.transact(learner.account, {"to": learner.address, "data": data,
                                             "gas": 200_000}, decode_revert=learner.decode_revert)
    assert err.value.fields == {"round": 1, "learner": sender}
    receipt = restarted.w3.eth.get_transaction_receipt(HexStr(str(err.value.tx_hash)))
    assert receipt["status"] == 0 and receipt["from"] == sender
    assert err.value.url == restarted.url
    assert first.result().status == 1


@pytest.mark.anvil
def test_a_restarted_aggregator_republishing_gets_wrong_round(slow_node: devnet.DevNode) -> None:
    chain, agg, _ = _started_round(slow_node, 4)
    sender = agg.account.address
    sent = chain.w3.eth.get_transaction_count(sender, "pending")
    _just_after_a_block(chain)
    cid = b"\x01\x55\x12\x20" + b"G" * 32
    first = Background(lambda: agg.publish_global(1, cid, []))
    _wait_until_pending(chain, sender, sent + 1)
    restarted = connect(slow_node.url)
    bits, seen = agg.bitmaps(1, [])
    data = agg.contract.functions.publishGlobal(1, cid, b"", bits, seen)._encode_transaction_data()
    with pytest.raises(WrongRound) as err:
        restarted.transact(agg.account, {"to": agg.address, "data": data, "gas": 300_000},
                           decode_revert=agg.decode_revert)
    assert err.value.fields == {"given": 1, "open": 2} and err.value.tx_hash
    assert first.result().status == 1


@pytest.mark.anvil
def test_a_nonce_taken_by_a_pending_transaction_is_resynced(slow_node: devnet.DevNode) -> None:
    """A Chain whose nonce cache is stale (another process of the same sender sent since):
    the node refuses the nonce as an underpriced replacement; the Chain resyncs and sends."""
    chain = connect(slow_node.url)
    sender = dev(chain, 5)
    nonce = chain.w3.eth.get_transaction_count(sender.address, "pending")
    other = connect(slow_node.url)
    _just_after_a_block(chain)
    first = Background(lambda: other.transact(sender, {"to": dev(chain, 6).address, "value": 1}))
    _wait_until_pending(chain, sender.address, nonce + 1)
    chain._nonces[sender.address] = nonce  # what this Chain believed before the other sent
    receipt = chain.transact(sender, {"to": dev(chain, 7).address, "value": 2})
    mined = chain.w3.eth.get_transaction(HexStr(receipt.tx_hash))
    assert receipt.status == 1 and mined["nonce"] == nonce + 1
    assert first.result().status == 1


@pytest.mark.anvil
def test_the_same_signed_transaction_already_pending_is_waited_for(
    slow_node: devnet.DevNode,
) -> None:
    chain = connect(slow_node.url)
    sender = dev(chain, 8)
    tx = chain._prepare(sender, {"to": dev(chain, 9).address, "value": 3}, TransactionFailed)
    tx.update(chain._fees())
    nonce = chain._next_nonce(sender.address)
    chain._forget_nonce(sender.address)
    first = chain._send(sender, dict(tx), TransactionFailed)
    restarted = connect(slow_node.url)
    restarted._nonces[sender.address] = nonce
    assert restarted._send(sender, dict(tx), TransactionFailed) == first
    assert restarted._wait(sender.address, first, 30).status == 1


@pytest.mark.anvil
def test_a_transaction_not_mined_in_time_names_itself(slow_node: devnet.DevNode) -> None:
    chain = connect(slow_node.url)
    sender = dev(chain, 10)
    _just_after_a_block(chain)
    with pytest.raises(TransactionTimeout) as err:
        chain.transact(sender, {"to": dev(chain, 11).address, "value": 1}, timeout=0.2)
    assert err.value.tx_hash and err.value.tx_hash in str(err.value)
    assert err.value.url == chain.url
    chain.w3.eth.wait_for_transaction_receipt(HexStr(err.value.tx_hash), timeout=30)


def test_embedded_get_logs_answers_as_the_node_does_from_a_cache_of_mined_blocks(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = simulate(lambda i, n: LinearLearner(i, num_examples=8), 3, FedAvg(), 3,
                      store=store, train_config={"steps": 1})
    chain, contract = result.contract.chain, result.contract
    backend, w3 = chain.backend, chain.w3
    other, _ = FedChain.deploy(chain, chain.account(0), chain.account(1).address)
    every = list(w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"}))
    topic0s = sorted({bytes(log["topics"][0]).hex() for log in every})
    assert len(topic0s) >= 4
    round_two = "0x" + (2).to_bytes(32, "big").hex()

    def queries(last: int) -> list[dict[str, Any]]:
        return [
            {"fromBlock": 0, "toBlock": "latest"},
            {"fromBlock": 0, "toBlock": last, "address": contract.address},
            {"fromBlock": 3, "toBlock": last - 4, "address": contract.address},
            {"fromBlock": 0, "address": [contract.address, other.address]},
            {"fromBlock": 0, "address": other.address},
            {"fromBlock": 0, "address": contract.address, "topics": ["0x" + topic0s[0]]},
            {"fromBlock": 0, "topics": [["0x" + t for t in topic0s[1:3]], round_two]},
            {"fromBlock": 0, "topics": [None, round_two]},
            {"fromBlock": last + 1, "toBlock": "latest"},
        ]

    def check() -> None:
        last = chain.block_number()
        for params in queries(last):
            expected = list(w3.eth.get_logs(params))  # eth-tester's own answer
            assert backend.get_logs(w3, params) == expected, params

    check()
    # Mined blocks are read from the node once: a repeated query asks it nothing more.
    asked: list[Any] = []
    real = w3.eth.get_logs
    monkeypatch.setattr(w3.eth, "get_logs", lambda p: asked.append(p) or real(p))
    assert backend.get_logs(w3, {"fromBlock": 0, "address": contract.address})
    assert asked == []
    # New blocks are read as they are mined; a chain reverted and mined again starts over.
    monkeypatch.undo()
    tester = backend.provider.ethereum_tester
    snapshot = tester.take_snapshot()
    other.add_learners([chain.account(5).address])
    check()
    tester.revert_to_snapshot(snapshot)
    other.add_learners([chain.account(6).address, chain.account(7).address])
    check()
