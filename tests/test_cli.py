"""The `fedchain` command: job files, deploy records, status, and clear errors.

Every mistake a user can make with a flag, a path or a job file ends in one line naming what
to fix (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

import fedchain
from fedchain.cli import COMMANDS, build_parser, main, script_parser
from fedchain.cli.devnet import free_port
from fedchain.cli.job import Job
from fedchain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = ROOT / "tests"


def _job_file(tmp_path: Path, text: str) -> Path:
    job_file = tmp_path / "job.toml"
    job_file.write_text(text)
    return job_file


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fedchain ")]
    assert lines, err
    for needle in needles:
        assert needle in lines[-1], err
    return lines[-1]


# --- job files -------------------------------------------------------------------------------


def test_job_file_sections_and_flag_overrides(tmp_path):
    job = Job.load(_job_file(tmp_path, """
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
"""))

    assert (job.chain, job.store, job.rounds, job.min_updates) == (
        "http://127.0.0.1:8545", "file:///tmp/x", 7, 2)
    assert job.strategy == {"name": "FedTrimmedAvg", "params": {"beta": 0.2}}
    assert job.train == {"lr": 0.05}
    assert job.learner_options == {"partition": "dirichlet", "alpha": 0.5}


def test_unknown_job_section_names_the_closest(tmp_path):
    job_file = _job_file(tmp_path, "[federaton]\nchain = 'embedded'\n")
    with pytest.raises(ConfigError, match=r"unknown section \[federaton\] \(did you mean "
                       r"'federation'\?\)") as info:
        Job.load(job_file)
    assert str(job_file) in str(info.value)


@pytest.mark.parametrize(
    ("text", "section", "key", "closest"),
    [
        ("[run]\nround = 3\n", "run", "round", "rounds"),
        ("[run]\nmin_update = 3\n", "run", "min_update", "min_updates"),
        ("[federation]\nchian = 'http://127.0.0.1:8545'\n", "federation", "chian", "chain"),
        ("[model]\nlerner = 'fedmodels:make_learner'\n", "model", "lerner", "learner"),
        ("[output]\ndirr = 'runs/x'\n", "output", "dirr", "dir"),
    ],
)
def test_a_typo_in_a_known_section_names_file_section_key_and_the_closest(
    tmp_path, text, section, key, closest
):
    job_file = _job_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Job.load(job_file)
    message = str(info.value)
    assert str(job_file) in message
    assert f"[{section}] has no key {key!r} (did you mean {closest!r}?)" in message


def test_a_strategy_parameter_typo_names_the_closest(tmp_path):
    job_file = _job_file(tmp_path, "[strategy]\nname = 'FedTrimmedAvg'\nbta = 0.2\n")
    with pytest.raises(ConfigError, match=r"\[strategy\].*\['bta'\].*did you mean 'beta'"):
        Job.load(job_file)


def test_a_key_outside_any_section_says_where_it_belongs(tmp_path):
    with pytest.raises(ConfigError, match=r"'rounds' is outside any section: put it under "
                       r"\[run\]"):
        Job.load(_job_file(tmp_path, "rounds = 3\n[run]\nlearners = 2\n"))


@pytest.mark.parametrize(
    ("line", "key", "wanted"),
    [
        ('min_updates = "three"', "min_updates", "an integer ≥ 0"),
        ("rounds = 2.5", "rounds", "a positive integer"),
        ("rounds = 0", "rounds", "a positive integer"),
        ('round_timeout = "x"', "round_timeout", "a number ≥ 0"),
        ("learners = true", "learners", "a positive integer"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_key(tmp_path, capsys, line, key, wanted):
    job_file = _job_file(tmp_path, f"[model]\nlearner = 'fedmodels:make_learner'\n[run]\n{line}\n")

    assert main(["simulate", "--job", str(job_file)]) == 2

    _one_line_error(capsys, "ConfigError", str(job_file), f"[run] {key} must be {wanted}")


def test_bad_learner_factory_exits_2_with_the_reason(tmp_path, capsys):
    job_file = _job_file(tmp_path, "[model]\nlearner = 'no_such_module:make'\n")

    assert main(["simulate", "--job", str(job_file), "--rounds", "1"]) == 2
    _one_line_error(capsys, "ConfigError", "no_such_module")


def test_unknown_strategy_exits_2_with_the_known_ones(tmp_path, capsys):
    job_file = _job_file(tmp_path, "[model]\nlearner = 'fedmodels:make_learner'\n"
                         "[strategy]\nname = 'FedBest'\n")

    assert main(["simulate", "--job", str(job_file)]) == 2
    _one_line_error(capsys, "FedAvg")


# --- bad flags and paths: one line, exit 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["status", "--chain", "embedded", "--contract", "0x1234"],
         "contract address '0x1234' (--contract) is not an address"),
        (["status", "--job", "/nonexistent/job.toml"], "job file /nonexistent/job.toml not found"),
        (["status", "--job", "/"], "is a directory"),
        (["aggregator", "--chain", "http://127.0.0.1:1", "--keystore", "{ks}",
          "--password-file", "/nonexistent/pw"], "--password-file /nonexistent/pw: no such file"),
        (["aggregator", "--chain", "http://127.0.0.1:1", "--keystore", "/nonexistent/ks.json",
          "--password-file", "{pw}"], "--keystore /nonexistent/ks.json: no such file"),
        (["aggregator", "--chain", "http://127.0.0.1:1", "--keystore", "{garbage}",
          "--password-file", "{pw}"], "is not JSON"),
        (["aggregator", "--chain", "http://127.0.0.1:1", "--keystore", "{pw}",
          "--password-file", "{pw}"], "is not JSON"),
        (["aggregator", "--chain", "http://127.0.0.1:1", "--keystore", "{ks}",
          "--password-file", "{pw}"], "is not an encrypted keystore"),
        (["simulate", "--store", "ftp://example/x"], "store 'ftp://example/x' (--store) is not"),
        (["status", "--chain", "localhost:8545"], "chain 'localhost:8545' (--chain) is not"),
        (["learner", "--id", "-1"], "--id -1: learner ids start at 0"),
        (["learner", "--id", "3"], "--id 3 is beyond the 3 data partitions"),
        (["learner", "--id", "30", "--num-learners", "40"], "dev chains have"),
        (["deploy", "--chain", "http://127.0.0.1:1", "--learner", "0xnope"],
         "--learner '0xnope' is not an address"),
    ],
)
def test_a_bad_flag_or_path_is_one_line(tmp_path, capsys, argv, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "garbage").write_text("not json at all")
    (tmp_path / "ks.json").write_text('{"address": "1234"}')
    paths = {"{pw}": tmp_path / "pw", "{garbage}": tmp_path / "garbage",
             "{ks}": tmp_path / "ks.json"}
    argv = [str(paths.get(a, a)) for a in argv]

    assert main(argv) == 2

    _one_line_error(capsys, needle)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["simulate", "--threads", "0"], "argument --threads: must be a positive integer"),
        (["simulate", "--rounds", "0"], "argument --rounds: must be a positive integer"),
        (["aggregator", "--round-timeout", "x"], "argument --round-timeout: must be a number"),
        (["audit", "--json", "/nonexistent/dir/x.json"],
         "argument --json: directory /nonexistent/dir does not exist"),
        (["audit", "--workers", "0"], "argument --workers: must be a positive integer"),
        (["devnet", "--chain-port", "70000"], "argument --chain-port: must be a port number"),
        (["devnet", "--ganache", "--hardhat"], "not allowed with argument"),
    ],
)
def test_a_bad_value_is_a_usage_error(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def _fail_with(exc: BaseException, monkeypatch):
    def boom(args):
        raise exc

    help, arguments, _ = COMMANDS["status"]
    monkeypatch.setitem(COMMANDS, "status", (help, arguments, boom))


def test_an_os_error_is_one_line_and_v_shows_the_traceback(monkeypatch, capsys):
    _fail_with(PermissionError(13, "Permission denied", "/root/x"), monkeypatch)
    assert main(["status"]) == 2
    _one_line_error(capsys, "PermissionError", "/root/x", "-v shows the traceback")

    with pytest.raises(PermissionError):
        main(["status", "-v"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    _fail_with(KeyError("bug"), monkeypatch)
    with pytest.raises(KeyError):
        main(["status"])


# --- the commands read like one tool ---------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_of_every_command_has_help():
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"fedchain {name} {action.option_strings} has no help"


def test_learners_is_not_listed_with_two_meanings():
    listed = {name: {s for a in sub._actions if a.help != argparse.SUPPRESS
                     for s in a.option_strings}
              for name, sub in _subparsers(build_parser()).items()}
    assert "--dev-learners" in listed["deploy"] and "--num-learners" in listed["learner"]
    assert not any("--learners" in options for options in listed.values())
    # options a command would ignore are not offered
    assert "--contract" not in listed["deploy"] and "--store" not in listed["deploy"]
    assert not {"--contract", "--deployments"} & listed["simulate"]
    assert not {"--rounds", "--strategy", "--output"} & listed["learner"]


def test_old_learners_spellings_still_work():
    parser = build_parser()
    assert parser.parse_args(["deploy", "--learners", "3"]).dev_learners == 3
    assert parser.parse_args(["learner", "--id", "0", "--learners", "4"]).num_learners == 4
    assert parser.parse_args(["simulate", "--learners", "2"]).num_learners == 2


def test_version_and_verbose_before_or_after_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedchain {fedchain.__version__}"
    parser = build_parser()
    assert parser.parse_args(["status", "-v"]).verbose is True
    assert parser.parse_args(["-v", "status"]).verbose is True
    assert parser.parse_args(["status"]).verbose is False


@pytest.mark.parametrize(("script", "command"),
                         [("deploy.py", "deploy"), ("server.py", "aggregator"),
                          ("client.py", "learner")])
def test_scripts_print_their_own_usage(script, command):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {script} ")
    assert f"`fedchain {command}`" in " ".join(done.stdout.split())
    assert "fedchain" not in done.stdout.splitlines()[0]
    assert script_parser(command, script).prog == script


# --- which chain -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["deploy", "aggregator", "learner", "status", "audit"])
def test_multi_process_commands_refuse_the_embedded_chain(command, capsys):
    extra = ["--id", "0"] if command == "learner" else []
    assert main([command, "--chain", "embedded", *extra]) == 2
    _one_line_error(capsys, f"`fedchain {command}` cannot use the embedded chain",
                    "fedchain devnet", "fedchain simulate")


@pytest.mark.parametrize("command", ["deploy", "status", "audit", "aggregator"])
def test_the_default_chain_is_the_devnet_and_says_so(command, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"  # nobody there, like 8545 on a fresh machine
    monkeypatch.setattr("fedchain.cli.options.DEVNET_CHAIN", url)

    assert main([command]) == 2

    err = capsys.readouterr().err
    assert f"chain: {url} (default; --chain to change)" in err
    assert f"no chain at {url} (the default): start one with `fedchain devnet`" in err
    assert "Traceback" not in err


def test_a_job_file_saying_embedded_is_refused_naming_the_file(tmp_path, capsys):
    job_file = _job_file(tmp_path, "[federation]\nchain = 'embedded'\n")
    assert main(["status", "--job", str(job_file)]) == 2
    _one_line_error(capsys, f"[federation] chain in {job_file}", "cannot use the embedded chain")


def test_chain_that_is_down_exits_2_naming_the_url(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "--chain", url]) == 2
    line = _one_line_error(capsys, "ChainUnavailable", url)
    assert "is `fedchain devnet` running?" in line


# --- against a dev chain ---------------------------------------------------------------------


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_deploy_records_then_reports_existing_and_status_reads_it(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    assert main(["deploy", "--chain", anvil_node.url, "--dev-learners", "3",
                 "--deployments", records]) == 0
    first = capsys.readouterr().out
    assert "deployed FedChain at" in first and "learners   3" in first

    assert main(["deploy", "--chain", anvil_node.url, "--deployments", records]) == 0
    again = capsys.readouterr().out
    assert "already deployed" in again and "registered" not in again

    assert main(["status", "--chain", anvil_node.url, "--deployments", records]) == 0
    status = capsys.readouterr().out
    assert "waiting for genesis" in status and "3 learners" in status


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_deploy_with_more_learners_registers_the_missing_ones(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    base = ["deploy", "--chain", anvil_node.url, "--deployments", records]
    assert main([*base, "--dev-learners", "3"]) == 0
    capsys.readouterr()

    assert main([*base, "--dev-learners", "5"]) == 0

    out = capsys.readouterr().out
    assert "already deployed" in out
    assert "registered 2 more learner(s)" in out and "learners   5" in out


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_deploy_a_committee_and_only_its_members_aggregate(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    base = ["deploy", "--chain", anvil_node.url, "--deployments", records, "--dev-learners", "2"]
    assert main([*base, "--aggregators", "3", "--quorum", "1"]) == 2
    _one_line_error(capsys, "--quorum 1 must be a majority of the 3 aggregators", "")
    assert main([*base, "--aggregators", "3", "--quorum", "2"]) == 0
    out = capsys.readouterr().out
    assert "committee  2 of 3: --id 0 0x70997970C51812dc3A010C7d01b50e0d17dc79C8, --id 1 " in out
    job_file = _job_file(tmp_path, f"[federation]\nchain = '{anvil_node.url}'\n"
                         f"deployments = '{records}'\n"
                         "[model]\nlearner = 'fedmodels:make_learner'\n")
    # Member 3 does not exist: its dev account is no aggregator of this federation.
    assert main(["aggregator", "--id", "3", "--job", str(job_file)]) == 2
    _one_line_error(capsys, "is not an aggregator of this federation", "--id K")


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_learner_that_is_not_registered_is_refused(anvil_node, tmp_path, capsys):
    records = str(tmp_path / "deployments")
    main(["deploy", "--chain", anvil_node.url, "--dev-learners", "1", "--deployments", records])
    capsys.readouterr()
    job_file = _job_file(tmp_path, f"[federation]\nchain = '{anvil_node.url}'\n"
                         f"deployments = '{records}'\n"
                         "[model]\nlearner = 'fedmodels:make_learner'\n")

    assert main(["learner", "--id", "2", "--job", str(job_file)]) == 2
    _one_line_error(capsys, "is not a registered learner", "fedchain deploy --dev-learners 3")


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_a_stale_deployment_record_says_how_to_redeploy(anvil_node, tmp_path, capsys):
    """A dev chain restarted since `fedchain deploy`: no code at the recorded address."""
    records = tmp_path / "deployments"
    chain = ["--chain", anvil_node.url, "--deployments", str(records)]
    assert main(["deploy", *chain, "--dev-learners", "3"]) == 0
    capsys.readouterr()
    record_file = records / "31337.json"
    record = json.loads(record_file.read_text())
    record["address"] = "0x" + "5e" * 20  # nothing deployed there
    record_file.write_text(json.dumps(record))

    for argv in (["status"], ["audit"], ["aggregator"], ["learner", "--id", "0"]):
        assert main([*argv, *chain]) == 2
        _one_line_error(capsys, "DeploymentNotFound", f"{record_file} is stale",
                        "fedchain deploy --fresh")

    assert main(["deploy", *chain, "--dev-learners", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{record_file} is stale" in out and "deploying anew" in out
    assert "deployed FedChain at" in out
    assert main(["status", *chain]) == 0


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_status_of_a_finished_federation_says_so(anvil_node, tmp_path, capsys):
    job_file = _job_file(tmp_path, "[model]\nlearner = 'fedmodels:make_learner'\n"
                         "initial = 'fedmodels:initial_weights'\n")
    assert main(["simulate", "--job", str(job_file), "--chain", anvil_node.url, "--rounds", "1",
                 "--num-learners", "2", "--store", f"file://{tmp_path / 'store'}",
                 "--output", str(tmp_path / "out")]) == 0
    address = json.loads((tmp_path / "out" / "results.json").read_text())["contract"]
    capsys.readouterr()

    assert main(["status", "--chain", anvil_node.url, "--contract", address]) == 0

    out = capsys.readouterr().out
    assert "state: finished after round 1; 2 learners" in out
    assert "final global model (round 1)" in out
    assert "learners in round" not in out and "no" not in out.split()


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_aggregator_on_a_finished_federation_never_destroys_a_results_file(
    anvil_node, tmp_path, capsys
):
    store = f"file://{tmp_path / 'store'}"
    job_file = _job_file(tmp_path, "[model]\nlearner = 'fedmodels:make_learner'\n"
                         "initial = 'fedmodels:initial_weights'\n")
    assert main(["simulate", "--job", str(job_file), "--chain", anvil_node.url, "--rounds", "2",
                 "--num-learners", "2", "--store", store, "--output", str(tmp_path / "out")]) == 0
    results = tmp_path / "out" / "results.json"
    written = results.read_text()
    address = json.loads(written)["contract"]
    aggregator = ["aggregator", "--job", str(job_file), "--chain", anvil_node.url,
                  "--contract", address, "--store", store]
    capsys.readouterr()

    assert main([*aggregator, "--output", str(tmp_path / "out")]) == 0
    assert f"finished after round 2; nothing to run; {results} left as it is" in (
        capsys.readouterr().out)
    assert results.read_text() == written

    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"contract": "0x" + "ab" * 20, "rounds": []}))
    assert main([*aggregator, "--output", str(other.parent)]) == 0
    assert "records another federation" in capsys.readouterr().out
    assert json.loads(other.read_text())["contract"] == "0x" + "ab" * 20

    other.write_text("{not json")
    assert main([*aggregator, "--output", str(other.parent)]) == 2
    _one_line_error(capsys, f"{other} exists but is not readable JSON", "left as it is")
    assert other.read_text() == "{not json"


# --- dev nodes -------------------------------------------------------------------------------


def _start_devnet(*flags: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedchain.cli", "devnet", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    while not any("Ctrl-C" in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail("devnet exited early:\n" + "".join(lines))
        lines.append(line)
    return proc, "".join(lines)


def _stop(proc: subprocess.Popen) -> None:
    # "Ctrl-C to stop." is printed just before the handlers go in; an interrupt sent in
    # between would end it as a KeyboardInterrupt (exit 130), on a busy machine.
    _wait_until_signal_is_handled(proc.pid, signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)  # it stops its nodes first, each given up to 20 s
    assert proc.returncode == 0


@pytest.mark.anvil
@pytest.mark.ipfs
def test_devnet_serves_a_chain_and_an_ipfs_node_until_interrupted():
    from fedchain.eth.chain import connect

    chain_port, ipfs_port = free_port(), free_port()
    proc, output = _start_devnet("--chain-port", str(chain_port), "--ipfs-port", str(ipfs_port))
    try:
        assert f"http://127.0.0.1:{chain_port}" in output
        assert f"http://127.0.0.1:{ipfs_port}" in output
        assert connect(f"http://127.0.0.1:{chain_port}").chain_id == 31337
        version = httpx.post(f"http://127.0.0.1:{ipfs_port}/api/v0/version", timeout=5)
        assert version.status_code == 200
        # "Ctrl-C to stop." is printed just before the handlers go in; an interrupt sent in
        # between would end it as a KeyboardInterrupt (exit 130), on a busy machine.
        _wait_until_signal_is_handled(proc.pid, signal.SIGTERM)
    finally:
        _stop(proc)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{ipfs_port}/api/v0/version", timeout=2)


@pytest.mark.slow
def test_devnet_hardhat_serves_a_chain_fedchain_deploys_and_runs_on(tmp_path, capsys):
    from fedchain.eth.chain import connect

    chain_port = free_port()
    proc, output = _start_devnet("--hardhat", "--chain-port", str(chain_port), "--no-ipfs")
    url = f"http://127.0.0.1:{chain_port}"
    try:
        assert f"chain (hardhat): {url}" in output
        chain = connect(url)
        assert chain.chain_id == 31337 and chain.is_dev_chain
        records = str(tmp_path / "deployments")
        assert main(["deploy", "--chain", url, "--dev-learners", "2",
                     "--deployments", records]) == 0
        assert "deployed FedChain at" in capsys.readouterr().out
        job_file = _job_file(tmp_path, "[model]\nlearner = 'fedmodels:make_learner'\n"
                             "initial = 'fedmodels:initial_weights'\n")
        assert main(["simulate", "--job", str(job_file), "--chain", url, "--rounds", "2",
                     "--num-learners", "2", "--store", f"file://{tmp_path / 'store'}",
                     "--output", str(tmp_path / "out")]) == 0
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        assert [len(r["included"]) for r in results["rounds"]] == [2, 2]
    finally:
        _stop(proc)


@pytest.mark.ipfs
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_run_ipfs_devnode_starts_the_ipfs_dev_node(tmp_path):
    """The README's `npm run ipfs-devnode` (extra flags after `--` override the defaults)."""
    ipfs_port = free_port()
    proc = subprocess.Popen(
        ["npm", "run", "--silent", "ipfs-devnode", "--", "--port", str(ipfs_port),
         "--repo", str(tmp_path / "repo")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        import time

        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                r = httpx.post(f"http://127.0.0.1:{ipfs_port}/api/v0/version", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the IPFS dev node did not start"
                time.sleep(0.2)
        assert r.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# --- packaging -------------------------------------------------------------------------------


def test_license_is_an_spdx_expression():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


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


def test_simulate_audit_without_gas_skips_the_receipts_and_still_verifies(tmp_path, capsys):
    """`simulate --audit --no-gas`: the audit re-derives every round but reads no receipt
    (for a federation of many learners the receipts take the longest), so it reports no gas;
    without --no-gas the same run's audit totals its gas."""
    job_file = _job_file(tmp_path, "[model]\nlearner = 'fedmodels:make_learner'\n"
                         "initial = 'fedmodels:initial_weights'\n")
    runs = {}
    for flags in ([], ["--no-gas"]):
        out_dir = tmp_path / ("gasless" if flags else "gas")
        assert main(["simulate", "--job", str(job_file), "--rounds", "2", "--num-learners", "2",
                     "--output", str(out_dir), "--audit", *flags]) == 0
        runs[bool(flags)] = capsys.readouterr().out
    for out in runs.values():
        assert "fedchain audit --verify" in out
        assert "2 rounds" in out
    assert " gas; read in" in runs[False]
    assert " gas; read in" not in runs[True] and "2 rounds; read in" in runs[True]
