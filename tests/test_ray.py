"""Learners placed on a local Ray instance (the `fedchain[ray]` extra) take part in a real
federation on a shared Anvil and a shared file store; skipped where Ray is not installed."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmodels import initial_weights, make_learner

from fedchain.aggregation.strategy import FedAvg
from fedchain.cli import devnet
from fedchain.errors import ConfigError
from fedchain.eth.accounts import AGGREGATOR_INDEX, OWNER_INDEX
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.ray import check_shared, default_account, run_on_ray, shard_indices
from fedchain.storage import open_store

PATIENCE = 600.0


def test_learners_are_dealt_into_non_empty_shards() -> None:
    assert shard_indices(5, 2) == [[0, 2, 4], [1, 3]]
    assert shard_indices(2, 8) == [[0], [1]]


def test_ray_refuses_a_chain_or_store_its_workers_cannot_share() -> None:
    with pytest.raises(ConfigError, match="embedded chain"):
        check_shared("embedded", "file:///shared/store")
    with pytest.raises(ConfigError, match="shared store"):
        check_shared("http://127.0.0.1:8545", "embedded")


@pytest.fixture
def ray_and_anvil(monkeypatch: pytest.MonkeyPatch) -> Iterator[devnet.DevNode]:
    """Ray on this machine (2 CPUs) and an Anvil node of the test's own; both stopped after."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fedchain[ray]')")
    # Ray's workers are new processes: they find fedchain and the test learners on this path.
    here = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(here.parent), str(here), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
    node = devnet.start_anvil()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        yield node
    finally:
        ray.shutdown()
        node.stop()


@pytest.mark.anvil
@pytest.mark.slow
def test_learners_on_ray_workers_complete_every_round(
    tmp_path: Path, ray_and_anvil: devnet.DevNode
) -> None:
    node, n, rounds = ray_and_anvil, 4, 2
    chain = connect(node.url)
    owner, agg_account = chain.account(OWNER_INDEX), chain.account(AGGREGATOR_INDEX)
    contract, _ = FedChain.deploy(chain, owner, agg_account.address)
    contract.register_learners([default_account(i).address for i in range(n)])
    store_url = (tmp_path / "store").as_uri()
    stop = threading.Event()
    aggregator = Aggregator(
        contract.with_account(agg_account), open_store(store_url),
        RunConfig(strategy=FedAvg(), rounds=rounds, train={"lr": 0.1, "steps": 3},
                  round_timeout=PATIENCE, evaluation_timeout=PATIENCE),
        initial_weights=initial_weights(), stop=stop)
    errors: list[BaseException] = []

    def aggregate() -> None:
        try:
            aggregator.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=aggregate)
    thread.start()
    try:
        shards = run_on_ray(make_learner, n, chain_url=node.url, store_url=store_url,
                            contract=contract.address, shards=2, workers=2,
                            interval=0.05, timeout=PATIENCE)
    finally:
        thread.join(PATIENCE)
        stop.set()
    assert not errors, errors
    # Every round included every learner, whose steps ran in Ray's worker processes.
    assert [len(r.included) for r in aggregator.results] == [n] * rounds
    assert sorted(i for s in shards for i in s.learners) == list(range(n))
    assert all(s.pid != os.getpid() for s in shards)
    assert {r for s in shards for r in map(tuple, s.submitted.values())} == {(1, 2)}
    assert contract.finished()


@pytest.mark.anvil
@pytest.mark.slow
def test_simulate_places_its_learners_on_ray(tmp_path: Path,
                                             ray_and_anvil: devnet.DevNode) -> None:
    from fedchain.audit import audit_federation
    from fedchain.federation.simulation import simulate

    node, n, rounds = ray_and_anvil, 4, 2
    store = open_store((tmp_path / "store").as_uri())
    result = simulate(make_learner, n, FedAvg(), rounds, chain=node.url, store=store,
                      train_config={"lr": 0.1, "steps": 3}, engine="ray", shards=2,
                      workers=2, initial_weights=initial_weights(),
                      config=RunConfig(round_timeout=PATIENCE, evaluation_timeout=PATIENCE))
    report = audit_federation(result.contract, store)
    assert [len(r.included) for r in result.rounds] == [n] * rounds
    assert result.learners == []  # they lived in Ray's workers, not in this process
    assert report.exit_status() == 0


def test_simulate_on_ray_refuses_the_embedded_chain() -> None:
    from fedchain.federation.simulation import simulate

    with pytest.raises(ConfigError, match="embedded chain"):
        simulate(make_learner, 2, FedAvg(), 1, engine="ray")
