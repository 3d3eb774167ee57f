"""Issue 22's new-user trip-ups: the engine simulate picks, failure messages that say what
happened and what to do, results that survive a restart, and output a user can read."""

from __future__ import annotations

import logging

import pytest
from fedmodels import LinearLearner

from fedchain.aggregation.strategy import FedAvg
from fedchain.federation.learner import TrainResult
from fedchain.federation.simulation import AUTO_POOL_ABOVE, choose_engine, simulate

# --- item 3: the engine is chosen by the federation's size ------------------------------------


def test_simulate_picks_threads_for_a_handful_of_learners_and_the_pool_past_that(caplog):
    with caplog.at_level(logging.INFO, logger="fedchain.simulation"):
        assert choose_engine(None, 1) == "threads"
        assert choose_engine(None, AUTO_POOL_ABOVE) == "threads"
        assert choose_engine(None, AUTO_POOL_ABOVE + 1) == "pool"
        assert choose_engine(None, 1000) == "pool"
    said = [r.getMessage() for r in caplog.records]
    assert any("engine: pool (1000 learners > 8" in m and "--engine threads" in m for m in said)
    # Named engines are kept, whatever the size.
    assert choose_engine("threads", 1000) == "threads"
    assert choose_engine("pool", 2) == "pool"


def test_a_simulation_without_an_engine_runs_the_pool_past_a_handful(store, caplog):
    with caplog.at_level(logging.INFO, logger="fedchain.simulation"):
        result = simulate(lambda i, n: LinearLearner(i, num_examples=8), AUTO_POOL_ABOVE + 1,
                          FedAvg(), 1, store=store, train_config={"steps": 1})
    assert result.engine == "pool"
    assert len(result.rounds[0].included) == AUTO_POOL_ABOVE + 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine:")]
    assert len(said) == 1 and "engine: pool" in said[0]
    small = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 1, store=store,
                     train_config={"steps": 1})
    assert small.engine == "threads" and len(small.learners) == 3


# --- item 10: output a user can read ----------------------------------------------------------


class Times100(LinearLearner):
    """Trains honestly, then sends its change × 100: clipped in every round."""

    def train(self, weights, config):
        result = super().train(weights, config)
        w = weights["linear.weight"]
        far = {**result.weights, "linear.weight": w + (result.weights["linear.weight"] - w) * 100}
        return TrainResult(far, result.num_examples, result.metrics)


def test_a_clipped_update_is_said_once_per_round_not_by_every_party(store, caplog):
    rounds, n = 3, 6
    with caplog.at_level(logging.DEBUG, logger="fedchain.aggregation"):
        result = simulate(lambda i, _: Times100(i) if i == 0 else LinearLearner(i), n,
                          rounds=rounds, store=store, train_config={"steps": 2},
                          engine="threads")
    rogue = result.learners[0].address
    said = [r for r in caplog.records if "clipped" in r.getMessage()]
    shown = [r.getMessage() for r in said if r.levelno >= logging.INFO]
    # Every party re-derives every round (6 learners and the aggregator) …
    assert len(said) > rounds
    # … and the log shows one line a round, naming the update clipped.
    assert len(shown) == rounds, shown
    assert all(m.startswith("1 of 6 updates clipped") and rogue[:6] in m for m in shown)


def test_the_history_plot_of_many_metrics_is_a_picture_not_a_strip(tmp_path):
    from PIL import Image

    from fedchain.federation.history import History
    from fedchain.federation.results import plot_history

    history = History()
    for r in (1, 2, 3):  # the DCGAN's: a loss and four metrics
        history.add_distributed(r, 1.0 / r, {"d_loss": 0.5, "g_loss": 1.5, "d_real": 0.7,
                                             "d_fake": 0.3})
    width, height = Image.open(plot_history(history, tmp_path / "h.png")).size
    assert width <= 1600 and width / height <= 2.5, (width, height)
    width, height = Image.open(plot_history(History(), tmp_path / "one.png")).size
    assert width / height <= 2.0, (width, height)  # loss alone: one panel


# --- item 5b: a dead or mistyped IPFS URL fails at start --------------------------------------


