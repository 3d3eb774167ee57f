"""connect(url) → Chain: the embedded py-evm chain or any EVM JSON-RPC node, one interface.

What differs between the two lives in a Backend (EmbeddedBackend, RpcBackend), as transports
do in httpx: the lock around the in-process EVM, how gas limits are found, transport errors,
and the capabilities other layers ask about (`chain.backend.keeps_records_in_process`,
`supports_batch`, `concurrent_requests`, `always_dev_chain`).

Transactions are always signed locally with eth-account (private key, keystore, or a dev
chain's well-known mnemonic account), so the same code runs on a dev chain and a public
network. Reverts come back as `fedchain.errors` exceptions named after the contract's errors.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils import to_checksum_address
from eth_utils.exceptions import ValidationError as EthUtilsValidationError
from web3 import Web3
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractCustomError,
    ContractLogicError,
    TimeExhausted,
    Web3RPCError,
)
from web3.types import BlockIdentifier, FilterParams, RPCEndpoint, TxParams

from ..errors import (
    ChainUnavailable,
    ConfigError,
    ContractRevert,
    DeploymentNotFound,
    FedChainError,
    TransactionFailed,
    TransactionTimeout,
)
from ..redact import redact_url, register, scrub
from . import signing
from .accounts import DEV_ACCOUNTS, DEV_CHAIN_IDS, DEV_MNEMONIC, OWNER_INDEX, dev_account
from .batching import ReceiptPoller, SendBatcher
from .gas import (
    DEFAULT_TIP,
    EMBEDDED_GAS_LIMIT,
    OUT_OF_GAS_RESENDS,
    TRANSFER_GAS,
    eip1559_fees,
    estimate_limit,
    ran_out_of_gas,
)

try:  # the embedded chain reports reverts with eth-tester's own exception
    from eth_tester.exceptions import TransactionFailed as _TesterFailed
except ImportError:  # pragma: no cover - eth-tester is a dependency
    _TesterFailed = ContractLogicError  # type: ignore[misc,assignment]

#: What web3 and the providers raise when a call or transaction reverts.
REVERT_ERRORS = (
    ContractCustomError, ContractLogicError, Web3RPCError, ValueError, _TesterFailed,
    EthUtilsValidationError,
)

log = logging.getLogger("fedchain.chain")

T = TypeVar("T")

#: Tries to send one transaction: a nonce taken by another transaction of the sender resyncs.
SEND_ATTEMPTS = 4
#: What nodes answer when the nonce is taken by a mined or pending transaction of the sender
#: (geth, Anvil, Hardhat: "nonce too low", "replacement transaction underpriced"; Ganache:
#: "the tx doesn't have the correct nonce").
NONCE_TAKEN = ("nonce", "underpriced")
#: What nodes answer when this very signed transaction is already in their pool (geth:
#: "already known", Anvil: "transaction already imported", older geth: "known transaction").
ALREADY_KNOWN = ("already known", "already imported", "known transaction")

#: What `Chain.fund` gives each account on a dev chain (10 ETH) and who gives it.
DEV_FUNDING = 10 * 10**18
FUNDER_INDEX = OWNER_INDEX


@dataclass(frozen=True)
class Receipt:
    """The parts of a mined transaction receipt fedchain uses."""

    tx_hash: str
    block_number: int
    gas_used: int
    status: int
    logs: tuple[Any, ...]
    contract_address: str | None


class Backend(ABC):
    """How a Chain reaches its node, and what that node can do; `connect` picks one.

    Everything that differs between the in-process chain and a JSON-RPC node lives in a
    backend (like an httpx transport): Chain and the layers above ask for capabilities and
    call methods, never test which backend they have.
    """

    #: The node as fedchain shows it (no credentials, path or query).
    url: str
    #: Deployment records stay in this process (the chain dies with it) instead of
    #: deployments/<chainId>.json.
    keeps_records_in_process: bool = False
    #: The node answers JSON-RPC batch requests (e.g. many receipts in one round trip).
    supports_batch: bool = False
    #: Requests from several threads run concurrently (False: they queue behind one lock).
    concurrent_requests: bool = True
    #: A dev chain whatever its chain id (its dev accounts may be used by index).
    always_dev_chain: bool = False

    def __init__(self, provider: Any, url: str) -> None:
        self.provider = provider
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def web3(self) -> Web3:
        """The Web3 instance a Chain on this backend uses."""
        return Web3(self.provider)

    def run(self, fn: Callable[[], T]) -> T:
        """Runs one request (or a few) against the node."""
        return fn()

    @abstractmethod
    def gas_limit(self, w3: Web3, tx: TxParams) -> int:
        """The gas limit to send `tx` with; a revert raises one of REVERT_ERRORS."""

    def revert_data(self, w3: Web3, tx_hash: str) -> bytes | None:
        """The revert data of a mined, reverted transaction, replayed by the node in its place
        in the block; None where the node cannot say."""
        return None

    def get_logs(self, w3: Web3, params: FilterParams) -> list[Any]:
        """eth_getLogs: the logs matching `params` (a block range, address, topics)."""
        return list(w3.eth.get_logs(params))

    def advance_time(self, w3: Web3, seconds: int) -> None:
        """Dev chains: moves the chain's clock `seconds` ahead and mines a block there."""
        w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def batch(self, w3: Web3, requests: Sequence[Callable[[], Any]]) -> list[Any]:
        """The answers to `requests` (zero-argument web3 calls), in order: one by one here;
        backends whose node takes JSON-RPC batches send them in one round trip."""
        return [request() for request in requests]


