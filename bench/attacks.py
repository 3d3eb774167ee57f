"""The attack suite's engine: federations in-process, each round aggregated by a fedchain strategy.

A cell is (model, partition, learners, rogues, strategy, attack). It runs `rounds` rounds of
the example's real learners (`examples.<model>.task.make_learner`, their shards of the local
digits data, their train function and [train] config) and aggregates each round with
`Strategy.aggregate`, exactly the call `run_round` makes (updates in ascending learner order,
server state carried, a failing aggregation carrying the previous model over). What is left
out is the chain and the store: every learner's update is included (no quorum, deadline or
duplicate exclusion: fedchain's default plan has `exclude_duplicates` off), except that a
model file that does not decode (NaN / inf bytes) is excluded, as the aggregator's fetch
excludes it. `bench/robustness.py --chain` runs a few of these attacks through `simulate`.

The rogues are the last `rogues` learners (the victim of "copy" is learner 0). They know the
global model and, where an attack needs them (ALIE, IPM), the honest learners' updates of the
round. Δ is an update's difference from the round's global model; the honest learners
train as the example does. The attacks (each rogue sends, with its own shard's num_examples
unless said otherwise):

    none        its honest update (the honest run)
    absent      nothing (the run a perfect defence could reach: the honest learners alone)
    x-1         −Δ of its honest training (sign flip)
    x-10        −10 Δ
    x-10+claim  −10 Δ, claiming 2**40 examples
    w-10+claim  −10 × its trained weights (not Δ), claiming 2**40 examples (issue 19's case)
    alie        "a little is enough" (Baruch et al., 2019): per coordinate, mean − z·std of the
                honest updates of the round, z = Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f
    ipm         inner-product manipulation (Xie et al., 2020): global − ε × the honest updates'
                mean Δ, ε = 0.5
    ipm-10      the same with ε = 10
    labelflip   trains honestly on its shard with every label y turned into 9 − y
    backdoor    trains on its shard plus a copy of it with a trigger (a white square in the
                bottom-right corner, 2×2 of the 8×8 digit) relabelled as class 0, then boosts
                its Δ by n / f (model replacement, Bagdasaryan et al., 2020); the cell also
                reports the attack success rate: the share of triggered test images of other
                classes classified as 0
    noise       global + Gaussian noise, standard deviation 1 per coordinate
    claim       the global model unchanged (a free-rider), claiming 2**40 examples
    nan/inf     its honest weights with the first layer NaN and the others +inf, written
                past the codec's finiteness check (the aggregator's decode refuses it)
    copy        learner 0's update of the round, weights and num_examples
"""

from __future__ import annotations

import functools
import importlib
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from examples.common import Shard
from fedchain.aggregation.rules import Update
from fedchain.aggregation.strategy import Strategy
from fedchain.errors import AggregationError, InvalidModel
from fedchain.model import codec

Weights = dict[str, np.ndarray]

ATTACKS = ("none", "absent", "x-1", "x-10", "x-10+claim", "w-10+claim", "alie", "ipm", "ipm-10",
           "labelflip", "backdoor", "noise", "claim", "nan/inf", "copy")
CLAIM = 2**40
TARGET = 0  # the backdoor's target class


@dataclass(frozen=True)
class ModelSpec:
    """An example as the suite runs it."""

    module: str
    train: Mapping[str, Any]
    rounds: int
    trigger: int  # side of the trigger square, in pixels of the model's input


