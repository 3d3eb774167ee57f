"""The federation as a user runs it: deploy, aggregator and learners as separate processes.

Real Anvil / Ganache nodes and the IPFS dev node, started from node_modules by fixtures; each
fedchain process is the `fedchain` CLI, exactly as typed in separate terminals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedchain.eth.chain import connect
from fedchain.eth.deploy import find_contract

TESTS_DIR = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow, pytest.mark.ipfs]


def _job(tmp_path: Path, chain_url: str, store_url: str, rounds: int = 2, name: str = "job.toml",
         evaluate: str = "") -> Path:
    # round_timeout is only a backstop: with every learner up, a round closes as soon as all
    # three updates are on chain. It must outlast any machine's start of the learner processes,
    # or the aggregator killed mid-round would already have closed round 1 with two of them.
    job = tmp_path / name
    job.write_text(f"""
[federation]
chain = "{chain_url}"
store = "{store_url}"
deployments = "{tmp_path / 'deployments'}"

[model]
learner = "fedmodels:make_learner"
initial = "fedmodels:initial_weights"
{evaluate}

[strategy]
name = "FedAvg"
scaling = "num_examples"

[run]
rounds = {rounds}
learners = 3
min_updates = 3
round_timeout = 900

[train]
lr = 0.1
steps = 5

[output]
dir = "{tmp_path / 'out'}"
""")
    return job


#: The processes the running test started (killed at its end if still running).
_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Kills what a failed test left running, printing its output (shown on failure)."""
    _STARTED.clear()
    yield
    for proc in _STARTED:
        if proc.returncode is not None and proc.stdout is not None and proc.stdout.closed:
            continue  # finished and read by the test itself
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused process would not take the kill
            proc.kill()
            how = "killed at teardown"
        else:
            how = f"exited with {proc.returncode} before teardown"
        out, _ = proc.communicate()
        print(f"--- {' '.join(proc.args[3:])} ({how}):\n{out.decode(errors='replace')}")
    _STARTED.clear()


def _fedchain(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedchain.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, **kw,
    )
    _STARTED.append(proc)
    return proc


def _pause(procs: list[subprocess.Popen]) -> None:
    """Holds processes still (SIGSTOP), so the federation cannot move past them."""
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)


def _resume(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGCONT)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # not left running behind a failed test
        out, _ = proc.communicate()
        raise AssertionError(
            f"{proc.args} did not finish within {timeout:.0f}s:\n{out.decode(errors='replace')}"
        ) from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def _deploy(job: Path, chain_url: str) -> str:
    return _finish(_fedchain("deploy", "--job", str(job), "--dev-learners", "3"))


def _wait_until(predicate, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "backend",
    [pytest.param("anvil", marks=pytest.mark.xdist_group("anvil")),
     pytest.param("ganache", marks=pytest.mark.xdist_group("ganache"))],
)
def test_aggregator_and_three_learners_as_processes(backend, request, ipfs_node, tmp_path):
    node = request.getfixturevalue(f"{backend}_node")
    job = _job(tmp_path, node.url, ipfs_node.url)
    deployed = _deploy(job, node.url)
    assert "deployed FedChain at" in deployed

    aggregator = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in range(3)]
    agg_out = _finish(aggregator)
    learner_outs = [_finish(p) for p in learners]

    assert "[ROUND 2] received 3 updates, 0 rejected" in agg_out
    assert "federation finished" in agg_out
    for i, out in enumerate(learner_outs):
        assert f"[ROUND 1] learner-{i} submitted" in out
        assert f"[ROUND 2] learner-{i} evaluated global model" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r for r, _ in results["losses_distributed"]] == [1, 2]

    contract = find_contract(connect(node.url), directory=tmp_path / "deployments")
    assert contract.finished()
    assert [len(contract.events("GlobalModelPublished", round=r).__next__().included)
            for r in (1, 2)] == [3, 3]


