"""Evaluation reports any learner can write on chain: the absurd ones are left out of the
distributed metrics (History, results.json, the audit), logged and shown with the reason;
results.json, History and the audit JSON stay strict JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest
from fedmodels import LinearLearner, initial_weights
from rich.console import Console

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import read_federation
from fedchain.audit.render import print_report, write_html, write_json
from fedchain.audit.report import Evaluation
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.eth.reverts import NoExamples, NoGlobalModel, TooManyExamples
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.history import MAX_EXAMPLES, History, report_problem
from fedchain.federation.node import LearnerNode
from fedchain.federation.results import fill_distributed, write_results
from fedchain.federation.simulation import simulate
from fedchain.storage import open_store

HONEST = [(40, b'{"loss":0.5,"mse":0.5}'), (60, b'{"loss":0.25,"mse":0.25}')]
#: (round, numExamples, metrics, what the reason says) of every report that must not count.
ABSURD = [
    (1, 80, b'{"loss":NaN,"mse":0.1}', "metric 'loss' is NaN"),
    (1, 80, b'{"loss":0.1,"mse":Infinity}', "metric 'mse' is Infinity"),
    (1, 80, b'{"loss":0.1,"mse":-1e999}', "metric 'mse' is -Infinity"),
    (1, 50, b'{"loss":0.1,"accuracy":"high"}', "metric 'accuracy' is a JSON string"),
    (1, 50, b'{"loss":0.1,"mse":true}', "metric 'mse' is a JSON boolean"),
    (1, 50, b"not json", "not JSON"),
]
#: Reports the contract refuses outright (round, numExamples, the revert): they never reach a
#: History; the rule above would ignore them too (tests/test_evaluation_reports.py checks it).
REFUSED = [
    (1, 2**255, TooManyExamples),
    (1, MAX_EXAMPLES + 1, TooManyExamples),
    (1, 0, NoExamples),
    (0, 40, NoGlobalModel),
]
MEAN = (0.5 * 40 + 0.25 * 60) / 100


def _one_round_published(chain, store, accounts):
    """(contract, learner bindings): a one-round FedChain of `accounts`, round 1 published."""
    contract, _ = FedChain.deploy(chain, chain.account(0), chain.account(1).address)
    contract.add_learners([a.address for a in accounts])
    learners = [contract.with_account(a) for a in accounts]
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=1, round_timeout=0.3,
                       poll_interval=0.05, evaluation_timeout=0.1)
    agg = Aggregator(contract.with_account(chain.account(1)), store, config,
                     initial_weights=initial_weights())
    agg.start()
    LearnerNode(LinearLearner(0), learners[0], store, evaluate=False).step()
    agg.run()
    return contract, learners


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One published round of a FedChain with 9 learners, then honest and absurd reports (the
    last learner tries those the contract refuses)."""
    chain = connect("embedded", fresh=True)
    store = open_store(f"file://{tmp_path_factory.mktemp('reports') / 'store'}")
    accounts = [chain.account(2 + i) for i in range(len(HONEST) + len(ABSURD) + 1)]
    chain.fund([chain.account(1).address, *(a.address for a in accounts)])
    contract, learners = _one_round_published(chain, store, accounts)
    for c, (n, metrics) in zip(learners, HONEST, strict=False):
        c.report_evaluation(1, n, metrics)
    for c, (round, n, metrics, _) in zip(learners[2:], ABSURD, strict=False):
        c.report_evaluation(round, n, metrics)
    for round, n, refusal in REFUSED:
        with pytest.raises(refusal):
            learners[-1].report_evaluation(round, n, b'{"loss":0.0,"mse":0.0}')
        assert report_problem(round, n, b'{"loss":0.0,"mse":0.0}') is not None
    return contract, store, [c.account.address for c in learners]


