"""Candidate changes to `align` (SPEC §8.15), measured on the attack suite's cells it fails.

    .venv/bin/python bench/align_rules.py                           # every rule × CELLS
    .venv/bin/python bench/align_rules.py --rules spec,similarity --cells cnn:dirichlet:10:3:ipm
    .venv/bin/python bench/align_rules.py --json out.json

Not the protocol: each rule here is a prototype in float64 numpy over the whole round held in
memory (no blocks, no halving sums, no streaming), so its last bits are not fedchain's; `spec` is
§8.15 written the same way, and `default` is fedchain's own `ROBUST_FEDAVG`, the column to
check the prototypes against (on these cells `spec` and `default` agree to the digit). A cell
is `model:partition:learners:rogues:attack` as in `bench/robustness.py` (rogues 0 with attack
`none`: the honest run), run by `bench/attacks.py`.

The rules (all with the default's clip 2 and examples cap 2, bounds from the updates that
moved, divisor V = Σ W_k γ_k unless said):

    spec        §8.15: γ_k = max(0, cos(Δ_k, r)), r = Σ Δ_j / ν_j
    majority    spec; if at most half of the updates that moved have γ > 0, the direction of
                those with γ = 0 instead, when more updates agree with it
    wmajority   the same, counting (capped) weights instead of updates
    floor       spec with the divisor max(V, W / 2): a round agreed on by few moves less
    momentum    γ against the previous round's global change (spec in round 1): a direction
                the round's own rogues cannot steer
    mix         γ against r / ‖r‖ + the previous global change / its norm
    similarity  r = Σ_j (Δ_j / ν_j) / c_j, c_j = Σ_i max(0, cos(Δ_i, Δ_j)): a cluster of
                alike updates counts about once (after FoolsGold, Fung et al. 2020)
    similarity-sqrt   the same with √c_j
    influence2  spec, and one update's pull W_k ⊗ min(ν_k, B) at most twice the median pull
                (the cap and the clip bound each allow 2, together 4 × a median update's)
    influence1.5  the same, at most 1.5 × the median pull
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import attacks  # noqa: E402
from fedchain.aggregation.rules import Update  # noqa: E402
from fedchain.aggregation.strategy import ROBUST_FEDAVG, FedAvg, Strategy  # noqa: E402

RULES = ("spec", "majority", "wmajority", "floor", "momentum", "mix", "similarity",
         "similarity-sqrt", "influence2", "influence1.5")
#: The default's failing collusion cells, the honest runs (10 learners), and cells a rule
#: could break.
CELLS = (
    "cnn:dirichlet:10:2:w-10+claim", "cnn:dirichlet:10:2:ipm-10",
    "cnn:dirichlet:10:3:w-10+claim", "cnn:dirichlet:10:3:ipm", "cnn:dirichlet:10:3:ipm-10",
    "cnn:iid:10:3:w-10+claim", "mlp:dirichlet:10:3:w-10+claim",
    "cnn:dirichlet:10:0:none", "cnn:iid:10:0:none", "mlp:dirichlet:10:0:none",
    "cnn:dirichlet:10:3:x-1", "cnn:iid:10:3:x-10", "cnn:iid:10:3:alie",
    "mlp:dirichlet:10:3:x-10+claim", "cnn:iid:10:2:w-10+claim", "cnn:dirichlet:5:0:none",
    "mlp:dirichlet:5:0:none", "cnn:dirichlet:5:1:x-10", "cnn:iid:5:1:x-10",
    "mlp:dirichlet:5:1:noise",
)


def _unit_sum(units: np.ndarray, among: np.ndarray) -> np.ndarray:
    return units[among].sum(0)


def _cosines(deltas: np.ndarray, norms: np.ndarray, usable: np.ndarray,
             r: np.ndarray) -> np.ndarray:
    """γ_k = cos(Δ_k, r) clipped to [0, 1]; 0 where Δ_k did not move or r = 0."""
    rho = float(np.linalg.norm(r))
    if not 0.0 < rho < math.inf:
        return np.zeros(len(norms))
    safe = np.where(usable, norms, 1.0)
    return np.clip(np.where(usable, deltas @ r / (safe * rho), 0.0), 0.0, 1.0)


@dataclass(frozen=True)
class AlignRule(Strategy):
    """FedAvg(clip=2, examples_cap=2, align) with `rule`'s γ (module docstring)."""

    name = "AlignRule"
    stateful = True
    rule: str = "spec"

    def _aggregate(self, previous, updates, state):  # noqa: ANN001, ANN202
        ups: list[Update] = list(updates)
        if not ups:
            return previous, state
        names = [k for k in previous if np.issubdtype(previous[k].dtype, np.floating)]
        p = np.concatenate([previous[k].astype(np.float64).ravel() for k in names])
        deltas = np.stack([np.concatenate([u.weights[k].astype(np.float64).ravel()
                                           for k in names]) - p for u in ups])
        norms = np.sqrt((deltas * deltas).sum(1))
        usable = (norms > 0) & np.isfinite(norms)
        counted = usable if usable.any() else np.ones_like(usable)
        claims = np.array([u.num_examples for u in ups], np.float64)
        median_claim = np.sort(claims[counted])[(counted.sum() - 1) // 2]
        weights = np.minimum(claims, max(1.0, math.floor(2.0 * median_claim)))
        bound = 2.0 * np.sort(norms[counted])[(counted.sum() - 1) // 2]
        factors = np.where(norms <= bound, 1.0, bound / np.where(norms > 0, norms, 1.0))
        if self.rule.startswith("influence"):
            # one update's pull, W_k × its clipped change, at most c × the median pull
            pull = weights * np.minimum(norms, bound)
            limit = float(self.rule[len("influence"):]) * np.sort(pull[counted])[
                (counted.sum() - 1) // 2]
            factors = factors * np.where(pull > limit, limit / np.where(pull > 0, pull, 1.0),
                                         1.0)
        units = np.zeros_like(deltas)
        units[usable] = deltas[usable] / norms[usable, None]
        gamma = self._gamma(deltas, norms, usable, units, weights, names, state)
        divisor = float((weights * gamma).sum())
        if self.rule == "floor":
            divisor = max(divisor, float(weights.sum()) / 2)
        new = dict(previous)
        if divisor > 0:
            step = (deltas * (weights * factors * gamma)[:, None]).sum(0) / divisor
            offset = 0
            for k in names:
                size = previous[k].size
                new[k] = (p[offset:offset + size] + step[offset:offset + size]).reshape(
                    previous[k].shape).astype(previous[k].dtype)
                offset += size
        for k in previous:  # integer layers: §8.5 step 5, the capped weights' mean, rint (§8.1)
            if k not in names:
                total = sum(u.weights[k].astype(np.float64) * w
                            for u, w in zip(ups, weights, strict=True))
                new[k] = np.rint(total / weights.sum()).astype(previous[k].dtype)
        if self.rule in ("momentum", "mix"):
            state = {k: new[k].astype(np.float64) - previous[k].astype(np.float64)
                     for k in names}
        return new, state

    def _gamma(self, deltas, norms, usable, units, weights, names, state):  # noqa: ANN001, ANN202, PLR0913
        rule = self.rule
        if rule.startswith("similarity"):
            alike = np.clip(units @ units.T, 0.0, None).sum(1)
            crowd = np.where(usable, alike, 1.0)
            crowd = np.sqrt(crowd) if rule == "similarity-sqrt" else crowd
            return _cosines(deltas, norms, usable, (units / crowd[:, None]).sum(0))
        if rule in ("momentum", "mix") and state is not None:
            last = np.concatenate([state[k].ravel() for k in names])
            last = last / max(float(np.linalg.norm(last)), 1e-300)
            if rule == "mix":
                r = _unit_sum(units, usable)
                last = last + r / max(float(np.linalg.norm(r)), 1e-300)
            return _cosines(deltas, norms, usable, last)
        gamma = _cosines(deltas, norms, usable, _unit_sum(units, usable))
        if rule in ("majority", "wmajority"):
            mass = np.where(usable, weights if rule == "wmajority" else 1.0, 0.0)
            agree = mass[gamma > 0].sum()
            if 2 * agree <= mass.sum():
                other = _cosines(deltas, norms, usable, _unit_sum(units, usable & (gamma == 0)))
                if mass[other > 0].sum() > agree:
                    gamma = other
        return gamma


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default="default," + ",".join(RULES))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--json", type=Path, help="also write the cells here")
    args = p.parse_args()
    results = []
    for text in args.cells.split(","):
        model, partition, n, f, attack = text.split(":")
        setup = attacks.Setup(model, partition, int(n), int(f))
        for rule in args.rules.split(","):
            strategy = (ROBUST_FEDAVG if rule == "default" else FedAvg() if rule == "FedAvg"
                        else AlignRule(rule=rule))
            cell = attacks.run_cell(setup, strategy, rule, attack)
            results.append(vars(cell))
            print(f"{model} {partition:9} {f} of {n} {attack:11} {rule:16} "
                  f"acc={cell.accuracy:.3f} {cell.seconds:.0f}s", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