@pytest.mark.xdist_group("anvil")
def test_aggregator_killed_mid_round_resumes_without_losing_updates(anvil_node, ipfs_node,
                                                                     tmp_path):
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=1)
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")

    first = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in (0, 1)]
    _wait_until(lambda: len(contract.updates(1)) == 2, what="two updates in round 1")
    first.send_signal(signal.SIGKILL)
    first.communicate()

    second = _fedchain("aggregator", "--job", str(job))
    learners.append(_fedchain("learner", "--id", "2", "--job", str(job)))
    out = _finish(second)
    for p in learners:
        _finish(p)

    assert "resuming federation at round 1" in out
    assert "[ROUND 1] received 3 updates, 0 rejected, aggregated 3" in out
    published = next(contract.events("GlobalModelPublished", round=1))
    assert len(published.included) == 3
    assert len(contract.updates(1)) == 3  # nobody submitted twice


#: A centralized evaluation the aggregator runs after each round (written next to the job).
EVALUATE = """
def evaluate(round, weights):
    return 1.0 / round, {"score": round / 10}
"""


def _run_federation(job: Path) -> str:
    aggregator = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in range(3)]
    out = _finish(aggregator)
    for p in learners:
        _finish(p)
    return out


def _shape(value):
    """The structure of a JSON value: keys and element shapes, not the numbers."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.xdist_group("anvil")
def test_a_finished_federation_keeps_its_results_and_the_plan_on_chain_wins(
    anvil_node, ipfs_node, tmp_path
):
    (tmp_path / "evalmod.py").write_text(EVALUATE)
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=1,
               evaluate='evaluate = "evalmod:evaluate"')
    _deploy(job, anvil_node.url)
    _run_federation(job)
    results = tmp_path / "out" / "results.json"
    first = results.read_text()
    assert json.loads(first)["losses_centralized"] == [[1, 1.0]]

    # The same aggregator again, with a job that asks for 10 rounds.
    job10 = tmp_path / "job10.toml"
    job10.write_text(job.read_text().replace("rounds = 1", "rounds = 10"))
    again = _finish(_fedchain("aggregator", "--job", str(job10)))

    assert results.read_text() == first
    assert "finished after round 1; nothing to run; " in again
    assert f"{results} left as it is" in again
    assert (f"the plan on chain says rounds = 1, so rounds = 10 (from [run] rounds in {job10}) "
            "is ignored: the plan published at genesis binds every party") in again
    assert "WARNING" in again  # shown by the default log output

    # Without the file, it is rebuilt from the chain: all but the centralized metrics.
    results.unlink()
    rebuilt = _finish(_fedchain("aggregator", "--job", str(job)))
    assert "rebuilt" in rebuilt and "centralized metrics are not on chain" in rebuilt
    before, after = json.loads(first), json.loads(results.read_text())
    for key in ("contract", "plan", "losses_distributed", "metrics_distributed"):
        assert after[key] == before[key], key
    assert [(r["round"], r["global"], r["included"]) for r in after["rounds"]] == [
        (r["round"], r["global"], r["included"]) for r in before["rounds"]]
    assert after["losses_centralized"] == []

    # The aggregator's results.json has the structure of simulate's.
    from fedchain.cli import main

    simulated = tmp_path / "simulated"
    assert main(["simulate", "--job", str(job), "--chain", "embedded", "--store",
                 f"file://{tmp_path / 'store'}", "--output", str(simulated)]) == 0
    assert _shape(before) == _shape(json.loads((simulated / "results.json").read_text()))


@pytest.mark.xdist_group("anvil")
def test_an_aggregator_restarted_between_rounds_writes_every_round(anvil_node, ipfs_node,
                                                                    tmp_path):
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=2)
    _deploy(job, anvil_node.url)
    contract = find_contract(connect(anvil_node.url), directory=tmp_path / "deployments")

    # Between rounds, deterministically: learners 0 and 1 submit round 1 and are held still,
    # so once learner 2 completes round 1 the aggregator waits on round 2 for them.
    first = _fedchain("aggregator", "--job", str(job))
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in (0, 1)]
    _wait_until(lambda: len(contract.updates(1)) == 2, what="two updates in round 1")
    _pause(learners)
    learners.append(_fedchain("learner", "--id", "2", "--job", str(job)))
    _wait_until(lambda: contract.current_round() == 2, what="round 1 published")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    _resume(learners[:2])

    out = _finish(_fedchain("aggregator", "--job", str(job)))
    for p in learners:
        _finish(p)

    assert "resuming federation at round 2" in out
    assert "1 round(s) before this process started are in results.json too" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert [len(r["included"]) for r in results["rounds"]] == [3, 3]
    assert [r for r, _ in results["losses_distributed"]] == [1, 2]


COMMITTEE = """
[protocol]
aggregators = 3
quorum = 2
update_window = 600
vote_window = 600
"""


@pytest.mark.xdist_group("anvil")
def test_a_committee_outlives_a_dead_member_and_a_round_without_quorum_is_closed(
    anvil_node, ipfs_node, tmp_path
):
    job = _job(tmp_path, anvil_node.url, ipfs_node.url, rounds=2)
    job.write_text(job.read_text() + COMMITTEE)
    deployed = _deploy(job, anvil_node.url)
    assert "committee  2 of 3" in deployed
    chain = connect(anvil_node.url)
    contract = find_contract(chain, directory=tmp_path / "deployments")

    # Member 2 never runs: two of three still open the federation and close round 1.
    # Members share the job file; member 1 writes its results to out/member-1, not out/.
    members = [_fedchain("aggregator", "--id", str(k), "--job", str(job)) for k in (0, 1)]
    # Learners 0 and 1 submit round 1 and are held still; learner 2 completes round 1, so the
    # committee closes it and round 2 waits for the two held learners (no race with round 2).
    learners = [_fedchain("learner", "--id", str(i), "--job", str(job)) for i in (0, 1)]
    _wait_until(lambda: len(contract.updates(1)) == 2, timeout=600, what="two updates in round 1")
    _pause(learners)
    learners.append(_fedchain("learner", "--id", "2", "--job", str(job)))
    _wait_until(lambda: contract.current_round() == 2, timeout=600, what="round 1 closed")
    # Then member 1 dies too: round 2 cannot reach a quorum.
    members[1].send_signal(signal.SIGKILL)
    members[1].communicate()
    _resume(learners[:2])
    _wait_until(lambda: len(contract.updates(2)) == 3
                and any(True for _ in contract.events("Voted", round=2)),
                timeout=600, what="round 2's updates and member 0's vote")
    assert contract.current_round() == 2
    # Past the vote deadline (the chain's clock moved on), a learner closes the round.
    chain.advance_time(1300)
    out = _finish(members[0])
    learner_outs = [_finish(p) for p in learners]

    assert contract.finished()
    [timed_out] = contract.events("RoundTimedOut", round=2)
    # Whoever saw the deadline pass first closed it: a learner, or the last live member.
    assert timed_out.closer in [*contract.learners(), contract.committee()[0][0]]
    assert contract.global_model(2) == contract.global_model(1)  # carried over
    round1 = next(contract.events("GlobalModelPublished", round=1))
    assert len(round1.included) == 3
    assert "[ROUND 1] received 3 updates, 0 rejected, aggregated 3" in out
    assert ("no quorum by the vote deadline" in out
            or "passed its vote deadline without a quorum: closed it" in "".join(learner_outs))
    # Member 0's results are its own: member 1 (killed after round 1) wrote into its own file
    # (results.json is written after every round), never into member 0's.
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    member1 = tmp_path / "out" / "member-1" / "results.json"
    if member1.exists():
        assert [r["round"] for r in json.loads(member1.read_text())["rounds"]] == [1]
    # Before training round 2, every learner re-derived round 1's model and found it right.
    for i, text in enumerate(learner_outs):
        assert f"learner-{i}: re-derived the global model of round 1" in text, text
