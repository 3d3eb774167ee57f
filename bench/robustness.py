"""The attack suite: every attack × 1 of 5, 2 of 10, 3 of 10 × IID, Dirichlet(0.5) × MLP, CNN.

    .venv/bin/python bench/robustness.py                    # the whole table (`make bench`)
    .venv/bin/python bench/robustness.py --models mlp --setups 5:1 --attacks none,x-1,alie
    .venv/bin/python bench/robustness.py --strategy 'FedAvg(clip=1.5, examples_cap=1.0)'
    .venv/bin/python bench/robustness.py --table bench/results/robustness.json   # print only
    .venv/bin/python bench/robustness.py --chain [...]      # a few attacks through `simulate`

Each cell is one federation run in-process by `bench/attacks.py` (its docstring defines every
attack): the example's real learners on their shards of the local digits data, each round
aggregated by fedchain's `Strategy.aggregate` (the call `run_round` makes), the rogues being
the last f learners. Cells are run for two strategies by default: **default** (what a
federation runs when told nothing, `ROBUST_FEDAVG`) and plain **FedAvg**; `--strategy` adds
or replaces columns. Every cell reports the final centralized accuracy on the held-out test
set (360 digits: one image is 0.28 points) beside the same strategy's honest run (attack
`none`: every learner honest), and for the backdoor the attack success rate (triggered test
digits of other classes classified as the target). Rounds: 8 for the MLP (3 local epochs of
Adam, the example's [train]), 10 for the CNN (1 local epoch of SGD, lr 0.02, momentum 0.9,
the example's batch 16): both honest runs are near their plateaus. The whole table takes
about 35 minutes on one core of a busy 2-core machine (the CNN three quarters of it).

The targets for the default (issue 19): within 1 point of the honest run in every cell with
1 rogue of 5, within 3 points with 3 of 10 (2 of 10 is held to 3 points as well), and its
honest runs at most 0.5 points below plain FedAvg's. "copy" is listed, not held to them
(duplicate exclusion, not the strategy, answers it). The row "absent" (the rogues send
nothing) is what a perfect defence reaches, the rogues' data being lost either way: the
verdict also counts the cells within the targets of that run. Written: a markdown table (--markdown,
default bench/results/robustness.md) and the cells as JSON (--json, default
bench/results/robustness.json).

`--chain` runs the earlier bench instead: one rogue of five through a whole `simulate` per
cell (embedded chain and store), with its own attacks (x1e30, 3e38, claim, nan, copy); see
`chain_main`'s help.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.mlp import task  # noqa: E402
from fedchain.aggregation.strategy import (  # noqa: E402
    ROBUST_FEDAVG,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from fedchain.eth.accounts import FIRST_LEARNER_INDEX, dev_account  # noqa: E402
from fedchain.federation import node as node_module  # noqa: E402
from fedchain.federation import simulation as simulation_module  # noqa: E402
from fedchain.federation.learner import EvalResult, Learner, TrainResult  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.protocol.rules import Submission, find_duplicates  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attacks  # noqa: E402, I001  (bench/attacks.py: the suite's engine)

Weights = dict[str, np.ndarray]

CHAIN_DOC = """One rogue learner of five against each strategy: the MLP example on digits, through
the chain.

    .venv/bin/python bench/robustness.py --chain              # every attack × every column
    .venv/bin/python bench/robustness.py --chain --rounds 5 --attacks none,claim --json out.json
    .venv/bin/python bench/robustness.py --chain --strategy defaults --strategy FedAvg
    .venv/bin/python bench/robustness.py --chain --strategy 'FedAvg(clip=1.5, examples_cap=3)'

Each cell is a whole `fedchain.simulate` run (embedded chain and store, 5 learners of
`examples.mlp.task`, learner 4 rogue). The columns:

    defaults              what `simulate` runs when told nothing: ROBUST_FEDAVG (FedAvg,
                          clip=2, examples_cap=2, align) and the default quorum,
                          min_updates=4 of 5
    FedAvg                plain FedAvg, the same quorum
    FedAvg, all required  plain FedAvg with min_updates=5: fedchain's defaults before
    FedMedian, FedTrimmedAvg(0.2), Krum(f=1)   robust rules, the same quorum

