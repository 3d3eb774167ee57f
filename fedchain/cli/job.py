"""A federation job described once in a TOML file; command-line flags override it.

```toml
[federation]
chain = "http://127.0.0.1:8545"     # or "embedded"
store = "http://127.0.0.1:5001"     # or "embedded", "file:///abs/dir"
contract = "0x…"                    # optional: else deployments/<chainId>.json

[model]
learner = "examples.cnn.task:make_learner"      # (learner_id, num_learners) -> Learner
evaluate = "examples.cnn.task:evaluate_global"  # optional: (round, weights) -> (loss, metrics)

[strategy]                          # without this section: the next four lines
name = "FedAvg"
clip = 2.0                          # Byzantine bounds; leave the three out for plain FedAvg
examples_cap = 2.0
align = true

[run]
rounds = 3
learners = 3
# min_updates = 2                   # default: a quorum, ceil(2 × learners / 3)
round_timeout = 300

[protocol]    # optional: the committee, deadlines, sampling, async rounds, verification
aggregators = 3                     # committee size (simulate; deploy --aggregators)
quorum = 2                          # votes that close a round (a majority)
update_window = 120                 # seconds a round takes updates (0: no deadline)
vote_window = 120                   # then seconds for votes; after it anyone may close
fraction = 1.0                      # share of learners sampled per round
verify = "full"                     # learners re-derive each global model: full|sampled|off
train_schedule = { lr = { 4 = 0.05 } }  # per-round [train] values: lr 0.05 from round 4

[train]       # sent to learners through the plan
epochs = 1
```

Every command that reads a job file takes `--run-config section.key=value` overrides (see
`parse_run_config`), checked by the same rules as the file.

Defaults (what a job without [strategy] or min_updates runs) survive one rogue learner of
five: `ROBUST_FEDAVG` and a two-thirds quorum (`federation.config.default_min_updates`). A
[strategy] section is taken as written: `name = "FedAvg"` alone is plain FedAvg.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aggregation import strategy as strategies
from ..aggregation.strategy import ROBUST_FEDAVG, strategy_from_plan
from ..errors import ConfigError
from ..federation.config import RunConfig
from ..protocol.params import check_field, describe, protocol_fields

#: The devnet's chain, the default of the commands that run in processes of their own.
DEVNET_CHAIN = "http://127.0.0.1:8545"

#: The strategy of a job whose file has no [strategy] section: FedAvg with Byzantine bounds.
DEFAULT_STRATEGY: dict[str, Any] = {
    "name": ROBUST_FEDAVG.name,
    "params": {"clip": ROBUST_FEDAVG.clip, "examples_cap": ROBUST_FEDAVG.examples_cap,
               "align": ROBUST_FEDAVG.align},
}

#: A check of one value: None if it is fine, else what it should have been.
Check = Callable[[Any], str | None]


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _table(value: Any) -> str | None:
    return None if isinstance(value, dict) else "a table, e.g. {data = \"digits\"}"


def _integer(low: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else ("a positive integer" if low == 1 else "an integer ≥ 0")

    return check


def _number(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return None if ok else "a number ≥ 0 (seconds)"


def _any_number(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return None if ok else "a number"


def _declared(name: str) -> Check:
    """The check of a protocol field, as `fedchain.protocol.params` declares it."""
    def check(value: Any) -> str | None:
        try:
            check_field(name, value)
        except ConfigError:
            return describe(name)
        return None

    return check


#: The job file's sections with fixed keys, each key with its check. [strategy] is checked by
#: the strategy it names; [train] and [evaluate] are free-form (they go into the plan).
SCHEMA: dict[str, dict[str, Check]] = {
    "federation": {"chain": _text, "store": _text, "contract": _text, "deployments": _text},
    "model": {"learner": _text, "evaluate": _text, "initial": _text, "options": _table},
    "run": {
        "rounds": _integer(1), "learners": _integer(1), "min_updates": _integer(0),
        "round_timeout": _number, "wall_clock": _number, "target_metric": _text,
        "target": _any_number,
    },
    "output": {"dir": _text},
    "protocol": {"aggregators": _integer(1), "quorum": _integer(1), **{
        f.name: _declared(f.name) for f in protocol_fields()}},
}  # fmt: skip
#: [protocol] keys that go into the plan (the others shape the committee).
PLAN_PROTOCOL_KEYS = tuple(f.name for f in protocol_fields())
FREE_SECTIONS = ("strategy", "train", "evaluate")


def _closest(word: str, candidates: list[str]) -> str:
    """ (did you mean 'x'?)", or "" when nothing is close."""
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _validate(raw: dict[str, Any], where: str) -> None:
    """Every section and key of a parsed job file known and of the right type, or ConfigError
    naming the file, the section, the key and what it should be."""
    sections = [*SCHEMA, *FREE_SECTIONS]
    for name, body in raw.items():
        if not isinstance(body, dict):
            homes = [s for s, keys in SCHEMA.items() if name in keys]
            hint = f": put it under [{homes[0]}]" if homes else _closest(name, sections)
            raise ConfigError(f"{where}: {name!r} is outside any section{hint}")
        if name not in sections:
            raise ConfigError(f"{where}: unknown section [{name}]{_closest(name, sections)}; "
                              f"sections are {', '.join(f'[{s}]' for s in sections)}")
        keys = SCHEMA.get(name)
        if keys is None:
            continue
        for key, value in body.items():
            check = keys.get(key)
            if check is None:
                raise ConfigError(
                    f"{where}: [{name}] has no key {key!r}{_closest(key, list(keys))}; "
                    f"its keys are {', '.join(keys)}"
                )
            wanted = check(value)
            if wanted is not None:
                raise ConfigError(f"{where}: [{name}] {key} must be {wanted}, got {value!r}")


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*=")
#: A value that looks meant as a TOML number, array, table or quoted string, not a word.
_NOT_A_WORD = re.compile(r"""[-+0-9.\[{"']""")


