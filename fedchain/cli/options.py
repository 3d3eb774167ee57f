"""Options shared by the `fedchain` subcommands, and turning them into a job, an account,
a chain and a contract, with every mistake a user can make reported as a ConfigError that
says what to fix."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ChainUnavailable, ConfigError, DeploymentNotFound
from .job import DEVNET_CHAIN, Job, check_strategy

log = logging.getLogger("fedchain")


# --- argparse value types: a bad value is a usage error naming the option ----------------


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _int_at_least(1, "a positive integer")
count = _int_at_least(0, "an integer ≥ 0")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds ≥ 0, got {text!r}")
    return value


def port(text: str) -> int:
    value = _int_at_least(1, "a port number (1-65535)")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text!r}")
    return value


# --- the option groups ---------------------------------------------------------------------


def add_job_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", metavar="FILE", help="job TOML file (flags override it)")


def add_chain_options(
    p: argparse.ArgumentParser, *, contract: bool = True, deployments: bool = True,
    default: str = DEVNET_CHAIN,
) -> None:
    p.add_argument("--chain", metavar="URL",
                   help=f"JSON-RPC URL of the chain (default: {default}"
                   + (", in this process" if default == "embedded" else ", `fedchain devnet`")
                   + ")")
    if contract:
        p.add_argument("--contract", metavar="ADDR",
                       help="FedChain address (default: the one in deployments/<chainId>.json)")
    if deployments:
        p.add_argument("--deployments", metavar="DIR",
                       help="directory of deployment records (default: deployments)")


def add_store_option(p: argparse.ArgumentParser, default: str = "default 'embedded'") -> None:
    p.add_argument("--store", metavar="URL",
                   help="content store: 'embedded' (~/.cache/fedchain/store), file:///dir, "
                   f"or an IPFS node's RPC URL, e.g. http://127.0.0.1:5001 ({default})")


def add_run_options(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    g = p.add_argument_group("the run (published in the plan at genesis; the job's [run])")
    g.add_argument("--rounds", type=positive_int, metavar="N", help="rounds to run")
    g.add_argument("--min-updates", type=count, metavar="N",
                   help="updates a round needs (default: two thirds of the registered "
                   "learners, ⌈2n/3⌉)")
    g.add_argument("--round-timeout", type=seconds, metavar="SECONDS",
                   help="how long a round waits for updates (default 300)")
    g.add_argument("--strategy", metavar="NAME",
                   help="FedAvg, FedMedian, FedTrimmedAvg, Krum, FedAvgM or FedAdam (its "
                   "parameters come from the job's [strategy] when it names the same one)")
    if output:
        g.add_argument("--output", metavar="DIR",
                       help="directory for results.json and history.png (default runs/latest)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (passed to the job's [model] functions)")
    g.add_argument("--data", help="data set, e.g. digits or cifar10")
    g.add_argument("--data-dir", metavar="DIR", help="directory holding the data set")
    g.add_argument("--partition", help="how the data is split: iid or dirichlet")
    g.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads for this process")


def add_account_options(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group(f"account (signs locally; default on dev chains: {default})")
    g.add_argument("--key", help="private key (prefer the FEDCHAIN_KEY environment variable)")
    g.add_argument("--keystore", metavar="FILE", help="encrypted keystore JSON file")
    g.add_argument("--password-file", metavar="FILE", help="file holding the keystore password "
                   "(or FEDCHAIN_KEYSTORE_PASSWORD)")
    g.add_argument("--dev-account", type=count, metavar="N",
                   help="index of a dev-chain mnemonic account")


# --- the job -------------------------------------------------------------------------------


def job_from(args: argparse.Namespace) -> Job:
    """The job file named by --job with the flags given on top, checked."""
    job = Job.load(getattr(args, "job", None))
    for name in ("chain", "store", "contract", "deployments", "rounds", "min_updates",
                 "round_timeout", "output"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(job, name, value)
            job.given[name] = "--" + name.replace("_", "-")
    if getattr(args, "num_learners", None) is not None:
        job.learners = args.num_learners
        job.given["learners"] = "--num-learners"
    if getattr(args, "strategy", None):
        params = job.strategy["params"] if job.strategy["name"] == args.strategy else {}
        job.strategy = {"name": args.strategy, "params": params}
        check_strategy(job.strategy, "--strategy")
        job.given["strategy"] = "--strategy"
    for name in ("data", "data_dir", "partition"):
        value = getattr(args, name, None)
        if value is not None:
            job.learner_options[name] = value
    check_job(job, output=hasattr(args, "output"))
    if hasattr(args, "keystore"):
        check_account_options(args)
    threads = getattr(args, "threads", None)
    if threads:
        set_torch_threads(threads)
    # Example tasks write their pictures next to results.json unless told otherwise.
    os.environ.setdefault("FEDCHAIN_OUTPUT_DIR", str(job.output))
    return job


def check_job(job: Job, output: bool = True) -> None:
    """The URLs and addresses of a job well-formed, before anything connects."""
    from eth_utils import is_address

    if job.contract is not None and not is_address(job.contract):
        raise ConfigError(f"contract address {job.contract!r} ({_source(job, 'contract')}) is "
                          "not an address: 0x followed by 40 hex digits")
    chain = job.chain
    if chain not in ("embedded", "embedded://") and not (
        chain.startswith(("http://", "https://")) and urlsplit(chain).hostname
    ):
        raise ConfigError(f"chain {chain!r} ({_source(job, 'chain')}) is not a chain URL: use "
                          f"a JSON-RPC URL such as {DEVNET_CHAIN}, or 'embedded'")
    store = job.store
    scheme = urlsplit(store).scheme
    if store != "embedded" and not (
        scheme == "file" or (scheme in ("http", "https") and urlsplit(store).hostname)
    ):
        raise ConfigError(f"store {store!r} ({_source(job, 'store')}) is not a store URL: use "
                          "'embedded', file:///abs/dir, or an IPFS node's RPC URL such as "
                          "http://127.0.0.1:5001")
    if output and Path(job.output).exists() and not Path(job.output).is_dir():
        raise ConfigError(f"output {job.output} ({_source(job, 'output')}) is a file, "
                          "not a directory")


def _source(job: Job, key: str) -> str:
    return job.given.get(key, "the default")


def writable_file(text: str) -> Path:
    """An output file whose directory exists (argparse type of --json, --html)."""
    path = Path(text)
    parent = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"directory {parent} is not writable")
    return path


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# --- the chain, the account, the contract --------------------------------------------------


def open_job_store(job: Job) -> Any:
    """The job's content store, checked to answer (a dead or mistyped IPFS URL fails here, at
    start, naming the URL and where it came from)."""
    from ..storage import check_reachable, open_store

    store = open_store(job.store)
    check_reachable(store, _source(job, "store"))
    return store


def connect_chain(job: Job, command: str) -> Any:
    """The chain of a command that runs in a process of its own: never the embedded chain
    (it would vanish with the process); the devnet's by default, said so."""
    from ..eth.chain import connect

    default = "chain" not in job.given
    if default:
        job.chain = DEVNET_CHAIN
        print(f"chain: {DEVNET_CHAIN} (default; --chain to change)", file=sys.stderr)
    elif job.chain in ("embedded", "embedded://"):
        raise ConfigError(
            f"`fedchain {command}` cannot use the embedded chain ({_source(job, 'chain')}): it "
            "lives inside one process and is gone when the command ends. Start `fedchain "
            f"devnet` and use its chain ({DEVNET_CHAIN}, the default), or run the whole "
            "federation in one process with `fedchain simulate`"
        )
    try:
        return connect(job.chain)
    except ChainUnavailable as exc:
        host = urlsplit(job.chain).hostname
        if default:
            raise ChainUnavailable(
                f"no chain at {DEVNET_CHAIN} (the default): start one with `fedchain devnet` "
                "in another terminal, or pass --chain URL", url=exc.url) from None
        if host in ("127.0.0.1", "localhost", "::1"):
            raise ChainUnavailable(f"{exc} (is `fedchain devnet` running?)",
                                   url=exc.url) from None
        raise


