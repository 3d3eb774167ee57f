"""Sample-level differential privacy for one learner: DP-SGD and its privacy ledger.

Each step of DP-SGD (Abadi et al. 2016) samples the learner's records by Poisson sampling
(each record independently, with probability q = batch_size / records), computes every
sampled record's gradient (torch.func: vmap of grad), clips each to norm `max_grad_norm` C,
sums them, adds Gaussian noise N(0, (σ·C)²) to every coordinate of the sum, and divides by
the expected batch size q·records; the optimizer steps on that. The accountant
(`accountant.epsilon`) then bounds what the steps reveal about any one record.

The noise and the sample come from a private local generator: AES-256-CTR keyed with 32 bytes
of the operating system's CSPRNG (`os.urandom`), drawn anew for every learner. Never from a
public source (a seed on chain, a block hash, the round number): whoever knows the noise
subtracts it, and the update is as revealing as one trained without it.

`PrivacyLedger` is the learner's own account: the steps it took in each round, its ε after
each, the refusal to train once the next round would take it past its budget, and the
figures it reports on chain with its evaluation of each round (`report`), from which anyone
recomputes its ε (`fedchain privacy`, `fedchain audit`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ConfigError, PrivacyBudgetExceeded
from .accountant import epsilon

#: The keys of a learner's privacy report inside its evaluation report (all numbers):
#: the noise multiplier σ, the sampling rate q, the round's steps, the learner's steps in
#: all rounds so far, δ, its ε(δ) after those steps, and its budget (absent when unbounded).
REPORT_KEYS = ("dp_sigma", "dp_q", "dp_steps", "dp_total_steps", "dp_delta", "dp_epsilon",
               "dp_budget")
#: Every privacy key starts with this (the distributed metrics leave them out).
PREFIX = "dp_"


@dataclass(frozen=True)
class DPConfig:
    """A learner's DP-SGD settings and privacy budget (its own, not the plan's).

    `noise_multiplier` σ: the noise's standard deviation in units of `max_grad_norm` C, the
    norm each record's gradient is clipped to. `batch_size`: the expected number of records
    a step samples (q = batch_size / records, fixed for the learner's life). The learner
    refuses to train a round that would take its ε at `delta` past `epsilon_budget`.
    `loss(outputs, targets)`: the mean loss of a batch (default: cross-entropy); it is
    called on single records, so it must not mix records (no BatchNorm in the model).
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    epsilon_budget: float = math.inf
    batch_size: int = 64
    loss: Callable[[Any, Any], Any] | None = None
    #: Records whose per-sample gradients are computed at once (memory: chunk × model size).
    chunk: int = 128

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, int | float)

        if not (number(self.noise_multiplier) and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier > 0):
            raise ConfigError("dp noise_multiplier must be a positive number (the noise's "
                              f"standard deviation over max_grad_norm), got "
                              f"{self.noise_multiplier!r}")
        if not (number(self.max_grad_norm) and math.isfinite(self.max_grad_norm)
                and self.max_grad_norm > 0):
            raise ConfigError(f"dp max_grad_norm must be a positive number, got "
                              f"{self.max_grad_norm!r}")
        if not (number(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"dp delta must be between 0 and 1, got {self.delta!r}")
        if not (number(self.epsilon_budget) and self.epsilon_budget > 0):
            raise ConfigError(f"dp epsilon_budget must be a positive number (inf: none), got "
                              f"{self.epsilon_budget!r}")
        for name in ("batch_size", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"dp {name} must be a positive integer, got {value!r}")


class SecureRandom:
    """Uniform and Gaussian numbers from AES-256-CTR under a key from os.urandom: a
    cryptographically strong stream no one else can reproduce (a fresh key per instance)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._enc = Cipher(algorithms.AES(key or os.urandom(32)),
                           modes.CTR(bytes(16))).encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """n float64 in (0, 1]: 53 random bits each."""
        words = np.frombuffer(self._enc.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53

    def normal(self, n: int) -> np.ndarray:
        """n standard normal float64 (Box–Muller on pairs of uniforms)."""
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        radius = np.sqrt(-2.0 * np.log(u[:half]))
        angle = 2.0 * np.pi * u[half:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def poisson_sample(self, n: int, q: float) -> np.ndarray:
        """The indices of n records each kept independently with probability q."""
        return np.flatnonzero(self.uniform(n) <= q) if q < 1 else np.arange(n)


def sampling_rate(batch_size: int, records: int) -> float:
    """q = batch_size / records (1 when the batch covers every record)."""
    if records < 1:
        raise ConfigError("DP-SGD needs at least one training record")
    return min(1.0, batch_size / records)


def steps_for(config: Mapping[str, Any], q: float) -> int:
    """The DP-SGD steps of a round: the train config's `epochs` (default 1) passes over the
    data in expectation, 1/q steps each."""
    epochs = config.get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
        raise ConfigError(f"the train config's epochs must be a positive number, got {epochs!r}")
    return max(1, round(epochs / q))


class PrivacyLedger:
    """A learner's privacy account: its DP settings, sampling rate, and steps per round."""

    def __init__(self, dp: DPConfig, records: int) -> None:
        self.dp = dp
        self.records = records
        self.q = sampling_rate(dp.batch_size, records)
        #: round → DP-SGD steps taken on the learner's data in that round.
        self.steps: dict[int, int] = {}

    def total(self, through: int | None = None) -> int:
        """Steps in every round (up to and including `through`)."""
        return sum(s for r, s in self.steps.items() if through is None or r <= through)

    def epsilon(self, steps: int | None = None) -> float:
        """ε at the config's δ after `steps` steps (default: all taken so far)."""
        total = self.total() if steps is None else steps
        return epsilon(self.dp.noise_multiplier, self.q, total, self.dp.delta)

    def check(self, round: int, steps: int) -> None:
        """Raises PrivacyBudgetExceeded if `steps` more steps in `round` would take ε past
        the budget."""
        after = self.epsilon(self.total() + steps)
        if after > self.dp.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"training round {round} ({steps} DP-SGD steps at sampling rate {self.q:.4g}, "
                f"noise multiplier {self.dp.noise_multiplier:g}) would take epsilon from "
                f"{self.epsilon():.4g} to {after:.4g} at delta {self.dp.delta:g}, past the "
                f"budget of {self.dp.epsilon_budget:g}: this learner trains no more")

    def record(self, round: int, steps: int) -> None:
        self.steps[round] = self.steps.get(round, 0) + steps

    def report(self, round: int) -> dict[str, float]:
        """What the learner reports with its evaluation of `round`: enough for anyone to
        recompute its ε after the round (`recompute`)."""
        total = self.total(round)
        body = {
            "dp_sigma": float(self.dp.noise_multiplier), "dp_q": float(self.q),
            "dp_steps": float(self.steps.get(round, 0)), "dp_total_steps": float(total),
            "dp_delta": float(self.dp.delta), "dp_epsilon": self.epsilon(total),
        }
        if math.isfinite(self.dp.epsilon_budget):
            body["dp_budget"] = float(self.dp.epsilon_budget)
        return body


