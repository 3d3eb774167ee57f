"""Signing accounts: a private key, a keystore file, or a dev chain's well-known mnemonic.

Also the dev roles every tool here uses on a dev chain (owner 0, aggregator 1, learners 2…)
and the one ordering of learner addresses (updates are aggregated and listed in it).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ..errors import ConfigError

Account.enable_unaudited_hdwallet_features()

#: The mnemonic every dev chain (Anvil, Hardhat, Ganache as started here, embedded) uses.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
#: Accounts every dev chain funds from the start: the embedded chain's genesis (deriving keys in
#: Python is slow) and Hardhat's node. `Chain.fund` tops up any others a run uses.
DEV_ACCOUNTS = 20
#: Accounts funded by the Anvil and Ganache nodes fedchain starts (`fedchain devnet`, tests), so
#: learners in processes of their own can use dev accounts well past 20.
DEV_NODE_ACCOUNTS = 100
#: Chain ids of the dev chains whose mnemonic accounts may be used by index.
DEV_CHAIN_IDS = {31337, 1337, 131277322940537}

#: Dev roles: account 0 deploys (owner), 1 aggregates, 2… are the learners.
OWNER_INDEX, AGGREGATOR_INDEX, FIRST_LEARNER_INDEX = 0, 1, 2


def aggregator_index(member: int) -> int:
    """The dev account of committee member `member` (`fedchain aggregator --id K`): dev account
    1 for member 0, then 99, 98, … counting down from the top of the dev nodes' accounts, so
    members never collide with learners (dev accounts 2…)."""
    if not 0 <= member < DEV_NODE_ACCOUNTS // 2:
        raise ConfigError(f"aggregator id must be in 0..{DEV_NODE_ACCOUNTS // 2 - 1}, got {member}")
    return AGGREGATOR_INDEX if member == 0 else DEV_NODE_ACCOUNTS - member


@functools.cache
def dev_account(index: int) -> LocalAccount:
    """Account `index` of the well-known dev mnemonic (Anvil, Hardhat, Ganache, embedded)."""
    if not 0 <= index < 1000:
        raise ConfigError(f"dev account index must be in 0..999, got {index}")
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def load_account(
    key: str | None = None,
    keystore: str | Path | None = None,
    password: str | None = None,
    dev_index: int | None = None,
) -> LocalAccount:
    """The signing account from a key, a keystore file, FEDCHAIN_KEY, or a dev index.

    The key itself never appears in an error message.
    """
    key = key or os.environ.get("FEDCHAIN_KEY")
    if key:
        try:
            return Account.from_key(key.strip())
        except Exception:
            raise ConfigError("the private key given is not a valid 32-byte hex key") from None
    if keystore:
        path = Path(keystore)
        if password is None:
            password = os.environ.get("FEDCHAIN_KEYSTORE_PASSWORD")
        if password is None:
            raise ConfigError(
                f"keystore {path} needs a password (--password-file or FEDCHAIN_KEYSTORE_PASSWORD)"
            )
        try:
            encrypted = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read keystore {path}: {exc}") from None
        if not isinstance(encrypted, dict):
            raise ConfigError(f"{path} is not an Ethereum keystore (JSON v3)")
        try:
            secret = Account.decrypt(encrypted, password)
        except ValueError:
            raise ConfigError(f"wrong password for keystore {path}") from None
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"{path} is not an Ethereum keystore (JSON v3)") from None
        return Account.from_key(secret)
    if dev_index is not None:
        return dev_account(dev_index)
    raise ConfigError("no account: give --key, FEDCHAIN_KEY, --keystore, or --dev-account N")
