"""Trust no single party: a committee outvotes a tampering aggregator, learners re-derive
every model, the audit shows the dissenting vote.

    .venv/bin/python -m examples.committee.run [--rounds 3] [--learners 4]

The MLP example on digits, in one process on the embedded chain and store: 3 aggregators with
quorum 2, the third one publishing the honest average × 2 every round. Each round closes on
the honest model (2 votes of 3); the tampered vote stays on chain as evidence, the learners
verify what they train on, and `fedchain audit --verify` names the member that voted wrong.

So that the run shows the same thing every time, the two honest members vote only once the
tampering one has (otherwise the honest quorum often closes a round first, and the contract
refuses the late tampered vote): every round then has three votes on chain, printed in the
committee's order, and the output is the same from run to run (its CIDs as torch computes
them on the machine's kernels: examples/committee/README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from examples.mlp import task
from fedchain.aggregation.strategy import Strategy
from fedchain.audit import audit_federation
from fedchain.eth.events import Voted
from fedchain.federation.aggregator import Aggregator
from fedchain.federation.simulation import simulate
from fedchain.model.codec import Weights


@dataclass(frozen=True)
class Doubling(Strategy):
    """Wraps the plan's strategy and publishes twice its result: a cheating aggregator."""

    honest: Strategy
    name: ClassVar[str] = "Doubling"

    def _aggregate(self, previous: Weights, updates: Any, state: Weights | None) -> Any:
        new, state = self.honest.aggregate(previous, updates, state)
        return {k: np.array(v * 2 if v.dtype.kind == "f" else v, dtype=v.dtype)
                for k, v in new.items()}, state


class TamperingAggregator(Aggregator):
    """A committee member that follows the protocol, except that its model is doubled."""

    def start(self) -> Any:
        plan = super().start()
        assert self.strategy is not None
        self.strategy = Doubling(self.strategy)
        return plan


class HonestAggregator(Aggregator):
    """An honest member that votes once the tampering member (committee member 2) has voted
    in the round (or a minute passed), so that its vote is on chain in every round."""

    tamperer: ClassVar[int] = 2

    def _vote(self, round: int, *args: Any, **kwargs: Any) -> Any:
        member = self.contract.committee()[0][self.tamperer]
        deadline = time.monotonic() + 60
        while (time.monotonic() < deadline and not self.stop_event.is_set() and not any(
                isinstance(v, Voted) and v.member == member
                for v in self.contract.events("Voted", round=round))):
            self.stop_event.wait(0.05)
        return super()._vote(round, *args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learners", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = simulate(
        task.make_learner, args.learners, rounds=args.rounds,
        initial_weights=task.initial_weights(), evaluate_fn=task.evaluate_global,
        aggregators=3, quorum=2, aggregator_types={0: HonestAggregator, 1: HonestAggregator,
                          2: TamperingAggregator},
        title="committee: 3 aggregators, quorum 2, member 2 tampering",
    )
    contract = result.contract
    members, quorum = contract.committee()
    print(f"committee {quorum} of {len(members)}: " + ", ".join(members))
    print(f"{'round':>5}  {'published':<60} votes (member: model)")
    for r in result.rounds:
        votes = sorted((v for v in contract.events("Voted", round=r.round)
                        if isinstance(v, Voted)), key=lambda v: members.index(v.member))
        shown = "; ".join(f"{v.member[:8]}: {v.model_cid.text[-8:]}" for v in votes)
        print(f"{r.round:>5}  {r.global_cid:<60} {shown}")
    accuracy = result.history.metrics_centralized.get("accuracy", [])
    if accuracy:
        print(f"centralized accuracy after round {accuracy[-1][0]}: {accuracy[-1][1]:.3f}")
    disputes = sum(len(n.disputed) for n in result.learners)
    verified = sum(len(n.verified) for n in result.learners)
    print(f"learners re-derived {verified} global models before training on them; "
          f"{disputes} disputes")
    report = audit_federation(contract, result.store)
    for check in report.failures():
        print(f"audit FAILED: round {check.round} {check.learner}: {check.what}: {check.detail}")
    dissent = {c.learner for c in report.failures() if c.what == "vote"}
    honest = all(c.what == "vote" for c in report.failures())
    print(f"audit: every published round {'verifies' if honest else 'DOES NOT verify'}; "
          f"dissenting member(s): {', '.join(sorted(d for d in dissent if d)) or 'none'}")
    return 0 if honest and dissent == {members[2]} else 1


if __name__ == "__main__":
    sys.exit(main())
