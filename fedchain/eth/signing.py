"""Signing EIP-1559 (type 2) transactions with libsecp256k1 directly.

eth-account builds a typed transaction through several layers of validation and formatting
before it signs: about 0.7 ms a transaction, which a process sending for a thousand learners
a round pays a thousand times. The encoding itself is small and fixed (EIP-2718/EIP-1559):

    unsigned = 0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas, to,
                            value, data, accessList])
    signed   = 0x02 || rlp([... the same nine ..., yParity, r, s])

signed over keccak256(unsigned) with a recoverable secp256k1 signature (RFC 6979, low s).
`sign_dynamic_fee` does exactly that with coincurve and gives the bytes and hash that
eth-account gives for the same transaction (tests/test_signing.py checks it does, field
for field). Anything else (a legacy gasPrice transaction, an access list, contract
creation) is eth-account's to sign: `supported` is False for it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import rlp
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, keccak, to_bytes

_SecpKey: Any
try:
    from coincurve import PrivateKey as _SecpKey
except ImportError:  # pragma: no cover - coincurve is a dependency; eth-account then signs
    _SecpKey = None

#: The fields a type-2 transaction this module signs may have.
FIELDS = frozenset({"chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "to",
                    "value", "data", "type", "from"})

#: `to` given as text must be a checksum address, as eth-account requires (cached: 70 us a check).
_checksummed = functools.lru_cache(maxsize=4096)(is_checksum_address)

_keys: dict[str, Any] = {}
_keys_lock = threading.Lock()


def _secp_key(account: LocalAccount) -> Any:
    key = _keys.get(account.address)
    if key is None:
        key = _SecpKey(bytes(account.key))
        with _keys_lock:
            _keys[account.address] = key
    return key


def supported(tx: Mapping[str, Any]) -> bool:
    """Whether `sign_dynamic_fee` signs `tx` (a call or transfer with EIP-1559 fees)."""
    return (_SecpKey is not None and "maxFeePerGas" in tx and "maxPriorityFeePerGas" in tx
            and bool(tx.get("to")) and set(tx) <= FIELDS
            and (not isinstance(tx["to"], str) or _checksummed(tx["to"]))
            and tx.get("type", 2) in TYPE_2)


#: How a transaction dict may say it is type 2 (eth-account's spellings; "2" is not one).
TYPE_2 = (2, "0x2", "0x02")


def sign_dynamic_fee(account: LocalAccount, tx: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(raw signed transaction, transaction hash) of the type-2 transaction `tx`."""
    data = tx.get("data") or b""
    fields = [
        int(tx["chainId"]),
        int(tx["nonce"]),
        int(tx["maxPriorityFeePerGas"]),
        int(tx["maxFeePerGas"]),
        int(tx["gas"]),
        to_bytes(hexstr=tx["to"]) if isinstance(tx["to"], str) else bytes(tx["to"]),
        int(tx.get("value", 0)),
        to_bytes(hexstr=data) if isinstance(data, str) else bytes(data),
        [],
    ]
    unsigned = b"\x02" + rlp.encode(fields)
    signature = _secp_key(account).sign_recoverable(keccak(unsigned), hasher=None)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    raw = b"\x02" + rlp.encode([*fields, signature[64], r, s])
    return raw, keccak(raw)
