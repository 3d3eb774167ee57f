"""Issue 22, as a user meets it in separate terminals: an aggregator killed with kill -9 keeps
its centralized metrics for its successor, a SIGTERM is a clean stop, two aggregators with the
same --id do not both run. Real Anvil and the IPFS dev node; each process is the CLI."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from test_multiprocess import (
    EVALUATE,
    _deploy,
    _fedchain,
    _finish,
    _job,
    _no_process_left_behind,  # noqa: F401  (autouse: no process left behind)
    _pause,
    _resume,
    _wait_until,
)

from fedchain.cli import devnet
from fedchain.eth.chain import connect
from fedchain.eth.deploy import find_contract

pytestmark = [pytest.mark.slow, pytest.mark.ipfs]


def _centralized_rounds(path) -> list[int]:
    try:
        return [n for n, _ in json.loads(path.read_text())["losses_centralized"]]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.xdist_group("anvil")
def test_centralized_metrics_survive_a_kill_9_and_restart(anvil_node, ipfs_node, tmp_path):
    (tmp_path / "evalmod.py").write_text(EVALUATE)
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=2,
               evaluate='evaluate = "evalmod:evaluate"')
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")
    results = tmp_path / "out" / "results.json"

    first = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in (0, 1)]
    _wait_until(lambda: len(contract.updates(1)) == 2, what="two updates in round 1")
    _pause(learners)  # round 2 then waits for them
    learners.append(_fedchain("learner", "--id", "2", "--job", str(job)))
    # The aggregator writes results.json after each round: round 1's evaluation is in it.
    _wait_until(lambda: _centralized_rounds(results) == [1], what="round 1 in results.json")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    _resume(learners[:2])

    out = _finish(_fedchain("aggregator", "--job", str(job)))
    for p in learners:
        _finish(p)

    assert ("1 round(s) before this process started are in results.json too (from the chain; "
            "the centralized metrics of round(s) 1 from the earlier results.json)") in out
    record = json.loads(results.read_text())
    assert record["losses_centralized"] == [[1, 1.0], [2, 0.5]]
    assert record["metrics_centralized"] == {"score": [[1, 0.1], [2, 0.2]]}
    assert [r["round"] for r in record["rounds"]] == [1, 2]


@pytest.mark.xdist_group("anvil")
def test_sigterm_stops_the_aggregator_and_a_learner_cleanly(anvil_node, ipfs_node, tmp_path):
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=2)
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")

    aggregator = _fedchain("aggregator", "--job", str(job))
    learner = _fedchain("learner", "--id", "0", "--job", str(job))
    _wait_until(lambda: len(contract.updates(1)) == 1, what="learner 0's update")
    for proc in (aggregator, learner):
        proc.send_signal(signal.SIGTERM)
        out = _finish(proc)  # exit status 0
        assert "stopped by SIGTERM" in out
        assert "FedChainError" not in out and "Traceback" not in out
        assert "aggregator stopped" not in out


def _exit_of(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} still running after {timeout:.0f}s:\n"
                             f"{out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def test_a_dev_chain_restarted_under_the_aggregator_and_a_learner_says_redeploy(tmp_path):
    port = devnet.free_port()
    node = devnet.start_anvil(port)
    try:
        job = _job(tmp_path, node.url, f"file://{tmp_path / 'store'}", rounds=2)
        _deploy(job, node.url)
        contract = find_contract(connect(node.url), directory=tmp_path / "deployments")
        aggregator = _fedchain("aggregator", "--job", str(job))
        learner = _fedchain("learner", "--id", "0", "--job", str(job))
        _wait_until(lambda: len(contract.updates(1)) == 1, what="learner 0's update")
        node.stop()
        node = devnet.start_anvil(port)  # the same URL, a fresh chain: the contract is gone
        for proc in (aggregator, learner):
            status, out = _exit_of(proc)
            assert status == 2, out
            assert "DeploymentNotFound: the FedChain deployment at " in out
            assert "is gone" in out and "chain was probably restarted" in out
            assert "fedchain deploy --fresh" in out
            assert "BadFunctionCallOutput" not in out and "Traceback" not in out
    finally:
        node.stop()


@pytest.mark.xdist_group("anvil")
def test_a_second_aggregator_with_the_same_id_refuses_to_run(anvil_node, tmp_path):
    job = _job(tmp_path, anvil_node.url, f"file://{tmp_path / 'store'}", rounds=2)
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")
    first = _fedchain("aggregator", "--job", str(job), "--id", "0")
    _wait_until(lambda: contract.current_round() == 1, what="the genesis model")

    second = _fedchain("aggregator", "--job", str(job), "--id", "0", "--output",
                       str(tmp_path / "second"))
    status, out = _exit_of(second)
    assert status == 2, out
    assert (f"ConfigError: aggregator {contract.committee()[0][0]} of federation "
            f"{contract.address} on chain 31337 is already running on this machine (process "
            f"{first.pid}") in out
    assert "Stop that one first" in out
    assert first.poll() is None  # the first one carries on
    first.send_signal(signal.SIGTERM)
    assert "stopped by SIGTERM" in _finish(first)


@pytest.mark.xdist_group("anvil")
def test_a_round_published_but_not_recorded_is_evaluated_again_at_restart(anvil_node, ipfs_node,
                                                                        tmp_path):
    (tmp_path / "evalmod.py").write_text(EVALUATE)
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=2,
               evaluate='evaluate = "evalmod:evaluate"')
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")
    results = tmp_path / "out" / "results.json"

    first = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in (0, 1)]
    _wait_until(lambda: len(contract.updates(1)) == 2, what="two updates in round 1")
    _pause(learners)
    learners.append(_fedchain("learner", "--id", "2", "--job", str(job)))
    _wait_until(lambda: _centralized_rounds(results) == [1], what="round 1 in results.json")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    # As if it had been killed after publishing round 1 but before writing results.json.
    results.unlink()
    _resume(learners[:2])

    out = _finish(_fedchain("aggregator", "--job", str(job)))
    for p in learners:
        _finish(p)

    assert "round(s) 1 evaluated again (the earlier results.json lacked them)" in out
    record = json.loads(results.read_text())
    assert record["losses_centralized"] == [[1, 1.0], [2, 0.5]]
    assert record["metrics_centralized"] == {"score": [[1, 0.1], [2, 0.2]]}
