"""Local dev nodes started from the project's own npm packages: Anvil, Ganache, Hardhat, the IPFS
dev node.

Used by `fedchain devnet`, the test fixtures and the benchmarks. Each node runs as a child
process on a free loopback port and is stopped (with its process group) on `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import ConfigError
from ..eth.accounts import DEV_MNEMONIC, DEV_NODE_ACCOUNTS
from ..npm import node24, node_bin, project_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevNode:
    """A running dev node: its URL and the process behind it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path | None = None
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for fn in self._cleanup:
            fn()
        self._cleanup.clear()

    def __enter__(self) -> DevNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(
    name: str,
    argv: list[str],
    url: str,
    ready: Callable[[], bool],
    timeout: float,
    workdir: Path | None = None,
) -> DevNode:
    fd, log_name = tempfile.mkstemp(prefix=f"fedchain-{name}-", suffix=".log")
    log_file = os.fdopen(fd, "wb")
    proc = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(project_root()),
    )
    log_file.close()
    node = DevNode(name, url, proc, Path(log_name), workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.alive():
            raise ConfigError(f"{name} exited with {proc.returncode} while starting:\n{node.log()}")
        if ready():
            return node
        time.sleep(0.1)
    node.stop()
    raise ConfigError(f"{name} did not become ready within {timeout:.0f}s:\n{node.log()}")


def _rpc_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            r = httpx.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                timeout=1.0,
            )
            return r.status_code == 200 and "result" in r.json()
        except (httpx.HTTPError, ValueError):
            return False

    return check


def start_anvil(
    port: int | None = None,
    chain_id: int = 31337,
    timeout: float = 30,
    block_time: float | None = None,
) -> DevNode:
    """Anvil from @foundry-rs/anvil-linux-amd64 with the dev mnemonic's first
    DEV_NODE_ACCOUNTS accounts funded; mining each transaction at once, or a block every
    `block_time` seconds (transactions then stay pending until the next block)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(node_bin("@foundry-rs/anvil-linux-amd64/bin/anvil")),
        "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
        "--mnemonic", DEV_MNEMONIC, "--accounts", str(DEV_NODE_ACCOUNTS),
        "--silent",
    ]
    if block_time is not None:
        argv += ["--block-time", f"{block_time:g}"]
    return _spawn("anvil", argv, url, _rpc_ready(url), timeout)


def start_ganache(port: int | None = None, chain_id: int = 1337, timeout: float = 60) -> DevNode:
    """Ganache 7 (runs on the machine's Node) with the dev mnemonic's first DEV_NODE_ACCOUNTS
    accounts funded, and instant mining."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    node = shutil.which("node") or str(node24())
    argv = [
        node, str(node_bin("ganache/dist/node/cli.js")),
        "--server.host", "127.0.0.1", "--server.port", str(port),
        "--chain.chainId", str(chain_id), "--wallet.mnemonic", DEV_MNEMONIC,
        "--wallet.totalAccounts", str(DEV_NODE_ACCOUNTS), "--logging.quiet",
    ]
    return _spawn("ganache", argv, url, _rpc_ready(url), timeout)


def start_hardhat(port: int | None = None, timeout: float = 90) -> DevNode:
    """Hardhat 3's node (chain id 31337, 20 accounts of the dev mnemonic, automining), run
    with the project-local Node 24 (Hardhat 3 needs Node >= 22) from the project root, where
    hardhat.config.js is."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(node24()), str(node_bin("hardhat/dist/src/cli.js")),
        "node", "--hostname", "127.0.0.1", "--port", str(port),
    ]
    return _spawn("hardhat", argv, url, _rpc_ready(url), timeout)


def start_ipfs_devnode(
    port: int | None = None, repo: Path | None = None, timeout: float = 60
) -> DevNode:
    """The Helia-based IPFS dev node (scripts/ipfs-devnode.mjs) serving a Kubo RPC subset."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cleanup: list[Callable[[], None]] = []
    if repo is None:
        repo = Path(tempfile.mkdtemp(prefix="fedchain-ipfs-"))
        cleanup.append(lambda: shutil.rmtree(repo, ignore_errors=True))
    script = project_root() / "scripts" / "ipfs-devnode.mjs"
    argv = [str(node24()), str(script), "--host", "127.0.0.1", "--port", str(port),
            "--repo", str(repo)]

    def ready() -> bool:
        try:
            return httpx.post(f"{url}/api/v0/version", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    node = _spawn("ipfs-devnode", argv, url, ready, timeout, workdir=repo)
    node._cleanup.extend(cleanup)
    return node
