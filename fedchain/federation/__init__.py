"""The federation runtime: learners, the aggregator, replay, history and simulation."""
