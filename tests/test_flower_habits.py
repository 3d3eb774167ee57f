"""What a Flower user reaches for: a per-round train config, FedProx's proximal term, custom
aggregation of the learners' evaluation reports, and progress printed by `simulate`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fedmodels import LinearLearner

from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg, FedProx
from fedchain.errors import ConfigError
from fedchain.federation.config import RunConfig
from fedchain.federation.learner import TorchLearner
from fedchain.federation.results import fill_distributed
from fedchain.federation.simulation import simulate
from fedchain.protocol.params import Plan
from fedchain.storage.unixfs import cid_of


class RecordingLearner(LinearLearner):
    """A LinearLearner that notes the train config of every round it trains."""

    seen: dict[int, list[dict]] = {}
    lock = threading.Lock()

    def __init__(self, learner_id: int) -> None:
        super().__init__(learner_id)
        self.learner_id = learner_id

    def train(self, weights, config):
        with self.lock:
            self.seen.setdefault(self.learner_id, []).append(dict(config))
        return super().train(weights, config)


def test_learners_see_the_plans_per_round_schedule_and_fedprox_mu():
    RecordingLearner.seen = {}
    config = RunConfig(train_schedule={"lr": {"2": 0.05, "3": 0.02}, "steps": {"3": 2}})
    result = simulate(lambda i, n: RecordingLearner(i), 3, FedProx(proximal_mu=0.25), 3,
                      config=config, train_config={"lr": 0.1, "steps": 5}, min_updates=3)
    assert len(result.rounds) == 3
    plan = Plan.load(result.store, result.contract.plan())
    assert plan.train_schedule == {"lr": {"2": 0.05, "3": 0.02}, "steps": {"3": 2}}
    assert sorted(RecordingLearner.seen) == [0, 1, 2]
    for configs in RecordingLearner.seen.values():
        by_round = {c["round"]: (c["lr"], c["steps"], c["proximal_mu"]) for c in configs}
        assert by_round == {1: (0.1, 5, 0.25), 2: (0.05, 5, 0.25), 3: (0.02, 2, 0.25)}


def test_a_plan_without_schedule_keeps_its_cid_and_a_bad_schedule_is_refused():
    plain = Plan(strategy=ROBUST_FEDAVG.to_plan(), rounds=3, min_updates=2)
    # SPEC §6.2's example plans: the field added later changes no existing plan's CID
    assert str(cid_of(plain.to_json())) == \
        "bafkreid2lp75eatgp4asqnzmlhqvbripztfq6t4dtgj4zhlb2ttxshh4be"
    former = Plan(strategy=FedAvg(clip=2.0, examples_cap=2.0).to_plan(), rounds=3,
                  min_updates=2)
    assert str(cid_of(former.to_json())) == \
        "bafkreifirswhm5shclcbhgulihtlczvp6to7n23chj2355yuslq23myufa"
    assert b"train_schedule" not in plain.to_json()
    for bad in ({"lr": {"0": 1}}, {"lr": {"03": 1}}, {"lr": [0.1]}, {"lr": {"x": 1}}):
        with pytest.raises(ConfigError, match="train_schedule must be"):
            RunConfig(train_schedule=bad)
    plan = Plan(strategy=ROBUST_FEDAVG.to_plan(), rounds=9, train={"lr": 0.1},
                train_schedule={"lr": {"4": 0.01}, "momentum": {"2": 0.9}})
    assert [plan.train_config(r).get("lr") for r in (1, 3, 4, 9)] == [0.1, 0.1, 0.01, 0.01]
    assert "momentum" not in plan.train_config(1) and plan.train_config(2)["momentum"] == 0.9
    assert Plan.from_json(plan.to_json()) == plan


def test_torch_learner_applies_the_proximal_term_only_under_fedprox():
    torch = pytest.importorskip("torch")

    def train(model, data, config):
        # plain SGD towards a target far from the global model
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(40):
            opt.zero_grad()
            loss = ((model(data) - 10.0) ** 2).mean()
            loss.backward()
            opt.step()
        return {"loss": float(loss.detach())}

    def evaluate(model, data, config):
        return 0.0, {}

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    data = torch.ones(8, 2)
    # declaring no train keys: proximal_mu is fedchain's own key, as round is
    learner = TorchLearner(model, train, evaluate, data, data, train_keys={})
    start = learner.get_weights()

    def drift(config):
        new = learner.train(start, config).weights
        return sum(float(np.sum((new[k].astype(np.float64) - start[k]) ** 2)) for k in start)

    free = drift({})
    assert drift({"proximal_mu": 0.0}) == free
    # the proximal term holds the weights nearer the global model, the more the larger mu:
    # here (one output, 3 parameters) at (6 / (6 + mu))² of the free squared drift
    some, strong = drift({"proximal_mu": 2.0}), drift({"proximal_mu": 15.0})
    assert strong < some < free and strong < free / 4
    # the hooks are gone after training: the next plain round drifts as far as before
    assert drift({}) == free


def test_a_custom_metrics_aggregation_replaces_the_weighted_mean():
    seen = []

    def worst(reports):
        seen.append(reports)
        return {"loss": max(m["loss"] for _, m in reports), "reports": float(len(reports)),
                "note": "not a number"}

    result = simulate(lambda i, n: LinearLearner(i), 3, None, 2, min_updates=3,
                      metrics_aggregation=worst)
    history = result.history
    assert len(seen) == 2 and all(len(r) == 3 for r in seen)
    assert all(isinstance(n, int) and "mse" in m for r in seen for n, m in r)
    assert dict(history.losses_distributed) == {
        rnd: max(m["loss"] for _, m in r) for rnd, r in zip((1, 2), seen, strict=True)}
    assert history.metrics_distributed == {"reports": [(1, 3.0), (2, 3.0)]}
    # the default, for comparison: the example-weighted mean, never above the worst
    history.metrics_aggregation = None
    fill_distributed(history, result.contract)
    weighted = dict(history.losses_distributed)
    assert all(weighted[r] <= max(m["loss"] for _, m in seen[r - 1]) for r in (1, 2))
    assert set(history.metrics_distributed) == {"mse"}


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
{setup}
from fedchain import simulate
from fedmodels import LinearLearner
simulate(lambda i, n: LinearLearner(i), 3, None, 2, min_updates=3)
print("done")
"""


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(tests=str(Path(__file__).parent), setup=setup)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "FEDCHAIN_PROGRESS": "0"})


def test_simulate_from_python_prints_a_line_a_round_unless_logging_is_set_up():
    plain = _run("")
    assert plain.returncode == 0 and plain.stdout.strip() == "done", plain.stderr
    lines = plain.stderr.splitlines()
    for round in (1, 2):
        assert len([x for x in lines if f"[ROUND {round}] received 3 updates" in x]) == 1, \
            plain.stderr
    assert any("federation finished after round 2" in x for x in lines), plain.stderr
    assert len(lines) < 20, plain.stderr  # the aggregator's lines, not every learner's
    configured = _run("import logging; logging.basicConfig(level=logging.WARNING)")
    assert configured.returncode == 0, configured.stderr
    assert "[ROUND" not in configured.stderr