class EmbeddedBackend(Backend):
    """An in-process py-evm chain (eth-tester) with the dev mnemonic's accounts funded.

    The EVM is not thread-safe, so every request holds one lock; gas costs nothing, so
    transactions get a fixed limit instead of py-evm's slow estimate.
    """

    keeps_records_in_process = True
    concurrent_requests = False
    always_dev_chain = True

    def __init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3.providers.eth_tester import EthereumTesterProvider

        backend = PyEVMBackend.from_mnemonic(
            DEV_MNEMONIC, num_accounts=DEV_ACCOUNTS, hd_path="m/44'/60'/0'/0"
        )
        super().__init__(EthereumTesterProvider(EthereumTester(backend)), "embedded")
        self._lock = threading.RLock()
        self._clock = 0
        #: Each mined block's logs (get_logs), and the newest cached block's number and hash.
        self._block_logs: dict[int, tuple[Any, ...]] = {}
        self._cached: tuple[int, Any] | None = None

    def web3(self) -> Web3:
        w3 = super().web3()
        # eth_call without a sender is twice as slow on the tester backend.
        w3.eth.default_account = dev_account(0).address
        return w3

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._sync_clock()
            return fn()

    def _sync_clock(self) -> None:
        """py-evm stamps each block one second after its parent, whatever the time: an idle
        chain's clock would stand still, and the contract's deadlines with it. The next block
        is stamped with the wall clock instead (or later, after advance_time)."""
        now = int(time.time())
        if now <= self._clock:
            return
        self._clock = now
        tester = self.provider.ethereum_tester
        if now > int(tester.get_block_by_number("pending")["timestamp"]):
            tester.time_travel(now)

    def get_logs(self, w3: Web3, params: FilterParams) -> list[Any]:
        """eth_getLogs from a cache of each mined block's logs, filtered here.

        eth-tester finds each receipt by scanning back from the chain's head, so its own
        eth_getLogs costs O(blocks²): at 100 blocks (ten rounds of five learners) a query took
        1-2 s under the lock every thread waits on, and the parties' queries from block 0 made
        each round slower than the one before. A mined block's logs never change; the newest
        cached block's hash is checked all the same (a chain reverted to a snapshot and mined
        again starts the cache over).
        """
        last = int(w3.eth.block_number)
        start = _block_param(params.get("fromBlock"), last)
        end = min(_block_param(params.get("toBlock"), last), last)
        if self._cached and (
            self._cached[0] > last or w3.eth.get_block(self._cached[0])["hash"] != self._cached[1]
        ):
            self._block_logs.clear()
            self._cached = None
        missing = [n for n in range(start, end + 1) if n not in self._block_logs]
        if missing:
            fetched: dict[int, list[Any]] = {n: [] for n in missing}
            for log in w3.eth.get_logs({"fromBlock": missing[0], "toBlock": missing[-1]}):
                if log["blockNumber"] in fetched:
                    fetched[log["blockNumber"]].append(log)
            self._block_logs.update((n, tuple(logs)) for n, logs in fetched.items())
            newest = max(self._block_logs)
            self._cached = (newest, w3.eth.get_block(newest)["hash"])
        addresses = params.get("address")
        wanted = None if addresses is None else {
            str(a).lower() for a in ([addresses] if isinstance(addresses, str) else addresses)
        }
        topics = [None if t is None else {_hex(x) for x in ([t] if isinstance(t, str | bytes)
                                                              else t)}
                  for t in params.get("topics") or []]
        return [
            log
            for n in range(start, end + 1)
            for log in self._block_logs[n]
            if (wanted is None or str(log["address"]).lower() in wanted)
            and len(log["topics"]) >= len(topics)
            and all(t is None or _hex(log["topics"][i]) in t for i, t in enumerate(topics))
        ]

    def advance_time(self, w3: Web3, seconds: int) -> None:
        tester = self.provider.ethereum_tester
        now = int(tester.get_block_by_number("pending")["timestamp"])
        tester.time_travel(now + seconds)

    def gas_limit(self, w3: Web3, tx: TxParams) -> int:
        # py-evm's estimator re-runs the transaction a dozen times; one eth_call surfaces a
        # revert, and a fixed limit covers every FedChain call.
        w3.eth.call(tx)
        return EMBEDDED_GAS_LIMIT


