"""A federation job described once in a TOML file; command-line flags override it.

```toml
[federation]
chain = "http://127.0.0.1:8545"     # or "embedded"
store = "http://127.0.0.1:5001"     # or "embedded", "file:///abs/dir"
contract = "0x…"                    # optional: else deployments/<chainId>.json

[model]
learner = "examples.cnn.task:make_learner"      # (learner_id, num_learners) -> Learner
evaluate = "examples.cnn.task:evaluate_global"  # optional: (round, weights) -> (loss, metrics)

[strategy]
name = "FedAvg"
scaling = "num_examples"

[run]
rounds = 3
learners = 3
min_updates = 3
round_timeout = 300

[train]       # sent to learners through the plan
epochs = 1
```
"""

from __future__ import annotations

import functools
import importlib
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aggregation.strategy import strategy_from_plan
from ..errors import ConfigError
from ..federation.config import RunConfig


@dataclass
class Job:
    """Everything a command needs to know about a federation."""

    chain: str = "embedded"
    store: str = "embedded"
    contract: str | None = None
    deployments: str = "deployments"
    learner: str | None = None
    evaluate: str | None = None
    initial: str | None = None
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "FedAvg", "params": {}})
    rounds: int = 3
    learners: int = 3
    min_updates: int | None = None
    round_timeout: float = 300.0
    wall_clock: float | None = None
    target_metric: str | None = None
    target: float | None = None
    train: dict[str, Any] = field(default_factory=dict)
    evaluate_config: dict[str, Any] = field(default_factory=dict)
    output: str = "runs/latest"
    learner_options: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def load(cls, path: str | Path | None) -> Job:
        """The job in a TOML file (defaults for everything it leaves out)."""
        if path is None:
            return cls()
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"job file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"job file {p}: {exc}") from None
        job = cls(base_dir=p.resolve().parent)
        fed, model, run = raw.get("federation", {}), raw.get("model", {}), raw.get("run", {})
        for key in ("chain", "store", "contract", "deployments"):
            if key in fed:
                setattr(job, key, fed[key] or None if key == "contract" else fed[key])
        job.learner = model.get("learner")
        job.evaluate = model.get("evaluate")
        job.initial = model.get("initial")
        job.learner_options = dict(model.get("options", {}))
        if "strategy" in raw:
            params = dict(raw["strategy"])
            name = params.pop("name", "FedAvg")
            job.strategy = {"name": name, "params": params}
        for key in ("rounds", "learners", "min_updates", "round_timeout", "wall_clock",
                    "target_metric", "target"):
            if key in run:
                setattr(job, key, run[key])
        job.train = dict(raw.get("train", {}))
        job.evaluate_config = dict(raw.get("evaluate", {}))
        job.output = raw.get("output", {}).get("dir", job.output)
        unknown = set(raw) - {"federation", "model", "strategy", "run", "train", "evaluate",
                              "output"}
        if unknown:
            raise ConfigError(f"job file {p}: unknown sections {sorted(unknown)}")
        return job

    def run_config(self) -> RunConfig:
        """The run's settings: the plan's contents and the aggregator's own."""
        return RunConfig(
            strategy=strategy_from_plan(self.strategy),
            rounds=self.rounds,
            min_updates=self.min_updates,
            train=dict(self.train),
            evaluate=dict(self.evaluate_config),
            round_timeout=self.round_timeout,
            wall_clock=self.wall_clock,
            target_metric=self.target_metric,
            target=self.target,
        )

    def learner_factory(self) -> Any:
        """`make_learner(id, num_learners)`, with the job's [model] options as keywords."""
        return self._with_options(self.resolve(self.learner, "learner factory"))

    def evaluate_fn(self) -> Any:
        """The centralized `evaluate(round, weights)`, or None; [model] options as keywords."""
        if not self.evaluate:
            return None
        return self._with_options(self.resolve(self.evaluate, "evaluate function"))

    def initial_weights(self) -> Any:
        """The genesis weights from [model] initial, or None when the job names none."""
        if not self.initial:
            return None
        return self._with_options(self.resolve(self.initial, "initial model"))()

    def _with_options(self, fn: Any) -> Any:
        options = dict(self.learner_options)
        return functools.partial(fn, **options) if options else fn

    def resolve(self, spec: str | None, what: str) -> Any:
        """Imports `module:attribute` (the job file's directory and cwd are importable)."""
        if not spec:
            raise ConfigError(f"no {what} given: set it in the job file's [model] section")
        module_name, _, attr = spec.partition(":")
        if not attr:
            raise ConfigError(f"{what} {spec!r} must look like 'package.module:function'")
        for d in (str(self.base_dir), str(Path.cwd())):
            if d not in sys.path:
                sys.path.insert(0, d)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module_name!r} for the {what}: {exc}") from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ConfigError(f"{module_name} has no {attr!r} (the {what})") from None
