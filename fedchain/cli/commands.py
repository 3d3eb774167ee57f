"""The bodies of the `fedchain` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DeploymentNotFound, FedChainError, StorageError
from ..eth.accounts import (
    DEV_ACCOUNTS,
    FIRST_LEARNER_INDEX,
    OWNER_INDEX,
    aggregator_index,
)
from ..federation.config import RunConfig
from .job import Job
from .options import (
    account_for,
    check_dev_index,
    connect_chain,
    fedchain_of,
    job_from,
    make_console,
    open_job_store,
    read_record,
    stop_on_signals,
    uses_dev_account,
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


# --- deploy --------------------------------------------------------------------------------


def _check_deploy_options(args: argparse.Namespace) -> None:
    from eth_utils import is_address

    # --learner and --aggregator are repeatable: each collects a list of addresses.
    for option, addresses in (("--learner", args.learner), ("--aggregator", args.aggregator)):
        for address in addresses or []:
            if not is_address(address):
                raise ConfigError(f"{option} {address!r} is not an address: 0x and 40 hex "
                                  "digits")
    if args.aggregator and args.aggregators and args.aggregators != len(
            {a.lower() for a in args.aggregator}):
        raise ConfigError(f"--aggregators {args.aggregators} disagrees with the "
                          f"{len(args.aggregator)} --aggregator address(es): give one or the "
                          "other")
    if args.dev_learners:
        check_dev_index(FIRST_LEARNER_INDEX + args.dev_learners - 1,
                        f"--dev-learners {args.dev_learners}: the last learner")


def _learner_addresses(args: argparse.Namespace, chain: Any) -> list[str]:
    """The learners deploy is asked to register: --learner addresses, then dev accounts."""
    from eth_utils import to_checksum_address

    learners = [to_checksum_address(a) for a in args.learner or []]
    learners += [chain.account(FIRST_LEARNER_INDEX + i).address
                 for i in range(args.dev_learners or 0)]
    return list(dict.fromkeys(learners))


def cmd_deploy(args: argparse.Namespace) -> int:
    from eth_utils import to_checksum_address

    from ..eth.contract import FedChain
    from ..eth.deploy import deploy, record_path

    job = job_from(args)
    _check_deploy_options(args)
    chain = connect_chain(job, "deploy")
    account = account_for(args, chain, OWNER_INDEX)
    learners = _learner_addresses(args, chain)
    size = args.aggregators or job.aggregators
    quorum = args.quorum or job.quorum
    committee: list[str]
    if args.aggregator:
        committee = list(dict.fromkeys(to_checksum_address(a) for a in args.aggregator))
    elif chain.is_dev_chain and uses_dev_account(args) and args.dev_account is None:
        committee = [chain.account(aggregator_index(k)).address for k in range(size)]
        if size > 1:
            chain.fund(committee)
    else:
        committee = [account.address]
    if quorum is not None and not (len(committee) < 2 * quorum and quorum <= len(committee)):
        raise ConfigError(f"--quorum {quorum} must be a majority of the {len(committee)} "
                          "aggregators (so two different models can never both be accepted)")
    directory = Path(job.deployments)
    path = record_path(chain, directory)
    record = read_record(job, chain)
    if record is not None and not args.fresh:
        try:
            FedChain.at(chain, record["address"])
        except DeploymentNotFound as exc:
            print(f"{path} is stale: {exc} (the chain was restarted or reset since the "
                  "deployment was recorded): deploying anew")
    contract, record, new = deploy(
        chain, account, aggregator=committee, quorum=quorum, learners=learners,
        owner_delay=args.owner_delay, fresh=args.fresh, directory=directory,
    )
    if new:
        print(f"deployed FedChain at {contract.address} on chain {chain.chain_id}")
        print(f"  tx {record.get('tx')} block {record.get('block')} gas {record.get('gasUsed')}")
        print(f"  recorded in {path}")
    else:
        print(f"FedChain already deployed at {contract.address} on chain {chain.chain_id} "
              f"(recorded in {path}; --fresh to redeploy)")
        members, _ = contract.committee()
        if args.aggregator and [a.lower() for a in committee] != [m.lower() for m in members]:
            print(f"  --aggregator {', '.join(args.aggregator)} ignored: this deployment's "
                  f"committee is {', '.join(members)} (--fresh deploys a new federation)")
        _register_missing(contract, learners)
    members, quorum = contract.committee()
    delay = contract.owner_delay()
    print(f"  owner      {contract.owner()}" + (
        f" (changes after genesis: announced {delay} s ahead, or approved by the committee)"
        if delay else ""))
    if len(members) == 1:
        print(f"  aggregator {members[0]}")
    else:
        print(f"  committee  {quorum} of {len(members)}: " + ", ".join(
            f"--id {k} {m}" for k, m in enumerate(members)))
    print(f"  learners   {contract.learner_count()}")
    return 0


def _register_missing(contract: Any, learners: list[str]) -> None:
    """Registers the asked-for learners an existing deployment lacks, and says so."""
    missing = [a for a in learners if not contract.is_learner(a)]
    if not missing:
        return
    if contract.finished():
        raise ConfigError(
            f"this federation has finished: {len(missing)} more learner(s) could not take part; "
            "`fedchain deploy --fresh` deploys a new federation with them"
        )
    if contract.owner().lower() != contract.account.address.lower():
        raise ConfigError(
            f"{len(missing)} learner(s) are not registered, and only the owner "
            f"{contract.owner()} can register them: deploy with the owner's account "
            "(dev account 0 on dev chains), or --fresh for a new federation"
        )
    contract.register_learners(missing)
    print(f"  registered {len(missing)} more learner(s): {', '.join(missing)}")
    if contract.current_round() > 0:
        print("  they join at the open round; the plan's min_updates is unchanged")


# --- aggregator ----------------------------------------------------------------------------


def plan_disagreements(job: Job, config: RunConfig, plan: Any) -> list[str]:
    """What the job or the flags ask for that the plan on chain overrides, said plainly."""
    wanted: dict[str, Any] = {"rounds": config.rounds, "min_updates": config.min_updates}
    if config.strategy is not None:
        wanted["strategy"] = config.strategy.to_plan()
    notes = []
    for key, value in wanted.items():
        on_chain = getattr(plan, key)
        if key in job.given and value is not None and value != on_chain:
            notes.append(
                f"the plan on chain says {key} = {_show(on_chain)}, so {key} = {_show(value)} "
                f"(from {job.given[key]}) is ignored: the plan published at genesis binds every "
                "party of this federation; to run with other settings, deploy a new one "
                "(`fedchain deploy --fresh`)"
            )
    return notes


def _show(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        params = ", ".join(f"{k}={v!r}" for k, v in value.get("params", {}).items())
        return f"{value['name']}({params})"
    return str(value)


def _plan_on_chain(contract: Any, store: Any) -> Any:
    from ..protocol.params import Plan

    try:
        return Plan.load(store, contract.plan())
    except StorageError as exc:
        log.warning("the plan could not be fetched from %s (%s)", store.url, exc)
        return None


def cmd_aggregator(args: argparse.Namespace) -> int:
    from .lock import member_lock
    from .results import read_results

    job = job_from(args)
    # [train] goes into the plan: checked before it is published (if the learners' code is here).
    job.check_learner_config(importable=False)
    config = job.run_config()
    if args.id and not args.output:
        # Members share the job file: each keeps its own results.json, never the same one.
        job.output = str(Path(job.output) / f"member-{args.id}")
    old = read_results(job.output)
    store = open_job_store(job)
    chain = connect_chain(job, "aggregator")
    account = account_for(args, chain, aggregator_index(args.id))
    contract = fedchain_of(job, chain, account)
    if not contract.is_aggregator(account.address):
        members, quorum = contract.committee()
        raise ConfigError(f"{account.address} is not an aggregator of this federation (its "
                          f"committee: {', '.join(members)}; quorum {quorum}): use --id K for "
                          "member K, or the member's key")
    plan = _plan_on_chain(contract, store) if contract.current_round() > 0 else None
    if plan is not None:
        for note in plan_disagreements(job, config, plan):
            log.warning("%s", note)
        # The aggregator follows the plan on chain; said once above, not again by it.
        config = dataclasses.replace(config, rounds=plan.rounds, min_updates=plan.min_updates,
                                     strategy=None)
    if contract.finished():
        return _already_finished(job, contract, store, plan, old)
    # Two processes signing for one member would vote twice: the second refuses.
    with member_lock(chain.url, chain.chain_id, contract.address, account.address,
                     "aggregator"):
        return _aggregate(job, config, contract, store, old)


def _aggregate(job: Job, config: RunConfig, contract: Any, store: Any, old: Any) -> int:
    """The aggregator's run, once this process holds its member's lock."""
    from ..federation.aggregator import Aggregator
    from ..federation.results import write_results
    from ..storage import DEFAULT_MAX_BYTES
    from .results import (
        carried_over,
        complete_history,
        evaluate_unrecorded,
        recording,
        spans,
    )

    initial = None
    if contract.current_round() == 0:
        initial = job.initial_weights()
        if initial is None:
            initial = job.learner_factory()(0, job.learners).get_weights()
    stop = stop_on_signals()
    evaluate_fn = job.evaluate_fn()
    agg = recording(Aggregator, job.output, old)(
        contract, store, config, initial_weights=initial, evaluate_fn=evaluate_fn, stop=stop,
    )
    again: list[int] = []
    if contract.current_round() > 1:
        # Rounds an earlier process published without recording them: evaluated again here.
        plan = _plan_on_chain(contract, store)
        again = evaluate_unrecorded(agg.history, contract, store, old, evaluate_fn,
                            plan.max_model_bytes if plan is not None else DEFAULT_MAX_BYTES)
    try:
        agg.run()
    except FedChainError:
        if stop.signal is None:
            raise
        # "aggregator stopped": asked to, by a signal. The rounds so far are written below.
    history, earlier = complete_history(agg.history, contract, old)
    results, plot = write_results(
        job.output, history, contract, store_url=store.url, plan=agg.plan
    )
    if stop.signal is not None:
        log.info("stopped by %s after round %d; %s has the rounds so far", stop.signal,
                 contract.current_round() - 1, results)
        return 0
    print_history(history)
    if earlier:
        kept = carried_over(history, agg.history)
        source = (f"; the centralized metrics of round(s) {spans(kept)} from the earlier "
                  "results.json" if kept else "")
        if again:
            source += f"; round(s) {spans(again)} evaluated again (the earlier results.json " \
                      "lacked them)"
        if not kept and not again:
            source = "; no centralized metrics for them"
        print(f"{earlier} round(s) before this process started are in results.json too "
              f"(from the chain{source})")
    print(f"results: {results}, plot: {plot}")
    return 0


def _already_finished(job: Job, contract: Any, store: Any, plan: Any, old: Any) -> int:
    """Nothing to run: keep results.json, or (re)build it from the chain if it lacks rounds."""
    from ..federation.history import History
    from ..federation.results import write_results
    from .results import complete_history, covers, same_federation

    last = contract.current_round() - 1
    path = Path(job.output) / "results.json"
    said = f"federation {contract.address} finished after round {last}; nothing to run"
    if covers(old, contract):
        print(f"{said}; {path} left as it is")
        return 0
    if old is not None and not same_federation(old, contract):
        print(f"{said}; {path} records another federation ({old.get('contract')}) and is "
              "left as it is: pass --output DIR to write this federation's results")
        return 0
    history, _ = complete_history(History(), contract, old)
    if plan is None and old is not None and isinstance(old.get("plan"), dict):
        from ..protocol.params import Plan

        plan = Plan.from_json(json.dumps(old["plan"]).encode())
    results, plot = write_results(job.output, history, contract, store_url=store.url,
                                  plan=plan)
    kept = " (kept from the earlier results.json)" if history.losses_centralized else ""
    print(f"{said}; rebuilt {results} from the chain: rounds, included learners, global "
          f"models and the learners' evaluations; centralized metrics are not on chain{kept}")
    print_history(history)
    print(f"results: {results}, plot: {plot}")
    return 0


# --- learner -------------------------------------------------------------------------------


def cmd_learner(args: argparse.Namespace) -> int:
    from ..federation.node import LearnerNode

    job = job_from(args)
    _check_learner_id(args, job)
    job.check_learner_config()
    store = open_job_store(job)
    chain = connect_chain(job, "learner")
    account = account_for(args, chain, FIRST_LEARNER_INDEX + args.id)
    contract = fedchain_of(job, chain, account)
    if not contract.is_learner(account.address):
        raise ConfigError(
            f"{account.address} is not a registered learner of {contract.address}: the owner "
            "registers learners with `fedchain deploy --learner ADDR` (dev accounts: "
            f"`fedchain deploy --dev-learners {args.id + 1}`)"
        )
    if contract.finished():
        print(f"federation {contract.address} finished after round "
              f"{contract.current_round() - 1}; nothing to do")
        return 0
    learner = job.learner_factory()(args.id, job.learners)
    stop = stop_on_signals()
    node = LearnerNode(learner, contract, store, name=f"learner-{args.id}", stop=stop)
    log.info("learner %d (%s) joined federation %s", args.id, account.address, contract.address)
    try:
        node.run()
    except FedChainError:
        if stop.signal is None:
            raise
    if stop.signal is not None:
        log.info("stopped by %s", stop.signal)
    return 0


def _check_learner_id(args: argparse.Namespace, job: Job) -> None:
    if args.id < 0:
        raise ConfigError(f"--id {args.id}: learner ids start at 0")
    if args.id >= job.learners:
        raise ConfigError(
            f"--id {args.id} is beyond the {job.learners} data partitions (ids 0-"
            f"{job.learners - 1}, from {job.given.get('learners', 'the default')}): "
            "set --num-learners N or [run] learners = N for a federation of N learners"
        )
    if uses_dev_account(args) and args.dev_account is None:
        index = FIRST_LEARNER_INDEX + args.id
        if index >= DEV_ACCOUNTS:
            raise ConfigError(
                f"--id {args.id} would sign with dev account {index}, but dev chains have "
                f"{DEV_ACCOUNTS} funded accounts: ids 0-{DEV_ACCOUNTS - 1 - FIRST_LEARNER_INDEX}"
                " sign with dev accounts; give other learners a key (--key, FEDCHAIN_KEY or "
                "--keystore)"
            )


# --- simulate ------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..federation.simulation import simulate

    job = job_from(args)
    config = job.run_config()
    factory = job.learner_factory()
    evaluate_fn = job.evaluate_fn()
    initial = job.initial_weights()
    started = time.monotonic()
    result = simulate(
        factory, job.learners, chain=job.chain, store=job.store, config=config,
        initial_weights=initial, evaluate_fn=evaluate_fn, results_dir=job.output,
        aggregators=job.aggregators, quorum=job.quorum, engine=args.engine, shards=args.shards,
        **({"workers": args.workers} if args.workers else {}),
    )
    print_rounds(result)
    print_history(result.history)
    print(f"\n{len(result.rounds)} rounds in {time.monotonic() - started:.1f}s on "
          f"{result.contract.chain.url} chain, contract {result.contract.address}")
    print(f"results: {result.results_path}  plot: {result.plot_path}")
    for f in result.failures:
        print(f"learner failure: round {f.round}, {f.learner}'s {f.what}: {f.error}")
    # Failures of the learners' own code do not stop a run, but the exit status says so.
    failed = 1 if result.failures else 0
    if not args.audit:
        return failed

    from ..audit import audit_federation
    from ..audit.render import print_report, write_html

    report = audit_federation(result.contract, result.store, gas=not args.no_gas)
    console = make_console()
    console.print("\n[bold]fedchain audit --verify[/bold] of this run, from the chain alone:")
    print_report(report, console)
    console.print(f"HTML report: {write_html(report, Path(job.output) / 'audit.html')}")
    return report.exit_status() or failed


# --- status --------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from .status import print_status, read_status

    job = job_from(args)
    chain = connect_chain(job, "status")
    contract = fedchain_of(job, chain)
    print_status(contract, read_status(contract), make_console())
    return 0


# --- devnet --------------------------------------------------------------------------------


def cmd_devnet(args: argparse.Namespace) -> int:
    from . import devnet

    nodes = []
    try:
        if args.hardhat:
            chain = devnet.start_hardhat(args.chain_port)
        elif args.ganache:
            chain = devnet.start_ganache(args.chain_port)
        else:
            chain = devnet.start_anvil(args.chain_port, block_time=args.block_time or None)
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


# --- audit ---------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    """Runs `fedchain audit`; 0 if every check passed, 1 if one failed, 3 if some could not run."""
    from ..audit import audit_federation
    from ..audit.render import print_report, write_html, write_json
    from ..storage import check_reachable, open_store

    job = job_from(args)
    chain = connect_chain(job, "audit")
    contract = fedchain_of(job, chain)
    store_url = args.store or (job.store if args.job or args.verify else None)
    store = None
    if store_url is not None:
        store = open_store(store_url)
        check_reachable(store, "--store" if args.store else _source_of(job, "store"))
    report = audit_federation(
        contract, store,
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


def _source_of(job: Job, key: str) -> str:
    return job.given.get(key, "the default")


# --- privacy -------------------------------------------------------------------------------


def cmd_privacy(args: argparse.Namespace) -> int:
    """Runs `fedchain privacy`: each learner's ε after each round it reported, recomputed from
    the chain alone; 0 if every claim matches and no learner is past its budget, else 1."""
    from rich.table import Table

    from ..audit import read_federation
    from ..audit.render import print_distributed, print_privacy
    from ..federation.history import strict_json

    job = job_from(args)
    chain = connect_chain(job, "privacy")
    contract = fedchain_of(job, chain)
    report = read_federation(contract, gas=False, from_block=args.from_block)
    console = make_console()
    console.print(f"[bold]FedChain {report.contract}[/] on chain {report.chain_id}: "
                  f"{len(report.rounds)} rounds", highlight=False)
    if report.genesis is not None:  # learner-level DP (SPEC §14.16) is in the plan
        from ..audit.verify import distributed_privacy, load_plan

        try:
            if args.store:  # named: it must answer
                from ..storage import check_reachable, open_store

                store = open_store(args.store)
                check_reachable(store, "--store")
            else:
                store = open_job_store(job)
        except FedChainError as exc:
            if args.store:
                raise
            console.print(f"[dim]the plan is not read ({exc}): a plan's learner-level DP, if "
                          "it has one, is not recomputed (--store to name a store)[/]",
                          highlight=False)
        else:
            plan = load_plan(report, store)
            if plan is None:
                console.print("[dim]the plan could not be fetched: a plan's learner-level DP, "
                              "if it has one, is not recomputed[/]", highlight=False)
            else:
                distributed_privacy(report, plan)
    broken = [c for c in report.checks if c.what == "privacy" and c.status == "failed"
              and c.learner is None]  # the plan's dp cannot be recomputed, or a round's view
    for check in broken:
        where = f"round {check.round}: " if check.round is not None else ""
        console.print(f"[bold red]{where}{check.detail}[/]", highlight=False)
    if report.distributed:
        print_distributed(report, console)
    elif not report.privacy:
        console.print("no learner reported differential privacy (dp_… keys in its evaluation "
                      "reports): every update is as revealing as its training made it")
    for p in report.privacy:
        table = Table(title=f"{p.learner}: ε(δ) after each round, recomputed from its reports")
        for i, name in enumerate(["round", "update", "σ", "q", "steps", "total steps", "δ",
                                  "claimed ε", "recomputed ε", "budget", "check"]):
            table.add_column(name, justify="left" if i in (1, 10) else "right")
        for e in p.entries:
            verdict = "[bold red]✗ " + "; ".join(e.problems) + "[/]" if e.problems else (
                "[green]✓[/]" + ("  [dim]" + "; ".join(e.notes) + "[/]" if e.notes else ""))
            table.add_row(str(e.round), "✓" if e.submitted else "-", f"{e.sigma:g}",
                          f"{e.q:.4g}", str(e.steps), str(e.total_steps), f"{e.delta:g}",
                          f"{e.claimed:.4f}", "-" if e.recomputed is None else
                          f"{e.recomputed:.4f}", "-" if e.budget is None else f"{e.budget:g}",
                          verdict)
        console.print(table)
        for round, problem in p.malformed:
            console.print(f"[bold red]  round {round}: privacy report unreadable: {problem}[/]",
                          highlight=False)
        for round in p.unreported:
            console.print(f"[dim]  round {round}: an update without a privacy report (its "
                          "steps count in a later report's total)[/]", highlight=False)
    if report.privacy:
        print_privacy(report, console)
    if args.json:
        body = {"contract": report.contract, "chain_id": report.chain_id,
                "learners": [p.to_dict() for p in report.privacy],
                "distributed": [p.to_dict() for p in report.distributed]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(strict_json(body), indent=2, allow_nan=False) + "\n")
        console.print(f"JSON: {args.json}")
    failed = [p.learner for p in report.privacy if not p.ok] + [
        p.learner for p in report.distributed if not p.ok]
    if broken and not failed:
        return 1
    if failed:
        console.print(f"[bold red]{len(failed)} learner(s) with a privacy claim that does not "
                      f"hold: {', '.join(failed)}[/]", highlight=False)
        return 1
    return 0