def _block_param(value: Any, latest: int) -> int:
    """A getLogs block bound as a number (None and the tags: the latest block)."""
    if value is None or value in ("latest", "pending", "safe", "finalized"):
        return latest
    if value == "earliest":
        return 0
    return int(value, 16) if isinstance(value, str) else int(value)


def _hex(value: Any) -> str:
    """A topic (0x-hex text or bytes) as lowercase hex without the 0x."""
    if isinstance(value, str):
        return value.lower().removeprefix("0x")
    return bytes(value).hex()


class RpcBackend(Backend):
    """An EVM JSON-RPC node over HTTP(S); transport failures become ChainUnavailable."""

    supports_batch = True

    def __init__(self, url: str, *, timeout: float = 30.0, provider: Any = None) -> None:
        if provider is None:
            # web3's validation middleware asks the node for eth_chainId twice before every
            # eth_call and eth_estimateGas: a node's chain id does not change, so it is asked
            # once per thread (3 HTTP requests per contract view become 1).
            provider = Web3.HTTPProvider(
                url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True,
                cacheable_requests={RPCEndpoint("eth_chainId")},
                request_cache_validation_threshold=None,
            )
        super().__init__(provider, redact_url(url))
        endpoint = getattr(self.provider, "endpoint_uri", None)
        #: The real URL, secrets and all: only ever scrubbed out of messages and logs.
        self._endpoint = endpoint if isinstance(endpoint, str) else url

    def run(self, fn: Callable[[], T]) -> T:
        # The real URL's secrets (an API key in its path) stay out of messages and logs.
        register(self._endpoint)
        try:
            return fn()
        except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
            raise ChainUnavailable(
                f"chain node at {self.url} is not reachable ({type(exc).__name__})", url=self.url
            ) from None
        except requests.RequestException as exc:  # e.g. HTTP 429 or 5xx from a public node
            detail = scrub(str(exc), self._endpoint)
            raise ChainUnavailable(
                f"chain node at {self.url} refused the request: {detail}", url=self.url
            ) from None

    def gas_limit(self, w3: Web3, tx: TxParams) -> int:
        return estimate_limit(w3.eth.estimate_gas(tx))

    def revert_data(self, w3: Web3, tx_hash: str) -> bytes | None:
        # debug_traceTransaction with the call tracer (geth, Anvil, Hardhat, Erigon): its
        # `output` is the revert data. Nodes without it (most public ones; Ganache returns
        # no data for reverts) leave it to the caller's replays.
        try:
            answer = w3.provider.make_request(
                RPCEndpoint("debug_traceTransaction"), [tx_hash, {"tracer": "callTracer"}]
            )
        except (Web3RPCError, ValueError, requests.RequestException):
            return None
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            return None
        output = result.get("output") or result.get("returnValue") or ""
        try:
            data = bytes.fromhex(str(output).removeprefix("0x"))
        except ValueError:
            return None
        return data if len(data) >= 4 else None

    def batch(self, w3: Web3, requests: Sequence[Callable[[], Any]]) -> list[Any]:
        """One HTTP POST with every request (a JSON-RPC batch: Anvil, Ganache, Hardhat, geth
        take them), formatted by web3 as single calls are; a node that refuses batches, or an
        error in one of them, falls back to one request at a time (which raises that error)."""
        if len(requests) > 1:
            try:
                with w3.batch_requests() as batch:
                    for request in requests:
                        batch.add(request())
                    answers = batch.execute()
                if isinstance(answers, list) and len(answers) == len(requests):
                    return list(answers)
            except (Web3RPCError, ValueError, KeyError, TypeError, AttributeError):
                pass
        return super().batch(w3, requests)


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
                _EMBEDDED["embedded"] = Chain(EmbeddedBackend())
            return _EMBEDDED["embedded"]
    if url.startswith(("http://", "https://")):
        chain = Chain(RpcBackend(url, timeout=timeout))
        _ = chain.chain_id  # fail fast with ChainUnavailable
        return chain
    raise ConfigError(f"unknown chain URL {url!r}: use 'embedded' or http(s)://host:port")