With the quorum a rejected update still leaves enough, so those columns measure the strategy,
not the quorum rule (`--min-updates N` sets one for every column). The rogue wraps its
Learner and returns, from `train`:

    none      its honest update (the all-honest baseline)
    x1e30     its trained weights × 1e30 (floating layers)
    3e38      every floating weight 3e38 (finite, but 5 of them overflow a float32 sum)
    claim     the global model unchanged (a free-rider) claiming 2**40 examples
    nan       every floating weight NaN (written past the codec's own finiteness check,
              as a hostile client would; the aggregator rejects it at decode)
    copy      learner 0's update of the round, byte for byte (the same CID) and its
              num_examples, submitted once learner 0's submission is on chain: free-riding
              that doubles the victim's weight

Reported per cell: the centralized accuracy of the last published global model, the rounds
that aggregated (rather than carrying the previous model over), whether the run crashed (a
learner or the aggregator raised), and for every run the submissions that
`rules.find_duplicates` flags from the chain's events. Then, for the defaults column, each
attack against the target: no crash, every round aggregating and a final accuracy within
3 points of the all-honest run ("copy" is listed but not held to it: duplicate exclusion,
not the strategy, answers it).
"""

ATTACKS = ("none", "x1e30", "3e38", "claim", "nan", "copy")
ROGUE, VICTIM = 4, 0
TRAIN = {"epochs": 3, "lr": 0.001, "batch_size": 64}
#: A column's min_updates meaning every learner.
ALL = -1
#: (strategy, min_updates) per column; None: what `simulate` runs when given none.
STRATEGIES: dict[str, tuple[Strategy | None, int | None]] = {
    "defaults": (None, None),
    "FedAvg": (FedAvg(), None),
    "FedAvg, all required": (FedAvg(), ALL),
    "FedMedian": (FedMedian(), None),
    "FedTrimmedAvg(0.2)": (FedTrimmedAvg(beta=0.2), None),
    "Krum(f=1)": (Krum(f=1), None),
}
DEFAULTS = "defaults"
#: The target for the defaults: final accuracy within this of the all-honest run.
TOLERANCE = 0.03
#: Attacks the strategy is not meant to answer (see the module docstring).
NOT_HELD = ("copy",)


def _floating(weights: Mapping[str, np.ndarray], fill: Any) -> Weights:
    return {
        k: (fill(v) if v.dtype.kind == "f" else v.copy()).astype(v.dtype)
        for k, v in weights.items()
    }


class Shared:
    """What learner threads of one run share: the victim's update per round, once on chain."""

    def __init__(self) -> None:
        self.results: dict[int, TrainResult] = {}
        self.on_chain: set[int] = set()
        self.ready = threading.Condition()

    def put(self, round: int, result: TrainResult) -> None:
        with self.ready:
            self.results[round] = result

    def landed(self, round: int) -> None:
        with self.ready:
            self.on_chain.add(round)
            self.ready.notify_all()

    def get(self, round: int, timeout: float = 600.0) -> TrainResult:
        """The victim's update, once its submission is on chain (a copier reads it there)."""
        with self.ready:
            if not self.ready.wait_for(lambda: round in self.on_chain, timeout):
                raise TimeoutError(f"the victim's round-{round} update never came")
            return self.results[round]


@contextlib.contextmanager
def watching_victim(shared: Shared) -> Iterator[None]:
    """simulate's learner nodes tell `shared` when the victim's submission has landed."""

    class Node(simulation_module.LearnerNode):
        def train_round(self, round: int, *args: Any, **kwargs: Any) -> bool:
            done = super().train_round(round, *args, **kwargs)
            if self.name == f"learner-{VICTIM}":
                shared.landed(round)
            return done

    original = simulation_module.LearnerNode
    simulation_module.LearnerNode = Node  # type: ignore[misc]
    try:
        yield
    finally:
        simulation_module.LearnerNode = original  # type: ignore[misc]


