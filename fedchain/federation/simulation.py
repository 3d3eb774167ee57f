"""A whole federation in one process: every learner and the aggregator, through the chain.

Nothing takes a shortcut around the chain: learners and the aggregator are the same
LearnerNode and Aggregator a user runs in separate terminals, here in threads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from ..aggregation.rules import forget_said
from ..aggregation.strategy import ROBUST_FEDAVG, Strategy
from ..errors import ConfigError, FedChainError
from ..eth.accounts import (
    DEV_NODE_ACCOUNTS,
    FIRST_LEARNER_INDEX,
    OWNER_INDEX,
    aggregator_index,
    dev_account,
)
from ..eth.chain import Chain, connect
from ..eth.contract import FedChain, RoundParams
from ..eth.watcher import ChainWatcher, Snapshot
from ..model.codec import Weights
from ..progress import default_logging
from ..protocol.rules import is_selected
from ..storage import ContentStore, check_reachable, open_store
from .aggregator import Aggregator, EvaluateFn
from .config import RunConfig
from .driver import DEFAULT_WORKERS, LearnerPool, watched_bindings
from .history import History, MetricsAggregation, RoundResult
from .learner import Learner
from .node import LearnerFailure, LearnerNode, SharedWork
from .results import fill_distributed, write_results

log = logging.getLogger("fedchain.simulation")

#: How simulate runs learners: a thread each, a pool driven by one chain watcher, or such
#: pools as Ray tasks.
ENGINES = ("threads", "pool", "ray")
#: Past this many learners, `simulate` told no engine runs the pool engine: a thread per
#: learner re-derives every round once per learner and polls the chain from every thread
#: (about 25 s a round at 100 learners on Anvil, against about 1 s with the pool).
AUTO_POOL_ABOVE = 8
#: What a derived learner account (past the dev node's) is funded with on a dev chain.
DERIVED_FUNDING = 10**18


@dataclass
class SimulationResult:
    """What a simulated run leaves behind."""

    history: History
    rounds: list[RoundResult]
    contract: FedChain
    store: ContentStore
    learners: list[LearnerNode]
    results_path: Path | None = None
    plot_path: Path | None = None
    #: The engine that ran the learners: "threads", "pool" or "ray".
    engine: str = "threads"
    #: Where a learner's own code raised (the federation went on without that step).
    failures: list[LearnerFailure] = field(default_factory=list)


def learner_account(i: int, dev_slots: int) -> LocalAccount:
    """Simulated learner i's account: dev account 2 + i while the dev node has one free below
    the committee's (`dev_slots` of them), else `simulation_account(i)`."""
    return dev_account(FIRST_LEARNER_INDEX + i) if i < dev_slots else simulation_account(i)


def simulation_account(i: int) -> LocalAccount:
    """Simulated learner i's account past the dev node's: a key derived from its index (a
    hash, not the dev mnemonic's 30 ms derivation), for dev chains only."""
    return Account.from_key(keccak(text=f"fedchain simulation learner {i}"))


def _sampled(contract: FedChain, watcher: ChainWatcher,
             accounts: list[LocalAccount]) -> Callable[[int, Snapshot], bool] | None:
    """The pool's `selected`: whether learner i is sampled in the snapshot's round (from the
    round's seed as the watcher knows it, drawn or predicted from the round's opening block);
    True while the seed is unknown (the learner checks)."""
    params: list[RoundParams] = []
    chosen: dict[tuple[int, bytes], frozenset[int]] = {}  # (round, seed) -> learners sampled

    def selected(i: int, snap: Snapshot) -> bool:
        seed = watcher.seed(snap.round)
        if seed is None:
            return True
        if (snap.round, seed) not in chosen:
            if not params:
                params.append(contract.params())
            # Learners were registered in this order: learner i holds index i + 1.
            chosen.clear()
            chosen[snap.round, seed] = frozenset(
                k for k in range(len(accounts))
                if is_selected(seed, k + 1, params[0].select_ppm))
        return i in chosen[snap.round, seed]

    return selected


def choose_engine(engine: str | None, num_learners: int) -> str:
    """The engine `simulate` runs: the one named, else threads for up to `AUTO_POOL_ABOVE`
    learners and the pool past that (logged once, with how to choose another)."""
    if engine is not None:
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        return engine
    if num_learners > AUTO_POOL_ABOVE:
        log.info("engine: pool (%d learners > %d; engine=\"threads\" or --engine threads "
                 "runs a thread per learner instead)", num_learners, AUTO_POOL_ABOVE)
        return "pool"
    log.info("engine: threads (%d learners ≤ %d; engine=\"pool\" or --engine pool for the "
             "pool engine)", num_learners, AUTO_POOL_ABOVE)
    return "threads"


def _limit_torch_threads(num_learners: int) -> None:
    """Learners train concurrently: give each a share of the cores instead of oversubscribing."""
    torch = sys.modules.get("torch")
    if torch is None:  # learners that do not use torch: leave it unimported
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, num_learners)))