def parse_run_config(items: Iterable[str]) -> list[tuple[str, list[str], Any]]:
    """[(the flag as given, the dotted key's parts, the value)] of `--run-config` items.

    An item is "section.key=value" (deeper keys reach into tables: `model.options.data=x`);
    the value is parsed as TOML (`5`, `0.01`, `true`, `"text"`, `[1, 2]`, `{lr = 0.1}`) and
    a bare word is taken as a string (`federation.chain=embedded`). One item may hold several,
    separated by spaces, as `flwr run --run-config "a=1 b=2"` does."""
    parsed = []
    for item in items:
        parts = item.split()
        pieces = parts if len(parts) > 1 and all(_KEY.match(x) for x in parts) else [item]
        for piece in pieces:
            flag = f"--run-config {piece!r}"
            key, sep, text = piece.partition("=")
            keys = key.strip().split(".")
            if not sep or not all(keys):
                raise ConfigError(f"{flag}: expected section.key=value, e.g. run.rounds=5 "
                                  "or train.lr=0.01")
            text = text.strip()
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError as exc:
                if not text or _NOT_A_WORD.match(text) or any(c in text for c in " ={}[]"):
                    raise ConfigError(f"{flag}: {text!r} is not a TOML value ({exc}); quote "
                                      "a string, e.g. 'train.optimizer=\"sgd\"'") from None
                value = text
            parsed.append((flag, keys, value))
    return parsed


