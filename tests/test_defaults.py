"""Byzantine-tolerant defaults: what `simulate`, job files and the examples run when told
nothing, and a default federation that one rogue learner of five cannot stop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fedmodels import TRUE_W, LinearLearner, initial_weights

from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg
from fedchain.audit import audit_federation
from fedchain.cli.job import Job
from fedchain.federation.config import RunConfig
from fedchain.federation.learner import TrainResult
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode
from fedchain.protocol.rules import default_min_updates
from fedchain.storage import open_store
from fedchain.storage.cid import CID

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"lr": 0.1, "steps": 5}


def test_default_quorum_is_two_thirds_of_the_learners_at_least_one():
    assert [default_min_updates(n) for n in (1, 2, 3, 4, 5, 6, 10, 100)] == [
        1, 2, 2, 3, 4, 4, 7, 67
    ]  # fmt: skip
    plan = RunConfig(strategy=FedAvg()).plan(5)
    assert plan.min_updates == 4
    assert RunConfig(strategy=FedAvg(), min_updates=5).plan(5).min_updates == 5


def test_a_job_without_strategy_runs_robust_fedavg_and_plain_fedavg_stays_one_line_away(
    tmp_path,
):
    default = Job.load(None).run_config()
    assert default.strategy == ROBUST_FEDAVG
    assert default.plan(3).min_updates == 2
    job = tmp_path / "job.toml"
    job.write_text('[strategy]\nname = "FedAvg"\n\n[run]\nlearners = 5\n')
    config = Job.load(job).run_config()
    assert config.strategy == FedAvg() and config.strategy.clip is None
    assert config.plan(5).min_updates == 4


#: Example jobs that average plainly, on purpose: the DP job's utility table (bench/dp.py) is
#: measured with plain FedAvg over its three learners' noisy updates; secure aggregation's
#: jobs (fedchain-ddp.toml: with learner-level DP) sum masked updates, which no bound of the
#: plaintext strategies can see (SPEC §14.11).
PLAIN = {"fedchain-dp.toml", "fedchain-secagg.toml", "fedchain-secagg-devnet.toml",
         "fedchain-ddp.toml"}


def test_secure_example_jobs_plan_secure_rounds():
    paths = [*ROOT.glob("examples/*/fedchain-secagg*.toml"),
             *ROOT.glob("examples/*/fedchain-ddp.toml")]
    assert any(p.name == "fedchain-ddp.toml" for p in paths)
    for path in sorted(paths):
        job = Job.load(path)
        plan = job.run_config().plan(job.learners)
        assert plan.privacy == "secagg" and plan.strategy["name"] == "FedAvg", path
        if path.name == "fedchain-ddp.toml":  # [protocol.secagg.dp] reaches the plan
            assert plan.secagg is not None and set(plan.secagg["dp"]) >= {
                "clip_norm", "noise_multiplier", "min_learners", "budget"}


@pytest.mark.parametrize("path", sorted(p for p in ROOT.glob("examples/*/fedchain*.toml")
                                        if p.name not in PLAIN),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_job_publishes_bounded_fedavg_and_the_default_quorum(path):
    # The examples' jobs keep the bounds their READMEs' CIDs and transcripts were computed
    # with (the default before `align`): a [strategy] section is taken as written.
    job = Job.load(path)
    plan = job.run_config().plan(job.learners)
    assert plan.strategy == FedAvg(clip=2.0, examples_cap=2.0).to_plan()
    assert plan.strategy == {**ROBUST_FEDAVG.to_plan(), "params": {
        k: v for k, v in ROBUST_FEDAVG.to_plan()["params"].items() if k != "align"}}
    assert plan.min_updates == default_min_updates(job.learners) < job.learners


class Times1e30(LinearLearner):
    """Trains honestly, then sends its weights × 1e30 (finite in float32)."""

    def train(self, weights, config):
        result = super().train(weights, config)
        huge = {**result.weights, "linear.weight": result.weights["linear.weight"] * 1e30}
        return TrainResult(huge, result.num_examples)


def test_one_1e30_learner_of_five_neither_crashes_nor_stalls_a_default_simulation(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    rounds = 3

    def make(i, n):
        return Times1e30(i) if i == 4 else LinearLearner(i)

    result = simulate(make, 5, rounds=rounds, train_config=TRAIN, store=store)

    assert [r.round for r in result.rounds] == list(range(1, rounds + 1))
    rogue = result.learners[4].address
    for r in result.rounds:
        assert len(r.included) == 5, f"round {r.round} did not aggregate every update"
        assert rogue in r.included  # clipped, not refused: every round aggregates
    final = decode(store.get(CID.parse(result.rounds[-1].global_cid)))["linear.weight"]
    assert np.all(np.isfinite(final))
    # The honest learners' least squares converge towards TRUE_W as if the rogue were not there.
    assert float(np.max(np.abs(final - TRUE_W))) < 0.5
    assert all(math.isfinite(loss) for _, loss in result.history.losses_distributed)
    # The plan on chain records the bounds and the quorum, and the audit re-derives every round.
    report = audit_federation(result.contract, store)
    assert report.plan["strategy"] == ROBUST_FEDAVG.to_plan()
    assert report.plan["min_updates"] == 4
    assert report.exit_status() == 0
    assert [r.status for r in report.rounds] == ["ok"] * rounds


def test_plain_fedavg_is_available_to_simulate_and_recorded_without_bounds(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    result = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 1, train_config=TRAIN,
                      store=store, min_updates=3, initial_weights=initial_weights())
    report = audit_federation(result.contract, store)
    assert report.plan["strategy"] == {"name": "FedAvg", "params": {
        "scaling": "num_examples", "accumulator": "float32"}}
    assert report.plan["min_updates"] == 3
    assert report.exit_status() == 0