def _read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"--password-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--password-file {path}: cannot read it ({exc})") from None


def _check_keystore(path: str) -> None:
    """A keystore file that exists and looks like an encrypted key (Web3 Secret Storage)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--keystore {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--keystore {path}: cannot read it ({exc})") from None
    except ValueError:
        raise ConfigError(f"--keystore {path} is not JSON: expected an encrypted keystore "
                          "(e.g. from `cast wallet import` or geth)") from None
    if not isinstance(data, dict) or "version" not in data or not (
        "crypto" in data or "Crypto" in data
    ):
        raise ConfigError(f"--keystore {path} is not an encrypted keystore: expected JSON "
                          "with 'version' and 'crypto'")


def uses_dev_account(args: argparse.Namespace) -> bool:
    """True when the command signs with a dev-chain mnemonic account (no key given)."""
    return not (args.key or args.keystore or os.environ.get("FEDCHAIN_KEY"))


def check_dev_index(index: int, what: str) -> None:
    from ..eth.accounts import DEV_NODE_ACCOUNTS

    if not 0 <= index < DEV_NODE_ACCOUNTS:
        raise ConfigError(
            f"{what} is dev account {index}, but the dev chains fedchain starts fund "
            f"{DEV_NODE_ACCOUNTS} accounts (0-{DEV_NODE_ACCOUNTS - 1}): pick one of those, or "
            "sign with --key / FEDCHAIN_KEY / --keystore"
        )


def check_account_options(args: argparse.Namespace) -> None:
    """The account files given exist and are what they should be, before anything connects."""
    if args.password_file:
        _read_password(args.password_file)
    if args.keystore and not args.key and not os.environ.get("FEDCHAIN_KEY"):
        _check_keystore(args.keystore)
    if args.dev_account is not None:
        check_dev_index(args.dev_account, f"--dev-account {args.dev_account}")


def account_for(args: argparse.Namespace, chain: Any, default_dev: int | None) -> Any:
    from ..eth.accounts import load_account

    check_account_options(args)
    password = _read_password(args.password_file) if args.password_file else None
    if not uses_dev_account(args):
        return load_account(args.key, args.keystore, password)
    index = args.dev_account if args.dev_account is not None else default_dev
    if index is None:
        raise ConfigError("no account: give --key/FEDCHAIN_KEY, --keystore, or --dev-account N")
    check_dev_index(index, "the default account")
    return chain.account(index)


def fedchain_of(job: Job, chain: Any, account: Any = None) -> Any:
    """The job's FedChain: --contract / [federation] contract, else the deployment record,
    which must still be live (a restarted dev chain has lost it)."""
    from ..eth.contract import FedChain
    from ..eth.deploy import record_path

    if job.contract is not None:
        try:
            return FedChain.at(chain, job.contract, account)
        except DeploymentNotFound as exc:
            raise DeploymentNotFound(
                f"{exc} (the address comes from {_source(job, 'contract')}): check it, or "
                "deploy one with `fedchain deploy`", url=exc.url) from None
    record = read_record(job, chain)
    path = record_path(chain, Path(job.deployments))
    if record is None:
        raise DeploymentNotFound(
            f"no FedChain deployment recorded for chain {chain.chain_id} in {path}: run "
            "`fedchain deploy` (on a dev chain: `fedchain deploy --dev-learners 3`) or pass "
            "--contract ADDRESS", url=chain.url)
    try:
        return FedChain.at(chain, record["address"], account)
    except DeploymentNotFound as exc:
        raise DeploymentNotFound(stale_message(path, exc), url=exc.url) from None


def stale_message(path: Path, exc: Exception) -> str:
    return (f"{path} is stale: {exc} (the chain was restarted or reset since the deployment "
            "was recorded); redeploy with `fedchain deploy --fresh`")


def read_record(job: Job, chain: Any) -> dict[str, Any] | None:
    """The chain's deployment record in the job's deployments directory, if any."""
    from ..eth.deploy import load_record, record_path

    path = record_path(chain, Path(job.deployments))
    try:
        record = load_record(chain, Path(job.deployments))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the deployment record {path}: {exc}; remove it and "
                          "run `fedchain deploy`") from None
    if record is not None and not isinstance(record.get("address"), str):
        raise ConfigError(f"deployment record {path} has no address: remove it and run "
                          "`fedchain deploy`")
    return record


class SignalStop(threading.Event):
    """The event a command's loops watch; `signal` names the signal that set it, if one did."""

    signal: str | None = None


def stop_on_signals() -> SignalStop:
    """SIGINT/SIGTERM set an event the loops watch, so they stop between steps; the command
    then exits cleanly (status 0) with one line, "stopped by SIGTERM"."""
    stop = SignalStop()

    def handler(signum: int, frame: Any) -> None:
        stop.signal = signal.Signals(signum).name
        log.debug("received %s: stopping", stop.signal)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def make_console() -> Any:
    """A rich console; wide enough for the round tables when output is not a terminal."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)
