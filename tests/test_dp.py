"""Sample-level differential privacy: the accountant against dp-accounting and a numerical
integral, DP-SGD's clipping and noise, the budget, and the ε ledger recomputed from the chain."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from fedchain.aggregation.strategy import FedAvg
from fedchain.audit import read_federation
from fedchain.audit.privacy import privacy_ledger
from fedchain.audit.render import print_report, write_html
from fedchain.cli import main as cli_main
from fedchain.errors import ConfigError, PrivacyBudgetExceeded
from fedchain.federation.learner import TorchLearner
from fedchain.federation.node import LearnerNode, metrics_json
from fedchain.federation.simulation import simulate
from fedchain.privacy.accountant import (
    ORDERS,
    _log_a_fractional,
    epsilon,
    noise_for_epsilon,
    rdp_step,
)
from fedchain.privacy.dpsgd import (
    DPConfig,
    PrivacyLedger,
    SecureRandom,
    clipped_gradient_sum,
    dp_sgd,
    recompute,
)

REFERENCE = Path(__file__).parent / "data" / "dp_reference.json"


# --- the accountant ------------------------------------------------------------------


def _reference_cases() -> list[dict[str, Any]]:
    return json.loads(REFERENCE.read_text())["cases"]


@pytest.mark.parametrize("case", _reference_cases(),
                         ids=lambda c: f"sigma{c['noise_multiplier']}-q{c['q']:.3g}-T{c['steps']}")
def test_epsilon_matches_dp_accounting(case: dict[str, Any]) -> None:
    """ε for known parameters equals dp-accounting's RdpAccountant (scripts/dp_reference.py)
    to 3 significant digits in DP-SGD's regimes. Where dp-accounting drops orders whose series
    it did not sum within 1,000 terms, or its fractional-order sums lose precision (σ below
    0.8), its ε is an upper bound: fedchain's, the exact series (checked against a numerical
    integral below), is no larger."""
    mine = epsilon(case["noise_multiplier"], case["q"], case["steps"], case["delta"])
    if case["orders_dropped"] == 0 and case["noise_multiplier"] >= 0.8:
        assert mine == pytest.approx(case["epsilon"], rel=5e-4)
    else:
        assert mine <= case["epsilon"] * (1 + 1e-9)
        assert mine >= 0.8 * case["epsilon"]  # the orders it kept bound the optimum closely


def test_the_reference_covers_the_usual_regimes() -> None:
    exact = [c for c in _reference_cases()
             if c["orders_dropped"] == 0 and c["noise_multiplier"] >= 0.8]
    assert len(exact) >= 6
    # Abadi et al.'s MNIST setting (σ 1.1, lots of 256 of 60,000, 60 epochs): ε ≈ 2.6.
    assert epsilon(1.1, 256 / 60_000, 60 * 60_000 // 256, 1e-5) == pytest.approx(2.597, abs=1e-3)


@pytest.mark.parametrize(("q", "sigma", "alpha"), [
    (0.2, 0.6, 1.1), (0.2, 0.6, 1.5), (0.167, 1.0, 1.3), (0.05, 0.8, 2.5), (0.01, 1.0, 7.3),
    (0.001, 0.5, 3.3),
])
def test_fractional_orders_match_a_numerical_integral(q: float, sigma: float,
                                                      alpha: float) -> None:
    """A_α = E_{z∼N(0,σ²)}[((1−q) + q·exp((2z−1)/2σ²))^α], integrated numerically."""
    from scipy import integrate

    def density(z: float) -> float:
        ratio = (1 - q) + q * math.exp((2 * z - 1) / (2 * sigma ** 2))
        gauss = math.exp(-z * z / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
        return gauss * ratio ** alpha

    value, _ = integrate.quad(density, -60 * sigma, 60 * sigma, limit=500, points=[0, 0.5, 1])
    assert _log_a_fractional(q, sigma, alpha) == pytest.approx(math.log(value), rel=1e-6)


def test_no_sampling_is_the_gaussian_mechanism_and_zero_steps_cost_nothing() -> None:
    assert rdp_step(1.0, 2.0) == tuple(a / 8 for a in ORDERS)
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon(1.0, 0.1, 200, 1e-5) > epsilon(1.0, 0.1, 100, 1e-5)
    assert epsilon(2.0, 0.1, 100, 1e-5) < epsilon(1.0, 0.1, 100, 1e-5)


def test_noise_for_epsilon_is_the_smallest_within_the_target() -> None:
    sigma = noise_for_epsilon(3.0, 0.1, 300, 1e-5)
    assert epsilon(sigma, 0.1, 300, 1e-5) <= 3.0
    assert epsilon(sigma - 2e-4, 0.1, 300, 1e-5) > 3.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"noise_multiplier": 0, "max_grad_norm": 1}, "noise_multiplier must be a positive"),
    ({"noise_multiplier": 1, "max_grad_norm": -1}, "max_grad_norm must be a positive"),
    ({"noise_multiplier": 1, "max_grad_norm": 1, "delta": 0}, "delta must be between"),
    ({"noise_multiplier": 1, "max_grad_norm": 1, "epsilon_budget": 0}, "epsilon_budget"),
    ({"noise_multiplier": 1, "max_grad_norm": 1, "batch_size": 0}, "batch_size must be"),
])
def test_dp_config_refuses_what_gives_no_privacy(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DPConfig(**kwargs)


# --- DP-SGD --------------------------------------------------------------------------


def _mlp(inputs: int = 6, hidden: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _record_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x[None]), y[None]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_clipping_bounds_every_record_and_leaves_small_gradients_alone() -> None:
    model = _mlp()
    x = torch.randn(5, 6) * 0.01
    x[2] = 1000.0  # one record with an enormous gradient
    y = torch.tensor([0, 1, 2, 0, 1])
    grads = [_record_gradient(model, x[i], y[i]) for i in range(5)]
    norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in record)) for record in grads]
    clip = (sorted(norms)[0] + sorted(norms)[1]) / 2  # one record below the bound, four above
    names = [k for k, _ in model.named_parameters()]

    sums, measured = clipped_gradient_sum(model, nn.functional.cross_entropy, x, y, clip)

    assert measured.tolist() == pytest.approx(norms, rel=1e-4)  # per-record, not per-batch
    expected = [sum(g[j] * min(1.0, clip / n) for g, n in zip(grads, norms, strict=True))
                for j in range(len(names))]
    for name, want in zip(names, expected, strict=True):
        assert torch.allclose(sums[name], want, atol=1e-5)
    # The outlier alone contributes a gradient of norm exactly the bound, not its own.
    alone, _ = clipped_gradient_sum(model, nn.functional.cross_entropy, x[2:3], y[2:3], clip)
    assert math.sqrt(sum(float(g.pow(2).sum()) for g in alone.values())) == pytest.approx(
        clip, rel=1e-5)
    assert norms[2] > 100 * clip
    # A record below the bound contributes its own gradient.
    small = min(range(5), key=lambda i: norms[i])
    assert norms[small] < clip
    own, _ = clipped_gradient_sum(model, nn.functional.cross_entropy, x[small:small + 1],
                                  y[small:small + 1], clip)
    for name, g in zip(names, grads[small], strict=True):
        assert torch.allclose(own[name], g, atol=1e-6)


def test_a_dp_sgd_step_adds_noise_of_sigma_times_the_clip_norm() -> None:
    """One step over every record (q = 1, so the sample is known): the weights move by
    −lr·(Σ clipped gradients + noise) / records, and the noise is N(0, (σC)²) per coordinate."""
    torch.manual_seed(1)
    model = nn.Linear(100, 100)  # 10,100 coordinates of noise
    x, y = torch.randn(50, 100), torch.randint(0, 100, (50,))
    data = TensorDataset(x, y)
    dp = DPConfig(noise_multiplier=1.5, max_grad_norm=0.2, batch_size=50)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    sums, _ = clipped_gradient_sum(model, nn.functional.cross_entropy, x, y, 0.2)

    dp_sgd(model, data, dp, q=1.0, steps=1, config={"lr": 1.0}, rng=SecureRandom())

    noise = torch.cat([((before[k] - p.detach()) * 50 - sums[k]).flatten()
                       for k, p in model.named_parameters()]).double()
    assert float(noise.std()) == pytest.approx(1.5 * 0.2, rel=0.05)
    assert abs(float(noise.mean())) < 0.02


def test_secure_random_streams_are_private_and_gaussian() -> None:
    a, b = SecureRandom().normal(100_000), SecureRandom().normal(100_000)
    assert not np.array_equal(a, b)  # a fresh key each
    assert abs(a.mean()) < 0.02 and a.std() == pytest.approx(1.0, abs=0.02)
    kept = SecureRandom().poisson_sample(100_000, 0.1)
    assert len(kept) == pytest.approx(10_000, abs=400)


def test_batch_norm_is_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    data = TensorDataset(torch.randn(20, 6), torch.randint(0, 3, (20,)))
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        dp_sgd(model, data, DPConfig(1.0, 1.0, batch_size=5), 0.25, 1, {}, SecureRandom())


def test_the_ledger_refuses_the_round_that_would_pass_the_budget() -> None:
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=10)
    after_one = epsilon(1.0, 0.1, 10, 1e-5)
    ledger = PrivacyLedger(DPConfig(1.0, 1.0, batch_size=10, epsilon_budget=after_one * 1.001),
                           records=100)
    ledger.check(1, 10)
    ledger.record(1, 10)
    with pytest.raises(PrivacyBudgetExceeded, match="past the budget"):
        ledger.check(2, 10)
    report = ledger.report(1)
    assert recompute(report) == report["dp_epsilon"] == pytest.approx(after_one)
    assert PrivacyLedger(dp, 100).report(1)["dp_total_steps"] == 0


def test_privacy_fields_are_reported_exactly_and_always_fit() -> None:
    privacy = PrivacyLedger(DPConfig(1.234567891, 1.0, delta=1e-7, batch_size=7), 383)
    privacy.record(1, 55)
    report = privacy.report(1)
    many = {f"metric_{i:03d}": 0.123456789 for i in range(100)}
    body = json.loads(metrics_json(0.5, many, report))
    assert len(metrics_json(0.5, many, report)) <= 1024
    assert {k: body[k] for k in report} == report  # not rounded to 6 decimals
    assert body["dp_delta"] == 1e-7 and body["dp_q"] == 7 / 383


# --- a federation --------------------------------------------------------------------

RECORDS, BATCH = 60, 20


def _data(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(RECORDS, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _evaluate(model: nn.Module, data: TensorDataset, config: Any) -> tuple[float, dict[str, float]]:
    x, y = data.tensors
    logits = model(x)
    return (float(nn.functional.cross_entropy(logits, y)),
            {"accuracy": float((logits.argmax(1) == y).float().mean())})


class LyingLearner(TorchLearner):
    """Trains with DP-SGD but reports half the ε its parameters give."""

    def privacy_report(self, round: int) -> dict[str, float] | None:
        report = dict(super().privacy_report(round) or {})
        report["dp_epsilon"] /= 2
        return report


TWO_ROUNDS = epsilon(1.0, BATCH / RECORDS, 6, 1e-5)  # 1 epoch at q = 1/3: 3 steps a round


def _make_learner(i: int, n: int) -> TorchLearner:
    budget = TWO_ROUNDS * 1.001 if i == 0 else math.inf  # learner 0 can afford two rounds
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=BATCH,
                  epsilon_budget=budget)
    cls = LyingLearner if i == 1 else TorchLearner
    return cls(_mlp(), None, _evaluate, _data(i), _data(100 + i), dp=dp)


def _run(chain: str, tmp_path: Path) -> Any:
    # Round 3 does not wait for learner 0's update: its privacy report of round 2, posted as
    # round 3 runs, says its budget is spent, so the aggregator closes on the other two. (If
    # it waited out round_timeout instead, the simulation would pass its own timeout.)
    return simulate(_make_learner, 3, FedAvg(), rounds=3, chain=chain, round_timeout=900,
                    store=f"file://{tmp_path / 'store'}", timeout=600,
                    train_config={"lr": 0.5, "epochs": 1}, results_dir=tmp_path / "out")


def test_a_learner_past_its_budget_stops_and_the_ledger_matches_its_reports(tmp_path):
    result = _run("embedded", tmp_path)

    # Learner 0 trained rounds 1 and 2 only; the federation went on with the other two.
    assert [len(r.included) for r in result.rounds] == [3, 3, 2]
    spent, liar, honest = result.learners
    assert spent.submitted == [1, 2] and spent.budget_spent == 3
    assert liar.submitted == [1, 2, 3] and honest.submitted == [1, 2, 3]
    assert spent.learner.privacy.epsilon() == pytest.approx(TWO_ROUNDS)
    assert spent.learner.privacy.epsilon() <= spent.learner.dp.epsilon_budget
    # The evaluations go on: every learner reported on every round.
    assert spent.reported == liar.reported == honest.reported == [1, 2, 3]

    report = read_federation(result.contract, gas=False)
    ledgers = {p.learner: p for p in report.privacy}
    assert set(ledgers) == {n.address for n in result.learners}
    for node in (spent, honest):
        ledger = ledgers[node.address]
        assert ledger.ok, [e.problems for e in ledger.entries]
        own = node.learner.privacy
        assert [e.round for e in ledger.entries] == [1, 2, 3]
        for e in ledger.entries:
            assert e.recomputed == pytest.approx(own.epsilon(own.total(e.round)), rel=1e-3)
            assert e.recomputed == pytest.approx(e.claimed, rel=1e-3)
    assert [e.submitted for e in ledgers[spent.address].entries] == [True, True, False]
    assert [e.total_steps for e in ledgers[spent.address].entries] == [3, 6, 6]
    assert ledgers[honest.address].entries[-1].total_steps == 9
    # The liar is flagged in every round, and only the liar.
    failed = [c for c in report.checks if c.status == "failed"]
    assert failed and {c.learner for c in failed} == {liar.address}
    assert {c.round for c in failed} == {1, 2, 3}
    assert "claims epsilon" in failed[0].detail
    assert report.exit_status() == 1
    # The privacy keys are no metric of the model: the distributed metrics leave them out.
    assert not any(k.startswith("dp_") for k in result.history.metrics_distributed)
    # A learner started again takes its spent steps back from its reports on chain.
    fresh = _make_learner(2, 3)
    again = LearnerNode(fresh, honest.contract, result.store)
    assert again.restore_privacy() == 9
    assert fresh.privacy.epsilon() == pytest.approx(honest.learner.privacy.epsilon())
    assert fresh.privacy.report(4)["dp_total_steps"] == 9
    # The audit's terminal and HTML reports show the ledger.
    console = Console(record=True, width=200)
    print_report(report, console)
    shown = console.export_text()
    assert "differential privacy" in shown and "claims epsilon" in shown
    html = write_html(report, tmp_path / "audit.html").read_text()
    assert "differential privacy" in html and liar.address in html


def test_the_dp_job_file_makes_dp_learners_within_its_budget() -> None:
    from examples.cnn import task
    from fedchain.cli.job import Job
    from fedchain.privacy.dpsgd import sampling_rate, steps_for

    job = Job.load(Path(__file__).parents[1] / "examples" / "cnn" / "fedchain-dp.toml")
    learners = job.learners or 3
    try:
        made = [task.make_learner(i, learners, **job.learner_options) for i in range(learners)]
    finally:
        task.SETTINGS.reset()
    for learner in made:
        assert learner.dp is not None and learner.privacy is not None
        # The job's own network, a tenth of Net's parameters, with all of a learner's records.
        assert isinstance(learner.model, task.DPNet)
        assert sum(p.numel() for p in learner.model.parameters()) < 10_000
        assert learner.num_train >= 479
        q = sampling_rate(learner.dp.batch_size, learner.num_train)
        assert q == learner.privacy.q == 1.0  # every step sees every record
        steps = (job.rounds or 10) * steps_for(job.train, q)
        # The job's σ keeps all its rounds within each learner's budget: none has to stop.
        assert epsilon(learner.dp.noise_multiplier, q, steps, learner.dp.delta) <= \
            learner.dp.epsilon_budget == 8.0


def test_the_cnn_examples_model_option_keeps_net_by_default_and_refuses_unknown_names() -> None:
    from examples.cnn import task

    try:
        assert isinstance(task.make_learner(0, 3).model, task.Net)
        dp = task.initial_weights(model="dp")
        assert set(dp) == set(task.DPNet().state_dict())
        with pytest.raises(ConfigError, match="model must be one of lenet, dp"):
            task.make_learner(0, 3, model="resnet")
    finally:
        task.SETTINGS.reset()


def test_the_ledger_flags_a_learner_past_its_budget_and_broken_totals() -> None:
    base = {"dp_sigma": 1.0, "dp_q": 0.1, "dp_delta": 1e-5, "dp_budget": 10.0}

    def report(round: int, steps: int, total: int, **extra: float) -> dict[str, float]:
        body = {**base, "dp_steps": steps, "dp_total_steps": total, **extra}
        return {**body, "dp_epsilon": epsilon(1.0, 0.1, total, 1e-5)}

    rounds = [
        (1, [("0xA", report(1, 10, 10))], ["0xA"]),
        (2, [("0xA", report(2, 0, 5))], ["0xA"]),  # fewer in all; an update with no steps
        (3, [("0xA", report(3, 400, 405))], ["0xA"]),  # past a budget of 10
        (4, [("0xA", report(4, 0, 405, dp_sigma=2.0) | {"dp_epsilon": 0.1})], []),
        (5, [("0xA", {"dp_sigma": "much"})], ["0xA"]),
        (6, [("0xB", {"loss": 1.0})], ["0xA", "0xB"]),
    ]
    (ledger,) = privacy_ledger(rounds)
    problems = {e.round: " | ".join(e.problems) for e in ledger.entries}
    assert problems[1] == ""
    assert "fewer than the 10 reported by round 1" in problems[2]
    assert "reports no DP-SGD step" in problems[2]
    assert "past its declared budget 10" in problems[3]
    assert "noise multiplier changed since round 3" in problems[4]
    assert "claims epsilon 0.1" in problems[4]
    assert ledger.malformed == [(5, "dp_sigma is 'much', not a finite number")]
    assert ledger.unreported == [6]
    assert not ledger.ok


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_fedchain_privacy_recomputes_every_learners_reports(anvil_chain, tmp_path, capsys):
    result = _run(anvil_chain.url, tmp_path)
    out = tmp_path / "privacy.json"

    status = cli_main(["privacy", "--chain", anvil_chain.url, "--contract",
                       result.contract.address, "--json", str(out)])

    assert status == 1  # learner 1 claims half its epsilon
    data = {p["learner"]: p for p in json.loads(out.read_text())["learners"]}
    spent, liar, honest = result.learners
    assert not data[liar.address]["ok"] and data[spent.address]["ok"] and data[honest.address]["ok"]
    for node in (spent, honest):
        own = node.learner.privacy
        assert [e["recomputed_epsilon"] for e in data[node.address]["entries"]] == pytest.approx(
            [own.epsilon(own.total(r)) for r in (1, 2, 3)], rel=1e-3)
    assert data[spent.address]["epsilon"] <= data[spent.address]["budget"]
    printed = capsys.readouterr().out
    assert "claims epsilon" in printed and liar.address in printed


def test_a_learner_whose_reports_show_its_budget_spent_is_not_waited_for() -> None:
    from fedchain.privacy.dpsgd import budget_spent

    def report(total: int, steps: int, budget: float | None = 8.0) -> dict[str, float]:
        body = {"dp_sigma": 1.1, "dp_q": 0.05, "dp_steps": float(steps),
                "dp_total_steps": float(total), "dp_delta": 1e-5, "dp_epsilon": 0.0}
        if budget is not None:
            body["dp_budget"] = budget
        return body

    per_round = 100
    rounds = max(k for k in range(1, 200) if epsilon(1.1, 0.05, k * per_round, 1e-5) <= 8.0)
    done = rounds * per_round
    assert budget_spent([report(done - per_round, per_round), report(done, per_round)])
    assert not budget_spent([report(done - per_round, per_round)])  # one round left
    # The round it refused reports 0 steps: the last positive round's steps count.
    assert budget_spent([report(done, per_round), report(done, 0)])
    # Nothing to tell: no budget, no steps, or a report that does not parse.
    assert not budget_spent([report(done, per_round, budget=None)])
    assert not budget_spent([report(done, 0)])
    assert not budget_spent([{"dp_budget": 1.0, "dp_steps": "x"}])
    assert not budget_spent([])
