"""The Learner API (Flower/MetisFL style): Learner, TorchLearner and their results."""

from __future__ import annotations

import difflib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError
from ..model.codec import Weights
from ..model.torch import from_state_dict, to_state_dict
from ..privacy.dpsgd import DPConfig, PrivacyLedger, SecureRandom, dp_sgd, steps_for

Metrics = dict[str, float]
#: The config keys a learner's train or evaluate reads, each with its type (int, float, str or
#: bool; float takes integers too). fedchain adds FEDCHAIN_KEYS itself.
ConfigKeys = Mapping[str, type]
#: The train config keys fedchain adds: the round, and FedProx's proximal_mu (TorchLearner
#: applies it; see `Plan.train_config`).
FEDCHAIN_KEYS = ("round", "proximal_mu")
F = TypeVar("F", bound=Callable[..., Any])


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
    """A participant's model and data. Subclass it, or use TorchLearner.

    `train_keys` / `eval_keys` declare the keys `train` / `evaluate` read from their config
    (a job file's [train] / [evaluate]), e.g. `{"lr": float, "epochs": int}`: a job file
    with another key, or a value of another type, is then refused when it is loaded, naming
    the key. None (the default) declares nothing, and any key is taken.
    """

    train_keys: ClassVar[ConfigKeys | None] = None
    eval_keys: ClassVar[ConfigKeys | None] = None

    @abstractmethod
    def get_weights(self) -> Weights: ...

    @abstractmethod
    def set_weights(self, weights: Weights) -> None: ...

    @abstractmethod
    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult: ...

    @abstractmethod
    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult: ...

    def privacy_report(self, round: int) -> Mapping[str, float] | None:
        """The learner's privacy account after `round` (its differential privacy parameters
        and ε, `privacy.dpsgd.PrivacyLedger.report`), published with its evaluation report of
        that round; None (the default) for a learner without differential privacy."""
        return None


def takes_config(*, train: ConfigKeys | None = None,
                 evaluate: ConfigKeys | None = None) -> Callable[[F], F]:
    """Declares, on a learner factory `make_learner(learner_id, num_learners)`, the config
    keys its learners' train and evaluate read (see `Learner.train_keys`), so a job file
    naming the factory is checked when it is loaded, before any learner is made."""
    def mark(factory: F) -> F:
        factory.train_keys = dict(train) if train is not None else None  # type: ignore[attr-defined]
        factory.eval_keys = dict(evaluate) if evaluate is not None else None  # type: ignore[attr-defined]
        return factory

    return mark


