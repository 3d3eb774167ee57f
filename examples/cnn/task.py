"""The CNN of the Flower and NVIDIA FLARE quickstarts (conv 6 → 16, fc 120 → 84 → 10), and
a smaller tanh CNN for the DP job (`model = "dp"`: DPNet).

Digits upsampled to 32×32×3 by default; CIFAR-10 with `data = "cifar10"` and a data_dir.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from fedchain.errors import ConfigError
from fedchain.federation.learner import TorchLearner, takes_config
from fedchain.model.codec import Weights
from fedchain.model.torch import from_state_dict, to_state_dict
from fedchain.privacy.dpsgd import DPConfig
from fedchain.progress import progress

log = logging.getLogger("examples.cnn")


@dataclass(frozen=True)
class CNNOptions(Options):
    """The examples' options, and sample-level differential privacy (fedchain-dp.toml):
    `dp_noise` > 0 trains with DP-SGD (noise multiplier σ), each record's gradient clipped to
    `dp_clip`, `dp_batch` records sampled per step in expectation; the learner stops training
    before its ε at `dp_delta` would pass `dp_budget`. `model` picks the network (`MODELS`)."""

    dp_noise: float = 0.0  # 0: no differential privacy
    dp_clip: float = 1.0
    dp_batch: int = 128
    dp_delta: float = 1e-5
    dp_budget: float = math.inf
    model: str = "lenet"  # lenet (Net) | dp (DPNet, the DP job's smaller tanh CNN)

    def check(self, datasets: Sequence[str] = ("digits", "cifar10")) -> None:
        super().check(datasets)
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")


SETTINGS = Settings(CNNOptions, datasets=("digits", "cifar10"), output_dir="runs/cnn")
configure = SETTINGS.configure


class Net(nn.Module):
    """LeNet-style CNN for 32×32 images: two 5×5 convolutions, three dense layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class DPNet(nn.Module):
    """The DP job's CNN (`model = "dp"`, 6,378 parameters): the digits are 8×8 images
    upsampled to 32×32, so it first averages 4×4 blocks back to 8×8, then two 3×3
    convolutions (16, 32 channels) with tanh and 2×2 max pooling, and one dense layer.

    DP-SGD adds noise of the same norm per coordinate whatever the model learns, so the
    noise a step adds grows with the square root of the parameter count: 6,378 instead of
    Net's 62,006 cuts it threefold. Tanh instead of ReLU bounds the activations, which keeps
    the clipped gradients informative (Papernot et al., "Tempered sigmoid activations for
    deep learning with differential privacy", AAAI 2021)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.down = nn.AvgPool2d(4)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


#: The models `model` names: Net (the quickstarts' CNN, every job's default) and DPNet.
MODELS: dict[str, type[nn.Module]] = {"lenet": Net, "dp": DPNet}


def train(model: nn.Module, shard: Shard, config: Mapping[str, Any]) -> dict[str, float]:
    """SGD with momentum for config's epochs; returns the last epoch's loss and accuracy."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(config.get("lr", 0.001)),
        momentum=float(config.get("momentum", 0.9)),
    )
    epochs = int(config.get("epochs", 1))
    loss_sum, correct, seen = 0.0, 0, 0
    for epoch in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        round_seed = int(config.get("round", 0)) * 1000 + epoch
        loader = shard.loader(config.get("batch_size", 32), round=round_seed)
        for images, labels in progress(loader, f"train epoch {epoch + 1}/{epochs}"):
            optimizer.zero_grad()
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def test(
    model: nn.Module, shard: Shard, config: Mapping[str, Any]
) -> tuple[float, dict[str, float]]:
    """Mean cross-entropy and accuracy on a shard."""
    loss_sum, correct = 0.0, 0
    for images, labels in shard.loader(512, shuffle=False):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    return loss_sum / len(shard), {"accuracy": correct / len(shard)}


def _dataset(options: Options) -> Any:
    return load_dataset(options.data, options.data_dir, 32, 3, options.limit, options.seed)


def _model(seed: int, name: str = "lenet") -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name]()


def initial_weights(**options: Any) -> Weights:
    """The genesis model: the `model` option's network initialised from the seed (no data
    needed)."""
    opts = SETTINGS.resolve(**options)
    return from_state_dict(_model(opts.seed, opts.model).state_dict())


#: The [train] keys train() reads (a job file with others is refused, naming the key);
#: test() reads none from [evaluate].
TRAIN_KEYS = {"epochs": int, "lr": float, "momentum": float, "batch_size": int}


@takes_config(train=TRAIN_KEYS, evaluate={})
def make_learner(learner_id: int, num_learners: int, **options: Any) -> TorchLearner:
    """Learner `learner_id` of `num_learners`: its shard of the training data, and its test
    data (its own local split with `local_test`, else its slice of the held-out test set)."""
    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    train_shard, test_shard = shards(_dataset(opts), learner_id, num_learners, opts)
    log.info(
        "learner %d: %d training examples (%s, %s), per class %s; evaluates on %d %s",
        learner_id,
        len(train_shard),
        opts.data,
        opts.partition,
        label_counts(train_shard),
        len(test_shard),
        "local test examples of its own" if opts.local_test else "held-out test examples",
    )
    dp = None
    if opts.dp_noise:
        dp = DPConfig(noise_multiplier=opts.dp_noise, max_grad_norm=opts.dp_clip,
                      delta=opts.dp_delta, epsilon_budget=opts.dp_budget,
                      batch_size=opts.dp_batch)
        log.info("learner %d: DP-SGD, noise multiplier %g, clip %g, %d records a step in "
                 "expectation, budget epsilon %g at delta %g", learner_id, opts.dp_noise,
                 opts.dp_clip, opts.dp_batch, opts.dp_budget, opts.dp_delta)
    return TorchLearner(_model(opts.seed, opts.model), train, test, train_shard, test_shard, dp=dp)


_explained: set[float] = set()


def _explain_columns(opts: Options, held_out: int) -> None:
    """Says once what the evaluation table's distributed and centralized columns hold."""
    if opts.local_test in _explained:
        return
    _explained.add(opts.local_test)
    if opts.local_test:
        learners = f"their own local test data ({100 * opts.local_test:.0f} % of each partition)"
    else:
        learners = "their slices of the held-out test set (so the two columns agree)"
    log.info(
        "evaluation columns: distributed = example-weighted mean of the learners' evaluations "
        "on %s; centralized = the aggregator's evaluation on the held-out test set (%d images)",
        learners,
        held_out,
    )


def evaluate_global(round: int, weights: Weights, **options: Any) -> tuple[float, dict[str, float]]:
    """Centralized evaluation of a global model on the whole held-out test set."""
    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    ds = _dataset(opts)
    _explain_columns(opts, len(ds.y_test))
    model = MODELS[opts.model]()
    model.load_state_dict(to_state_dict(weights))
    model.eval()
    with torch.no_grad():
        return test(model, Shard(ds.x_test, ds.y_test, 0), {})