def recompute(report: Mapping[str, Any]) -> float:
    """A privacy report's ε, recomputed from its σ, q, total steps and δ."""
    steps = report["dp_total_steps"]
    if not float(steps).is_integer():
        raise ConfigError(f"dp_total_steps must be a whole number, got {steps!r}")
    return epsilon(float(report["dp_sigma"]), float(report["dp_q"]), int(steps),
                   float(report["dp_delta"]))


def budget_spent(reports: list[Mapping[str, Any]]) -> bool:
    """Whether a learner's privacy reports (oldest first) show it cannot train another round:
    its latest total steps plus its latest positive round's steps would take its ε past its
    budget (the check the learner itself makes, `PrivacyLedger.check`, with the steps of the
    round it last trained). False when the reports cannot tell (no budget, no steps, or a
    report that does not parse): an aggregator stops waiting only for a learner that has
    said, on chain, that it is done."""
    try:
        latest = reports[-1]
        budget = latest.get("dp_budget")
        steps = [int(r["dp_steps"]) for r in reports if float(r.get("dp_steps", 0)) > 0]
        if budget is None or not steps:
            return False
        return epsilon(float(latest["dp_sigma"]), float(latest["dp_q"]),
                       int(latest["dp_total_steps"]) + steps[-1],
                       float(latest["dp_delta"])) > float(budget)
    except (IndexError, KeyError, TypeError, ValueError, ConfigError, OverflowError):
        return False


