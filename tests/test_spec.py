"""SPEC.md is enough to re-derive fedchain's rounds, bit for bit.

Four witnesses agree on every test vector of tests/data/spec_vectors/ (SPEC §12): the vector's
expected outcome, tests/spec_reference.py (written from SPEC.md alone, with the standard
library and numpy), fedchain's strategies driven by the round rule (`_fedchain_outcome`), and
scripts/spec_vectors.py --check (fedchain's aggregator path regenerating them). A real
federation's rounds, run through the chain and the store, are re-derived by the reference.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import spec_reference as ref
from fedmodels import LinearLearner

from fedchain.aggregation.strategy import FedAdam
from fedchain.errors import InvalidModel
from fedchain.federation.simulation import simulate
from fedchain.model.codec import decode, encode
from fedchain.protocol.ledger import Ledger
from fedchain.protocol.params import Plan
from fedchain.protocol.rules import learner_key
from fedchain.storage import cid_of
from fedchain.storage.cid import to_cid
from fedchain.storage.local import LocalStore

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "data" / "spec_vectors"
NAMES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())


def _load(vector_dir: Path) -> dict[str, Any]:
    return json.loads((vector_dir / "vector.json").read_text())


def _outcome(model_cid: str, state_cid: str | None, included: list[str], carried: str | None,
             rejected: list[tuple[str, str]]) -> dict[str, Any]:
    return {"model_cid": model_cid, "state_cid": state_cid, "included": included,
            "carried_over": carried,
            "rejected": [{"learner": a, "reason": r}
                         for a, r in sorted(rejected, key=lambda x: learner_key(x[0]))]}


# --- the two implementations ------------------------------------------------------------


def _reference_outcome(vector_dir: Path) -> dict[str, Any]:
    """The vector's outcome by tests/spec_reference.py (SPEC.md alone)."""
    v = _load(vector_dir)
    subs = [ref.Submission(s["learner"], s["num_examples"], s["staleness"],
                           (vector_dir / s["file"]).read_bytes()) for s in v["submissions"]]
    o = ref.run_round(
        (vector_dir / v["previous"]).read_bytes(),
        (vector_dir / v["state"]).read_bytes() if v["state"] else None,
        v["strategy"], subs, min_updates=v["min_updates"],
        exclude_duplicates=v["exclude_duplicates"], max_model_bytes=v["max_model_bytes"],
        removed=v["removed"], timed_out=v["timed_out"], excused=v.get("excused", []))
    return _outcome(o.model_cid, o.state_cid, o.included, o.carried_over, o.rejected)


