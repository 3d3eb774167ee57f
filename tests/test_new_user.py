"""Issue 22's new-user trip-ups: the engine simulate picks, failure messages that say what
happened and what to do, results that survive a restart, and output a user can read."""

from __future__ import annotations

import logging

import pytest
from fedmodels import LinearLearner

from fedchain.aggregation.strategy import FedAvg
from fedchain.federation.simulation import AUTO_POOL_ABOVE, choose_engine, simulate

# --- item 3: the engine is chosen by the federation's size ------------------------------------


def test_simulate_picks_threads_for_a_handful_of_learners_and_the_pool_past_that(caplog):
    with caplog.at_level(logging.INFO, logger="fedchain.simulation"):
        assert choose_engine(None, 1) == "threads"
        assert choose_engine(None, AUTO_POOL_ABOVE) == "threads"
        assert choose_engine(None, AUTO_POOL_ABOVE + 1) == "pool"
        assert choose_engine(None, 1000) == "pool"
    said = [r.getMessage() for r in caplog.records]
    assert any("engine: pool (1000 learners > 8" in m and "--engine threads" in m for m in said)
    # Named engines are kept, whatever the size.
    assert choose_engine("threads", 1000) == "threads"
    assert choose_engine("pool", 2) == "pool"


def test_a_simulation_without_an_engine_runs_the_pool_past_a_handful(store, caplog):
    with caplog.at_level(logging.INFO, logger="fedchain.simulation"):
        result = simulate(lambda i, n: LinearLearner(i, num_examples=8), AUTO_POOL_ABOVE + 1,
                          FedAvg(), 1, store=store, train_config={"steps": 1})
    assert result.engine == "pool"
    assert len(result.rounds[0].included) == AUTO_POOL_ABOVE + 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine:")]
    assert len(said) == 1 and "engine: pool" in said[0]
    small = simulate(lambda i, n: LinearLearner(i), 3, FedAvg(), 1, store=store,
                     train_config={"steps": 1})
    assert small.engine == "threads" and len(small.learners) == 3
