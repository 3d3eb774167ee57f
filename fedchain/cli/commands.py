"""The bodies of the `fedchain` subcommands."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..errors import ConfigError
from ..eth.accounts import AGGREGATOR_INDEX, FIRST_LEARNER_INDEX
from .job import Job
from .options import (
    account_for,
    connect_chain,
    fedchain_of,
    job_from,
    make_console,
    stop_on_signals,
)
from .tables import print_history, print_rounds

log = logging.getLogger("fedchain")


def cmd_compile(args: argparse.Namespace) -> int:
    from ..eth.artifact import ARTIFACT_PATH
    from ..eth.compile import write_artifact

    artifact = write_artifact()
    size = (len(artifact["deployedBytecode"]) - 2) // 2
    print(f"compiled with solc {artifact['compiler']['version']}: {size} bytes of runtime code")
    print(f"wrote {ARTIFACT_PATH}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..eth.deploy import deploy

    job = job_from(args)
    chain = connect_chain(job)
    account = account_for(args, chain, 0)
    learners = list(args.learner or [])
    if args.learners is not None:
        learners += [chain.account(FIRST_LEARNER_INDEX + i).address
                     for i in range(args.learners)]
    if args.aggregator:
        aggregator = args.aggregator
    elif chain.is_dev_chain and args.dev_account is None and not args.key:
        aggregator = chain.account(AGGREGATOR_INDEX).address
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
    from ..federation.aggregator import Aggregator
    from ..federation.results import write_results
    from ..storage import open_store

    job = job_from(args)
    chain = connect_chain(job)
    account = account_for(args, chain, AGGREGATOR_INDEX)
    contract = fedchain_of(job, chain, account)
    store = open_store(job.store)
    initial = None
    if contract.current_round() == 0:
        initial = job.initial_weights()
        if initial is None:
            initial = job.learner_factory()(0, job.learners).get_weights()
    evaluate_fn = job.evaluate_fn()
    agg = Aggregator(
        contract, store, job.run_config(), initial_weights=initial, evaluate_fn=evaluate_fn,
        stop=stop_on_signals(),
    )
    agg.run()
    results, plot = write_results(
        job.output, agg.history, contract, store_url=store.url, plan=agg.plan
    )
    print_history(agg.history)
    print(f"results: {results}, plot: {plot}")
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from ..federation.node import LearnerNode
    from ..storage import open_store

    job = job_from(args)
    chain = connect_chain(job)
    account = account_for(args, chain, FIRST_LEARNER_INDEX + args.id)
    contract = fedchain_of(job, chain, account)
    if not contract.is_learner(account.address):
        raise ConfigError(f"{account.address} is not a registered learner of {contract.address}")
    learner = job.learner_factory()(args.id, job.learners)
    node = LearnerNode(learner, contract, open_store(job.store), name=f"learner-{args.id}",
                       stop=stop_on_signals())
    log.info("learner %d (%s) joined federation %s", args.id, account.address, contract.address)
    node.run()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..federation.simulation import simulate

    job = job_from(args)
    factory = job.learner_factory()
    evaluate_fn = job.evaluate_fn()
    initial = job.initial_weights()
    started = time.monotonic()
    result = simulate(
        factory, job.learners, chain=job.chain, store=job.store, config=job.run_config(),
        initial_weights=initial, evaluate_fn=evaluate_fn, results_dir=job.output,
    )
    print_rounds(result)
    print_history(result.history)
    print(f"\n{len(result.rounds)} rounds in {time.monotonic() - started:.1f}s on "
          f"{result.contract.chain.url} chain, contract {result.contract.address}")
    print(f"results: {result.results_path}  plot: {result.plot_path}")
    if not args.audit:
        return 0

    from ..audit import audit_federation
    from ..audit.render import print_report, write_html

    report = audit_federation(result.contract, result.store)
    console = make_console()
    console.print("\n[bold]fedchain audit --verify[/bold] of this run, from the chain alone:")
    print_report(report, console)
    console.print(f"HTML report: {write_html(report, Path(job.output) / 'audit.html')}")
    return report.exit_status()


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..storage.cid import cid_text

    job = job_from(args)
    chain = connect_chain(job)
    contract = fedchain_of(job, chain)
    round = contract.current_round()
    console = make_console()
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
        stop = stop_on_signals()
        while not stop.wait(1.0):
            for n in nodes:
                if not n.alive():
                    raise ConfigError(f"{n.name} exited:\n{n.log()}")
    finally:
        for n in nodes:
            n.stop()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Runs `fedchain audit`; 0 if every check passed, 1 if one failed, 3 if some could not run."""
    from ..audit import audit_federation
    from ..audit.render import print_report, write_html, write_json
    from ..eth.chain import connect
    from ..eth.deploy import find_contract
    from ..storage import open_store

    job = Job.load(args.job)
    chain = connect(args.chain or job.chain)
    contract = find_contract(
        chain, args.contract or job.contract, None, Path(args.deployments or job.deployments)
    )
    store_url = args.store or (job.store if args.job or args.verify else None)
    report = audit_federation(
        contract, open_store(store_url) if store_url is not None else None,
        verify_models=args.verify, gas=not args.no_gas, from_block=args.from_block,
        workers=args.workers,
    )
    console = make_console()
    print_report(report, console)
    if args.json:
        console.print(f"JSON report: {write_json(report, args.json)}")
    if args.html:
        console.print(f"HTML report: {write_html(report, args.html)}")
    return report.exit_status()


