"""Options shared by the `fedchain` subcommands, and turning them into a job, an account,
a chain and a contract."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .job import Job

log = logging.getLogger("fedchain")


def add_federation_options(p: argparse.ArgumentParser, store: bool = True) -> None:
    p.add_argument("--job", help="job TOML file (flags override it)")
    p.add_argument("--chain", help="'embedded' or a JSON-RPC URL, e.g. http://127.0.0.1:8545")
    p.add_argument("--contract", help="FedChain address (default: deployments/<chainId>.json)")
    p.add_argument("--deployments", help="directory of deployment records")
    if store:
        p.add_argument("--store", help="'embedded', file:///dir, or a Kubo RPC URL")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (passed to the job's [model] functions)")
    g.add_argument("--data", help="data set, e.g. digits or cifar10")
    g.add_argument("--data-dir", help="directory holding the data set")
    g.add_argument("--partition", help="iid or dirichlet")
    g.add_argument("--threads", type=int, help="torch threads for this process")


def add_account_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("account (transactions are signed locally)")
    g.add_argument("--key", help="private key (prefer the FEDCHAIN_KEY environment variable)")
    g.add_argument("--keystore", help="encrypted keystore JSON file")
    g.add_argument("--password-file", help="file holding the keystore password "
                   "(or FEDCHAIN_KEYSTORE_PASSWORD)")
    g.add_argument("--dev-account", type=int, help="index of a dev-chain mnemonic account")


def job_from(args: argparse.Namespace) -> Job:
    job = Job.load(getattr(args, "job", None))
    for name in ("chain", "store", "contract", "deployments", "rounds", "min_updates",
                 "round_timeout", "output"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(job, name, value)
    if getattr(args, "num_learners", None) is not None:
        job.learners = args.num_learners
    if getattr(args, "strategy", None):
        job.strategy = {"name": args.strategy, "params": {}}
    for name in ("data", "data_dir", "partition"):
        value = getattr(args, name, None)
        if value is not None:
            job.learner_options[name] = value
    threads = getattr(args, "threads", None)
    if threads:
        set_torch_threads(threads)
    # Example tasks write their pictures next to results.json unless told otherwise.
    os.environ.setdefault("FEDCHAIN_OUTPUT_DIR", str(job.output))
    return job


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def account_for(args: argparse.Namespace, chain: Any, default_dev: int | None) -> Any:
    from ..eth.accounts import load_account

    password = None
    if getattr(args, "password_file", None):
        password = Path(args.password_file).read_text().strip()
    if args.key or args.keystore or os.environ.get("FEDCHAIN_KEY"):
        return load_account(args.key, args.keystore, password)
    index = args.dev_account if args.dev_account is not None else default_dev
    if index is None:
        raise ConfigError("no account: give --key/FEDCHAIN_KEY, --keystore, or --dev-account N")
    return chain.account(index)


def connect_chain(job: Job) -> Any:
    from ..eth.chain import connect

    return connect(job.chain)


def fedchain_of(job: Job, chain: Any, account: Any = None) -> Any:
    from ..eth.deploy import find_contract

    return find_contract(chain, job.contract, account, Path(job.deployments))


def stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set an event the loops watch, so they stop between steps."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def make_console() -> Any:
    """A rich console; wide enough for the round tables when output is not a terminal."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


