"""Aggregation gives the same global models whatever SIMD code numpy runs.

An auditor re-derives every round on their own machine, so a round's global model must not
depend on the CPU's instruction set. numpy picks SIMD kernels at run time for the widest
extension the CPU has (e.g. AVX-512, AVX2, or only its baseline); `NPY_DISABLE_CPU_FEATURES`
switches them off, so one machine can run the code paths of narrower CPUs. Here a few rounds
of several strategies run on fixed inputs in subprocesses with numpy's wide kernels, with the
widest switched off and with all of them switched off (and BLAS on other kernels and thread
counts, though aggregation never calls BLAS), and the CIDs of the encoded results must be
identical.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
LEARNERS = 6

#: Run in each subprocess: argv[1] is the .npz of inputs. Prints {label: [CIDs]} and the
#: SIMD extensions numpy dispatched to.
CHILD = """
import json, sys
import numpy as np
sys.path[:0] = [{root!r}]
from fedchain.aggregation.strategy import (
    ROBUST_FEDAVG, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, Update)
from fedchain.model.codec import encode
from fedchain.storage import cid_of
try:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
except ImportError:  # numpy 1.x
    from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

data = np.load(sys.argv[1])
names = json.loads(str(data["names"]))
genesis = {{n: data["genesis/" + n] for n in names}}
learners = [f"0x{{i:02X}}{{'aB' * 19}}" for i in range(1, {learners} + 1)]  # ascending
strategies = {{
    "FedAvg": FedAvg(),
    "FedAvg float64": FedAvg(accumulator="float64"),
    "FedAvg clip=1": FedAvg(clip=1.0),
    "ROBUST_FEDAVG": ROBUST_FEDAVG,
    "FedMedian": FedMedian(),
    "FedTrimmedAvg": FedTrimmedAvg(beta=0.2),
    "Krum": Krum(f=1),
    "multi-Krum": Krum(f=1, m=3, examples_cap=2.0),
    "FedAvgM": FedAvgM(),
    "FedAdam": FedAdam(clip=2.0, examples_cap=2.0),
}}
out = {{}}
for label, strategy in strategies.items():
    model, state, cids = genesis, None, []
    for r in range(1, {rounds} + 1):
        updates = []
        for i, learner in enumerate(learners):
            weights = {{}}
            for n in names:
                step = data[f"step/{{r}}/{{i}}/" + n]
                if model[n].dtype.kind == "f":  # trained: the global model plus a step
                    weights[n] = (model[n] + step).astype(model[n].dtype)
                else:  # counters and masks: the learner's own
                    weights[n] = step
            updates.append(Update(learner, int(data["examples"][r - 1, i]), weights))
        model, state = strategy.aggregate(model, updates, state)
        cids.append(str(cid_of(encode(model))))
        if state is not None:
            cids.append(str(cid_of(encode(state))))
    out[label] = cids
simd = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
print(json.dumps({{"cids": out, "simd": simd}}))
"""


def _inputs(path: Path) -> None:
    """A genesis model and every learner's step of every round, written to `path`.

    Odd sizes (no multiple of a vector width), one layer over aggregation's 2**16-element
    blocks, float32/float16/float64, an integer counter and a bool mask. Learner 5 is a rogue
    in round 2 (a step 50× too large, claiming 20× the examples), so that clipping, the
    examples cap, Krum's choice and the robust rules all have something to do.
    """
    rng = np.random.default_rng(2024)
    genesis = {
        "conv.weight": rng.standard_normal((6, 3, 5, 5)).astype(np.float32),
        "fc1.weight": (rng.standard_normal((257, 263)) * 0.05).astype(np.float32),
        "fc1.bias": rng.standard_normal(257).astype(np.float32),
        "fc2.weight": rng.standard_normal((3, 11)).astype(np.float16),
        "bn.running_mean": rng.standard_normal(13),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": rng.standard_normal(9) > 0,
    }
    arrays: dict[str, np.ndarray] = {"genesis/" + n: a for n, a in genesis.items()}
    examples = rng.integers(50, 500, size=(ROUNDS, LEARNERS))
    examples[1, LEARNERS - 1] = 20 * examples[1].max()
    for r in range(1, ROUNDS + 1):
        for i in range(LEARNERS):
            scale = 0.5 if (r, i) == (2, LEARNERS - 1) else 0.01
            for n, a in genesis.items():
                if a.dtype.kind == "f":
                    step = (rng.standard_normal(a.shape) * scale).astype(a.dtype)
                elif a.dtype.kind == "b":
                    step = rng.standard_normal(a.shape) > 0
                else:
                    step = np.asarray(a + 10 * r + i, dtype=a.dtype)
                arrays[f"step/{r}/{i}/{n}"] = step
    np.savez(path, names=np.array(json.dumps(list(genesis))), examples=examples, **arrays)


def _settings() -> dict[str, dict[str, str]]:
    """Environments for the subprocesses: numpy's SIMD kernels as this CPU has them, without
    the widest, and with none beyond the baseline the numpy build assumes."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    # NPY_DISABLE_CPU_FEATURES refuses the baseline, and features the CPU lacks: name only
    # the dispatch targets (e.g. X86_V3, X86_V4, AVX512_ICL in numpy 2.4; AVX2, FMA3,
    # AVX512F, AVX512_SKX, … in older ones) this CPU has. They come narrowest first.
    found = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    base = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    base.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    settings = {"native": base}
    if len(found) > 1:
        settings["without " + " ".join(found[1:])] = dict(
            base, NPY_DISABLE_CPU_FEATURES=" ".join(found[1:]), OPENBLAS_NUM_THREADS="2")
    if found:
        narrow = dict(base, NPY_DISABLE_CPU_FEATURES=" ".join(found), OPENBLAS_NUM_THREADS="2")
        if platform.machine().lower() in ("x86_64", "amd64"):
            narrow["OPENBLAS_CORETYPE"] = "Prescott"  # OpenBLAS's SSE3 kernels
        settings["baseline only"] = narrow
    return settings


def test_aggregated_rounds_have_the_same_cids_whatever_simd_numpy_uses(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.npz"
    _inputs(inputs)
    code = CHILD.format(root=str(ROOT), rounds=ROUNDS, learners=LEARNERS)
    settings = _settings()
    procs = {
        label: subprocess.Popen([sys.executable, "-c", code, str(inputs)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for label, env in settings.items()
    }
    results = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{label}: {stderr}"
        results[label] = json.loads(stdout)

    native = results["native"]
    assert len(native["cids"]) == 10
    assert all(len(c) == ROUNDS * (2 if s in ("FedAvgM", "FedAdam") else 1)
               for s, c in native["cids"].items())
    # every round moves the model: the CIDs do not just repeat the genesis model's
    assert all(len(set(c)) == len(c) for c in native["cids"].values())
    for label, result in results.items():
        disabled = settings[label].get("NPY_DISABLE_CPU_FEATURES", "").split()
        # numpy took the narrower code paths it was asked to
        assert not set(result["simd"]) & set(disabled), (label, result["simd"])
        assert result["cids"] == native["cids"], label
