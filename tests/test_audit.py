"""fedchain audit: the history read from the chain alone, and --verify catching aggregators
that publish something other than what the plan and the included updates give."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fedmodels import LinearLearner, initial_weights

from fedchain.aggregation.strategy import FedAvg, FedAvgM, Update, strategy_from_plan
from fedchain.audit import read_federation
from fedchain.audit.render import write_html
from fedchain.audit.verify import load_plan, verify
from fedchain.cli import main as cli_main
from fedchain.eth.chain import connect
from fedchain.eth.contract import FedChain
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.config import RunConfig
from fedchain.federation.node import LearnerNode
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode, encode
from fedchain.protocol.fetching import fetch_updates
from fedchain.protocol.ledger import Ledger
from fedchain.protocol.params import Plan
from fedchain.protocol.round import differences, run_round
from fedchain.protocol.rules import learner_key
from fedchain.storage import open_store
from fedchain.storage.cid import to_cid

TRAIN = {"lr": 0.1, "steps": 5}


def audit(contract, store):
    """The verified audit report of the federation at `contract`."""
    report = read_federation(contract)
    verify(report, store, load_plan(report, store))
    return report


# --- an honest federation ------------------------------------------------------------


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """A finished 2-round FedAvgM federation (server momentum: stateful) with evaluations."""
    store = open_store(f"file://{tmp_path_factory.mktemp('honest') / 'store'}")
    return simulate(lambda i, n: LinearLearner(i), 3, FedAvgM(), 2, store=store, train_config=TRAIN)


def test_chain_only_read_gives_rounds_updates_evaluations_and_gas(honest):
    report = read_federation(honest.contract)

    assert [r.round for r in report.rounds] == [1, 2]
    assert report.finished_after == 2 and report.open_round is None
    assert sorted(report.learners) == sorted(n.address for n in honest.learners)
    for r, published in zip(report.rounds, honest.rounds, strict=True):
        assert r.global_cid == published.global_cid
        assert sorted(r.included) == sorted(published.included)
        assert all(
            s.included and s.gas and s.block and s.tx.startswith("0x") for s in r.submissions
        )
        assert len(r.evaluations) == 3
        assert r.publish_gas and r.gas > r.publish_gas
    assert report.rounds[0].loss == pytest.approx(honest.history.losses_distributed[0][1])
    assert report.plan is None and not report.verified  # no store given: chain alone


def test_honest_federation_verifies_bit_identically_with_server_state(honest):
    report = audit(honest.contract, honest.store)

    assert report.plan["strategy"]["name"] == "FedAvgM"
    assert [r.status for r in report.rounds] == ["ok", "ok"]
    assert report.failures() == [] and report.exit_status() == 0


def test_run_round_over_the_ledger_reproduces_every_published_round(honest):
    contract, store = honest.contract, honest.store
    ledger = Ledger(contract)
    ledger.refresh()
    plan = Plan.load(store, ledger.genesis.plan_cid.raw)
    strategy = strategy_from_plan(plan.strategy)
    previous = decode(store.get(to_cid(contract.global_model(0))))
    state = None
    for r in (1, 2):
        record = ledger.record(r, refresh=False)
        assert record.previous_model.raw == contract.global_model(r - 1)
        outcome = run_round(plan, strategy, record,
                            lambda subs: fetch_updates(store, subs, max_bytes=plan.max_model_bytes),
                            previous, state)
        # The whole outcome: model, server state, included set, not carried over.
        assert differences(outcome, record.published) == []
        assert outcome.model_cid == record.published.model_cid.cid
        assert outcome.state_cid == record.published.state_cid.cid is not None
        assert ledger.state_after(r) == record.published.state_cid
        previous, state = outcome.model, outcome.state


def test_unfetchable_update_is_reported_as_unfetchable_not_tampering(honest, tmp_path):
    store = open_store(f"file://{tmp_path / 'copy'}")
    shutil.copytree(honest.store.root, store.root, dirs_exist_ok=True)
    lost = read_federation(honest.contract).rounds[1].submissions[0]
    store.path_of(lost.cid).unlink()

    report = audit(honest.contract, store)

    assert [r.status for r in report.rounds] == ["ok", "unfetchable"]
    (check,) = report.unfetchable()
    assert check.round == 2 and check.learner == lost.learner
    assert "ContentNotFound" in check.detail
    assert report.failures() == [] and report.exit_status() == 3


def test_store_serving_wrong_bytes_is_unfetchable_not_tampering(honest, tmp_path):
    store = open_store(f"file://{tmp_path / 'copy'}")
    shutil.copytree(honest.store.root, store.root, dirs_exist_ok=True)
    corrupted = read_federation(honest.contract).rounds[0].global_cid
    path = store.path_of(corrupted)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))

    report = audit(honest.contract, store)

    assert report.failures() == []
    assert any(c.round == 1 and "ContentMismatch" in c.detail for c in report.unfetchable())


def test_html_report_is_self_contained_and_lists_every_round(honest, tmp_path):
    report = audit(honest.contract, honest.store)
    page = write_html(report, tmp_path / "audit.html").read_text()

    assert 'id="round-1"' in page and 'id="round-2"' in page
    assert page.count("data:image/png;base64,") >= 2  # loss, mse and gas plots inline
    assert "http://" not in page and "https://" not in page  # nothing fetched on opening
    # The summary counts the learners; their addresses come after it, folded.
    summary, rest = page.split("<details><summary>3 learners</summary>", 1)
    assert not any(a in summary for a in report.learners)
    assert all(a in rest for a in report.learners)


# --- cheating aggregators ------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    return connect("embedded", fresh=True)


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path / 'store'}")


def round_one_submitted(chain, store, strategy=None, learners=3):
    """A new federation whose learners have all submitted round 1: (aggregator, nodes)."""
    contract, _ = FedChain.deploy(chain, chain.account(0), chain.account(1).address)
    accounts = [chain.account(2 + i) for i in range(learners)]
    contract.add_learners([a.address for a in accounts])
    config = RunConfig(strategy=strategy or FedAvg(), rounds=3, min_updates=1, train=TRAIN,
                       round_timeout=0.2, poll_interval=0.05, verify="off")
    agg = Aggregator(contract.with_account(chain.account(1)), store, config,
                     initial_weights=initial_weights())
    agg.start()
    # Learners that trust the committee (verify="off"): these tests publish wrong models to
    # see what the audit says; verifying learners would dispute and void them first.
    nodes = [
        LearnerNode(LinearLearner(i), contract.with_account(a), store, verify="off")
        for i, a in enumerate(accounts)
    ]
    for n in nodes:
        n.train_round(1)
    return agg, nodes


def submitted_updates(contract, store, round=1):
    """The round's updates in aggregation order, fetched."""
    events = sorted(contract.updates(round), key=lambda e: learner_key(e.learner))
    return [
        Update(e.learner, e.num_examples, decode(store.get(e.model_cid.require()))) for e in events
    ]