class Wrapped(Learner):
    """A Learner that delegates to `inner`, then maybe turns its training result into an attack."""

    def __init__(self, inner: Learner, attack: str | None, shared: Shared,
                 victim: bool = False) -> None:
        self.inner, self.attack, self.shared, self.victim = inner, attack, shared, victim

    def get_weights(self) -> Weights:
        return self.inner.get_weights()

    def set_weights(self, weights: Weights) -> None:
        self.inner.set_weights(weights)

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        return self.inner.evaluate(weights, config)

    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult:
        round = int(config["round"])
        if self.attack == "claim":  # no training at all
            return TrainResult({k: v.copy() for k, v in weights.items()}, 2**40)
        if self.attack == "copy":
            victim = self.shared.get(round)
            return TrainResult(victim.weights, victim.num_examples, victim.metrics)
        result = self.inner.train(weights, config)
        if self.victim:
            self.shared.put(round, result)
        if self.attack == "x1e30":
            with np.errstate(over="ignore"):
                return TrainResult(_floating(result.weights, lambda v: v * 1e30),
                                   result.num_examples)
        if self.attack == "3e38":
            return TrainResult(_floating(result.weights, lambda v: np.full_like(v, 3e38)),
                               result.num_examples)
        if self.attack == "nan":
            return TrainResult(_floating(result.weights, lambda v: np.full_like(v, np.nan)),
                               result.num_examples)
        return result


@contextlib.contextmanager
def hostile_encoding(enabled: bool) -> Iterator[None]:
    """Learner nodes write NaN models (only the rogue makes any) while enabled."""
    original = node_module.encode
    if enabled:
        node_module.encode = attacks.encode_anything  # type: ignore[assignment]
    try:
        yield
    finally:
        node_module.encode = original  # type: ignore[assignment]


class BoundCounter(logging.Handler):
    """Counts the updates the bounded mean clipped or capped, the rogue's and the others'."""

    def __init__(self, rogue: str) -> None:
        super().__init__(logging.INFO)
        self.rogue = rogue.lower()
        self.rogue_bounded = self.honest_bounded = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.args, tuple) or not record.args:
            return
        if str(record.args[0]).lower() == self.rogue:
            self.rogue_bounded += 1
        else:
            self.honest_bounded += 1


@contextlib.contextmanager
def counting_bounds(rogue: str) -> Iterator[BoundCounter]:
    logger = logging.getLogger("fedchain.aggregation")
    counter, level, propagate = BoundCounter(rogue), logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = logging.getLogger().level <= logging.INFO  # shown with --verbose only
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate


@dataclass
class Cell:
    attack: str
    strategy: str
    accuracy: float | None = None
    aggregated: int = 0
    rounds: int = 0
    crash: str = ""
    duplicates: list[str] = field(default_factory=list)
    seconds: float = 0.0
    accuracies: list[float] = field(default_factory=list)
    rogue_bounded: int = 0  # times the rogue's update was clipped or its claim capped
    honest_bounded: int = 0  # the same for the honest learners' updates
    plan: str = ""  # the strategy and min_updates the run's plan recorded


def run_cell(attack: str, label: str, strategy: Strategy | None, rounds: int, learners: int,
             min_updates: int | None) -> Cell:
    """One run; `strategy` and `min_updates` None: simulate's defaults, min_updates ALL: every
    learner."""
    cell = Cell(attack, label, rounds=rounds)
    if min_updates == ALL:
        min_updates = learners
    shared = Shared()

    def make_learner(i: int, n: int) -> Learner:
        inner = task.make_learner(i, n)
        rogue = attack if (i == ROGUE and attack != "none") else None
        return Wrapped(inner, rogue, shared, victim=(i == VICTIM))

    def evaluate(round: int, weights: Weights) -> tuple[float, dict[str, float]]:
        loss, metrics = task.evaluate_global(round, weights)
        cell.accuracies.append(round_to(metrics["accuracy"]))
        return loss, metrics

    started = time.monotonic()
    try:
        rogue_address = dev_account(FIRST_LEARNER_INDEX + ROGUE).address
        with hostile_encoding(attack == "nan"), watching_victim(shared), \
                counting_bounds(rogue_address) as counter:
            try:
                result = simulate(make_learner, learners, strategy, rounds,
                                  min_updates=min_updates, round_timeout=120.0,
                                  train_config=TRAIN, evaluate_fn=evaluate,
                                  initial_weights=task.initial_weights(), timeout=600.0)
            finally:
                cell.rogue_bounded = counter.rogue_bounded
                cell.honest_bounded = counter.honest_bounded
    except Exception as exc:  # a crashed run is a result
        cell.crash = f"{type(exc).__name__}: {str(exc)[:120]}"
    else:
        cell.aggregated = sum(1 for r in result.rounds if r.included)
        cell.plan = _plan_text(result)
        for r in range(1, rounds + 1):
            _, duplicates = find_duplicates(Submission.of(e) for e in result.contract.updates(r))
            cell.duplicates += [f"r{r} {d.submission.learner[:8]}: {d.reason}"
                                for d in duplicates]
    cell.seconds = time.monotonic() - started
    cell.accuracy = cell.accuracies[-1] if cell.accuracies else None
    return cell