# --- DP-SGD --------------------------------------------------------------------------


def _dataset(data: Any) -> Any:
    return getattr(data, "dataset", data)


def gather(data: Any, index: np.ndarray) -> tuple[Any, Any]:
    """The records at `index` as batched tensors (inputs, targets): a TensorDataset's
    tensors indexed directly, any other dataset's records collated."""
    import torch
    from torch.utils.data import TensorDataset, default_collate

    dataset = _dataset(data)
    if isinstance(dataset, TensorDataset):
        picked = torch.from_numpy(index)
        inputs, targets = (t[picked] for t in dataset.tensors[:2])
        return inputs, targets
    batch = default_collate([dataset[int(i)] for i in index])
    return batch[0], batch[1]


def _refuse_batch_norm(model: Any) -> None:
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(f"layer {name or 'model'} is {type(module).__name__}: batch "
                              "normalisation mixes records, so per-record gradients (DP-SGD) "
                              "are undefined; use GroupNorm or LayerNorm")


def clipped_gradient_sum(model: Any, loss_fn: Callable[[Any, Any], Any], inputs: Any,
                         targets: Any, max_norm: float,
                         chunk: int = 128) -> tuple[dict[str, Any], Any]:
    """Σ_i clip(∇ℓ(x_i, y_i), max_norm) over the records given, per trainable parameter, and
    the per-record gradient norms before clipping. clip(g, C) = g · min(1, C / ‖g‖), ‖·‖ over
    all trainable parameters together."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def record_loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        out = functional_call(model, ({**p, **frozen}, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_record = vmap(grad(record_loss), in_dims=(None, 0, 0), randomness="different")
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    norms = []
    for start in range(0, len(inputs), chunk):
        grads = per_record(params, inputs[start:start + chunk], targets[start:start + chunk])
        flat = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()])
        norm = flat.sum(0).sqrt()
        factor = (max_norm / (norm + 1e-12)).clamp(max=1.0)
        for k, g in grads.items():
            sums[k] += torch.einsum("i,i...->...", factor.to(g.dtype), g)
        norms.append(norm)
    return sums, (torch.cat(norms) if norms else torch.zeros(0))


def dp_sgd(model: Any, data: Any, dp: DPConfig, q: float, steps: int,
           config: Mapping[str, Any], rng: SecureRandom,
           proximal_mu: float = 0.0) -> dict[str, float]:
    """`steps` steps of DP-SGD on `model` (in place) over `data`'s records: SGD with the
    train config's `lr` (default 0.01) and `momentum` (default 0) on the noisy mean of the
    clipped per-record gradients; FedProx's μ·(w − w_global) (data-independent) is added
    after the noise. Returns the mean training loss and the share of records whose gradient was
    clipped (`clipped`)."""
    import torch
    import torch.nn.functional as F

    _refuse_batch_norm(model)
    loss_fn = dp.loss or F.cross_entropy
    records = len(_dataset(data))
    params = [p for p in model.parameters() if p.requires_grad]
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = torch.optim.SGD(params, lr=float(config.get("lr", 0.01)),
                                momentum=float(config.get("momentum", 0.0)))
    expected = q * records
    std = dp.noise_multiplier * dp.max_grad_norm
    seen = clipped = 0
    loss_sum = 0.0
    for _ in range(steps):
        index = rng.poisson_sample(records, q)
        if len(index):
            inputs, targets = gather(data, index)
            sums, norms = clipped_gradient_sum(model, loss_fn, inputs, targets,
                                               dp.max_grad_norm, dp.chunk)
            with torch.no_grad():
                loss_sum += float(loss_fn(model(inputs), targets)) * len(index)
            seen += len(index)
            clipped += int((norms > dp.max_grad_norm).sum())
        else:
            sums = {k: torch.zeros_like(p) for k, p in zip(names, params, strict=True)}
        for i, (name, p) in enumerate(zip(names, params, strict=True)):
            noise = torch.from_numpy(rng.normal(p.numel())).reshape(p.shape).to(p.dtype)
            g = (sums[name] + std * noise) / expected
            if anchors:
                g = g + proximal_mu * (p.detach() - anchors[i])
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"train_loss": loss_sum / max(seen, 1), "clipped": clipped / max(seen, 1)}
