"""`--run-config section.key=value` (as `flwr run --run-config`): overrides a job file's
settings on every command that reads one, checked by the job file's own schema, errors naming
the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedchain.cli import COMMANDS, build_parser, main
from fedchain.cli.job import Job
from fedchain.errors import ConfigError

JOB = """
[model]
learner = "fedmodels:make_learner"
[strategy]
name = "FedAdam"
eta = 0.1
[run]
rounds = 3
learners = 3
[protocol]
vote_window = 30
[train]
lr = 0.1
steps = 5
"""


def _job(tmp_path: Path, text: str = JOB) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_overrides_reach_every_section_as_typed_toml_values(tmp_path):
    job = Job.load(_job(tmp_path), [
        "run.rounds=5", "train.lr=0.01", "protocol.vote_window=60 protocol.update_window=90",
        "strategy.eta=0.05", "model.options.partition=dirichlet", "train.layers=[8, 4]",
        'protocol.train_schedule={lr = {"3" = 0.001}}', "output.dir=runs/x",
    ])
    config = job.run_config()
    assert config.rounds == 5 and job.rounds == 5
    assert config.train == {"lr": 0.01, "steps": 5, "layers": [8, 4]}
    assert (config.vote_window, config.update_window) == (60, 90)
    assert config.strategy is not None and config.strategy.to_plan()["params"]["eta"] == 0.05
    assert job.learner_options == {"partition": "dirichlet"}
    assert config.train_schedule == {"lr": {"3": 0.001}}
    assert job.output == "runs/x"
    assert job.given["rounds"] == "--run-config 'run.rounds=5'"
    assert job.given["vote_window"] == "--run-config 'protocol.vote_window=60'"
    # the file's other settings stay
    assert job.learners == 3 and job.given["learners"].startswith("[run] learners in ")


def test_overrides_work_without_a_job_file():
    job = Job.load(None, ["run.rounds=2", "federation.chain=embedded"])
    assert job.rounds == 2 and job.chain == "embedded"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("run.rounds=zero", "--run-config 'run.rounds=zero': [run] rounds must be a positive "
                            "integer, got 'zero'"),
        ("run.rounds=0", "--run-config 'run.rounds=0': [run] rounds must be a positive"),
        ("rounds=5", "--run-config 'rounds=5': 'rounds' is outside any section: put it under "
                     "[run]"),
        ("protocol.vote_windw=60", "--run-config 'protocol.vote_windw=60': [protocol] has no "
                                   "key 'vote_windw' (did you mean 'vote_window'?)"),
        ("protocol.fraction=2", "--run-config 'protocol.fraction=2': [protocol] fraction must "
                                "be a number in (0, 1]"),
        ("strategy.etaa=0.1", "with --run-config 'strategy.etaa=0.1': [strategy]"),
        ("train.lr=0.0.1", "--run-config 'train.lr=0.0.1': '0.0.1' is not a TOML value"),
        ("train.lr", "--run-config 'train.lr': expected section.key=value"),
        ("trian.lr=1", "--run-config 'trian.lr=1': unknown section [trian] (did you mean "
                       "'train'?)"),
    ],
)
def test_a_bad_override_names_the_flag(tmp_path, item, message):
    with pytest.raises(ConfigError) as caught:
        Job.load(_job(tmp_path), [item])
    assert message in str(caught.value)


def test_every_command_that_reads_a_job_file_takes_run_config():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "simulate" in a.choices)
    with_job = [name for name in COMMANDS
                if any("--job" in a.option_strings for a in subparsers.choices[name]._actions)]
    assert {"simulate", "deploy", "aggregator", "learner", "status", "audit"} <= set(with_job)
    for name in with_job:
        assert any("--run-config" in a.option_strings
                   for a in subparsers.choices[name]._actions), name


def test_a_bad_override_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    assert main(["simulate", "--job", str(_job(tmp_path)), "--run-config",
                 "run.rounds=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--run-config 'run.rounds=-1': [run] rounds must be a positive integer" in err


def test_simulate_runs_what_the_overrides_say(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["simulate", "--job", str(_job(tmp_path)), "--run-config", "run.rounds=2",
                 "train.lr=0.05", "strategy.name=FedYogi", "strategy.eta=0.02",
                 "--run-config", f"output.dir={json.dumps(str(out))}"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["rounds"] == 2 and len(results["rounds"]) == 2
    assert results["plan"]["train"] == {"lr": 0.05, "steps": 5}
    assert results["plan"]["strategy"]["name"] == "FedYogi"
    assert results["plan"]["strategy"]["params"]["eta"] == 0.02


def test_a_scheduled_key_is_checked_against_the_learners_declared_keys(tmp_path):
    def make_learner(i, n):  # a learner factory declaring what its train reads
        raise AssertionError("not built")

    make_learner.train_keys = {"lr": float, "steps": int}
    job = Job.load(_job(tmp_path), ['protocol.train_schedule={lr = {"3" = 0.01}}'])
    job.check_learner_config(make_learner)
    for item, message in (
        ('protocol.train_schedule={lrr = {"3" = 0.01}}',
         "[protocol] train_schedule has no key 'lrr' (did you mean 'lr'?)"),
        ('protocol.train_schedule={steps = {"3" = "many"}}',
         "[protocol] train_schedule steps must be an integer, got 'many'"),
    ):
        with pytest.raises(ConfigError) as caught:
            Job.load(_job(tmp_path), [item]).check_learner_config(make_learner)
        assert message in str(caught.value)