def _strict(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_absurd_reports_are_left_out_of_the_distributed_metrics_and_logged(federation, caplog):
    contract, _, _ = federation
    history = History()
    with caplog.at_level(logging.WARNING, logger="fedchain.history"):
        fill_distributed(history, contract)

    assert history.losses_distributed == [(1, pytest.approx(MEAN))]
    assert history.metrics_distributed == {"mse": [(1, pytest.approx(MEAN))]}
    logged = [r.getMessage() for r in caplog.records]
    for _, _, _, reason in ABSURD:
        assert any(reason in line and "ignored" in line for line in logged), reason


def test_results_json_is_strict_and_holds_only_the_sound_reports(federation, tmp_path):
    contract, store, _ = federation
    results, _ = write_results(tmp_path, History(), contract, store_url=store.url, plan=None)

    record = _strict(results.read_text())
    assert record["losses_distributed"] == [[1, pytest.approx(MEAN)]]


def test_the_audit_shows_each_ignored_report_with_its_reason(federation, tmp_path):
    contract, _, addresses = federation
    report = read_federation(contract)
    by_round = {r.round: r for r in report.rounds}

    assert by_round[1].loss == pytest.approx(MEAN)
    assert by_round[1].metrics == {"mse": pytest.approx(MEAN)}
    ignored = {(r.round, e.learner): why for r in report.rounds
               for e, why in r.ignored_evaluations}
    for sender, (round, _, _, reason) in zip(addresses[2:], ABSURD, strict=False):
        assert reason in ignored[round, sender]
    assert len(ignored) == len(ABSURD)  # the honest reports count

    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    shown = [line for line in out.getvalue().splitlines() if "ignored" in line]
    assert len(shown) == len(ABSURD)
    assert any("round 1" in line and "metric 'loss' is NaN" in line for line in shown)

    data = _strict(write_json(report, tmp_path / "audit.json").read_text())
    rounds = {r["round"]: r for r in data["rounds"]}
    assert rounds[1]["ignored_evaluations"] == len(ABSURD)
    nan_report = next(e for e in rounds[1]["evaluations"] if e["learner"] == addresses[2])
    assert nan_report["metrics"]["loss"] is None  # NaN written as null
    assert "metric 'loss' is NaN" in nan_report["ignored"]
    page = write_html(report, tmp_path / "audit.html").read_text()
    assert "no: metric &#x27;loss&#x27; is NaN" in page


def test_the_audit_hook_judges_the_bytes_reported():
    # read.py can build each Evaluation with Evaluation.of(event): the raw bytes are judged,
    # so a bare number (no object) is refused, not taken for a metric named "value".
    class Event:
        learner, num_examples, metrics, block, tx = "0xabc", 10, b"0.5", 7, "0x01"

    evaluation = Evaluation.of(Event())  # type: ignore[arg-type]
    assert evaluation.metrics == {"value": 0.5}
    assert evaluation.problem(1) == "the metrics are a JSON number, not an object of numbers"
    Event.metrics = b"not json"
    assert Evaluation.of(Event()).problem(1) == "the metrics are not JSON"  # type: ignore[arg-type]
    assert report_problem(1, 10, b'{"loss":1e400}') == (
        "metric 'loss' is Infinity, not a finite number")
    assert report_problem(1, 10, {"loss": 0.1}) is None


def test_a_nan_centralized_evaluation_is_left_out_and_results_stay_strict(tmp_path):
    def evaluate(round, weights):
        return float("nan"), {"accuracy": float("inf"), "size": 4.0}

    result = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 1, evaluate_fn=evaluate,
                      train_config={"lr": 0.1, "steps": 5}, results_dir=tmp_path,
                      store=open_store(f"file://{tmp_path / 'store'}"))

    assert result.history.losses_centralized == []
    assert result.history.metrics_centralized == {"size": [(1, 4.0)]}
    record = _strict((tmp_path / "results.json").read_text())
    assert record["metrics_centralized"] == {"size": [[1, 4.0]]}
    assert record["losses_distributed"] and record["losses_distributed"][0][0] == 1


def test_the_examples_limit_is_the_contracts(federation):
    contract, _, _ = federation
    assert contract.contract.functions.MAX_EXAMPLES().call() == MAX_EXAMPLES


def test_one_report_claiming_2_40_examples_cannot_set_the_rounds_loss():
    from fedchain.eth.events import EvaluationReported
    from fedchain.federation.history import report_weights, weighted_metrics

    def report(i: int, n: int, loss: float) -> EvaluationReported:
        return EvaluationReported(block=1, tx=f"0x{i:064x}", log_index=i, round=1,
                                  learner=f"0x{i:040x}", num_examples=n,
                                  metrics=json.dumps({"loss": loss}).encode())

    honest = [report(i, 100, 6.9) for i in range(4)]
    rogue = report(9, 2**40, 0.0)
    assert report_weights([*honest, rogue]) == [100] * 4 + [200]  # 2 × the median claim
    loss, _ = weighted_metrics([*honest, rogue])
    assert loss == pytest.approx(6.9 * 400 / 600)  # not 1e-9: the rogue weighs 200, not 2**40
    loss, _ = weighted_metrics([*honest, report(9, 100, 1e300)])
    assert loss is not None  # a huge value moves the mean, it does not erase the round


def test_the_audit_lists_a_report_counted_for_fewer_examples_than_it_claims(tmp_path):
    chain = connect("embedded", fresh=True)
    store = open_store(f"file://{tmp_path / 'store'}")
    accounts = [chain.account(2 + i) for i in range(3)]
    contract, learners = _one_round_published(chain, store, accounts)
    for c, n in zip(learners, (100, 100, MAX_EXAMPLES), strict=True):
        c.report_evaluation(1, n, b'{"loss":1.0}')

    report = read_federation(contract)
    (capped,) = [c for c in report.rounds[0].checks if c.what == "evaluation"]
    assert capped.learner == accounts[2].address and "counts for 200" in capped.detail