class Chain:
    """A connection to one chain: reads, locally signed transactions, paged log queries."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.url = backend.url
        self.w3 = backend.web3()
        self._nonces: dict[str, int] = {}
        self._nonce_lock = threading.Lock()
        self._chain_id: int | None = None
        self._eip1559: bool | None = None
        #: Opt-in: the fees of the next transaction (e.g. `ChainWatcher.fees`, from the head
        #: block it has read anyway) instead of two requests per transaction; None from it
        #: asks the node as usual.
        self.fee_source: Callable[[], dict[str, int] | None] | None = None
        #: Opt-in: a gas limit for a transaction (given its fields) instead of eth_estimateGas,
        #: for calls whose gas is known and flat; None from it estimates. A revert is then
        #: found in the mined transaction and decoded from the chain, as on the embedded chain.
        self.gas_policy: Callable[[dict[str, Any]], int | None] | None = None
        #: Opt-in (nodes that take JSON-RPC batches): threads waiting for receipts share one
        #: poller that asks for every pending receipt in one batch (see ReceiptPoller).
        self.receipts: ReceiptPoller | None = None
        #: With shared receipt polling: transactions signed by many threads are sent together,
        #: one JSON-RPC batch at a time (see SendBatcher).
        self.sends: SendBatcher | None = None

    def __repr__(self) -> str:
        return f"Chain({self.url!r})"

    # -- low level ---------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Runs a web3 call through the backend (transport failures: ChainUnavailable; a
        contract call answered with nothing because the contract's code is gone, as on a
        restarted dev chain: DeploymentNotFound, see `deployment_gone`)."""
        try:
            return self.backend.run(fn)
        except BadFunctionCallOutput as exc:
            raise self.deployment_gone(_contract_address(fn), exc) from None

    def deployment_gone(self, address: str | None, exc: Exception) -> Exception:
        """What a contract call that returned no data means: DeploymentNotFound saying the
        deployment is gone and how to redeploy when `address` holds no code (the dev chain
        was restarted or reset under the running process), else `exc` as it was."""
        if address is not None:
            code: bytes
            try:
                code = bytes(self.backend.run(lambda: self.w3.eth.get_code(
                    to_checksum_address(address))))
            except FedChainError:
                code = b""  # the node went away too: the call's empty answer is the evidence
            if code:
                return exc  # the code is there: the call's output is wrong, not missing
        where = (f"at {address} is gone: chain {self.url} has no contract code there any "
                 "more" if address is not None else
                 f"is gone: a call to it on chain {self.url} returned no data")
        return DeploymentNotFound(
            f"the FedChain deployment {where} (the chain was probably restarted or reset, "
            "and a dev chain keeps no state across restarts). Redeploy with `fedchain deploy "
            "--fresh` (dev chains: `fedchain deploy --fresh --dev-learners N`), then start "
            "the aggregator and the learners again", url=self.url)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.call(lambda: self.w3.eth.chain_id))
        return self._chain_id

    @property
    def is_dev_chain(self) -> bool:
        return self.backend.always_dev_chain or self.chain_id in DEV_CHAIN_IDS

    def advance_time(self, seconds: int) -> None:
        """Dev chains only: moves the chain's clock ahead (deadline tests, demos)."""
        self.call(lambda: self.backend.advance_time(self.w3, seconds))

    def block_number(self) -> int:
        return int(self.call(lambda: self.w3.eth.block_number))

    def batch(self, requests: Sequence[Callable[[], Any]]) -> list[Any]:
        """Answers to several reads at once, e.g. ``partial(w3.eth.get_logs, params)`` and
        ``partial(contract.functions.currentRound().call, block_identifier=n)``: one JSON-RPC
        batch where the node takes them (`backend.supports_batch`), else one call each."""
        return self.call(partial(self.backend.batch, self.w3, list(requests)))

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
                self._nonces[address] = self._pending_count(address)
            nonce = self._nonces[address]
            self._nonces[address] = nonce + 1
            return nonce

    def _pending_count(self, address: str) -> int:
        return int(self.call(lambda: self.w3.eth.get_transaction_count(
            to_checksum_address(address), "pending")))

    def rpc_batch(self, calls: Sequence[tuple[RPCEndpoint, Any]]) -> list[Any]:
        """Plain JSON-RPC answers (dicts with "result" or "error", unformatted) to `calls`,
        in order, in one HTTP request: for hot paths where web3's formatting costs more than
        the node. RPC nodes only (`backend.supports_batch`); a node that does not answer with
        one answer per call raises ChainUnavailable."""
        provider: Any = self.w3.provider
        got = self.call(partial(provider.make_batch_request, list(calls)))
        if not isinstance(got, list) or len(got) != len(calls):
            raise ChainUnavailable(f"chain node at {self.url} answered a batch of "
                                   f"{len(calls)} calls with {got!r:.200}", url=self.url)
        return got

    def prime_nonces(self, addresses: Iterable[str]) -> None:
        """Reads the next nonce of many senders at once (one JSON-RPC batch where the node
        takes them), so each one's first transaction does not ask on its own."""
        wanted = [to_checksum_address(a) for a in addresses]
        with self._nonce_lock:
            wanted = [a for a in dict.fromkeys(wanted) if a not in self._nonces]
        if not wanted:
            return
        counts = self.batch([partial(self.w3.eth.get_transaction_count, a, "pending")
                             for a in wanted])
        with self._nonce_lock:
            for address, count in zip(wanted, counts, strict=True):
                self._nonces.setdefault(address, int(count))

    def _forget_nonce(self, address: str) -> None:
        with self._nonce_lock:
            self._nonces.pop(address, None)

    def _resync_nonce(self, address: str, at_least: int = 0) -> None:
        """Next nonce from the node's pending count; at least `at_least` (a nonce the node says
        is taken, where its pending count may lag behind its pool)."""
        count = self._pending_count(address)
        with self._nonce_lock:
            self._nonces[address] = max(count, at_least)

    def _fees(self) -> dict[str, int]:
        given = self.fee_source() if self.fee_source is not None else None
        if given:
            return dict(given)
        if self._eip1559 is None:
            block = self.call(lambda: self.w3.eth.get_block("latest"))
            self._eip1559 = block.get("baseFeePerGas") is not None
        if self._eip1559:
            base = int(self.call(lambda: self.w3.eth.get_block("latest"))["baseFeePerGas"])
            try:
                tip = int(self.call(lambda: self.w3.eth.max_priority_fee))
            except (Web3RPCError, ValueError, NotImplementedError):
                tip = DEFAULT_TIP
            return eip1559_fees(base, tip)
        return {"gasPrice": int(self.call(lambda: self.w3.eth.gas_price))}

    def _tag(self, exc: Exception, tx_hash: str | None = None) -> Exception:
        """`exc` with this chain's URL and, for a mined transaction, its hash attached."""
        if isinstance(exc, FedChainError):
            exc.url = exc.url or self.url
            exc.tx_hash = exc.tx_hash or tx_hash
        return exc

    def transact(
        self,
        account: LocalAccount,
        tx: dict[str, Any],
        *,
        decode_revert: Callable[[Exception], Exception] | None = None,
        timeout: float = 120.0,
        confirmations: int = 0,
        headroom: int = 0,
    ) -> Receipt:
        """Estimates, signs locally, sends, and waits for the receipt of `tx`.

        A revert (at estimation or in the mined block) raises what `decode_revert` makes of
        it (the contract's typed errors), else TransactionFailed; errors carry the chain's
        `url` and, once the transaction was mined, its `tx_hash`. `headroom` is gas added to
        an estimate, for a call whose cost depends on what other senders' transactions mined
        before it do (a committee vote that turns out to be the deciding one); gas a
        transaction does not use is not paid for. A transaction without a `gas` of its own
        that still runs out of gas (the state it was estimated on changed before its block)
        is estimated again on the new state and sent once more (`gas.OUT_OF_GAS_RESENDS`).
        """
        decode = decode_revert or (lambda e: TransactionFailed(str(e)))
        prepared = self._prepare(account, tx, decode, headroom)
        prepared.update(self._fees())
        tx_hash = self._send(account, prepared, decode)
        receipt = self._wait(account.address, tx_hash, timeout)
        for _ in range(OUT_OF_GAS_RESENDS):
            if (receipt.status == 1 or "gas" in tx
                    or not ran_out_of_gas(receipt.gas_used, prepared["gas"])):
                break
            log.info("transaction %s ran out of gas (limit %s, set before the state it ran on): "
                     "estimating it again", receipt.tx_hash, f"{prepared['gas']:,}")
            prepared = self._prepare(account, tx, decode, headroom, policy=False)
            prepared.update(self._fees())
            tx_hash = self._send(account, prepared, decode)
            receipt = self._wait(account.address, tx_hash, timeout)
        if receipt.status != 1:
            raise self._tag(self._revert_reason(prepared, receipt, decode), receipt.tx_hash)
        if confirmations > 0:
            self.wait_for_block(receipt.block_number + confirmations, timeout)
        return receipt

    def _prepare(
        self, account: LocalAccount, tx: dict[str, Any], decode: Callable[[Exception], Exception],
        headroom: int = 0, policy: bool = True,
    ) -> dict[str, Any]:
        """`tx` with sender, chain id and a gas limit (a revert found here is raised)."""
        tx = {**tx, "from": account.address, "chainId": self.chain_id}
        if "gas" not in tx and policy and self.gas_policy is not None:
            gas = self.gas_policy(tx)
            if gas:
                tx["gas"] = gas
        if "gas" not in tx:
            try:
                tx["gas"] = self.call(
                    partial(self.backend.gas_limit, self.w3, cast(TxParams, tx))) + headroom
            except REVERT_ERRORS as exc:
                raise self._tag(decode(exc)) from None
        return tx

    def _send(
        self, account: LocalAccount, tx: dict[str, Any], decode: Callable[[Exception], Exception]
    ) -> str:
        """Signs `tx` with the sender's next nonce and sends it; returns its hash.

        A nonce already taken by an earlier transaction of the same sender, mined or still
        pending (e.g. one this process sent before it was restarted), resyncs the nonce from
        the node's pending count and signs again; the very same transaction already in the
        node's pool is simply waited for.
        """
        sender = account.address
        for attempt in range(SEND_ATTEMPTS):
            tx["nonce"] = self._next_nonce(sender)
            if signing.supported(tx):
                raw, signed_hash = signing.sign_dynamic_fee(account, tx)
            else:
                signed = account.sign_transaction(tx)
                raw, signed_hash = bytes(signed.raw_transaction), bytes(signed.hash)
            try:
                if self.sends is not None:
                    return self.sends.send(raw)
                sent = self.call(partial(self.w3.eth.send_raw_transaction, raw))
                return "0x" + bytes(sent).hex()
            except REVERT_ERRORS as exc:
                text = str(exc).lower()
                if any(s in text for s in ALREADY_KNOWN):
                    return "0x" + signed_hash.hex()
                if attempt + 1 < SEND_ATTEMPTS and any(s in text for s in NONCE_TAKEN):
                    taken = "underpriced" in text or "too low" in text
                    self._resync_nonce(sender, tx["nonce"] + 1 if taken else 0)
                    continue
                self._forget_nonce(sender)
                raise self._tag(decode(exc)) from None
            except BaseException:
                # Whether the node got it is unknown: resync from its pending count next time.
                self._forget_nonce(sender)
                raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def share_receipt_polling(self, interval: float = 0.02) -> None:
        """From now on, threads waiting for receipts share one poller: every `interval`
        seconds, one JSON-RPC batch asks for all pending receipts (instead of each thread
        polling its own). For many senders in one process (a pool of learners); needs a node
        that takes batches, else nothing changes."""
        if self.backend.supports_batch and self.receipts is None:
            self.receipts = ReceiptPoller(self, interval)
            self.sends = SendBatcher(self)

    def _wait(self, sender: str, tx_hash: str, timeout: float) -> Receipt:
        if self.receipts is not None:
            try:
                return _receipt(self.receipts.wait(tx_hash, timeout))
            except TransactionTimeout:
                self._forget_nonce(sender)
                raise
        try:
            raw = self.call(
                lambda: self.w3.eth.wait_for_transaction_receipt(
                    HexStr(tx_hash), timeout=timeout, poll_latency=0.05
                )
            )
        except TimeExhausted:
            self._forget_nonce(sender)
            raise TransactionTimeout(
                f"transaction {tx_hash} not mined within {timeout:.0f}s",
                url=self.url, tx_hash=tx_hash,
            ) from None
        return _receipt(raw)

    def _revert_reason(
        self, tx: dict[str, Any], receipt: Receipt, decode: Callable[[Exception], Exception]
    ) -> Exception:
        """Why a mined transaction reverted, as the contract's typed error where one is found.

        First the node's own replay of the transaction in its place in the block (a trace,
        where the backend has one); then the call again on the block's parent, in the mined
        block and at the latest block. The last two find what an earlier transaction in the
        same block did, e.g. this sender's own duplicate that was still pending when its
        process restarted (AlreadySubmitted, WrongRound: the callers treat those as done).
        """
        if ran_out_of_gas(receipt.gas_used, int(tx.get("gas", 0))):
            return TransactionFailed(
                f"transaction {receipt.tx_hash} ran out of gas (limit {tx['gas']:,})"
            )
        data = self.call(partial(self.backend.revert_data, self.w3, receipt.tx_hash))
        if data:
            reason = decode(ContractLogicError("execution reverted", data="0x" + data.hex()))
            if isinstance(reason, ContractRevert):
                return reason
        call = cast(TxParams, {k: tx[k] for k in ("from", "to", "data", "value") if k in tx})
        blocks: list[BlockIdentifier] = [receipt.block_number - 1, receipt.block_number, "latest"]
        for block in blocks:
            try:
                self.call(partial(self.w3.eth.call, call, block))
            except REVERT_ERRORS as exc:
                reason = decode(exc)
                if isinstance(reason, ContractRevert):
                    return reason
        return TransactionFailed(f"transaction {receipt.tx_hash} reverted (no reason given)")

    # -- funding -----------------------------------------------------------------------

    def fund(
        self, addresses: Iterable[str], amount: int = DEV_FUNDING, *, timeout: float = 120.0
    ) -> list[Receipt]:
        """Makes sure every address can pay for its transactions.

        On a dev chain, dev account 0 sends `amount` wei to each address holding less than a
        tenth of it (all transfers sent, then awaited). Any other chain is only checked:
        addresses holding nothing raise ConfigError, named, before any of them sends and fails.
        """
        wanted = list(dict.fromkeys(to_checksum_address(a) for a in addresses))
        balances = {a: self.balance(a) for a in wanted}
        if not self.is_dev_chain:
            empty = [a for a, b in balances.items() if b == 0]
            if empty:
                raise ConfigError(
                    f"{len(empty)} account(s) hold no ETH on chain {self.chain_id} and cannot pay "
                    f"for transactions: {', '.join(empty)}; fund them first",
                    url=self.url,
                )
            return []
        funder = self.account(FUNDER_INDEX)
        needy = [a for a, b in balances.items() if b < amount // 10 and a != funder.address]
        if not needy:
            return []

        def decode(exc: Exception) -> Exception:
            return TransactionFailed(f"funding from dev account {FUNDER_INDEX} failed: {exc}")

        template = self._prepare(funder, {"value": amount, "gas": TRANSFER_GAS}, decode)
        template.update(self._fees())
        hashes = [self._send(funder, {**template, "to": a}, decode) for a in needy]
        receipts = [self._wait(funder.address, h, timeout) for h in hashes]
        failed = [r.tx_hash for r in receipts if r.status != 1]
        if failed:
            raise TransactionFailed(f"funding transfers failed: {', '.join(failed)}",
                                    url=self.url, tx_hash=failed[0])
        return receipts

    def wait_for_block(self, number: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.block_number() < number:
            if time.monotonic() > deadline:
                raise TransactionTimeout(
                    f"block {number} not reached within {timeout:.0f}s", url=self.url
                )
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
                logs = self.call(partial(self.backend.get_logs, self.w3,
                                         cast(FilterParams, params)))
            except (Web3RPCError, ValueError) as exc:
                if page > 1 and _is_range_error(exc):
                    page = max(1, page // 2)
                    continue
                raise ChainUnavailable(
                    f"eth_getLogs failed on {self.url}: {exc}", url=self.url
                ) from None
            yield from logs
            start = end + 1


def _contract_address(fn: Any) -> str | None:
    """The contract a web3 call is to: a bound ContractFunction.call knows its address; a
    partial of one, or of a batch of them, is unwrapped."""
    if isinstance(fn, partial):
        for arg in (fn.func, *fn.args):
            for inner in arg if isinstance(arg, list) else [arg]:
                found = _contract_address(inner)
                if found is not None:
                    return found
        return None
    address = getattr(getattr(fn, "__self__", None), "address", None)
    return address if isinstance(address, str) else None


def _receipt(raw: Any) -> Receipt:
    return Receipt(
        tx_hash="0x" + bytes(raw["transactionHash"]).hex(),
        block_number=int(raw["blockNumber"]),
        gas_used=int(raw["gasUsed"]),
        status=int(raw["status"]),
        logs=tuple(raw["logs"]),
        contract_address=raw.get("contractAddress"),
    )


def _is_range_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("range", "too many", "limit", "exceed", "10000"))