def only_failure(report):
    (failure,) = report.failures()
    return failure


def test_global_model_without_one_included_update_is_caught(embedded, store):
    agg, nodes = round_one_submitted(embedded, store)
    updates = submitted_updates(agg.contract, store)
    partial, _ = FedAvg().aggregate(initial_weights(), updates[:2])
    agg.contract.publish_global(1, store.put(encode(partial)), [u.learner for u in updates])

    failure = only_failure(audit(agg.contract, store))

    assert failure.round == 1 and failure.what == "global model"
    assert "differs from recomputation" in failure.detail
    assert "linear.weight: max |Δ|" in failure.detail
    assert all(u.learner in failure.detail for u in updates)  # names the included learners


@pytest.mark.parametrize("cheat", ["uniform weights", "doubled num_examples"])
def test_global_model_weighted_against_the_plan_is_caught(embedded, store, cheat):
    agg, nodes = round_one_submitted(embedded, store)
    updates = submitted_updates(agg.contract, store)
    if cheat == "uniform weights":
        wrong, _ = FedAvg(scaling="uniform").aggregate(initial_weights(), updates)
    else:
        first = updates[0]
        updates[0] = Update(first.learner, 2 * first.num_examples, first.weights)
        wrong, _ = FedAvg().aggregate(initial_weights(), updates)
    agg.contract.publish_global(1, store.put(encode(wrong)), [u.learner for u in updates])

    failure = only_failure(audit(agg.contract, store))

    assert failure.round == 1
    assert "global model differs from recomputation: linear.weight: max |Δ|" in failure.detail
    assert "steps:" not in failure.detail  # the step counter agrees, the weights do not


@pytest.mark.parametrize("content", ["another valid model", "not a model"])
def test_published_cid_of_other_content_is_caught(embedded, store, content):
    agg, nodes = round_one_submitted(embedded, store)
    events = agg.contract.updates(1)
    if content == "another valid model":
        cid = events[0].model_cid.require()  # one learner's update passed off as the average
    else:
        cid = store.put(b"these bytes are not the average of anything")
    agg.contract.publish_global(1, cid, [e.learner for e in events])

    report = audit(agg.contract, store)
    failure = only_failure(report)

    assert failure.round == 1 and failure.what == "global model"
    expected = "differs from recomputation" if content == "another valid model" else "InvalidModel"
    assert expected in failure.detail
    assert report.rounds[0].status == "failed" and report.exit_status() == 1


def test_included_invalid_update_is_caught_and_names_the_learner(embedded, store):
    agg, nodes = round_one_submitted(embedded, store, learners=2)
    rogue = nodes[1]
    honest = submitted_updates(agg.contract, store)
    good, _ = FedAvg().aggregate(initial_weights(), honest)
    agg.contract.publish_global(1, store.put(encode(good)), [u.learner for u in honest])
    nodes[0].train_round(2)
    bad = initial_weights()
    bad["linear.weight"] = np.zeros(5, np.float32)  # wrong shape
    rogue.contract.submit_update(2, store.put(encode(bad)), 50)
    agg.contract.publish_global(2, store.put(encode(good)), [n.address for n in nodes])

    report = audit(agg.contract, store)
    failure = only_failure(report)

    assert report.rounds[0].status == "ok"
    assert (failure.round, failure.learner, failure.what) == (2, rogue.address, "included update")
    assert "shape" in failure.detail


