"""The numbers the READMEs quote, computed from the code as it is now, and checked against them.

Every CID and gas figure in README.md and examples/*/README.md comes from here: run it to see
what the code produces, and `--check` to compare with what the documents say (exit 1 on any
difference). The examples are seeded and aggregation is deterministic, so with given kernels
(below) a quoted CID is either exactly right or stale.

Two kinds of numbers. Gas figures and plan CIDs are the same on every machine. The CIDs of
models torch makes (the genesis model it initialises, the updates it trains, the global
models aggregated from them) depend on torch's version and on the kernels it runs for the
CPU's instruction set, which round differently (AVX2 and AVX-512 builds of the same kernel
give other last bits, and so do oneDNN's convolutions and MKL's products): the READMEs quote
them as computed by QUOTED_ON, and `make docs-check` selects torch's AVX2 kernels (see
DOCS_KERNELS in the Makefile), so that x86-64 CPUs with wider ones (AVX-512, AMX) compute
them as one with AVX2 does. They depend on torch's thread count too, not on the number of
cores: the examples train on one torch thread per learner (their `threads` option, 1 unless
FEDCHAIN_THREADS says otherwise). Aggregation itself is the same on every CPU
(tests/test_cpu_independence.py).

    make docs-check                                  # everything, on torch's AVX2 kernels
    .venv/bin/python scripts/docs_numbers.py --check --same-everywhere    # gas and plans
    .venv/bin/python scripts/docs_numbers.py --check --rounds 1 --examples mlp cnn --no-gas

(the last on a CPU with more than AVX2: with the Makefile's DOCS_KERNELS in the environment).

tests/test_docs.py checks what is the same everywhere in `make test`; the models' CIDs (every
round of every example, the DCGAN) are checked by `make docs-check` only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import statistics
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from fedchain.cli.job import Job  # noqa: E402
from fedchain.eth.accounts import FIRST_LEARNER_INDEX, dev_account  # noqa: E402
from fedchain.eth.chain import connect  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.model.codec import encode  # noqa: E402
from fedchain.storage import cid_of, open_store  # noqa: E402

EXAMPLES = ("mlp", "cnn", "dcgan")
CID = r"(baf[a-z2-7]{50,})"
#: What computed the CIDs of torch-made models the READMEs quote; the READMEs say so in these
#: words (tests/test_docs.py).
QUOTED_ON = "torch 2.13.0 (CPU build) on x86-64 with AVX2"
#: Quotes of numbers every machine computes alike (by their first word); the others (genesis,
#: submitted, published) are CIDs of models torch made.
SAME_EVERYWHERE = ("plan",)


@dataclass
class Quote:
    """One number a document states: where, what, and the value it gives."""

    path: Path
    line: int
    what: str
    value: str


@dataclass
class Run:
    """What an example's job produces, up to some round."""

    genesis: str | None
    plan: str
    rounds: int
    published: dict[int, str] = field(default_factory=dict)
    #: rounds → the plan of the same job run with `--rounds` (a quote after such a command)
    plans: dict[int, str] = field(default_factory=dict)
    #: (round, learner index) → the CID the learner submitted
    submitted: dict[tuple[int, int], str] = field(default_factory=dict)


def _plans(job: Job, plan_rounds: Iterable[int]) -> tuple[str, dict[int, str]]:
    """The CID of the job's plan, and of its plans when run with `--rounds R`, R in
    `plan_rounds`: JSON from the job file, the same on every machine."""
    config = job.run_config()
    plans = {r: str(cid_of(replace(config, rounds=r).plan(job.learners).to_json()))
             for r in plan_rounds}
    return str(cid_of(config.plan(job.learners).to_json())), plans


def plan_only(name: str, plan_rounds: Iterable[int] = ()) -> Run:
    """What an example's job says before anything runs: its plans (no models)."""
    plan, plans = _plans(Job.load(ROOT / "examples" / name / "fedchain.toml"), plan_rounds)
    return Run(None, plan, 0, plans=plans)


