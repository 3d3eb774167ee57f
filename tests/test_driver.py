"""LearnerPool: many learners of a real federation (embedded chain, LocalStore) driven from one
ChainWatcher on a few threads, each learner made only when first needed."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fedmodels import LinearLearner, initial_weights

from fedchain.aggregation.strategy import FedAvg
from fedchain.errors import ConfigError, ContentNotFound, FedChainError
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.eth.events import EvaluationReported, UpdateSubmitted
from fedchain.eth.watcher import ChainWatcher, Snapshot, WatchedFedChain
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.driver import LearnerPool
from fedchain.federation.node import LearnerNode
from fedchain.storage.local import LocalStore

#: Deadlines: generous, never reached when all is well.
PATIENCE = 300.0
TRAIN = {"lr": 0.1, "steps": 3}


class FlakyStore(LocalStore):
    """A LocalStore whose first `misses` reads find nothing (a store still catching up)."""

    def __init__(self, root: Path, misses: int) -> None:
        super().__init__(root)
        self.misses = misses
        self._lock = threading.Lock()

    def get_stream(self, *args: Any, **kw: Any) -> Iterator[bytes]:
        with self._lock:
            if self.misses > 0:
                self.misses -= 1
                raise ContentNotFound("not here yet")
        return super().get_stream(*args, **kw)


@dataclass
class Run:
    """What a pooled federation left behind."""

    pool: LearnerPool
    watcher: ChainWatcher
    contract: FedChain
    aggregator: Aggregator
    #: (learner index, the open round when it was made), in order of creation.
    made: list[tuple[int, int]] = field(default_factory=list)
    #: Threads alive in this process, sampled at every step.
    threads: list[int] = field(default_factory=list)
    baseline_threads: int = 0

    def events(self) -> list[Any]:
        return list(self.contract.events())


def run_pooled(
    tmp_path: Path,
    n: int,
    *,
    rounds: int = 2,
    workers: int = 2,
    keep_nodes: bool = True,
    learner_store: Callable[[Path], LocalStore] | None = None,
    watched: bool = False,
    selected: Callable[[int, Snapshot], bool] | None = None,
    **config: Any,
) -> Run:
    chain = connect("embedded", fresh=True)
    accounts = [chain.account(2 + i) for i in range(n)]
    aggregator_account = chain.account(1)
    chain.fund([aggregator_account.address, *(a.address for a in accounts)])
    contract, receipt = FedChain.deploy(chain, chain.account(0), aggregator_account.address)
    contract.register_learners([a.address for a in accounts])
    store = LocalStore(tmp_path / "store")
    learners_store = learner_store(tmp_path / "store") if learner_store else store
    stop = threading.Event()
    aggregator = Aggregator(
        contract.with_account(aggregator_account), store,
        RunConfig(**{"strategy": FedAvg(), "rounds": rounds, "train": TRAIN,
                     "poll_interval": 0.05, "round_timeout": PATIENCE,
                     "evaluation_timeout": PATIENCE, **config}),
        initial_weights=initial_weights(), stop=stop,
    )
    watcher = ChainWatcher(contract, interval=0.05, from_block=receipt.block_number)
    if watched:
        chain.fee_source = watcher.fees
    baseline = threading.active_count()
    run = Run(None, watcher, contract, aggregator, baseline_threads=baseline)  # type: ignore[arg-type]

    def make_node(i: int) -> LearnerNode:
        run.made.append((i, contract.current_round()))
        binding = (WatchedFedChain.bind(contract, accounts[i], watcher) if watched
                   else contract.with_account(accounts[i]))
        node = LearnerNode(LinearLearner(i), binding, learners_store, name=f"learner-{i}")
        step = node.step

        def counted_step() -> bool:
            run.threads.append(threading.active_count())
            return step()

        node.step = counted_step  # type: ignore[method-assign]
        return node

    run.pool = LearnerPool(make_node, n, watcher, workers=workers, keep_nodes=keep_nodes,
                           retry_interval=0.2, selected=selected)
    errors: list[BaseException] = []

    def aggregate() -> None:
        try:
            aggregator.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    watcher.start()
    pool_done = threading.Event()
    pool_thread = threading.Thread(target=lambda: (run.pool.run(stop, PATIENCE),
                                                   pool_done.set()))
    try:
        # The pool starts before genesis: it must make nobody until round 1 opens.
        pool_thread.start()
        agg_thread = threading.Thread(target=aggregate)
        agg_thread.start()
        agg_thread.join(PATIENCE)
        pool_thread.join(PATIENCE)
    finally:
        stop.set()
        watcher.stop()
    assert not errors, errors
    assert pool_done.is_set(), "the pool did not return"
    return run


def updates_and_reports(run: Run) -> tuple[Counter[int], Counter[int], Counter[tuple[int, str]]]:
    events = run.events()
    updates = Counter(e.round for e in events if isinstance(e, UpdateSubmitted))
    reports = Counter(e.round for e in events if isinstance(e, EvaluationReported))
    per_learner = Counter((e.round, e.learner) for e in events if isinstance(e, UpdateSubmitted))
    return updates, reports, per_learner


def test_a_pool_runs_every_learner_through_every_round_on_a_few_threads(tmp_path: Path) -> None:
    n, workers = 10, 2
    run = run_pooled(tmp_path, n, rounds=2, workers=workers)

    # Every round included every learner, and every learner evaluated every global model.
    assert [len(r.included) for r in run.aggregator.results] == [n, n]
    updates, reports, per_learner = updates_and_reports(run)
    assert updates == {1: n, 2: n} and reports == {1: n, 2: n}
    assert set(per_learner.values()) == {1}  # nobody submitted twice
    assert run.contract.finished() and run.pool.finished == n
    # Ten learners ran on two worker threads (plus the watcher, the aggregator, the pool's
    # own loop, and a fetch-ahead thread for the aggregator's and each worker's re-derivation
    # of a round), where the threads engine would have started ten.
    assert run.pool.peak_running <= workers
    assert max(run.threads) <= run.baseline_threads + workers + 3 + (1 + workers)


def test_learners_are_made_when_first_needed_and_once(tmp_path: Path) -> None:
    n = 6
    run = run_pooled(tmp_path, n, rounds=2, workers=3)

    assert sorted(i for i, _ in run.made) == list(range(n))  # each made once
    # None was made before the federation's first round opened.
    assert all(round >= 1 for _, round in run.made)
    assert run.pool.created == n


def test_learners_dropped_between_rounds_are_made_again_and_never_submit_twice(
    tmp_path: Path,
) -> None:
    n = 4
    run = run_pooled(tmp_path, n, rounds=2, workers=2, keep_nodes=False)

    updates, reports, per_learner = updates_and_reports(run)
    assert updates == {1: n, 2: n} and reports == {1: n, 2: n}
    assert set(per_learner.values()) == {1}
    assert run.pool.created > n  # made again for later rounds, as Flower's virtual clients
    assert run.pool.nodes == {}  # none kept once the federation finished


def test_a_learner_that_cannot_fetch_the_model_yet_is_stepped_again_without_a_new_block(
    tmp_path: Path,
) -> None:
    n = 3
    # The first reads find nothing: the learners' steps end early and must be retried,
    # though no transaction (no new block) may come to wake the pool.
    run = run_pooled(tmp_path, n, rounds=1, workers=2,
                     learner_store=lambda root: FlakyStore(root, misses=5))

    updates, reports, _ = updates_and_reports(run)
    assert updates == {1: n} and reports == {1: n}
    assert run.pool.steps > 2 * n  # some steps could not do their round at first


def test_learners_reading_their_views_from_the_watcher_complete_every_round(
    tmp_path: Path,
) -> None:
    n = 5
    run = run_pooled(tmp_path, n, rounds=2, workers=2, watched=True)

    updates, reports, per_learner = updates_and_reports(run)
    assert updates == {1: n, 2: n} and reports == {1: n, 2: n}
    assert set(per_learner.values()) == {1}
    assert [len(r.included) for r in run.aggregator.results] == [n, n]


def test_only_the_learners_selected_for_a_round_are_made_and_stepped(tmp_path: Path) -> None:
    # Learners 0 and 1 take part in odd rounds, 2 and 3 in even ones, 4 in none.
    def selected(i: int, snap: Snapshot) -> bool:
        return i < 4 and i // 2 == (snap.round + 1) % 2

    run = run_pooled(tmp_path, 5, rounds=2, workers=2, selected=selected, min_updates=2,
                     round_timeout=2.0, evaluation_timeout=1.0)

    addresses = {i: run.contract.chain.account(2 + i).address for i in range(5)}
    assert [sorted(r.included) for r in run.aggregator.results] == [
        sorted([addresses[0], addresses[1]]), sorted([addresses[2], addresses[3]])]
    assert sorted(i for i, _ in run.made) == [0, 1, 2, 3]  # learner 4 was never made
    assert run.pool.finished == 5


def test_a_pool_refuses_nonsense_sizes() -> None:
    watcher = object()
    with pytest.raises(ConfigError):
        LearnerPool(lambda i: None, 0, watcher)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError):
        LearnerPool(lambda i: None, 3, watcher, workers=0)  # type: ignore[arg-type,return-value]


def test_a_step_that_fails_ends_the_pool_with_its_error(tmp_path: Path) -> None:
    chain = connect("embedded", fresh=True)
    contract, receipt = FedChain.deploy(chain, chain.account(0), chain.account(1).address)
    contract.register_learners([chain.account(2).address])
    aggregator = contract.with_account(chain.account(1))
    store = LocalStore(tmp_path / "store")
    Aggregator(aggregator, store, RunConfig(strategy=FedAvg(), rounds=1),
               initial_weights=initial_weights()).start()

    def broken(i: int) -> LearnerNode:
        raise FedChainError(f"learner {i} cannot be made")

    with ChainWatcher(contract, interval=0.05) as watcher:
        pool = LearnerPool(broken, 1, watcher)
        with pytest.raises(FedChainError, match="learner 0 cannot be made"):
            pool.run(timeout=PATIENCE)
