"""fedchain.eth.chain: connecting, loading signing accounts, nonces under threads, fee styles."""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path

import pytest
from eth_account import Account
from eth_typing import HexStr
from fixtures.chains import dev
from web3 import Web3

from fedchain.cli.devnet import free_port
from fedchain.errors import ChainUnavailable, ConfigError
from fedchain.eth.accounts import dev_account, load_account
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain

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
    assert "urllib3" not in shown(err.value) and "requests" not in shown(err.value)


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


def test_no_account_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no account"):
        load_account()


def test_dev_accounts_are_refused_on_a_chain_that_is_not_a_dev_chain() -> None:
    """A Chain whose chain id reads 1 (mainnet), faked by presetting the cached id.

    No mainnet node is reachable here; `chain_id` is only ever read through the cache.
    """
    chain = Chain(Web3.HTTPProvider("http://127.0.0.1:9"), "http://127.0.0.1:9")
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