def test_federation_in_progress_audits_published_rounds_and_shows_the_open_one(embedded, store):
    agg, nodes = round_one_submitted(embedded, store)
    agg.run_round(1)
    for n in nodes[:2]:
        n.step()  # evaluates round 1, submits round 2

    report = audit(agg.contract, store)

    assert report.open_round == 2 and report.finished_after is None
    assert [r.status for r in report.rounds] == ["ok", "open"]
    assert len(report.rounds[1].submissions) == 2 and report.rounds[1].global_cid is None
    assert len(report.rounds[0].evaluations) == 2
    assert report.exit_status() == 0


def test_a_valid_update_left_out_fails_the_round(embedded, store):
    agg, nodes = round_one_submitted(embedded, store)
    updates = submitted_updates(agg.contract, store)[:2]
    partial, _ = FedAvg().aggregate(initial_weights(), updates)
    agg.contract.publish_global(1, store.put(encode(partial)), [u.learner for u in updates])

    report = audit(agg.contract, store)

    # The model is the right average of what it includes, but a vote accounts for every
    # submission of its round: leaving a valid one out, with no rule of the plan excluding
    # it, is cheating.
    assert report.rounds[0].status == "failed" and len(report.rounds[0].left_out) == 1
    (failed,) = [c for c in report.rounds[0].checks if c.status == "failed"]
    assert failed.what == "left-out update" and "no rule of the plan excludes it" in failed.detail
    assert report.exit_status() == 1


# --- the command, against a node another process could run ---------------------------


@pytest.mark.anvil
@pytest.mark.xdist_group("anvil")
def test_cli_audit_exits_nonzero_naming_the_tampered_round(anvil_chain, tmp_path, capsys):
    store = open_store(f"file://{tmp_path / 'store'}")
    agg, nodes = round_one_submitted(anvil_chain, store)
    updates = submitted_updates(agg.contract, store)
    wrong, _ = FedAvg(scaling="uniform").aggregate(initial_weights(), updates)
    agg.contract.publish_global(1, store.put(encode(wrong)), [u.learner for u in updates])
    for n in nodes:
        n.step()  # evaluate round 1 and train round 2 on the (wrong) published model
    agg.run_round(2)  # honest again: round 2 checks out against what was published

    out = tmp_path / "audit.json"
    status = cli_main(
        [
            "audit",
            "--chain",
            anvil_chain.url,
            "--contract",
            agg.contract.address,
            "--store",
            store.url,
            "--verify",
            "--json",
            str(out),
        ]
    )

    assert status == 1
    data = json.loads(out.read_text())
    assert [r["status"] for r in data["rounds"]] == ["failed", "ok"]
    assert data["summary"]["failed"] == 1
    printed = capsys.readouterr().out
    assert "✗" in printed and "FAILED: 1 check(s) failed" in printed
    assert "round 1" in printed and "differs from recomputation" in printed


def test_a_submission_the_rounds_seed_did_not_select_fails_the_audit():
    # The contract refuses such a submission (NotSelected); a chain that shows one anyway (a
    # faulty or forged node, a contract bug) fails the audit's re-derivation of the sample.
    from fedchain.audit.read import _selection_checks
    from fedchain.audit.report import RoundAudit, Submission
    from fedchain.eth.events import ChainCid, UpdateSubmitted
    from fedchain.protocol.rules import is_selected

    # A seed as the contract draws it: its low 64 bits are the sample, 6 of 20 indices.
    seed, ppm = bytes(range(24)) + ((20 << 32) | 6).to_bytes(8, "big"), 300_000
    learners = {f"0x{i:040x}": i for i in range(1, 21)}
    picked = [a for a, i in learners.items() if is_selected(seed, i, ppm)]
    skipped = [a for a, i in learners.items() if not is_selected(seed, i, ppm)]
    assert picked and skipped

    def submission(learner: str) -> Submission:
        return Submission(UpdateSubmitted(1, "0x00", 0, 1, learner, ChainCid(b""), 10))

    honest = RoundAudit(1, submissions=[submission(picked[0])])
    _selection_checks(honest, {1: seed}, learners, ppm)
    assert [(c.status, c.detail) for c in honest.checks] == [
        ("note", f"{len(picked)} of 20 learners selected by the round's seed "
                 f"0x{seed.hex()[:16]}…")]

    forged = RoundAudit(1, submissions=[submission(picked[0]), submission(skipped[0])])
    _selection_checks(forged, {1: seed}, learners, ppm)
    [failed] = [c for c in forged.checks if c.status == "failed"]
    assert (failed.what, failed.learner) == ("selection", skipped[0])
    assert forged.status == "failed"