def run_example(name: str, rounds: int | None, store_dir: Path,
                plan_rounds: Iterable[int] = ()) -> Run:
    """The example's job file, run on the embedded chain for `rounds` (default: the job's);
    also the plans the job publishes when run with `--rounds R`, R in `plan_rounds`."""
    job = Job.load(ROOT / "examples" / name / "fedchain.toml")
    config = job.run_config()
    plan = config.plan(job.learners)
    initial = job.initial_weights()
    wanted = rounds or plan.rounds
    result = simulate(
        job.learner_factory(), job.learners, config=replace(config, rounds=wanted),
        initial_weights=initial, store=open_store(f"file://{store_dir}"),
    )  # fmt: skip
    plan_cid, plans = _plans(job, plan_rounds)
    run = Run(str(cid_of(encode(initial))), plan_cid, wanted, plans=plans)
    run.published = {r.round: r.global_cid for r in result.rounds}
    index = {dev_account(FIRST_LEARNER_INDEX + i).address: i for i in range(job.learners)}
    for e in result.contract.events("UpdateSubmitted"):
        run.submitted[(e.round, index[e.learner])] = e.model_cid.text
    return run


def same_everywhere(quote: Quote) -> bool:
    """Whether every machine computes the quoted number alike (not a torch-made model's CID)."""
    return quote.what.split()[0] in SAME_EVERYWHERE


def kernels() -> str:
    """What computes torch-made models in this process: machine, torch, kernels."""
    import torch

    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{platform.machine()}, torch {torch.__version__}, ATen's "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, "
            + (f"oneDNN's up to {onednn}" if onednn else "oneDNN's widest"))


def example_quotes(path: Path) -> Iterator[Quote]:
    """The CIDs an example's README quotes, in full (shortened ones are left out). A plan
    quoted after a command with `--rounds R` is the plan of R rounds ("plan R")."""
    rounds = ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("$ "):
            flag = re.search(r"--rounds[ =](\d+)", line)
            rounds = f" {flag[1]}" if flag else ""
        if m := re.search(rf"genesis model {CID}, plan {CID}", line):
            yield Quote(path, n, "genesis", m[1])
            yield Quote(path, n, "plan" + rounds, m[2])
        if m := re.search(rf"\[ROUND (\d+)\] received .* published {CID}", line):
            yield Quote(path, n, f"published {m[1]}", m[2])
        if m := re.search(rf"\[ROUND (\d+)\] learner-(\d+) submitted {CID}", line):
            yield Quote(path, n, f"submitted {m[1]} {m[2]}", m[3])


def expected(run: Run, what: str) -> str | None:
    """What the run says for a quote (None: the run did not get that far)."""
    kind, *rest = what.split()
    if kind == "genesis":
        return run.genesis
    if kind == "plan":
        return run.plans.get(int(rest[0])) if rest else run.plan
    if kind == "published":
        return run.published.get(int(rest[0]))
    return run.submitted.get((int(rest[0]), int(rest[1])))


# --- gas ---------------------------------------------------------------------------------


