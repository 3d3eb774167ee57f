"""connect(url) → Chain: the embedded py-evm chain or any EVM JSON-RPC node, one interface.

Transactions are always signed locally with eth-account (private key, keystore, or a dev
chain's well-known mnemonic account), so the same code runs on a dev chain and a public
network. Reverts come back as `fedchain.errors` exceptions named after the contract's errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from eth_utils.exceptions import ValidationError as EthUtilsValidationError
from web3 import Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    TimeExhausted,
    Web3RPCError,
)
from web3.types import FilterParams, TxParams

from ..errors import ChainUnavailable, ConfigError, TransactionFailed, TransactionTimeout
from ..redact import redact_url, register, scrub
from .accounts import DEV_ACCOUNTS, DEV_CHAIN_IDS, DEV_MNEMONIC, dev_account

try:  # the embedded chain reports reverts with eth-tester's own exception
    from eth_tester.exceptions import TransactionFailed as _TesterFailed
except ImportError:  # pragma: no cover - eth-tester is a dependency
    _TesterFailed = ContractLogicError  # type: ignore[misc,assignment]

#: What web3 and the providers raise when a call or transaction reverts.
REVERT_ERRORS = (
    ContractCustomError, ContractLogicError, Web3RPCError, ValueError, _TesterFailed,
    EthUtilsValidationError,
)

T = TypeVar("T")

#: Gas limit of transactions on the embedded chain (deploying FedChain takes 1.4M).
EMBEDDED_GAS_LIMIT = 5_000_000

@dataclass(frozen=True)
class Receipt:
    """The parts of a mined transaction receipt fedchain uses."""

    tx_hash: str
    block_number: int
    gas_used: int
    status: int
    logs: tuple[Any, ...]
    contract_address: str | None


_EMBEDDED: dict[str, Chain] = {}
_EMBEDDED_LOCK = threading.Lock()


def connect(url: str = "embedded", *, timeout: float = 30.0, fresh: bool = False) -> Chain:
    """A Chain for `embedded` (in-process py-evm) or an `http(s)://` JSON-RPC URL.

    All `connect("embedded")` calls in one process share one chain, so a simulation's
    aggregator and learners see the same state; `fresh=True` starts a new one.
    """
    if url in ("embedded", "embedded://"):
        with _EMBEDDED_LOCK:
            if fresh or "embedded" not in _EMBEDDED:
                _EMBEDDED["embedded"] = Chain(_embedded_provider(), "embedded")
            return _EMBEDDED["embedded"]
    if url.startswith(("http://", "https://")):
        provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout})
        chain = Chain(provider, redact_url(url))
        _ = chain.chain_id  # fail fast with ChainUnavailable
        return chain
    raise ConfigError(f"unknown chain URL {url!r}: use 'embedded' or http(s)://host:port")


def _embedded_provider() -> Any:
    from eth_tester import EthereumTester, PyEVMBackend
    from web3.providers.eth_tester import EthereumTesterProvider

    backend = PyEVMBackend.from_mnemonic(
        DEV_MNEMONIC, num_accounts=DEV_ACCOUNTS, hd_path="m/44'/60'/0'/0"
    )
    return EthereumTesterProvider(EthereumTester(backend))


class Chain:
    """A connection to one chain: reads, locally signed transactions, paged log queries."""

    def __init__(self, provider: Any, url: str) -> None:
        self.url = url
        self.w3 = Web3(provider)
        self.embedded = url == "embedded"
        self._nonces: dict[str, int] = {}
        self._nonce_lock = threading.Lock()
        # The embedded EVM is not thread-safe; serialize every call into it.
        self._lock = threading.RLock() if self.embedded else None
        self._chain_id: int | None = None
        self._eip1559: bool | None = None
        if self.embedded:
            # eth_call without a sender is twice as slow on the tester backend.
            self.w3.eth.default_account = dev_account(0).address

    def __repr__(self) -> str:
        return f"Chain({self.url!r})"

    # -- low level ---------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Runs a web3 call, turning transport failures into ChainUnavailable."""
        # The real URL's secrets (an API key in its path) stay out of messages and logs.
        endpoint = getattr(self.w3.provider, "endpoint_uri", None)
        endpoint = endpoint if isinstance(endpoint, str) else None
        register(endpoint)
        try:
            if self._lock is not None:
                with self._lock:
                    return fn()
            return fn()
        except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
            raise ChainUnavailable(
                f"chain node at {self.url} is not reachable ({type(exc).__name__})"
            ) from None
        except requests.RequestException as exc:  # e.g. HTTP 429 or 5xx from a public node
            detail = scrub(str(exc), endpoint)
            raise ChainUnavailable(
                f"chain node at {self.url} refused the request: {detail}"
            ) from None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.call(lambda: self.w3.eth.chain_id))
        return self._chain_id

    @property
    def is_dev_chain(self) -> bool:
        return self.embedded or self.chain_id in DEV_CHAIN_IDS

    def block_number(self) -> int:
        return int(self.call(lambda: self.w3.eth.block_number))

    def balance(self, address: str) -> int:
        return int(self.call(lambda: self.w3.eth.get_balance(to_checksum_address(address))))

    def account(self, index: int) -> LocalAccount:
        """Dev account `index`; refused on chains that are not known dev chains."""
        if not self.is_dev_chain:
            raise ConfigError(
                f"chain {self.chain_id} is not a dev chain: dev accounts by index are refused; "
                "give a key or keystore"
            )
        return dev_account(index)

    # -- transactions ------------------------------------------------------------------

    def _next_nonce(self, address: str) -> int:
        with self._nonce_lock:
            if address not in self._nonces:
                self._nonces[address] = int(
                    self.call(lambda: self.w3.eth.get_transaction_count(
                        to_checksum_address(address), "pending"))
                )
            nonce = self._nonces[address]
            self._nonces[address] = nonce + 1
            return nonce

    def _forget_nonce(self, address: str) -> None:
        with self._nonce_lock:
            self._nonces.pop(address, None)

    def _fees(self) -> dict[str, int]:
        if self._eip1559 is None:
            block = self.call(lambda: self.w3.eth.get_block("latest"))
            self._eip1559 = block.get("baseFeePerGas") is not None
        if self._eip1559:
            base = int(self.call(lambda: self.w3.eth.get_block("latest"))["baseFeePerGas"])
            try:
                tip = int(self.call(lambda: self.w3.eth.max_priority_fee))
            except (Web3RPCError, ValueError, NotImplementedError):
                tip = 10**9
            return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}
        return {"gasPrice": int(self.call(lambda: self.w3.eth.gas_price))}

    def transact(
        self,
        account: LocalAccount,
        tx: dict[str, Any],
        *,
        decode_revert: Callable[[Exception], Exception] | None = None,
        timeout: float = 120.0,
        confirmations: int = 0,
    ) -> Receipt:
        """Estimates, signs locally, sends, and waits for the receipt of `tx`.

        A revert (at estimation or in the mined block) raises what `decode_revert` makes of
        it (the contract's typed errors), else TransactionFailed.
        """
        sender = account.address
        tx = {**tx, "from": sender, "chainId": self.chain_id}
        decode = decode_revert or (lambda e: TransactionFailed(str(e)))
        if "gas" not in tx and self.embedded:
            # py-evm's estimator re-runs the transaction a dozen times; gas is free here, so
            # one eth_call surfaces a revert and a fixed limit covers every FedChain call.
            try:
                self.call(lambda: self.w3.eth.call(cast(TxParams, tx)))
            except REVERT_ERRORS as exc:
                raise decode(exc) from None
            tx["gas"] = EMBEDDED_GAS_LIMIT
        elif "gas" not in tx:
            try:
                estimate = self.call(lambda: self.w3.eth.estimate_gas(cast(TxParams, tx)))
            except REVERT_ERRORS as exc:
                raise decode(exc) from None
            tx["gas"] = int(estimate * 1.2) + 10_000
        tx.update(self._fees())
        for attempt in range(2):
            tx["nonce"] = self._next_nonce(sender)
            signed = account.sign_transaction(tx)
            try:
                tx_hash = self.call(partial(self.w3.eth.send_raw_transaction,
                                            signed.raw_transaction))
                break
            except REVERT_ERRORS as exc:
                self._forget_nonce(sender)
                if attempt == 0 and "nonce" in str(exc).lower():
                    continue
                raise decode(exc) from None
            except BaseException:
                # Whether the node got it is unknown: resync from its pending count next time.
                self._forget_nonce(sender)
                raise
        try:
            raw = self.call(
                lambda: self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=timeout, poll_latency=0.05
                )
            )
        except TimeExhausted:
            self._forget_nonce(sender)
            raise TransactionTimeout(
                f"transaction 0x{bytes(tx_hash).hex()} not mined within {timeout:.0f}s"
            ) from None
        receipt = Receipt(
            tx_hash="0x" + bytes(raw["transactionHash"]).hex(),
            block_number=int(raw["blockNumber"]),
            gas_used=int(raw["gasUsed"]),
            status=int(raw["status"]),
            logs=tuple(raw["logs"]),
            contract_address=raw.get("contractAddress"),
        )
        if receipt.status != 1:
            self._replay_revert(tx, receipt, decode)
        if confirmations > 0:
            self.wait_for_block(receipt.block_number + confirmations, timeout)
        return receipt

    def _replay_revert(
        self, tx: dict[str, Any], receipt: Receipt, decode: Callable[[Exception], Exception]
    ) -> None:
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            self.call(lambda: self.w3.eth.call(cast(TxParams, call), receipt.block_number - 1))
        except REVERT_ERRORS as exc:
            raise decode(exc) from None
        raise TransactionFailed(f"transaction {receipt.tx_hash} reverted (no reason given)")

    def wait_for_block(self, number: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.block_number() < number:
            if time.monotonic() > deadline:
                raise TransactionTimeout(f"block {number} not reached within {timeout:.0f}s")
            time.sleep(0.2)

    # -- logs --------------------------------------------------------------------------

    def iter_logs(
        self,
        address: str,
        topics: list[Any] | None = None,
        from_block: int = 0,
        to_block: int | None = None,
        page: int = 10_000,
    ) -> Iterator[Any]:
        """Logs of `address` in block order, paged through block ranges.

        Public nodes cap eth_getLogs ranges; on a range error the page is halved.
        """
        last = self.block_number() if to_block is None else to_block
        start = from_block
        while start <= last:
            end = min(start + page - 1, last)
            params: dict[str, Any] = {"address": address, "fromBlock": start, "toBlock": end}
            if topics:
                params["topics"] = topics
            try:
                logs = self.call(partial(self.w3.eth.get_logs, cast(FilterParams, params)))
            except (Web3RPCError, ValueError) as exc:
                if page > 1 and _is_range_error(exc):
                    page = max(1, page // 2)
                    continue
                raise ChainUnavailable(f"eth_getLogs failed on {self.url}: {exc}") from None
            yield from logs
            start = end + 1


def _is_range_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("range", "too many", "limit", "exceed", "10000"))
