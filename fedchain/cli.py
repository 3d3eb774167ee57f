"""The `fedchain` command: compile, deploy, aggregator, learner, simulate, status, devnet, audit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, FedChainError
from .job import Job

log = logging.getLogger("fedchain")

AGGREGATOR_DEV_INDEX = 1
FIRST_LEARNER_DEV_INDEX = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)-7s %(asctime)s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("web3", "urllib3", "httpx", "httpcore", "matplotlib", "eth", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- options shared by several commands ----------------------------------------------


def _add_federation_options(p: argparse.ArgumentParser, store: bool = True) -> None:
    p.add_argument("--job", help="job TOML file (flags override it)")
    p.add_argument("--chain", help="'embedded' or a JSON-RPC URL, e.g. http://127.0.0.1:8545")
    p.add_argument("--contract", help="FedChain address (default: deployments/<chainId>.json)")
    p.add_argument("--deployments", help="directory of deployment records")
    if store:
        p.add_argument("--store", help="'embedded', file:///dir, or a Kubo RPC URL")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (passed to the job's [model] functions)")
    g.add_argument("--data", help="data set, e.g. digits or cifar10")
    g.add_argument("--data-dir", help="directory holding the data set")
    g.add_argument("--partition", help="iid or dirichlet")
    g.add_argument("--threads", type=int, help="torch threads for this process")


def _add_account_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("account (transactions are signed locally)")
    g.add_argument("--key", help="private key (prefer the FEDCHAIN_KEY environment variable)")
    g.add_argument("--keystore", help="encrypted keystore JSON file")
    g.add_argument("--password-file", help="file holding the keystore password "
                   "(or FEDCHAIN_KEYSTORE_PASSWORD)")
    g.add_argument("--dev-account", type=int, help="index of a dev-chain mnemonic account")


def _job(args: argparse.Namespace) -> Job:
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
        _set_torch_threads(threads)
    # Example tasks write their pictures next to results.json unless told otherwise.
    os.environ.setdefault("FEDCHAIN_OUTPUT_DIR", str(job.output))
    return job


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _account(args: argparse.Namespace, chain: Any, default_dev: int | None) -> Any:
    from .chain import load_account

    password = None
    if getattr(args, "password_file", None):
        password = Path(args.password_file).read_text().strip()
    if args.key or args.keystore or os.environ.get("FEDCHAIN_KEY"):
        return load_account(args.key, args.keystore, password)
    index = args.dev_account if args.dev_account is not None else default_dev
    if index is None:
        raise ConfigError("no account: give --key/FEDCHAIN_KEY, --keystore, or --dev-account N")
    return chain.account(index)


def _connect(job: Job) -> Any:
    from .chain import connect

    return connect(job.chain)


def _contract(job: Job, chain: Any, account: Any = None) -> Any:
    from .deploy import find_contract

    return find_contract(chain, job.contract, account, Path(job.deployments))


def _strategy(job: Job) -> Any:
    from .strategy import strategy_from_plan

    return strategy_from_plan(job.strategy)


def _termination(job: Job) -> Any:
    from .aggregator import Termination

    return Termination(job.rounds, job.wall_clock, job.target_metric, job.target)


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set an event the loops watch, so they stop between steps."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _console() -> Any:
    """A rich console; wide enough for the round tables when output is not a terminal."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


# --- commands ------------------------------------------------------------------------


