"""One process per committee member: a lock file per (chain, contract, member account).

Two `fedchain aggregator` processes signing for the same member (the same --id twice, or the
same key) would both vote and race each other's nonces without a word. The first takes an
exclusive lock (flock) on a file named after the chain (its URL and id: two dev chains on
one machine share ids and contract addresses), the contract and the account; the
second finds it held and refuses, naming the process that holds it. The operating system
releases the lock when its process ends in any way (kill -9 included), so a restarted
aggregator is never locked out by a dead one.

It covers the processes of one user on one machine (the lock files live in the user's cache
directory, `$XDG_CACHE_HOME/fedchain/locks` or `FEDCHAIN_LOCK_DIR`); two machines running
the same member, or one process reaching the chain as localhost and the other as 127.0.0.1,
are not detected.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError


def lock_dir() -> Path:
    if env := os.environ.get("FEDCHAIN_LOCK_DIR"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fedchain" / "locks"


@contextlib.contextmanager
def member_lock(chain_url: str, chain_id: int, contract: str, account: str,
                what: str) -> Iterator[Path]:
    """Holds the lock of `account` acting in `contract` on chain `chain_id` (at `chain_url`)
    while the block runs; ConfigError (saying `what` runs already, and where) if another
    process holds it."""
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    node = hashlib.sha256(chain_url.encode()).hexdigest()[:12]
    path = directory / f"{chain_id}-{node}-{contract.lower()}-{account.lower()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"{what} {account} of federation {contract} on chain {chain_id} is already "
                f"running on this machine (process {holder}, lock {path}): a second one would "
                "vote twice and race its transactions. Stop that one first, or start another "
                "member of the committee (--id K)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