#: MLP: the example's [train] config (3 epochs of Adam), 8 rounds. CNN: its job's lr,
#: momentum and batch, one epoch per round instead of two (the CNN cells dominate the
#: suite's time), 10 rounds.
MODELS = {
    "mlp": ModelSpec("examples.mlp.task", {"epochs": 3, "lr": 0.001, "batch_size": 64}, 8, 2),
    "cnn": ModelSpec("examples.cnn.task",
                     {"epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 16}, 10, 8),
}


@dataclass(frozen=True)
class Setup:
    model: str
    partition: str  # iid | dirichlet (alpha 0.5)
    learners: int
    rogues: int

    @property
    def label(self) -> str:
        return f"{self.rogues} of {self.learners}"


@dataclass
class Cell:
    model: str
    partition: str
    learners: int
    rogues: int
    strategy: str
    attack: str
    rounds: int
    accuracy: float = math.nan
    backdoor: float | None = None  # attack success rate (backdoor and honest cells)
    carried: int = 0  # rounds whose aggregation failed (the previous model carried over)
    excluded: int = 0  # updates that did not decode
    seconds: float = 0.0
    accuracies: list[float] = field(default_factory=list)


def address(i: int) -> str:
    """Learner i's address: ascending with i, so updates come in learner-key order."""
    return "0x" + format(i + 1, "040x")


@functools.cache
def _task(model: str) -> Any:
    return importlib.import_module(MODELS[model].module)


def _trigger(x: np.ndarray, side: int) -> np.ndarray:
    out = x.copy()
    out[..., -side:, -side:] = 1.0  # white, the normalised pixels' top
    return out


@functools.cache
def _learners(model: str, partition: str, n: int) -> list[Any]:
    task = _task(model)
    return [task.make_learner(i, n, partition=partition, threads=1) for i in range(n)]


@functools.cache
def _rogue_learner(model: str, partition: str, n: int, i: int, kind: str) -> Any:
    """Learner i of n, training on poisoned data: labels flipped, or a backdoor added."""
    task = _task(model)
    learner = task.make_learner(i, n, partition=partition, threads=1)
    shard: Shard = learner.train_data
    if kind == "labelflip":
        learner.train_data = Shard(shard.x, (9 - shard.y).astype(shard.y.dtype), shard.seed)
    else:
        x = np.concatenate([shard.x, _trigger(shard.x, MODELS[model].trigger)])
        y = np.concatenate([shard.y, np.full_like(shard.y, TARGET)])
        learner.train_data = Shard(x, y, shard.seed)
    return learner


@functools.cache
def _evaluator(model: str) -> Any:
    import torch

    task = _task(model)
    torch.set_num_threads(1)
    net = task._model(task.SETTINGS.resolve()) if model == "mlp" else task.Net()
    ds = task._dataset(task.SETTINGS.resolve())
    x = torch.from_numpy(ds.x_test)
    others = ds.y_test != TARGET
    xt = torch.from_numpy(_trigger(ds.x_test[others], MODELS[model].trigger))
    y = torch.from_numpy(ds.y_test)

    def evaluate(weights: Weights) -> tuple[float, float]:
        from fedchain.model.torch import to_state_dict

        net.load_state_dict(to_state_dict(weights))
        net.eval()
        with torch.no_grad():
            accuracy = float((net(x).argmax(1) == y).float().mean())
            success = float((net(xt).argmax(1) == TARGET).float().mean())
        return accuracy, success

    return evaluate


def _floating(weights: Mapping[str, np.ndarray], fn: Any) -> Weights:
    return {k: (fn(k, v).astype(v.dtype) if v.dtype.kind == "f" else v.copy())
            for k, v in weights.items()}


def _scaled_delta(global_: Weights, weights: Weights, factor: float) -> Weights:
    return _floating(weights, lambda k, v: global_[k] + factor * (v.astype(np.float64)
                                                                  - global_[k]))


def encode_anything(weights: Mapping[str, np.ndarray], metadata: Any = None) -> bytes:
    """codec.encode, except that non-finite values are written instead of refused (what a
    hostile client can send)."""
    try:
        return codec.encode(weights, metadata)
    except InvalidModel:
        finite = {k: np.nan_to_num(v) if v.dtype.kind == "f" else v for k, v in weights.items()}
        raw = codec.encode(finite, metadata)
        header = 8 + int.from_bytes(raw[:8], "little")
        body = b"".join(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes()
                        for v in weights.values())
        assert len(body) == len(raw) - header
        return raw[:header] + body


def alie_z(n: int, f: int) -> float:
    s = math.floor(n / 2 + 1) - f
    return statistics.NormalDist().inv_cdf((n - s) / n)


def _rogue_updates(setup: Setup, attack: str, round: int, global_: Weights,
                   honest: Sequence[tuple[int, Weights, int]], config: Mapping[str, Any],
                   victim: tuple[Weights, int]) -> list[tuple[int, Weights, int]]:
    n, f = setup.learners, setup.rogues
    rogues = range(n - f, n)
    learners = _learners(setup.model, setup.partition, n)
    out: list[tuple[int, Weights, int]] = []
    if attack in ("alie", "ipm", "ipm-10"):
        stacked = {k: np.stack([w[k].astype(np.float64) for _, w, _ in honest])
                   for k, v in global_.items() if v.dtype.kind == "f"}
        if attack == "alie":
            z = alie_z(n, f)
            crafted = _floating(global_, lambda k, v: stacked[k].mean(0) - z * stacked[k].std(0))
        else:
            eps = 0.5 if attack == "ipm" else 10.0
            crafted = _floating(global_, lambda k, v: v - eps * (stacked[k].mean(0) - v))
        return [(i, crafted, learners[i].num_train) for i in rogues]
    if attack == "absent":
        return []
    for i in rogues:
        if attack == "claim":
            out.append((i, {k: v.copy() for k, v in global_.items()}, CLAIM))
            continue
        if attack == "copy":
            out.append((i, victim[0], victim[1]))
            continue
        if attack == "noise":
            rng = np.random.default_rng([round, i])
            noisy = {k: (v + rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f"
                     else v.copy() for k, v in global_.items()}
            out.append((i, noisy, learners[i].num_train))
            continue
        if attack in ("labelflip", "backdoor"):
            trained = _rogue_learner(setup.model, setup.partition, n, i, attack).train(
                global_, config)
            weights = trained.weights
            if attack == "backdoor":
                weights = _scaled_delta(global_, weights, n / f)
            out.append((i, weights, learners[i].num_train))
            continue
        trained = learners[i].train(global_, config)
        w, count = trained.weights, trained.num_examples
        if attack == "x-1":
            w = _scaled_delta(global_, w, -1.0)
        elif attack in ("x-10", "x-10+claim"):
            w = _scaled_delta(global_, w, -10.0)
        elif attack == "w-10+claim":
            w = _floating(w, lambda k, v: -10.0 * v)
        elif attack == "nan/inf":
            floating = [k for k, v in w.items() if v.dtype.kind == "f"]
            w = {k: np.full_like(v, np.nan if k == floating[0] else np.inf)
                 if k in floating else v for k, v in w.items()}
        elif attack != "none":
            raise ValueError(f"unknown attack {attack!r}")
        if attack.endswith("+claim"):
            count = CLAIM
        out.append((i, w, count))
    return out


def _decodes(weights: Weights) -> bool:
    """Whether the aggregator would accept the model file (it refuses non-finite values)."""
    if all(np.isfinite(v).all() for v in weights.values() if v.dtype.kind == "f"):
        return True  # what encode writes, decode reads back
    try:
        codec.decode(encode_anything(weights))
    except InvalidModel:
        return False
    return True


def run_cell(setup: Setup, strategy: Strategy, label: str, attack: str,
             rounds: int | None = None) -> Cell:
    """One federation: `rounds` rounds (the model's default) of `setup` under `attack`."""
    import torch

    torch.set_num_threads(1)
    spec = MODELS[setup.model]
    rounds = spec.rounds if rounds is None else rounds
    cell = Cell(setup.model, setup.partition, setup.learners, setup.rogues, label, attack, rounds)
    started = time.monotonic()
    task = _task(setup.model)
    learners = _learners(setup.model, setup.partition, setup.learners)
    evaluate = _evaluator(setup.model)
    weights: Weights = task.initial_weights()
    state: Weights | None = None
    n_honest = setup.learners - (0 if attack == "none" else setup.rogues)
    for r in range(1, rounds + 1):
        config = {**spec.train, "round": r}
        honest = []
        for i in range(n_honest):
            result = learners[i].train(weights, config)
            honest.append((i, result.weights, result.num_examples))
        rogue = [] if attack == "none" else _rogue_updates(
            setup, attack, r, weights, honest, config, (honest[0][1], honest[0][2]))
        updates = []
        for i, w, count in sorted(honest + rogue, key=lambda t: t[0]):
            if not _decodes(w):
                cell.excluded += 1
                continue
            updates.append(Update(address(i), int(count), w))
        try:
            weights, state = strategy.aggregate(weights, updates, state)
        except AggregationError:
            cell.carried += 1
        cell.accuracies.append(round4(evaluate(weights)[0]))
    accuracy, success = evaluate(weights)
    cell.accuracy = round4(accuracy)
    if attack in ("none", "backdoor"):
        cell.backdoor = round4(success)
    cell.seconds = round(time.monotonic() - started, 2)
    return cell


def round4(x: float) -> float:
    return float(f"{x:.4f}")


SETUPS = tuple(Setup(m, p, n, f) for m in MODELS for p in ("iid", "dirichlet")
               for n, f in ((5, 1), (10, 2), (10, 3)))

