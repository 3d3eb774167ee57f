"""The Learner API (Flower/MetisFL style): Learner, TorchLearner and their results."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model.codec import Weights
from ..model.torch import from_state_dict, to_state_dict

Metrics = dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    """What local training produced: the new weights, how many examples, training metrics."""

    weights: Weights
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """What evaluating a model on local data gave."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class Learner(ABC):
    """A participant's model and data. Subclass it, or use TorchLearner."""

    @abstractmethod
    def get_weights(self) -> Weights: ...

    @abstractmethod
    def set_weights(self, weights: Weights) -> None: ...

    @abstractmethod
    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult: ...

    @abstractmethod
    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult: ...


TrainFn = Callable[[Any, Any, Mapping[str, Any]], Mapping[str, float] | None]
EvalFn = Callable[[Any, Any, Mapping[str, Any]], tuple[float, Mapping[str, float]]]


def _num_examples(data: Any) -> int:
    dataset = getattr(data, "dataset", data)
    return len(dataset)


class TorchLearner(Learner):
    """A Learner around a torch.nn.Module, a train function, an eval function and data.

    `train_fn(model, train_data, config)` trains in place and may return metrics;
    `eval_fn(model, test_data, config)` returns `(loss, metrics)`. Weights map onto the
    module's `state_dict` by name, buffers (BatchNorm statistics, counters) included.
    """

    def __init__(
        self,
        model: Any,
        train_fn: TrainFn,
        eval_fn: EvalFn,
        train_data: Any,
        test_data: Any,
        num_train_examples: int | None = None,
        num_test_examples: int | None = None,
    ) -> None:
        self.model = model
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self.train_data = train_data
        self.test_data = test_data
        self.num_train = num_train_examples or _num_examples(train_data)
        self.num_test = num_test_examples or _num_examples(test_data)

    def get_weights(self) -> Weights:
        return from_state_dict(self.model.state_dict())

    def set_weights(self, weights: Weights) -> None:
        self.model.load_state_dict(to_state_dict(weights), strict=True)

    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult:
        self.set_weights(weights)
        self.model.train()
        metrics = self.train_fn(self.model, self.train_data, config) or {}
        floats = {k: float(v) for k, v in metrics.items()}
        return TrainResult(self.get_weights(), self.num_train, floats)

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        import torch

        self.set_weights(weights)
        self.model.eval()
        with torch.no_grad():
            loss, metrics = self.eval_fn(self.model, self.test_data, config)
        return EvalResult(float(loss), self.num_test, {k: float(v) for k, v in metrics.items()})