def _dead_url() -> str:
    from fedchain.cli.devnet import free_port

    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_a_dead_ipfs_url_stops_a_learner_and_an_aggregator_at_start(tmp_path, capsys):
    from fedchain.cli import main

    url = _dead_url()
    job = tmp_path / "job.toml"
    job.write_text(f'[federation]\nstore = "{url}"\n[model]\nlearner = "fedmodels:make_learner"\n')
    for command in (["learner", "--id", "0"], ["aggregator"]):
        assert main([*command, "--job", str(job)]) == 2
        err = capsys.readouterr().err
        assert f"StoreUnavailable: no IPFS node answers at {url} ([federation] store in {job})" \
            in err
        assert "fedchain devnet" in err and "5001" in err


def test_simulate_on_a_dead_ipfs_url_fails_before_it_starts(caplog):
    from fedchain.errors import StoreUnavailable

    url = _dead_url()
    with pytest.raises(StoreUnavailable, match=f"no IPFS node answers at {url}"):
        simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 1, store=url)


# --- item 5c: [train] and [evaluate] keys the learner does not take ---------------------------

TYPO_TASK = '''
from fedmodels import LinearLearner
from fedchain.federation.learner import takes_config

@takes_config(train={"lr": float, "steps": int}, evaluate={})
def make_learner(learner_id, num_learners):
    return LinearLearner(learner_id)
'''


def _typo_job(tmp_path, body: str, learner: str = "typo_task:make_learner"):
    (tmp_path / "typo_task.py").write_text(TYPO_TASK)
    job = tmp_path / "job.toml"
    job.write_text(f'[model]\nlearner = "{learner}"\n{body}')
    return job


@pytest.mark.parametrize(("body", "said"), [
    ("[train]\nlrr = 0.1\n",
     "[train] has no key 'lrr' (did you mean 'lr'?); the learner takes lr, steps"),
    ('[train]\nlr = "fast"\n', "[train] lr must be a number, got 'fast'"),
    ("[train]\nsteps = 2.5\n", "[train] steps must be an integer, got 2.5"),
    ("[evaluate]\nbatch = 8\n", "[evaluate] has no key 'batch'; the learner takes no keys"),
])
def test_a_train_key_the_learner_does_not_take_is_refused_naming_file_section_and_key(
    tmp_path, capsys, body, said
):
    from fedchain.cli import main
    from fedchain.cli.job import Job
    from fedchain.errors import ConfigError

    job = _typo_job(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        Job.load(job).learner_factory()
    assert str(err.value).startswith(f"job file {job}: {said}")
    # The commands refuse it before they start anything (no chain is running here).
    for command in (["simulate"], ["learner", "--id", "0"], ["aggregator"]):
        assert main([*command, "--job", str(job)]) == 2
        out = capsys.readouterr().err
        assert f"ConfigError: job file {job}: {said}" in out, out


def test_the_examples_declare_their_train_keys(tmp_path):
    from fedchain.cli.job import Job
    from fedchain.errors import ConfigError

    job = _typo_job(tmp_path, "[train]\nepochs = 1\nlearning_rate = 0.01\n",
                    learner="examples.cnn.task:make_learner")
    with pytest.raises(ConfigError, match=r"\[train\] has no key 'learning_rate'"):
        Job.load(job).check_learner_config()
    for name in ("cnn", "mlp", "dcgan"):
        job = Job.load(f"examples/{name}/fedchain.toml")
        job.check_learner_config()  # the shipped job files pass


# --- item 5a: a deployment that is gone --------------------------------------------------------


def test_a_call_to_a_contract_whose_code_is_gone_says_redeploy():
    from functools import partial

    from fedchain.errors import DeploymentNotFound
    from fedchain.eth.chain import connect
    from fedchain.eth.contract import FedChainReader

    chain = connect("embedded", fresh=True)
    gone = FedChainReader(chain, "0x" + "12" * 20)  # as if the chain had been restarted
    with pytest.raises(DeploymentNotFound) as err:
        gone.current_round()
    said = str(err.value)
    assert f"the FedChain deployment at {gone.address} is gone" in said
    assert "restarted" in said and "fedchain deploy --fresh" in said
    # Views read in a batch (as the chain watcher does) say the same.
    call = partial(gone.contract.functions.currentRound().call, block_identifier="latest")
    with pytest.raises(DeploymentNotFound, match=f"deployment at {gone.address} is gone"):
        chain.batch([call])