def cmd_compile(args: argparse.Namespace) -> int:
    from .compile import ARTIFACT_PATH, write_artifact

    artifact = write_artifact()
    size = (len(artifact["deployedBytecode"]) - 2) // 2
    print(f"compiled with solc {artifact['compiler']['version']}: {size} bytes of runtime code")
    print(f"wrote {ARTIFACT_PATH}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy

    job = _job(args)
    chain = _connect(job)
    account = _account(args, chain, 0)
    learners = list(args.learner or [])
    if args.learners is not None:
        learners += [chain.account(FIRST_LEARNER_DEV_INDEX + i).address
                     for i in range(args.learners)]
    if args.aggregator:
        aggregator = args.aggregator
    elif chain.is_dev_chain and args.dev_account is None and not args.key:
        aggregator = chain.account(AGGREGATOR_DEV_INDEX).address
    else:
        aggregator = account.address
    contract, record, new = deploy(
        chain, account, aggregator=aggregator, learners=learners, fresh=args.fresh,
        directory=Path(job.deployments),
    )
    if new:
        print(f"deployed FedChain at {contract.address} on chain {chain.chain_id}")
        print(f"  tx {record.get('tx')} block {record.get('block')} gas {record.get('gasUsed')}")
    else:
        print(f"FedChain already deployed at {contract.address} on chain {chain.chain_id} "
              f"(recorded in {job.deployments}/{chain.chain_id}.json; --fresh to redeploy)")
    print(f"  owner      {contract.owner()}")
    print(f"  aggregator {contract.aggregator()}")
    print(f"  learners   {contract.learner_count()}")
    return 0


def cmd_aggregator(args: argparse.Namespace) -> int:
    from .aggregator import Aggregator
    from .storage import open_store

    job = _job(args)
    chain = _connect(job)
    account = _account(args, chain, AGGREGATOR_DEV_INDEX)
    contract = _contract(job, chain, account)
    store = open_store(job.store)
    initial = None
    if contract.current_round() == 0:
        initial = job.initial_weights()
        if initial is None:
            initial = job.learner_factory()(0, job.learners).get_weights()
    evaluate_fn = job.evaluate_fn()
    agg = Aggregator(
        contract, store, strategy=_strategy(job), initial_weights=initial, rounds=job.rounds,
        min_updates=job.min_updates if job.min_updates is not None else job.learners,
        round_timeout=job.round_timeout, train_config=job.train, eval_config=job.evaluate_config,
        evaluate_fn=evaluate_fn, termination=_termination(job), stop=_stop_on_signals(),
    )
    agg.run()
    history = agg.history
    history.fill_distributed(contract)
    out = Path(job.output)
    history.save(out / "results.json", contract=contract.address, chain=chain.url)
    history.plot(out / "history.png")
    _print_history(history)
    print(f"results: {out / 'results.json'}, plot: {out / 'history.png'}")
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from .learner import LearnerNode
    from .storage import open_store

    job = _job(args)
    chain = _connect(job)
    account = _account(args, chain, FIRST_LEARNER_DEV_INDEX + args.id)
    contract = _contract(job, chain, account)
    if not contract.is_learner(account.address):
        raise ConfigError(f"{account.address} is not a registered learner of {contract.address}")
    learner = job.learner_factory()(args.id, job.learners)
    node = LearnerNode(learner, contract, open_store(job.store), name=f"learner-{args.id}",
                       stop=_stop_on_signals())
    log.info("learner %d (%s) joined federation %s", args.id, account.address, contract.address)
    node.run()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulation import simulate

    job = _job(args)
    factory = job.learner_factory()
    evaluate_fn = job.evaluate_fn()
    initial = job.initial_weights()
    started = time.monotonic()
    result = simulate(
        factory, job.learners, _strategy(job), job.rounds, chain=job.chain, store=job.store,
        initial_weights=initial, min_updates=job.min_updates, round_timeout=job.round_timeout,
        train_config=job.train, eval_config=job.evaluate_config, evaluate_fn=evaluate_fn,
        termination=_termination(job), results_dir=job.output,
    )
    _print_rounds(result)
    _print_history(result.history)
    print(f"\n{len(result.rounds)} rounds in {time.monotonic() - started:.1f}s on "
          f"{result.contract.chain.url} chain, contract {result.contract.address}")
    print(f"results: {result.results_path}  plot: {result.plot_path}")
    if not args.audit:
        return 0

    from .audit import audit_federation
    from .report import print_report, write_html

    report = audit_federation(result.contract, result.store)
    console = _console()
    console.print("\n[bold]fedchain audit --verify[/bold] of this run, from the chain alone:")
    print_report(report, console)
    console.print(f"HTML report: {write_html(report, Path(job.output) / 'audit.html')}")
    return report.exit_status()


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .contract import cid_text

    job = _job(args)
    chain = _connect(job)
    contract = _contract(job, chain)
    round = contract.current_round()
    console = _console()
    console.print(f"FedChain {contract.address} on chain {chain.chain_id} ({chain.url})")
    console.print(f"owner {contract.owner()}  aggregator {contract.aggregator()}")
    state = "finished" if contract.finished() else (
        "waiting for genesis" if round == 0 else f"round {round} open")
    console.print(f"state: {state}; {contract.learner_count()} learners")
    if round > 0:
        console.print(f"latest global model (round {round - 1}): "
                      f"{cid_text(contract.global_model(round - 1))}")
        table = Table(title=f"learners in round {round}")
        table.add_column("learner")
        table.add_column("submitted")
        for learner in contract.learners():
            table.add_row(learner, "yes" if contract.has_submitted(round, learner) else "no")
        console.print(table)
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from . import devnet

    nodes = []
    try:
        chain = devnet.start_ganache(args.chain_port) if args.ganache else devnet.start_anvil(
            args.chain_port)
        nodes.append(chain)
        print(f"chain ({chain.name}): {chain.url}")
        if not args.no_ipfs:
            ipfs = devnet.start_ipfs_devnode(args.ipfs_port)
            nodes.append(ipfs)
            print(f"ipfs dev node (Kubo RPC subset): {ipfs.url}")
        print("dev accounts: mnemonic 'test test … junk'; 0 deploys, 1 aggregates, 2… learn")
        print("Ctrl-C to stop.", flush=True)
        stop = _stop_on_signals()
        while not stop.wait(1.0):
            for n in nodes:
                if not n.alive():
                    raise ConfigError(f"{n.name} exited:\n{n.log()}")
    finally:
        for n in nodes:
            n.stop()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import main as audit_main

    return audit_main(args)


# --- tables --------------------------------------------------------------------------


def _print_rounds(result: Any) -> None:
    from rich.table import Table

    table = Table(title="rounds")
    for col in ("round", "updates", "rejected", "global model", "seconds"):
        table.add_column(col)
    for r in result.rounds:
        table.add_row(str(r.round), str(len(r.included)), str(len(r.rejected)), r.global_cid,
                      f"{r.seconds:.1f}")
    _console().print(table)


def _print_history(history: Any) -> None:
    from rich.table import Table

    rounds = sorted({r for r, _ in history.losses_distributed}
                    | {r for r, _ in history.losses_centralized})
    if not rounds:
        return
    table = Table(title="evaluation per round")
    table.add_column("round")
    columns: list[tuple[str, dict[int, float]]] = []
    if history.losses_distributed:
        columns.append(("loss (distributed)", dict(history.losses_distributed)))
    for k, v in sorted(history.metrics_distributed.items()):
        columns.append((f"{k} (distributed)", dict(v)))
    if history.losses_centralized:
        columns.append(("loss (centralized)", dict(history.losses_centralized)))
    for k, v in sorted(history.metrics_centralized.items()):
        columns.append((f"{k} (centralized)", dict(v)))
    for name, _ in columns:
        table.add_column(name)
    for r in rounds:
        table.add_row(str(r), *(f"{vals[r]:.4f}" if r in vals else "-" for _, vals in columns))
    _console().print(table)


# --- entry point ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedchain", description="Decentralized federated learning on Ethereum and IPFS.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile contracts/FedChain.sol into the artifact")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("deploy", help="deploy FedChain (runs migrations/, records deployments/)")
    _add_federation_options(p, store=False)
    _add_account_options(p)
    p.add_argument("--learners", type=int, help="register N dev accounts (2…N+1) as learners")
    p.add_argument("--learner", action="append", metavar="ADDR", help="register a learner")
    p.add_argument("--aggregator", help="aggregator address (dev chains: dev account 1)")
    p.add_argument("--fresh", action="store_true", help="deploy again even if recorded")
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("aggregator", help="run the aggregator until the federation finishes")
    _add_federation_options(p)
    _add_account_options(p)
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-updates", type=int)
    p.add_argument("--round-timeout", type=float)
    p.add_argument("--learners", dest="num_learners", type=int, help="expected learners")
    p.add_argument("--strategy", help="strategy name (params from the job file)")
    p.add_argument("--output", help="directory for results.json and the plot")
    _add_model_options(p)
    p.set_defaults(fn=cmd_aggregator)

    p = sub.add_parser("learner", help="run one learner until the federation finishes")
    _add_federation_options(p)
    _add_account_options(p)
    p.add_argument("--id", type=int, required=True, help="learner id (dev account 2+id)")
    p.add_argument("--learners", dest="num_learners", type=int, help="number of partitions")
    _add_model_options(p)
    p.set_defaults(fn=cmd_learner)

    p = sub.add_parser("simulate", help="a whole federation in one process")
    _add_federation_options(p)
    p.add_argument("--learners", dest="num_learners", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-updates", type=int)
    p.add_argument("--round-timeout", type=float)
    p.add_argument("--strategy", help="strategy name (params from the job file)")
    p.add_argument("--output", help="directory for results.json and the plot")
    p.add_argument("--audit", action="store_true",
                   help="audit the finished run from the chain and re-verify every round")
    _add_model_options(p)
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("status", help="the federation's current round and submissions")
    _add_federation_options(p, store=False)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("devnet", help="start Anvil (or Ganache) and the IPFS dev node")
    p.add_argument("--ganache", action="store_true", help="Ganache instead of Anvil")
    p.add_argument("--chain-port", type=int, default=8545)
    p.add_argument("--ipfs-port", type=int, default=5001)
    p.add_argument("--no-ipfs", action="store_true")
    p.set_defaults(fn=cmd_devnet)

    try:
        from .audit import add_arguments
    except ImportError:
        pass
    else:
        p = sub.add_parser("audit", help="round history from the chain, optionally re-verified")
        add_arguments(p)
        p.set_defaults(fn=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.fn(args) or 0)
    except FedChainError as exc:
        print(f"fedchain {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