def measure_gas(rounds: int = 3, learners: int = 10) -> dict[str, int]:
    """The gas figures the README quotes, measured as bench/gas.py does (embedded chain:
    the same gas as Anvil and Ganache)."""
    spec = importlib.util.spec_from_file_location("fedchain_bench_gas", ROOT / "bench" / "gas.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    m = bench.run(connect("embedded", fresh=True), rounds, learners)
    every = [g for gs in m.submits.values() for g in gs]
    return {
        "deployment": m.deploy,
        "submitUpdate median": int(statistics.median(every)),
        "submitUpdate first of a round": max(every),
        f"publishGlobal {learners} included": int(statistics.median(m.publishes)),
        "setGenesis": m.genesis,
        "reportEvaluation": int(statistics.median(m.reports)),
        "finish": m.finish,
    }


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def gas_quotes(readme: Path, examples: list[Path]) -> Iterator[tuple[Quote, str]]:
    """(quote, the measurement it should equal) for every gas figure the READMEs give."""
    text = readme.read_text().splitlines()
    rows = {
        r"^\| deployment \| ([\d,]+) \|": "deployment",
        r"^\| `submitUpdate`, median of all rounds \| ([\d,]+) \|": "submitUpdate median",
        r"^\| `publishGlobal`, 10 included \| ([\d,]+) \|": "publishGlobal 10 included",
        r"first update of each round costs ([\d,]+)": "submitUpdate first of a round",
    }
    for n, line in enumerate(text, 1):
        for pattern, key in rows.items():
            if m := re.search(pattern, line):
                yield Quote(readme, n, key, m[1]), key
        if m := re.search(r"^\| `setGenesis` / `reportEvaluation` / `finish` \| "
                          r"([\d,]+) / ([\d,]+) / ([\d,]+) \|", line):
            for i, key in enumerate(("setGenesis", "reportEvaluation", "finish"), 1):
                yield Quote(readme, n, key, m[i]), key
    for path in examples:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if m := re.search(r"^  tx 0x[0-9a-f]+ block \d+ gas (\d+)$", line):
                yield Quote(path, n, "deployment", m[1]), "deployment"


# --- the command -------------------------------------------------------------------------


def stale_quotes(
    examples: list[str], rounds: int | None, gas: bool, store_dir: Path,
    models: bool = True,
) -> tuple[list[str], int]:
    """(one line per quote that differs from what the code produces, quotes checked).

    models=False leaves out the CIDs of models torch makes (genesis, updates, global
    models): what is left is the same on every machine, and no example is run.
    """
    problems: list[str] = []
    checked = 0
    for name in examples:
        path = ROOT / "examples" / name / "README.md"
        quotes = [q for q in example_quotes(path) if models or same_everywhere(q)]
        if not quotes:
            continue
        plan_rounds = {int(q.what.split()[1]) for q in quotes if q.what.startswith("plan ")}
        if models:
            run = run_example(name, rounds, store_dir / name, plan_rounds)
            print(f"{name}: genesis {run.genesis}, plan {run.plan}")
        else:
            run = plan_only(name, plan_rounds)
            print(f"{name}: plan {run.plan}")
        for r, cid in sorted(run.published.items()):
            print(f"{name}: round {r} published {cid}")
        for q in quotes:
            want = expected(run, q.what)
            if want is None:
                continue
            checked += 1
            if want != q.value:
                problems.append(f"{q.path.relative_to(ROOT)}:{q.line}: {q.what} is {want}, "
                                f"the document says {q.value}")
    if gas:
        measured = measure_gas()
        for key, value in measured.items():
            print(f"gas: {key} {value:,}")
        readmes = [ROOT / "examples" / n / "README.md" for n in EXAMPLES]
        for q, key in gas_quotes(ROOT / "README.md", readmes):
            checked += 1
            if _number(q.value) != measured[key]:
                problems.append(f"{q.path.relative_to(ROOT)}:{q.line}: {key} costs "
                                f"{measured[key]:,} gas, the document says {q.value}")
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs_numbers.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the documents")
    parser.add_argument("--examples", nargs="*", default=list(EXAMPLES), choices=EXAMPLES,
                        help="examples to run (default: all)")
    parser.add_argument("--rounds", type=int, help="rounds per example (default: the job's)")
    parser.add_argument("--no-gas", action="store_true", help="skip the gas measurements")
    parser.add_argument("--same-everywhere", action="store_true",
                        help="only what every machine computes alike (gas, plan CIDs), not "
                             "the CIDs of models torch makes; runs no example")
    parser.add_argument("--store", default="runs/docs-store", help="directory for the models")
    args = parser.parse_args(argv)
    models = not args.same_everywhere
    if models:
        print(f"models: {kernels()}; the documents quote them as computed by {QUOTED_ON}")
    problems, checked = stale_quotes(args.examples, args.rounds, not args.no_gas,
                                     Path(args.store).resolve(), models)
    if not args.check:
        return 0
    for p in problems:
        print(p)
    print(f"{checked} quoted numbers checked, {len(problems)} stale")
    if models and problems:
        print(f"note: the models' CIDs (genesis, submitted, published) are quoted as computed "
              f"by {QUOTED_ON}, one torch thread per learner; other kernels (another "
              "instruction set, torch version or build) or thread counts (FEDCHAIN_THREADS) "
              "give other ones. `make docs-check` selects torch's AVX2 kernels on any x86-64 "
              "CPU that has them; --same-everywhere checks only gas and plans.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
