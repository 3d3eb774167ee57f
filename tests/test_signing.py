"""Native EIP-1559 signing (fedchain.eth.signing): the very bytes eth-account gives, only for
the transactions it claims, and transactions a node accepts; everything else still goes
through eth-account and is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from fixtures.chains import dev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedchain.eth import signing
from fedchain.eth.chain import Chain, connect
from fedchain.eth.contract import FedChain

#: Deadlines: generous, never reached when all is well.
PATIENCE = 120.0
#: secp256k1's group order: private keys are 1..N-1.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256 = 2**256 - 1


def account_of(label: str) -> LocalAccount:
    """A fresh account of this module's own (no dev account's nonce is touched)."""
    return Account.from_key(keccak(text=f"fedchain test_signing {label}"))


def address_of(label: str) -> str:
    return account_of(label).address


def mistyped(address: str) -> str:
    """`address` with the case of its last letter flipped: no longer its checksum."""
    i = next(i for i in range(len(address) - 1, 1, -1) if address[i].isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1:]


def without(tx: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in tx.items() if k not in keys}


def dynamic_fee_tx(**fields: Any) -> dict[str, Any]:
    """A plain type-2 transfer, with `fields` changed."""
    return {
        "chainId": 31337, "nonce": 0, "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 3 * 10**9, "gas": 21_000, "to": address_of("recipient"), "value": 1,
        **fields,
    }


# -- the same bytes as eth-account ----------------------------------------------------------

addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
payloads = st.binary(max_size=600)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.integers(1, SECP256K1_N - 1),
    chain_id=st.integers(1, 2**64 - 1) | st.sampled_from([1, 1337, 31337, 11155111]),
    nonce=st.integers(0, 2**64 - 2) | st.integers(0, 30),
    tip=st.integers(0, UINT256) | st.integers(0, 10**11),
    fee=st.integers(0, UINT256) | st.integers(0, 10**12),
    gas=st.integers(0, 2**64 - 1) | st.integers(21_000, 30_000_000),
    value=st.none() | st.integers(0, UINT256) | st.integers(0, 10**18),
    data=st.none() | payloads | payloads.map(lambda b: "0x" + b.hex()),
    to=addresses,
    type_=st.sampled_from([None, 2, "0x2", "0x02"]),
    sender=st.booleans(),
)
def test_native_signing_gives_the_raw_transaction_and_hash_eth_account_gives(
    key: int, chain_id: int, nonce: int, tip: int, fee: int, gas: int, value: int | None,
    data: bytes | str | None, to: str, type_: int | str | None, sender: bool,
) -> None:
    account = Account.from_key(key.to_bytes(32, "big"))
    tx: dict[str, Any] = {"chainId": chain_id, "nonce": nonce, "maxPriorityFeePerGas": tip,
                          "maxFeePerGas": fee, "gas": gas, "to": to}
    optional = {"value": value, "data": data, "type": type_,
                "from": account.address if sender else None}
    tx.update({k: v for k, v in optional.items() if v is not None})

    assert signing.supported(tx)
    raw, tx_hash = signing.sign_dynamic_fee(account, tx)
    reference = account.sign_transaction(tx)
    assert raw == bytes(reference.raw_transaction)
    assert tx_hash == bytes(reference.hash)
    assert Account.recover_transaction(raw) == account.address


# -- what it does not sign ------------------------------------------------------------------

ACCESS_LIST = [{"address": address_of("in the access list"),
                "storageKeys": ["0x" + "00" * 31 + "01"]}]


@pytest.mark.parametrize(
    "tx",
    [
        pytest.param({**without(dynamic_fee_tx(), "maxFeePerGas", "maxPriorityFeePerGas"),
                      "gasPrice": 10**9}, id="legacy-gas-price"),
        pytest.param(dynamic_fee_tx(accessList=ACCESS_LIST), id="access-list"),
        pytest.param(dynamic_fee_tx(accessList=[]), id="empty-access-list"),
        pytest.param(without(dynamic_fee_tx(data="0x6000"), "to"), id="contract-creation"),
        pytest.param(dynamic_fee_tx(to=None), id="to-none"),
        pytest.param(dynamic_fee_tx(to=""), id="to-empty"),
        pytest.param(dynamic_fee_tx(type=1), id="type-1"),
        pytest.param(dynamic_fee_tx(type="0x1"), id="type-0x1"),
        pytest.param(dynamic_fee_tx(type=0), id="type-0"),
        pytest.param(without(dynamic_fee_tx(), "maxPriorityFeePerGas"), id="no-tip"),
        pytest.param(dynamic_fee_tx(to=address_of("recipient").lower()),
                     id="to-not-checksummed"),
        pytest.param(dynamic_fee_tx(to=mistyped(address_of("recipient"))),
                     id="to-checksum-mistyped"),
    ],
)
def test_transactions_other_than_a_dynamic_fee_call_are_left_to_eth_account(
    tx: dict[str, Any],
) -> None:
    assert not signing.supported(tx)
    assert signing.supported(dynamic_fee_tx())  # the same, as a plain type-2 call: signed


class NativeCalls:
    """How many transactions `signing.sign_dynamic_fee` signed from now on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = signing.sign_dynamic_fee

        def counted(account: LocalAccount, tx: Any) -> tuple[bytes, bytes]:
            self.count += 1
            return original(account, tx)

        monkeypatch.setattr(signing, "sign_dynamic_fee", counted)