def simulate(
    make_learner: Callable[[int, int], Learner],
    num_learners: int,
    strategy: Strategy | None = None,
    rounds: int | None = None,
    chain: str | Chain = "embedded",
    store: str | ContentStore = "embedded",
    *,
    config: RunConfig | None = None,
    initial_weights: Weights | None = None,
    min_updates: int | None = None,
    round_timeout: float | None = None,
    train_config: Mapping[str, Any] | None = None,
    eval_config: Mapping[str, Any] | None = None,
    evaluate_fn: EvaluateFn | None = None,
    results_dir: str | Path | None = None,
    timeout: float = 3600.0,
    title: str = "fedchain simulation",
    aggregators: int = 1,
    quorum: int | None = None,
    aggregator_types: Mapping[int, type[Aggregator]] | None = None,
    engine: str | None = None,
    workers: int = DEFAULT_WORKERS,
    shards: int = 2,
    metrics_aggregation: MetricsAggregation | None = None,
) -> SimulationResult:
    """Deploys a fresh FedChain, registers `num_learners` learners and runs the federation.

    `make_learner(i, num_learners)` builds learner i. The run's settings come from `config`,
    overridden by the keyword arguments given. Defaults chosen from the attack suite (see
    bench/robustness.py): `ROBUST_FEDAVG` (FedAvg with updates clipped to twice the round's
    median change, num_examples claims capped at twice the median claim, and updates weighed
    by their alignment with the round's direction), 3
    rounds, and a two-thirds quorum of the learners (`config.default_min_updates`). Pass
    `strategy=FedAvg()` for plain FedAvg, `min_updates=num_learners` to require every
    learner. Accounts are the dev chain's mnemonic accounts (owner 0, aggregator 1, learners
    2…), so `chain` must be a dev chain.

    `aggregators` > 1 runs a committee: that many aggregators (dev accounts 1, 99, 98, …),
    each computing every round on its own, `quorum` of them (default: a majority) needed to
    close a round. `aggregator_types` maps a member to an Aggregator subclass to run instead
    (a member that cheats, in tests and demos). The result's history is member 0's.

    `engine` None (the default) picks one (`choose_engine`): threads for up to
    `AUTO_POOL_ABOVE` (8) learners, the pool past that; the choice is logged.
    `engine="threads"` runs each learner as its own thread polling the chain, as separate
    processes would. `engine="pool"` is for large federations (dozens to thousands of
    learners): one ChainWatcher follows the chain for the whole process, a
    LearnerPool steps only the learners with something to do on `workers` threads, making
    each learner when first needed (`make_learner` is called lazily), receipts are polled in
    one batch for every waiting learner, the learners' flat-gas calls skip eth_estimateGas,
    and a round's model is re-derived once per process rather than once per learner.
    Learners past the dev node's accounts get keys derived from their index
    (`simulation_account`), funded with 1 ETH each.

    `engine="ray"` (the `fedchain[ray]` extra) places the learners on Ray: `shards` Ray
    tasks, each a watcher and a pool of `workers` threads, on any node of the cluster
    `ray.init` connected this process to (a local instance otherwise). The chain must be a
    node every worker reaches (an http(s) URL) and the store one they share (a Kubo API, or
    a file:// directory on a shared file system); the committee runs here, in threads. The
    result then has no LearnerNode objects (they lived in the workers).

    `metrics_aggregation(reports)` (Flower's evaluate_metrics_aggregation_fn) turns a round's
    evaluation reports, [(num_examples, metrics)], into its distributed metrics (default: the
    example-weighted mean). Without logging set up, the run prints its progress
    (`progress.default_logging`).
    """
    default_logging()
    if num_learners < 1:
        raise ConfigError("a federation needs at least one learner")
    engine = choose_engine(engine, num_learners)
    forget_said()  # this run's clipped updates are said once each, even if a run before had them
    overrides: dict[str, Any] = {
        "strategy": strategy, "rounds": rounds, "min_updates": min_updates,
        "round_timeout": round_timeout,
        "train": dict(train_config) if train_config is not None else None,
        "evaluate": dict(eval_config) if eval_config is not None else None,
    }  # fmt: skip
    cfg = replace(config or RunConfig(), **{k: v for k, v in overrides.items() if v is not None})
    if cfg.strategy is None:
        cfg = replace(cfg, strategy=ROBUST_FEDAVG)
    if cfg.min_updates is not None and cfg.min_updates > num_learners:
        cfg = replace(cfg, min_updates=num_learners)
    ch = connect(chain, fresh=True) if isinstance(chain, str) and chain == "embedded" else (
        connect(chain) if isinstance(chain, str) else chain
    )
    st = open_store(store) if isinstance(store, str) else store
    check_reachable(st, "the store simulate was given")
    chain_url = chain if isinstance(chain, str) else str(getattr(ch.backend, "_endpoint", ch.url))
    if engine == "ray":
        from .ray import check_shared

        check_shared(chain_url, st.url)
    if aggregators < 1:
        raise ConfigError("a federation needs at least one aggregator")
    owner = ch.account(OWNER_INDEX)
    members = [ch.account(aggregator_index(k)) for k in range(aggregators)]
    # Learners take the dev accounts below the committee's (2, 3, …), then derived keys.
    dev_slots = max(0, DEV_NODE_ACCOUNTS - (aggregators - 1) - FIRST_LEARNER_INDEX)
    learner_accounts = [learner_account(i, dev_slots) for i in range(num_learners)]
    # Dev chains fund only some accounts: top up every one this run sends from (fedchain.eth).
    ch.fund([*(m.address for m in members), *(a.address for a in learner_accounts[:dev_slots])])
    if num_learners > dev_slots:
        ch.fund([a.address for a in learner_accounts[dev_slots:]], amount=DERIVED_FUNDING)

    contract, receipt = FedChain.deploy(ch, owner, [m.address for m in members], quorum)
    contract.register_learners([a.address for a in learner_accounts])
    log.info("deployed FedChain at %s (chain %s), %d learners", contract.address, ch.url,
             num_learners)

    _limit_torch_threads(num_learners if engine == "threads" else min(workers, num_learners))
    pool_mode = engine == "pool"
    learners = ([] if engine != "threads" else
                [make_learner(i, num_learners) for i in range(num_learners)])
    weights = (initial_weights if initial_weights is not None else
               (learners[0] if learners else make_learner(0, num_learners)).get_weights())

    stop = threading.Event()
    watcher: ChainWatcher | None = None
    if pool_mode:
        watcher = ChainWatcher(contract, interval=min(cfg.poll_interval, 0.05),
                               from_block=receipt.block_number)
        restore = (ch.fee_source, ch.gas_policy)
        bind = watched_bindings(contract, watcher)
        ch.prime_nonces(a.address for a in learner_accounts)
    types = dict(aggregator_types or {})
    committee = [
        types.get(k, Aggregator)(
            contract.with_account(member),
            st,
            cfg,
            initial_weights=weights,
            evaluate_fn=evaluate_fn if k == 0 else None,
            stop=stop,
            watcher=watcher,
        )
        for k, member in enumerate(members)
    ]
    agg = committee[0]
    nodes = [
        LearnerNode(learner, contract.with_account(acct), st, name=f"learner-{i}", stop=stop,
                    verify=cfg.verify, verify_rate=cfg.verify_rate)
        for i, (learner, acct) in enumerate(zip(learners, learner_accounts, strict=False))
    ]  # none here in pool mode: the pool makes them
    errors: list[BaseException] = []
    pool: LearnerPool | None = None
    if watcher is not None:
        shared = SharedWork()

        def make_node(i: int) -> LearnerNode:
            return LearnerNode(make_learner(i, num_learners), bind(learner_accounts[i]), st,
                               name=f"learner-{i}",
                               stop=stop, shared=shared, poll_interval=cfg.poll_interval,
                               verify=cfg.verify, verify_rate=cfg.verify_rate)

        pool = LearnerPool(make_node, num_learners, watcher, workers=workers,
                           selected=_sampled(contract, watcher, learner_accounts))

    def guarded(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                stop.set()

        return run

    threads = [threading.Thread(target=guarded(n.run), name=n.name, daemon=True) for n in nodes]
    threads += [threading.Thread(target=guarded(a.run), name=f"aggregator-{k}", daemon=True)
                for k, a in enumerate(committee) if k > 0]
    if pool is not None:
        run_pool = partial(pool.run, stop, timeout)
        threads.append(threading.Thread(target=guarded(run_pool), name="learner-pool",
                                        daemon=True))
    if engine == "ray":
        from .ray import run_on_ray

        on_ray = partial(run_on_ray, make_learner, num_learners, chain_url=chain_url,
                         store_url=st.url, contract=contract.address,
                         account=partial(learner_account, dev_slots=dev_slots),
                         shards=shards, workers=workers, timeout=timeout)
        threads.append(threading.Thread(target=guarded(on_ray), name="learners-on-ray",
                                        daemon=True))
    if watcher is not None:
        watcher.start()
    for t in threads:
        t.start()
    try:
        guarded(agg.run)()
        for t in threads:
            t.join(timeout)
    finally:
        stop.set()
        if watcher is not None:
            watcher.stop()
            ch.fee_source, ch.gas_policy = restore
    if pool is not None:
        nodes = [pool.nodes[i] for i in sorted(pool.nodes)]
    if errors:
        first = errors[0]
        if isinstance(first, FedChainError):
            raise first
        raise FedChainError(f"simulation failed: {type(first).__name__}: {first}") from first

    history = agg.history
    failures = sorted((f for n in nodes for f in n.failures), key=lambda f: (f.round, f.learner))
    history.failures = [f.to_dict() for f in failures]
    history.metrics_aggregation = metrics_aggregation
    result = SimulationResult(history, agg.results, contract, st, nodes, engine=engine,
                              failures=failures)
    if results_dir is not None:
        result.results_path, result.plot_path = write_results(
            results_dir, history, contract, store_url=st.url, plan=agg.plan,
            title=title,
        )
    else:
        fill_distributed(history, contract)
    return result
