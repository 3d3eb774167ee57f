"""MetisFL's quickstart in PyTorch: a dense network (256 → 128 → 10), Adam, FedAvg by examples.

Digits at their native 8×8 (64 inputs) by default; CIFAR-10 (32×32×3 = 3072 inputs, the
tutorial's data set) with `data = "cifar10"` and a data_dir.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from examples.common import (
    Options,
    Settings,
    Shard,
    label_counts,
    load_dataset,
    shards,
    use_threads,
)
from examples.datasets import Dataset
from fedchain.federation.learner import TorchLearner, takes_config
from fedchain.model.codec import Weights
from fedchain.model.torch import from_state_dict, to_state_dict
from fedchain.progress import progress

log = logging.getLogger("examples.mlp")

SETTINGS = Settings(Options, datasets=("digits", "cifar10"), output_dir="runs/mlp")
configure = SETTINGS.configure


class MLP(nn.Module):
    """Flatten, then dense ReLU layers, then the class logits (softmax is in the loss)."""

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (256, 128), num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train(model: nn.Module, shard: Shard, config: Mapping[str, Any]) -> dict[str, float]:
    """Adam for config's epochs (3 by default); the last epoch's loss and accuracy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("lr", 0.001)))
    loss_sum, correct, seen = 0.0, 0, 0
    epochs = int(config.get("epochs", 3))
    for epoch in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        round_seed = int(config.get("round", 0)) * 1000 + epoch
        loader = shard.loader(config.get("batch_size", 64), round=round_seed)
        for x, y in progress(loader, f"train epoch {epoch + 1}/{epochs}"):
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def test(
    model: nn.Module, shard: Shard, config: Mapping[str, Any]
) -> tuple[float, dict[str, float]]:
    """Mean cross-entropy and accuracy on a shard."""
    loss_sum, correct = 0.0, 0
    for x, y in shard.loader(1024, shuffle=False):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(shard), {"accuracy": correct / len(shard)}


def _dataset(options: Options) -> Dataset:
    if options.data == "cifar10":
        return load_dataset("cifar10", options.data_dir, 32, 3, options.limit, options.seed)
    return load_dataset("digits", "", 8, 1, options.limit, options.seed)


def _model(options: Options) -> MLP:
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        return MLP(3 * 32 * 32 if options.data == "cifar10" else 8 * 8)


def initial_weights(**options: Any) -> Weights:
    """The genesis model, initialised from the seed (no data needed)."""
    return from_state_dict(_model(SETTINGS.resolve(**options)).state_dict())


#: The [train] keys train() reads (a job file with others is refused, naming the key);
#: test() reads none from [evaluate].
TRAIN_KEYS = {"epochs": int, "lr": float, "batch_size": int}


@takes_config(train=TRAIN_KEYS, evaluate={})
def make_learner(learner_id: int, num_learners: int, **options: Any) -> TorchLearner:
    """Learner `learner_id` of `num_learners`: its shard of the training and test data."""
    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    train_shard, test_shard = shards(_dataset(opts), learner_id, num_learners, opts)
    log.info(
        "learner %d: %d training examples (%s, %s), per class %s",
        learner_id,
        len(train_shard),
        opts.data,
        opts.partition,
        label_counts(train_shard),
    )
    return TorchLearner(_model(opts), train, test, train_shard, test_shard)


def evaluate_global(round: int, weights: Weights, **options: Any) -> tuple[float, dict[str, float]]:
    """Centralized evaluation of a global model on the whole held-out test set."""
    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    ds = _dataset(opts)
    model = _model(opts)
    model.load_state_dict(to_state_dict(weights))
    model.eval()
    with torch.no_grad():
        return test(model, Shard(ds.x_test, ds.y_test, 0), {})