def _load_script() -> Any:
    """scripts/spec_vectors.py as a module (the vectors' generator and fedchain's adapter)."""
    path = ROOT / "scripts" / "spec_vectors.py"
    loaded = importlib.util.spec_from_file_location("spec_vectors_script", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    sys.modules[loaded.name] = module  # its dataclasses look their module up
    try:
        loaded.loader.exec_module(module)
    finally:
        del sys.modules[loaded.name]
    return module


def _fedchain_outcome(vector_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The vector's outcome by `fedchain.protocol.round.run_round`, the function the
    aggregator, the learners and the audit run, over the vector's files in a LocalStore."""
    script = _load_script()
    vector = script.vectors()[vector_dir.name]
    return script.outcome(vector, LocalStore(tmp_path / "store"))


# --- (a) the reference, (b) fedchain, re-derive every vector --------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_reference_implementation_rederives_the_vector(name):
    vector_dir = VECTORS / name
    assert _reference_outcome(vector_dir) == _load(vector_dir)["expected"]


@pytest.mark.parametrize("name", NAMES)
def test_fedchain_rederives_the_vector(name, tmp_path):
    vector_dir = VECTORS / name
    assert _fedchain_outcome(vector_dir, tmp_path) == _load(vector_dir)["expected"]


def test_the_vectors_cover_the_spec():
    loaded = [_load(VECTORS / n) for n in NAMES]
    strategies = {json.dumps(v["strategy"], sort_keys=True) for v in loaded}
    names = {v["strategy"]["name"] for v in loaded}
    assert names == {"FedAvg", "FedMedian", "FedTrimmedAvg", "Krum", "FedAvgM", "FedAdam",
                     "FedAdagrad", "FedYogi"}
    robust = {"name": "FedAvg", "params": {"accumulator": "float32", "clip": 2.0,
                                           "examples_cap": 2.0, "scaling": "num_examples"}}
    assert json.dumps(robust, sort_keys=True) in strategies
    expected = [v["expected"] for v in loaded]
    assert {e["carried_over"] for e in expected} == {
        None, "timed-out", "below-min-updates", "aggregation-failed", "too-few-valid"}
    assert {r["reason"] for e in expected for r in e["rejected"]} == {
        "removed", "duplicate", "too-large", "invalid", "unavailable"}
    assert any(v["state"] and v["expected"]["state_cid"] for v in loaded)  # state in and out
    assert any(not v["state"] and v["expected"]["state_cid"] for v in loaded)  # state created
    assert any(s["staleness"] for v in loaded for s in v["submissions"])
    dtypes = set()
    for n in NAMES:
        dtypes |= {a.dtype.name for a in ref.decode((VECTORS / n / "previous.safetensors")
                                                    .read_bytes()).values()}
    assert {"float16", "float32", "float64", "int64", "int8", "bool"} <= dtypes
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 300_000
    text = (ROOT / "SPEC.md").read_text()
    for name, v in zip(NAMES, loaded, strict=True):  # SPEC §12 lists each, as it is
        assert f"| `{name}` | {v['description']} |" in text, name


# --- the reference's other building blocks -------------------------------------------------


def test_reference_cids_are_the_ipfs_importers():
    vectors = json.loads((ROOT / "tests" / "data" / "cid_vectors.json").read_text())["vectors"]
    for v in vectors:
        data = (v["text"].encode() if "text" in v else
                ((np.arange(v["size"], dtype=np.int64) * 31 + 7 + v["seed"]) & 255)
                .astype(np.uint8).tobytes())
        assert ref.cid_of(data) == v["cid"], v["name"]
    assert any(v["cid"].startswith("bafybei") for v in vectors)  # dag-pb trees too


def test_reference_writes_the_plans_fedchain_writes():
    plans = json.loads((VECTORS / "plans.json").read_text())["plans"]
    assert len(plans) >= 5
    for p in plans:
        data = ref.plan_bytes(p["plan"])
        assert data.decode("ascii") == p["bytes"]
        assert ref.cid_of(data) == p["cid"]
        assert Plan.from_json(data).to_json() == data


def test_the_spec_examples_are_right():
    text = (ROOT / "SPEC.md").read_text()
    example = ref.encode({"w": np.array([1.0, 2.0], np.float32), "n": np.array(7, np.int64)})
    assert len(example) == 216 and example[:8] == bytes([0xC0]) + bytes(7)
    assert example[8:8 + 192].decode().rstrip(" ") in text
    assert ref.cid_of(example) in text
    plan = ref.plan_bytes({"strategy": {"name": "FedAvg", "params": {
        "accumulator": "float32", "align": True, "clip": 2.0, "examples_cap": 2.0,
        "scaling": "num_examples"}}, "rounds": 3, "min_updates": 2})
    assert plan.decode() in text and ref.cid_of(plan) in text
    former = ref.plan_bytes({"strategy": {"name": "FedAvg", "params": {
        "accumulator": "float32", "clip": 2.0, "examples_cap": 2.0, "scaling": "num_examples"}},
        "rounds": 3, "min_updates": 2})
    assert ref.cid_of(former) in text  # the example's CID without align


def test_reference_encodes_as_fedchain_does():
    """Names needing escapes (quotes, controls, DEL, non-ASCII, astral), every dtype, scalars
    and empty tensors: the reference's bytes are fedchain's, and each decodes the other's."""
    rng = np.random.default_rng(7)
    names = ['a"b\\c', "tab\there", "ctl\x01\x1f", "del\x7f", "é", "𝔁", "plain"]
    dtypes = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
    for trial in range(20):
        weights = {}
        for k, name in enumerate(rng.permutation(names)[: 2 + trial % 5]):
            dtype = np.dtype(dtypes[(trial + k) % len(dtypes)])
            shape = [(), (0,), (3,), (2, 3), (1, 0, 2)][(trial * 3 + k) % 5]
            values = np.asarray(rng.random(shape) * 100)
            weights[str(name)] = (np.asarray(values > 50) if dtype.kind == "b"
                                  else values.astype(dtype))
        data = encode(weights)
        assert ref.encode(weights) == data
        assert ref.cid_of(data) == str(cid_of(data))
        back = ref.decode(data)
        assert list(back) == list(weights)
        assert encode(back) == data
        assert encode(decode(ref.encode(weights))) == data


def test_reference_refuses_what_fedchain_refuses():
    good = {"w": np.ones((2, 2), np.float32), "b": np.array([True, False])}
    data = encode(good)
    start = 8 + int.from_bytes(data[:8], "little")  # the first byte of the tensor data
    bad = [
        data[:7],
        data + b"\x00",
        data.replace(b'"version":"1"', b'"version":"2"'),
        data.replace(b"F32", b"BF1"),
        data.replace(b'"shape":[2,2]', b'"shape":[2,3]'),
        data[:-1] + b"\x02",  # a bool byte that is not 0 or 1
        data.replace(b'\\"w\\", \\"b\\"', b'\\"w\\", \\"w\\"'),
        data[:start + 4] + b"\x00\x00\xc0\x7f" + data[start + 8:],  # a NaN
        data[:start] + b"\x00\x00\x80\xff" + data[start + 4:],  # -inf
    ]
    for blob in bad:
        with pytest.raises(InvalidModel):
            decode(blob)
        with pytest.raises(ref.Invalid):
            ref.decode(blob)
    with pytest.raises(ref.Invalid):
        ref.decode(encode({"w": np.ones((2, 2), np.float64), "b": good["b"]}), good)
    with pytest.raises(ref.TooLarge):
        ref.decode(data, None, len(data) - 1)


def test_reference_fails_where_the_spec_says():
    """§8.1 and §8.8-8.9 cases fedchain does not handle (SPEC §11): the reference carries the
    round over instead."""
    top = {"n": np.array([2**63 - 1], np.int64), "w": np.ones(3, np.float32)}
    honest = [ref.Update(f"0x{k:040x}", 1, top) for k in (1, 2)]
    with pytest.raises(ref.StrategyFailed, match="outside int64"):
        ref.aggregate({"name": "FedAvg"}, top, honest, None)
    fine = {"w": np.ones(3, np.float32)}
    updates = [ref.Update("0x" + "1" * 40, 1, {"w": np.full(3, 2.0, np.float32)})]
    for state in ({"step": np.array(-1, np.int64)}, {"step": np.array([1, 2], np.int64)},
                  {"m/w": np.zeros(3, np.float32)}, {"m/w": np.zeros(4)}):
        with pytest.raises(ref.StrategyFailed):
            ref.aggregate({"name": "FedAdam"}, fine, updates, state)
    with pytest.raises(ref.StrategyFailed):
        ref.aggregate({"name": "FedAvgM"}, fine, updates, {"momentum/w": np.zeros(3, np.int64)})
    new, state = ref.aggregate({"name": "FedAdam"}, fine, updates, {"step": np.array(4, np.int64)})
    assert int(state["step"]) == 5 and list(state) == ["step", "m/w", "v/w"]


def test_pairwise_sum_is_numpys():
    """fedchain's Krum sums squared distances with numpy's own sum (SPEC §8.2 describes its
    order): if numpy changes its summation, this fails before a vector silently could."""
    rng = np.random.default_rng(3)
    for n in [*range(0, 300), 1000, 4097, 65_536]:
        values = rng.random(n) * 10.0 ** rng.integers(-8, 8, n)
        assert ref.pairwise_sum(values) == float(values.sum()), n


def test_reference_imports_only_the_standard_library_and_numpy():
    tree = ast.parse((ROOT / "tests" / "spec_reference.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy"}


# --- the vectors pin the rules ----------------------------------------------------------------


def _floored(original: Any) -> Any:
    def cast_to(values: np.ndarray, like: np.ndarray) -> np.ndarray:
        if like.dtype.kind in "iu":
            return np.floor(values).astype(like.dtype).reshape(like.shape)
        return original(values, like)
    return cast_to


#: A rule of SPEC.md got wrong: (the reference's attribute, original -> replacement).
MUTANTS: dict[str, tuple[str, Any]] = {
    "no staleness discount": ("staleness_weight", lambda original: lambda n, s: n),
    "upper median": ("lower_median", lambda original: lambda v: sorted(v)[len(v) // 2]),
    "float16 summed in float64": ("sum_format", lambda original: lambda d, a: (
        ref.F64 if d == np.float16 else original(d, a))),
    "norms summed in sequence": ("halving_sum", lambda original: lambda v: (
        float(sum(map(float, np.ravel(v)))))),
    "integers floored": ("cast_to", _floored),
    "Adam's step ignored": ("fedadam", lambda original: lambda prev, mean, state, p: original(
        prev, mean, None if state is None else {k: a for k, a in state.items() if k != "step"},
        p)),
    "Yogi's second moment as Adagrad's": ("adaptive", lambda original: lambda *a, yogi: original(
        *a, yogi=False)),
    "Adagrad's second moment as Yogi's": ("adaptive", lambda original: lambda *a, yogi: original(
        *a, yogi=True)),
    "layers sorted by name": ("encode", lambda original: lambda w, m=None: original(
        dict(sorted(w.items())), m)),
    "duplicates kept": ("run_round", lambda original: lambda *a, **k: original(
        *a, **{**k, "exclude_duplicates": False})),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_vectors_catch_a_wrong_rule(mutant, monkeypatch):
    attribute, make = MUTANTS[mutant]
    monkeypatch.setattr(ref, attribute, make(getattr(ref, attribute)))
    wrong = [n for n in NAMES if _reference_outcome(VECTORS / n) != _load(VECTORS / n)["expected"]]
    assert wrong, f"no vector notices: {mutant}"


# --- (d) the vectors are what fedchain writes now --------------------------------------------


def test_spec_vectors_check_passes(capsys):
    module = _load_script()
    assert module.main(["--check"]) == 0, capsys.readouterr().out
    assert "0 problem(s)" in capsys.readouterr().out


# --- (c) a real federation, re-derived by the reference --------------------------------------


def test_a_real_federation_is_rederived_by_the_reference(store):
    """Three learners, three FedAdam rounds (server state carried from round to round) through
    the embedded chain and a store; each round's inputs are read back from them and the
    reference computes the published model, state and included set."""
    result = simulate(lambda i, n: LinearLearner(i), 3, FedAdam(eta=0.05, clip=2.0), 3,
                      store=store, train_config={"lr": 0.1, "steps": 5})
    contract = result.contract
    plan = Plan.load(store, contract.plan())
    assert plan.strategy["name"] == "FedAdam"
    states = []
    ledger = Ledger(contract)
    ledger.refresh()
    for round in (1, 2, 3):
        previous = store.get(to_cid(contract.global_model(round - 1)))
        state_cid = ledger.state_after(round - 1)
        state = store.get(state_cid.require()) if state_cid is not None else None
        submissions = [ref.Submission(u.learner, u.num_examples, u.staleness,
                                      store.get(u.model_cid.require()), cid=u.model_cid.raw)
                       for u in contract.updates(round)]
        timed_out = any(True for _ in contract.events("RoundTimedOut", round=round))
        outcome = ref.run_round(previous, state, plan.strategy, submissions,
                                min_updates=plan.min_updates,
                                exclude_duplicates=plan.exclude_duplicates,
                                max_model_bytes=plan.max_model_bytes, timed_out=timed_out)
        published = contract.published(round)
        assert published is not None
        assert outcome.carried_over is None and len(outcome.included) == 3
        assert outcome.model_cid == published.model_cid.text, f"round {round}"
        assert outcome.state_cid == published.state_cid.text, f"round {round}"
        assert sorted(outcome.included) == sorted(published.included)
        states.append(outcome.state_cid)
    assert len(set(states)) == 3  # the state moved every round: it mattered