def base_fee(chain: Chain) -> int:
    return int(chain.w3.eth.get_block("latest")["baseFeePerGas"])


#: Transfers `Chain.transact` sends: (name, extra fields, fees instead of the node's,
#: the transaction type the node records, whether native signing signs it).
TRANSFERS: list[tuple[str, dict[str, Any], Callable[[Chain], dict[str, int]] | None, int, bool]] = [
    ("dynamic-fee", {}, None, 2, True),
    ("legacy", {}, lambda c: {"gasPrice": 2 * base_fee(c) + 10**9}, 0, False),
    ("access-list", {"accessList": ACCESS_LIST}, None, 2, False),
    ("type-1", {"accessList": ACCESS_LIST}, lambda c: {"gasPrice": 2 * base_fee(c) + 10**9},
     1, False),
]


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
@pytest.mark.parametrize(("name", "extra", "fees", "mined_type", "native"), TRANSFERS,
                         ids=[t[0] for t in TRANSFERS])
def test_the_chain_sends_every_kind_of_transaction_signing_natively_only_dynamic_fee_calls(
    anvil_chain: Chain, monkeypatch: pytest.MonkeyPatch, name: str, extra: dict[str, Any],
    fees: Callable[[Chain], dict[str, int]] | None, mined_type: int, native: bool,
) -> None:
    chain = anvil_chain
    sender = dev(chain, 6)
    recipient = address_of(f"recipient of a {name} transfer")
    before = chain.balance(recipient)
    if fees is not None:
        monkeypatch.setattr(chain, "fee_source", lambda: fees(chain))
    calls = NativeCalls(monkeypatch)

    receipt = chain.transact(sender, {"to": recipient, "value": 12_345, **extra},
                             timeout=PATIENCE)

    assert receipt.status == 1
    assert chain.balance(recipient) == before + 12_345
    mined = chain.w3.eth.get_transaction(receipt.tx_hash)  # type: ignore[arg-type]
    assert mined["from"] == sender.address and int(mined["type"]) == mined_type
    if "accessList" in extra:
        assert [to_checksum_address(e["address"]) for e in mined["accessList"]] == [
            e["address"] for e in ACCESS_LIST]
    assert calls.count == (1 if native else 0)


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_a_contract_creation_is_signed_by_eth_account_and_deploys(
    anvil_chain: Chain, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = NativeCalls(monkeypatch)
    contract, receipt = FedChain.deploy(anvil_chain, dev(anvil_chain, 0))
    assert receipt.status == 1 and contract.current_round() == 0
    assert calls.count == 0  # no `to`: not a native signer's transaction
    contract.add_learners([dev(anvil_chain, 2).address])  # a call to it: natively signed
    assert calls.count == 1


def test_a_mistyped_recipient_is_refused_before_anything_is_sent() -> None:
    """A checksum address with one letter's case flipped: eth-account refuses it, and so
    must the chain's native path (it used to sign and send it)."""
    chain = connect("embedded", fresh=True)
    sender = chain.account(3)
    good = address_of("mistyped recipient")
    nonce = chain.w3.eth.get_transaction_count(sender.address)
    with pytest.raises(TypeError, match="invalid fields"):
        chain.transact(sender, {"to": mistyped(good), "value": 5, "gas": 21_000}, timeout=PATIENCE)
    assert chain.balance(good) == 0
    assert chain.w3.eth.get_transaction_count(sender.address) == nonce
    # The same transfer to the right address goes through, natively signed.
    assert chain.transact(sender, {"to": good, "value": 5, "gas": 21_000}).status == 1
    assert chain.balance(good) == 5


# -- accepted by a real node ----------------------------------------------------------------

@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_natively_signed_transactions_are_accepted_and_mined_by_anvil(
    anvil_chain: Chain,
) -> None:
    chain = anvil_chain
    sender = account_of("native sender")
    chain.fund([sender.address])
    recipient = address_of("native recipient")
    first = chain.w3.eth.get_transaction_count(sender.address, "pending")
    received = chain.balance(recipient)
    sent = []
    for k, data in enumerate([b"", bytes(range(200)), "0x" + "ab" * 33]):
        tx = {
            "chainId": chain.chain_id, "nonce": first + k, "maxPriorityFeePerGas": 10**9,
            "maxFeePerGas": 2 * base_fee(chain) + 10**9, "gas": 60_000, "to": recipient,
            "value": 1_000 + k, "data": data, "type": 2,
        }
        assert signing.supported(tx)
        raw, tx_hash = signing.sign_dynamic_fee(sender, tx)
        assert bytes(chain.w3.eth.send_raw_transaction(raw)) == tx_hash
        sent.append((tx, tx_hash))

    for tx, tx_hash in sent:
        receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=PATIENCE)
        mined = chain.w3.eth.get_transaction(tx_hash)
        assert receipt["status"] == 1
        assert mined["from"] == sender.address  # the node recovered our signer
        assert mined["nonce"] == tx["nonce"] and int(mined["type"]) == 2
        assert mined["to"] == recipient and mined["value"] == tx["value"]
        data = tx["data"]
        assert bytes(mined["input"]) == (bytes.fromhex(data[2:]) if isinstance(data, str)
                                         else data)
        assert mined["maxFeePerGas"] == tx["maxFeePerGas"]
    assert chain.balance(recipient) == received + 1_000 + 1_001 + 1_002
    assert chain.w3.eth.get_transaction_count(sender.address) == first + 3
