"""Seconds per round of `simulate` told no engine, on Anvil (issue 22, item 3).

`simulate(make_learner, 100, …)` without `engine=` picks the pool past 8 learners; this runs
100 of bench/scale.py's 4-parameter learners for 3 rounds on a fresh Anvil (a block per
transaction, `fedchain devnet`'s default) and prints the engine chosen and each round's
seconds (target: ≤ 2 s a round).

    .venv/bin/python bench/default_engine.py [--learners 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale  # noqa: E402  (bench/scale.py: TinyLearner, RoundClock)

from fedchain.aggregation.strategy import FedAvg  # noqa: E402
from fedchain.cli import devnet  # noqa: E402
from fedchain.federation.config import RunConfig  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.storage.local import LocalStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s | %(message)s")
    logging.getLogger("fedchain.simulation").setLevel(logging.INFO)
    clock = scale.RoundClock()
    aggregator_log = logging.getLogger("fedchain.aggregator")
    aggregator_log.setLevel(logging.INFO)
    aggregator_log.addHandler(clock)
    aggregator_log.propagate = False  # its lines time the rounds; not printed
    node = devnet.start_anvil()
    try:
        store = LocalStore(tempfile.mkdtemp(prefix="fedchain-engine-"), durable=False)
        result = simulate(lambda i, _: scale.TinyLearner(i), args.learners, FedAvg(),
                          args.rounds, chain=node.url, store=store, min_updates=1,
                          config=RunConfig(round_timeout=600.0, evaluation_timeout=30.0),
                          initial_weights=scale.initial_weights())
    finally:
        node.stop()
    rounds = clock.rounds()
    print(f"{args.learners} learners on Anvil, no engine named: engine {result.engine}; "
          f"seconds per round {', '.join(f'{s:.2f}' for s in rounds)} "
          f"(mean {sum(rounds) / len(rounds):.2f}; target ≤ 2 s)")


if __name__ == "__main__":
    main()
