"""Cheating committee members for tests: what a dishonest aggregator publishes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedchain.aggregation.strategy import Strategy
from fedchain.federation.aggregator import Aggregator
from fedchain.model.codec import Weights


@dataclass(frozen=True)
class Doubling(Strategy):
    """The plan's strategy, its result doubled: what a cheating aggregator publishes."""

    honest: Strategy
    name: ClassVar[str] = "Doubling"

    def _aggregate(self, previous: Weights, updates: Any, state: Weights | None) -> Any:
        new, state = self.honest.aggregate(previous, updates, state)
        return {k: np.array(v * 2, dtype=v.dtype) for k, v in new.items()}, state


class Tampering(Aggregator):
    """Votes for the genesis honestly, then publishes every model doubled."""

    def start(self) -> Any:
        plan = super().start()
        assert self.strategy is not None
        self.strategy = Doubling(self.strategy)
        return plan
