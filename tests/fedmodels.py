"""Tiny deterministic learners for federation tests (numpy linear regression, no torch).

Real learners in every respect that matters to the protocol: they train, their weights go
through the codec, the store and the chain. `RogueLearner` variants misbehave on purpose.
"""

from __future__ import annotations

import numpy as np

from fedchain.federation.learner import EvalResult, Learner, TrainResult

TRUE_W = np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)


def initial_weights() -> dict[str, np.ndarray]:
    return {"linear.weight": np.zeros(4, np.float32), "steps": np.zeros((), np.int64)}


class LinearLearner(Learner):
    """Least squares by a few steps of gradient descent on a seeded local data set."""

    def __init__(self, learner_id: int, num_examples: int | None = None) -> None:
        rng = np.random.default_rng(1000 + learner_id)
        n = num_examples or 40 + 20 * learner_id
        self.x = rng.normal(size=(n, 4)).astype(np.float32)
        self.y = (self.x @ TRUE_W + rng.normal(scale=0.1, size=n)).astype(np.float32)
        self.weights = initial_weights()

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights

    def train(self, weights, config):
        w = weights["linear.weight"].copy()
        lr = np.float32(config.get("lr", 0.1))
        for _ in range(int(config.get("steps", 5))):
            grad = self.x.T @ (self.x @ w - self.y) / np.float32(len(self.x))
            w = (w - lr * grad).astype(np.float32)
        new = {"linear.weight": w, "steps": np.asarray(weights["steps"] + 1, dtype=np.int64)}
        return TrainResult(new, len(self.x), {"train_mse": self._mse(w)})

    def evaluate(self, weights, config):
        mse = self._mse(weights["linear.weight"])
        return EvalResult(mse, len(self.x), {"mse": mse})

    def _mse(self, w):
        return float(np.mean((self.x @ w - self.y) ** 2))


class WrongShapeLearner(LinearLearner):
    def train(self, weights, config):
        result = super().train(weights, config)
        return TrainResult({**result.weights, "linear.weight": np.zeros(5, np.float32)},
                           result.num_examples)


def make_learner(learner_id: int, num_learners: int) -> Learner:
    return LinearLearner(learner_id)