def declared_keys(factory: Any) -> tuple[ConfigKeys | None, ConfigKeys | None]:
    """The (train, evaluate) keys a learner factory or Learner class declares."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return getattr(factory, "train_keys", None), getattr(factory, "eval_keys", None)


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def config_problem(keys: ConfigKeys | None, config: Mapping[str, Any], section: str) -> str | None:
    """What is wrong with `config` for a learner taking `keys`, or None: an unknown key (with
    the closest declared one) or a value of the wrong type, named with `section`."""
    if keys is None:
        return None
    for key, value in config.items():
        if key in FEDCHAIN_KEYS:
            continue
        kind = keys.get(key)
        if kind is None:
            match = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            takes = ", ".join(keys) if keys else "no keys"
            return f"{section} has no key {key!r}{hint}; the learner takes {takes}"
        if not _fits(value, kind):
            what = _KINDS.get(kind, kind.__name__)
            return f"{section} {key} must be {what}, got {value!r}"
    return None


TrainFn = Callable[[Any, Any, Mapping[str, Any]], Mapping[str, float] | None]
EvalFn = Callable[[Any, Any, Mapping[str, Any]], tuple[float, Mapping[str, float]]]


def _num_examples(data: Any) -> int:
    dataset = getattr(data, "dataset", data)
    return len(dataset)


def _proximal_hooks(model: Any, mu: Any) -> list[Any]:
    """Gradient hooks adding μ·(w − w now) to each trainable parameter's gradient (none
    unless μ is a positive number)."""
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not mu > 0:
        return []
    hooks = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        anchor = param.detach().clone()

        def pull(grad: Any, param: Any = param, anchor: Any = anchor) -> Any:
            return grad + float(mu) * (param.detach() - anchor)

        hooks.append(param.register_hook(pull))
    return hooks


class TorchLearner(Learner):
    """A Learner around a torch.nn.Module, a train function, an eval function and data.

    `train_fn(model, train_data, config)` trains in place and may return metrics;
    `eval_fn(model, test_data, config)` returns `(loss, metrics)`. Weights map onto the
    module's `state_dict` by name, buffers (BatchNorm statistics, counters) included.
    `train_keys` / `eval_keys` declare the config keys the functions read (see Learner): a
    config with others, or a value of another type, is refused with ConfigError naming it.

    With `dp=DPConfig(...)` the learner trains with DP-SGD instead of `train_fn` (which may be
    None): Poisson-sampled batches, per-record gradients clipped and noised
    (`fedchain.privacy.dpsgd`), the train config's `lr`, `momentum` and `epochs`; it keeps
    its privacy ledger, reports it with each evaluation (`privacy_report`), and raises
    PrivacyBudgetExceeded instead of training a round that would pass its ε budget.
    `train_data` is then a torch Dataset (or a DataLoader over one) of (input, target)
    records.
    """

    def __init__(
        self,
        model: Any,
        train_fn: TrainFn | None,
        eval_fn: EvalFn,
        train_data: Any,
        test_data: Any,
        num_train_examples: int | None = None,
        num_test_examples: int | None = None,
        *,
        train_keys: ConfigKeys | None = None,
        eval_keys: ConfigKeys | None = None,
        dp: DPConfig | None = None,
    ) -> None:
        if train_keys is not None:
            self.train_keys = dict(train_keys)  # type: ignore[misc]
        if eval_keys is not None:
            self.eval_keys = dict(eval_keys)  # type: ignore[misc]
        self.model = model
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self.train_data = train_data
        self.test_data = test_data
        self.num_train = num_train_examples or _num_examples(train_data)
        self.num_test = num_test_examples or _num_examples(test_data)
        if dp is not None and not isinstance(dp, DPConfig):
            raise ConfigError(f"dp must be a DPConfig, not {type(dp).__name__}")
        if dp is None and train_fn is None:
            raise ConfigError("a TorchLearner needs a train function (or dp=DPConfig(...), "
                              "which trains with DP-SGD)")
        self.dp = dp
        #: The learner's privacy account (None without dp).
        self.privacy = PrivacyLedger(dp, _num_examples(train_data)) if dp else None
        self._rng = SecureRandom() if dp else None

    def get_weights(self) -> Weights:
        return from_state_dict(self.model.state_dict())

    def set_weights(self, weights: Weights) -> None:
        self.model.load_state_dict(to_state_dict(weights), strict=True)

    def train(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult:
        """`train_fn` on the round's global model. Under FedProx (the config's `proximal_mu`
        μ > 0) every gradient of a trainable parameter w gets μ·(w − w_global) added as it is
        computed: `train_fn`'s loss.backward() then yields the gradient of
        loss + μ/2·‖w − w_global‖², whatever optimizer it steps (its reported loss is its own)."""
        _check(self.train_keys, config, "the train config")
        if self.privacy is not None:
            return self._train_private(weights, config)
        self.set_weights(weights)
        self.model.train()
        hooks = _proximal_hooks(self.model, config.get("proximal_mu"))
        assert self.train_fn is not None  # checked in __init__
        try:
            metrics = self.train_fn(self.model, self.train_data, config) or {}
        finally:
            for hook in hooks:
                hook.remove()
        floats = {k: float(v) for k, v in metrics.items()}
        return TrainResult(self.get_weights(), self.num_train, floats)

    def _train_private(self, weights: Weights, config: Mapping[str, Any]) -> TrainResult:
        """DP-SGD for the round's steps, after checking they fit the budget."""
        assert self.privacy is not None and self.dp is not None and self._rng is not None
        round = int(config.get("round", 0))
        steps = steps_for(config, self.privacy.q)
        self.privacy.check(round, steps)  # raises PrivacyBudgetExceeded
        self.set_weights(weights)
        self.model.train()
        mu = config.get("proximal_mu")
        mu = float(mu) if isinstance(mu, int | float) and not isinstance(mu, bool) else 0.0
        metrics = dp_sgd(self.model, self.train_data, self.dp, self.privacy.q, steps, config,
                         self._rng, proximal_mu=max(mu, 0.0))
        self.privacy.record(round, steps)
        metrics["epsilon"] = self.privacy.epsilon()
        return TrainResult(self.get_weights(), self.num_train, metrics)

    def privacy_report(self, round: int) -> Mapping[str, float] | None:
        return None if self.privacy is None else self.privacy.report(round)

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        import torch

        _check(self.eval_keys, config, "the evaluate config")
        self.set_weights(weights)
        self.model.eval()
        with torch.no_grad():
            loss, metrics = self.eval_fn(self.model, self.test_data, config)
        return EvalResult(float(loss), self.num_test, {k: float(v) for k, v in metrics.items()})


def _check(keys: ConfigKeys | None, config: Mapping[str, Any], section: str) -> None:
    problem = config_problem(keys, config, section)
    if problem is not None:
        raise ConfigError(problem)
