"""The `fedchain` command: job files, deploy records, status, and clear errors."""

from __future__ import annotations

import pytest

from fedchain.cli import main
from fedchain.errors import ConfigError
from fedchain.job import Job


def test_job_file_sections_and_flag_overrides(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text("""
[federation]
chain = "http://127.0.0.1:8545"
store = "file:///tmp/x"
[model]
learner = "fedmodels:make_learner"
options = {partition = "dirichlet", alpha = 0.5}
[strategy]
name = "FedTrimmedAvg"
beta = 0.2
[run]
rounds = 7
min_updates = 2
[train]
lr = 0.05
""")
    job = Job.load(job_file)

    assert (job.chain, job.store, job.rounds, job.min_updates) == (
        "http://127.0.0.1:8545", "file:///tmp/x", 7, 2)
    assert job.strategy == {"name": "FedTrimmedAvg", "params": {"beta": 0.2}}
    assert job.train == {"lr": 0.05}
    assert job.learner_options == {"partition": "dirichlet", "alpha": 0.5}


def test_unknown_job_section_is_a_clear_error(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text("[federaton]\nchain = 'embedded'\n")
    with pytest.raises(ConfigError, match="unknown sections \\['federaton'\\]"):
        Job.load(job_file)


def test_bad_learner_factory_exits_2_with_the_reason(tmp_path, capsys):
    job_file = tmp_path / "job.toml"
    job_file.write_text("[model]\nlearner = 'no_such_module:make'\n")

    status = main(["simulate", "--job", str(job_file), "--rounds", "1"])

    assert status == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "no_such_module" in err


def test_unknown_strategy_exits_2_with_the_known_ones(tmp_path, capsys):
    job_file = tmp_path / "job.toml"
    job_file.write_text("[model]\nlearner = 'fedmodels:make_learner'\n"
                        "[strategy]\nname = 'FedBest'\n")

    assert main(["simulate", "--job", str(job_file)]) == 2
    assert "FedAvg" in capsys.readouterr().err


def test_chain_that_is_down_exits_2_naming_the_url(capsys):
    from fedchain.devnet import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "--chain", url]) == 2
    err = capsys.readouterr().err
    assert "ChainUnavailable" in err and url in err
    assert "Traceback" not in err


@pytest.mark.xdist_group("anvil")
def test_deploy_records_then_reports_existing_and_status_reads_it(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    assert main(["deploy", "--chain", anvil_node.url, "--learners", "3",
                 "--deployments", records]) == 0
    first = capsys.readouterr().out
    assert "deployed FedChain at" in first and "learners   3" in first

    assert main(["deploy", "--chain", anvil_node.url, "--deployments", records]) == 0
    assert "already deployed" in capsys.readouterr().out

    assert main(["status", "--chain", anvil_node.url, "--deployments", records]) == 0
    status = capsys.readouterr().out
    assert "waiting for genesis" in status and "3 learners" in status


@pytest.mark.xdist_group("anvil")
def test_learner_that_is_not_registered_is_refused(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    main(["deploy", "--chain", anvil_node.url, "--learners", "1", "--deployments", records])
    capsys.readouterr()
    job_file = tmp_path / "job.toml"
    job_file.write_text(f"[federation]\nchain = '{anvil_node.url}'\ndeployments = '{records}'\n"
                        "[model]\nlearner = 'fedmodels:make_learner'\n")

    assert main(["learner", "--id", "5", "--job", str(job_file)]) == 2
    assert "is not a registered learner" in capsys.readouterr().err


def test_devnet_serves_a_chain_and_an_ipfs_node_until_interrupted():
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from fedchain.chain import connect
    from fedchain.devnet import free_port

    chain_port, ipfs_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedchain.cli", "devnet", "--chain-port", str(chain_port),
         "--ipfs-port", str(ipfs_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "devnet exited early:\n" + "".join(lines)
            lines.append(line)
        output = "".join(lines)
        assert f"http://127.0.0.1:{chain_port}" in output
        assert f"http://127.0.0.1:{ipfs_port}" in output
        assert connect(f"http://127.0.0.1:{chain_port}").chain_id == 31337
        version = httpx.post(f"http://127.0.0.1:{ipfs_port}/api/v0/version", timeout=5)
        assert version.status_code == 200
        # "Ctrl-C to stop." is printed just before the handlers go in; an interrupt sent in
        # between would end it as a KeyboardInterrupt (exit 130), on a busy machine.
        _wait_until_signal_is_handled(proc.pid, signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # it stops its nodes first, each given up to 20 s
    assert proc.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{ipfs_port}/api/v0/version", timeout=2)


def _wait_until_signal_is_handled(pid: int, signum: int, timeout: float = 60.0) -> None:
    """Waits until process `pid` catches `signum` (SigCgt in /proc/<pid>/status, Linux).

    `fedchain devnet` installs its SIGINT and SIGTERM handlers together; Python catches
    SIGINT from the start, so the SIGTERM bit is the one that tells.
    """
    import time
    from pathlib import Path

    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # not Linux: nothing to look at
        return
    deadline = time.monotonic() + timeout
    while True:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        if int(fields["SigCgt"], 16) >> (signum - 1) & 1:
            return
        assert time.monotonic() < deadline, f"process {pid} did not handle signal {signum}"
        time.sleep(0.05)