def _plan_text(result: Any) -> str:
    """The strategy and quorum of the run's plan, as published on chain."""
    from fedchain.protocol.params import Plan

    plan = Plan.load(result.store, result.contract.plan())
    params = ", ".join(f"{k}={v}" for k, v in plan.strategy["params"].items()
                       if k in ("clip", "examples_cap", "beta", "f"))
    return f"{plan.strategy['name']}({params}) min_updates={plan.min_updates}"


def round_to(x: float) -> float:
    return float(f"{x:.4f}")


def parse_strategy(text: str) -> tuple[str, Strategy | None, int | None]:
    names = {"FedAvg": FedAvg, "FedMedian": FedMedian, "FedTrimmedAvg": FedTrimmedAvg,
             "Krum": Krum, "FedAvgM": FedAvgM, "FedAdam": FedAdam, "ROBUST_FEDAVG": ROBUST_FEDAVG}
    if text in STRATEGIES:
        return text, *STRATEGIES[text]
    strategy = eval(text, {"__builtins__": {}}, names)  # bench-only: a trusted command line
    return text, strategy, None


def verdicts(cells: list[Cell], label: str = DEFAULTS) -> list[str]:
    """One line per attack: does column `label` meet the target against it?"""
    by = {c.attack: c for c in cells if c.strategy == label}
    honest = by.get("none")
    if honest is None or honest.accuracy is None:
        return []
    lines = []
    for attack, c in by.items():
        if attack == "none":
            continue
        problems = []
        if c.crash:
            problems.append(f"crashed ({c.crash})")
        if c.aggregated != c.rounds:
            problems.append(f"{c.rounds - c.aggregated} round(s) carried over")
        if c.accuracy is None or honest.accuracy - c.accuracy > TOLERANCE:
            problems.append(f"accuracy {c.accuracy} vs {honest.accuracy} all-honest")
        shown = "-" if c.accuracy is None else f"{c.accuracy - honest.accuracy:+.3f}"
        if attack in NOT_HELD:
            verdict = "not held to it (duplicate exclusion answers it)"
        else:
            verdict = "FAIL: " + "; ".join(problems) if problems else "meets the target"
        lines.append(f"  {attack:7} {shown} vs all-honest, {c.aggregated}/{c.rounds} "
                     f"aggregated: {verdict}")
    return lines


def table(cells: list[Cell], labels: list[str], attacks: list[str]) -> str:
    def show(c: Cell) -> str:
        acc = "-" if c.accuracy is None else f"{c.accuracy:.3f}"
        if c.crash:  # the history went down with the run: the rounds published before it
            return f"{acc} CRASH@r{len(c.accuracies) + 1}"
        text = f"{acc} {c.aggregated}/{c.rounds}"
        if c.rogue_bounded or c.honest_bounded:
            text += f" b{c.rogue_bounded}+{c.honest_bounded}"
        if c.duplicates:
            text += f" d{len(c.duplicates)}"
        return text

    width = max(24, *(len(s) + 2 for s in labels))
    lines = ["attack    " + "".join(s.ljust(width) for s in labels)]
    by = {(c.attack, c.strategy): c for c in cells}
    for a in attacks:
        row = [show(by[a, s]) if (a, s) in by else "" for s in labels]
        lines.append(a.ljust(10) + "".join(r.ljust(width) for r in row))
    return "\n".join(lines)