def _nested(keys: list[str], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(raw.get(key), dict):
            raw[key] = {}
        raw = raw[key]
    raw[keys[-1]] = value


def _strategy_fields(name: Any) -> list[str]:
    cls = getattr(strategies, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, strategies.Strategy):
        return [f.name for f in dataclasses.fields(cls)]
    return []


def check_strategy(spec: Mapping[str, Any], where: str) -> None:
    """The [strategy] section builds its strategy, or ConfigError naming the file."""
    params = spec.get("params", {})
    fields = ["name", *_strategy_fields(spec.get("name"))]
    try:
        strategy_from_plan(spec)
    except ConfigError as exc:
        unknown = [k for k in params if k not in fields]
        hint = _closest(unknown[0], fields) if unknown else ""
        raise ConfigError(f"{where}: [strategy] {exc}{hint}") from None


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
    strategy: dict[str, Any] = field(
        default_factory=lambda: {**DEFAULT_STRATEGY, "params": dict(DEFAULT_STRATEGY["params"])}
    )
    rounds: int = 3
    learners: int = 3
    #: None: the default quorum of the learners registered at genesis.
    min_updates: int | None = None
    round_timeout: float = 300.0
    wall_clock: float | None = None
    target_metric: str | None = None
    target: float | None = None
    train: dict[str, Any] = field(default_factory=dict)
    evaluate_config: dict[str, Any] = field(default_factory=dict)
    output: str = "runs/latest"
    learner_options: dict[str, Any] = field(default_factory=dict)
    #: [protocol]: the committee's size and quorum, and the plan's protocol fields.
    protocol: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    #: The job file read, if any.
    path: Path | None = None
    #: The settings given (by the job file or a flag, not defaults), each with where from.
    given: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None, run_config: Iterable[str] = ()) -> Job:
        """The job in a TOML file (defaults for everything it leaves out), with the
        `--run-config` overrides `run_config` ("section.key=value", the value as TOML)."""
        overrides = parse_run_config(run_config)
        if path is None and not overrides:
            return cls()
        raw: dict[str, Any] = {}
        p = Path(path) if path is not None else None
        if p is not None:
            try:
                raw = tomllib.loads(p.read_text())
            except FileNotFoundError:
                raise ConfigError(f"job file {p} not found") from None
            except IsADirectoryError:
                raise ConfigError(f"job file {p} is a directory, not a TOML file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read job file {p}: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"job file {p}: {exc}") from None
            _validate(raw, f"job file {p}")
        sources: dict[tuple[str, str], str] = {}
        for flag, keys, value in overrides:
            _validate(_nested(keys, value), flag)
            _merge(raw, keys, value)
            for key in keys[1:2] or list(value):
                sources[keys[0], key] = flag
        job = cls(base_dir=p.resolve().parent, path=p) if p is not None else cls()

        def source(section: str, key: str) -> str:
            return sources.get((section, key)) or f"[{section}] {key} in {p}"

        where = f"job file {p}" if p is not None else "the job"
        if any(keys[0] == "strategy" for _, keys, _ in overrides):
            flags = ", ".join(flag for flag, keys, _ in overrides if keys[0] == "strategy")
            where = f"{where} with {flags}"
        fed, model, run = raw.get("federation", {}), raw.get("model", {}), raw.get("run", {})
        for key in ("chain", "store", "contract", "deployments"):
            if key in fed:
                setattr(job, key, fed[key] or None if key == "contract" else fed[key])
                job.given[key] = source("federation", key)
        job.learner = model.get("learner")
        job.evaluate = model.get("evaluate")
        job.initial = model.get("initial")
        job.learner_options = dict(model.get("options", {}))
        if "strategy" in raw:
            params = dict(raw["strategy"])
            name = params.pop("name", "FedAvg")
            job.strategy = {"name": name, "params": params}
            check_strategy(job.strategy, where)
            job.given["strategy"] = (where if "--run-config" in where
                                     else f"[strategy] in {p}")
        for key in ("rounds", "learners", "min_updates", "round_timeout", "wall_clock",
                    "target_metric", "target"):
            if key in run:
                setattr(job, key, run[key])
                job.given[key] = source("run", key)
        job.protocol = dict(raw.get("protocol", {}))
        for key in job.protocol:
            job.given[key] = source("protocol", key)
        job.train = dict(raw.get("train", {}))
        job.evaluate_config = dict(raw.get("evaluate", {}))
        if "dir" in raw.get("output", {}):
            job.output = raw["output"]["dir"]
            job.given["output"] = source("output", "dir")
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
            **{k: v for k, v in self.protocol.items() if k in PLAN_PROTOCOL_KEYS},
        )

    @property
    def aggregators(self) -> int:
        """The committee's size ([protocol] aggregators; 1: a single aggregator)."""
        return int(self.protocol.get("aggregators", 1))

    @property
    def quorum(self) -> int | None:
        """The committee's quorum ([protocol] quorum; None: a majority)."""
        q = self.protocol.get("quorum")
        return None if q is None else int(q)

    def learner_factory(self) -> Any:
        """`make_learner(id, num_learners)`, with the job's [model] options as keywords; the
        job's [train] and [evaluate] checked against the keys it declares (`takes_config`,
        `Learner.train_keys`)."""
        factory = self.resolve(self.learner, "learner factory")
        self.check_learner_config(factory)
        return self._with_options(factory)

    def check_learner_config(self, factory: Any = None, *, importable: bool = True) -> None:
        """ConfigError naming the file, the section and the key when [train] or [evaluate]
        has a key the learner does not declare, or a value of another type. With
        `importable=False` (an aggregator, which may not have the learners' code), a learner
        factory that cannot be imported is not checked."""
        from ..federation.learner import config_problem, declared_keys

        if factory is None:
            if not self.learner:
                return
            try:
                factory = self.resolve(self.learner, "learner factory")
            except ConfigError:
                if importable:
                    raise
                return
        train_keys, eval_keys = declared_keys(factory)
        where = f"job file {self.path}: " if self.path is not None else ""
        for keys, config, section in ((train_keys, self.train, "[train]"),
                                      (eval_keys, self.evaluate_config, "[evaluate]")):
            problem = config_problem(keys, config, section)
            if problem is not None:
                raise ConfigError(f"{where}{problem} ({self.learner})")
        schedule = self.protocol.get("train_schedule") or {}
        for key, by_round in schedule.items():
            for value in by_round.values():
                problem = config_problem(train_keys, {key: value}, "[protocol] train_schedule")
                if problem is not None:
                    raise ConfigError(f"{where}{problem} ({self.learner})")

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