def chain_main(argv: list[str]) -> None:
    """`--chain`: each cell a whole `simulate` through the embedded chain (CHAIN_DOC)."""
    p = argparse.ArgumentParser(prog="robustness.py --chain", description=CHAIN_DOC,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--learners", type=int, default=5)
    p.add_argument("--min-updates", type=int, default=None,
                   help="for every column (default: each column's, see above)")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--strategy", action="append",
                   help="a column label (defaults, FedAvg, 'FedAvg, all required', …) or a "
                        "constructor, e.g. 'FedAvg(clip=1.5)'; repeatable (default: every "
                        "column)")
    p.add_argument("--json", type=Path, help="also write the cells here")
    p.add_argument("--partition", choices=("iid", "dirichlet"), default="iid",
                   help="how the digits are split among learners (dirichlet: alpha 0.5)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--table", type=Path, help="only print the table of a --json file")
    args = p.parse_args(argv)
    if args.table:
        cells = [Cell(**c) for c in json.loads(args.table.read_text())]
        labels = list(dict.fromkeys(c.strategy for c in cells))
        print(table(cells, labels, list(dict.fromkeys(c.attack for c in cells))))
        _print_verdicts(cells)
        return
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(message)s")
    task.configure(partition=args.partition)
    attacks = args.attacks.split(",")
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        p.error(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    chosen = [parse_strategy(s) for s in (args.strategy or list(STRATEGIES))]
    cells: list[Cell] = []
    for attack in attacks:
        for label, strategy, min_updates in chosen:
            if args.min_updates is not None:
                min_updates = args.min_updates
            cell = run_cell(attack, label, strategy, args.rounds, args.learners, min_updates)
            cells.append(cell)
            print(f"{attack:7} {label:24} [{cell.plan}] acc={cell.accuracy} "
                  f"per round={cell.accuracies} "
                  f"aggregated={cell.aggregated}/{cell.rounds} {cell.seconds:.0f}s "
                  f"bounded rogue/honest={cell.rogue_bounded}/{cell.honest_bounded} "
                  f"{cell.crash} {'; '.join(cell.duplicates)}", flush=True)
            if args.json:
                args.json.write_text(json.dumps([vars(c) for c in cells], indent=1))
    print()
    quorum = (f"min_updates={args.min_updates}" if args.min_updates is not None else
              "min_updates: the default quorum (4 of 5) except where 'all required'")
    print(f"{args.learners} learners (learner {ROGUE} rogue), {args.rounds} rounds, MLP on digits "
          f"({args.partition}), "
          f"{quorum}. Cell: final centralized accuracy, rounds aggregated; "
          "bR+H: updates clipped or claims capped, the rogue's + the honest ones'; dN: "
          "submissions find_duplicates flags; CRASH@rN: a learner or the aggregator raised in "
          "round N (accuracy: the last published model's)")
    print(table(cells, [label for label, _, _ in chosen], attacks))
    _print_verdicts(cells)


def _print_verdicts(cells: list[Cell]) -> None:
    lines = verdicts(cells)
    if lines:
        print(f"\n{DEFAULTS}: no crash, every round aggregated, final accuracy within "
              f"{TOLERANCE * 100:.0f} points of the all-honest run?")
        print("\n".join(lines))


# --- the attack suite ----------------------------------------------------------------

#: The suite's default columns: label -> strategy.
SUITE_STRATEGIES: dict[str, Strategy] = {"default": ROBUST_FEDAVG, "FedAvg": FedAvg()}
#: More columns by name (--strategy 'former default').
MORE_STRATEGIES: dict[str, Strategy] = {"former default": FedAvg(clip=2.0, examples_cap=2.0)}
#: The targets (issue 19), in accuracy points below the same column's honest run.
TARGET_POINTS = {(5, 1): 1.0, (10, 2): 3.0, (10, 3): 3.0}
#: The most the default's honest runs may lose against plain FedAvg's, in points.
HONEST_POINTS = 0.5
RESULTS = Path(__file__).resolve().parent / "results"


def _suite_strategy(text: str) -> tuple[str, Strategy]:
    known = {**SUITE_STRATEGIES, **MORE_STRATEGIES}
    if text in known:
        return text, known[text]
    _, strategy, _ = parse_strategy(text)
    assert strategy is not None
    return text, strategy


def _setups(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        n, f = (int(x) for x in part.split(":"))
        pairs.append((n, f))
    return pairs


def _points(cell: attacks.Cell, honest: attacks.Cell) -> float:
    return round(100 * (cell.accuracy - honest.accuracy), 1)


def _cell_text(cell: attacks.Cell | None, honest: attacks.Cell | None) -> str:
    if cell is None:
        return ""
    text = f"{cell.accuracy:.3f}"
    if honest is not None and cell is not honest:
        text += f" ({_points(cell, honest):+.1f})"
    if cell.attack == "backdoor" and cell.backdoor is not None:
        text += f" · ASR {cell.backdoor:.2f}"
    return text


class Cells:
    """The suite's cells, looked up by (model, partition, n, f, strategy, attack); the honest
    run of n learners serves every f."""

    def __init__(self, cells: list[attacks.Cell]) -> None:
        self.cells = cells
        self.by = {(c.model, c.partition, c.learners, c.rogues, c.strategy, c.attack): c
                   for c in cells}

    def get(self, model: str, partition: str, n: int, f: int, strategy: str,
            attack: str) -> attacks.Cell | None:
        if attack == "none":
            f = 0
        return self.by.get((model, partition, n, f, strategy, attack))


def markdown(cells: list[attacks.Cell]) -> str:
    """One table per model and partition: a row per attack, a column per ratio and strategy."""
    found = Cells(cells)
    models = list(dict.fromkeys(c.model for c in cells))
    partitions = list(dict.fromkeys(c.partition for c in cells))
    labels = list(dict.fromkeys(c.strategy for c in cells))
    ratios = list(dict.fromkeys((c.learners, c.rogues) for c in cells if c.rogues))
    attack_names = [a for a in attacks.ATTACKS if any(c.attack == a for c in cells)]
    out = []
    for model in models:
        for partition in partitions:
            rounds = next((c.rounds for c in cells if c.model == model), 0)
            title = "Dirichlet(0.5)" if partition == "dirichlet" else "IID"
            out.append(f"**{model.upper()}, {title}** ({rounds} rounds): final accuracy "
                       "(points against the column's honest run)\n")
            header = ["attack"] + [f"{f} of {n}: {label}" for n, f in ratios for label in labels]
            out.append("| " + " | ".join(header) + " |")
            out.append("|---" + "|---:" * (len(header) - 1) + "|")
            for attack in attack_names:
                row = [f"`{attack}`" if attack != "none" else "honest run"]
                for n, f in ratios:
                    for label in labels:
                        cell = found.get(model, partition, n, f, label, attack)
                        honest = found.get(model, partition, n, f, label, "none")
                        text = _cell_text(cell, honest)
                        row.append(f"**{text}**" if label == "default" and text else text)
                row_text = "| " + " | ".join(row) + " |"
                out.append(row_text)
            out.append("")
    return "\n".join(out)


def suite_verdicts(cells: list[attacks.Cell], label: str = "default") -> list[str]:
    """Where column `label` misses the targets (TARGET_POINTS, HONEST_POINTS)."""
    found = Cells(cells)
    lines = []
    misses = checked = fair_misses = fair_checked = 0
    for c in cells:
        if c.strategy != label or c.attack in ("none", "absent") + NOT_HELD:
            continue
        absent = found.get(c.model, c.partition, c.learners, c.rogues, label, "absent")
        target = TARGET_POINTS.get((c.learners, c.rogues))
        if absent is not None and target is not None:
            fair_checked += 1
            fair_misses += -_points(c, absent) > target
        honest = found.get(c.model, c.partition, c.learners, 0, label, "none")
        if honest is None or target is None:
            continue
        checked += 1
        if -_points(c, honest) > target:
            misses += 1
            fair = ("" if absent is None else
                    f"; {_points(c, absent):+.1f} against the rogues-absent run "
                    f"{absent.accuracy:.3f}")
            lines.append(f"  MISS {c.model} {c.partition} {c.rogues} of {c.learners} "
                         f"{c.attack}: {c.accuracy:.3f} vs honest {honest.accuracy:.3f} "
                         f"({_points(c, honest):+.1f} points; target -{target:g}{fair})")
    for c in cells:
        if c.strategy != label or c.attack != "none":
            continue
        plain = found.get(c.model, c.partition, c.learners, 0, "FedAvg", "none")
        if plain is None:
            continue
        checked += 1
        if -_points(c, plain) > HONEST_POINTS:
            misses += 1
            lines.append(f"  MISS {c.model} {c.partition} {c.learners} honest learners: "
                         f"{c.accuracy:.3f} vs plain FedAvg {plain.accuracy:.3f}")
    lines.insert(0, f"{label}: {checked - misses} of {checked} cells meet the targets "
                    f"(1 of 5: within {TARGET_POINTS[5, 1]:g} point of the honest run; 2 and 3 "
                    f"of 10: within {TARGET_POINTS[10, 3]:g}; honest runs within "
                    f"{HONEST_POINTS} of plain FedAvg's; copy not held); against the "
                    f"rogues-absent run instead of the honest one, {fair_checked - fair_misses} "
                    f"of {fair_checked} attacked cells do")
    return lines


def suite_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(attacks.MODELS))
    p.add_argument("--partitions", default="iid,dirichlet")
    p.add_argument("--setups", default="5:1,10:2,10:3", help="learners:rogues, comma-separated")
    p.add_argument("--attacks", default=",".join(attacks.ATTACKS))
    p.add_argument("--strategy", action="append",
                   help="a column: 'default', 'FedAvg' or a constructor such as "
                        "'FedAvg(clip=1.5)'; repeatable (default: default and FedAvg; "
                        "'former default' is FedAvg(clip=2, examples_cap=2))")
    p.add_argument("--rounds", type=int, help="for every model (default: the model's)")
    p.add_argument("--json", type=Path, default=RESULTS / "robustness.json")
    p.add_argument("--markdown", type=Path, default=RESULTS / "robustness.md")
    p.add_argument("--table", type=Path, help="only print the tables of a --json file")
    args = p.parse_args(argv)
    if args.table:
        cells = [attacks.Cell(**c) for c in json.loads(args.table.read_text())]
        print(markdown(cells))
        print("\n".join(suite_verdicts(cells)))
        return
    names = args.attacks.split(",")
    unknown = sorted(set(names) - set(attacks.ATTACKS))
    if unknown:
        p.error(f"unknown attacks {unknown}; known: {', '.join(attacks.ATTACKS)}")
    if "none" not in names:
        names.insert(0, "none")
    columns = [_suite_strategy(s) for s in (args.strategy or list(SUITE_STRATEGIES))]
    print("columns: " + "; ".join(f"{label} = {json.dumps(s.to_plan())}"
                                  for label, s in columns), flush=True)
    cells: list[attacks.Cell] = []
    started = time.monotonic()
    for model in args.models.split(","):
        for partition in args.partitions.split(","):
            for n, f in _setups(args.setups):
                setup = attacks.Setup(model, partition, n, f)
                for label, strategy in columns:
                    for attack in names:
                        if attack == "none":
                            if Cells(cells).get(model, partition, n, 0, label, "none"):
                                continue
                            setup = attacks.Setup(model, partition, n, 0)
                        cell = attacks.run_cell(setup, strategy, label, attack, args.rounds)
                        setup = attacks.Setup(model, partition, n, f)
                        cells.append(cell)
                        print(f"{model} {partition:9} {cell.rogues} of {n} {label:10} "
                              f"{attack:10} acc={cell.accuracy:.4f}"
                              + (f" asr={cell.backdoor:.2f}" if cell.backdoor is not None
                                 else "")
                              + (f" carried={cell.carried}" if cell.carried else "")
                              + (f" excluded={cell.excluded}" if cell.excluded else "")
                              + f" {cell.seconds:.1f}s", flush=True)
                        if args.json:
                            args.json.parent.mkdir(parents=True, exist_ok=True)
                            args.json.write_text(json.dumps([vars(c) for c in cells], indent=1))
    text = markdown(cells)
    legend = ("Columns: " + "; ".join(f"{label} = `{_constructor(s)}`" for label, s in columns)
              + f". {time.monotonic() - started:.0f} s in all.\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(legend + "\n" + text + "\n")
    print()
    print(legend)
    print(text)
    print("\n".join(suite_verdicts(cells)))


def _constructor(strategy: Strategy) -> str:
    plan = strategy.to_plan()
    params = {k: v for k, v in plan["params"].items()
              if k in ("clip", "examples_cap", "align", "beta", "f", "m")}
    return f"{plan['name']}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def main() -> None:
    argv = sys.argv[1:]
    if "--chain" in argv:
        argv.remove("--chain")
        chain_main(argv)
    else:
        suite_main(argv)


if __name__ == "__main__":
    main()
