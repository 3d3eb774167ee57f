"""What the examples share: learner-side options, data shards, seeded loaders, the run script.

Options (which data, how it is split, the seed…) belong to the learners, not to the plan on
chain, so each example resolves them in this order: the option class's defaults < the
example's own defaults < environment variables (`FEDCHAIN_<NAME>`, e.g. FEDCHAIN_DATA,
FEDCHAIN_DATA_DIR, FEDCHAIN_PARTITION, FEDCHAIN_ALPHA) < `configure(...)` < keyword arguments
given to `make_learner` / `evaluate_global`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from examples.datasets import (
    Dataset,
    dirichlet_partition,
    iid_partition,
    load_cifar10,
    load_digits_dataset,
    to_torch_loader,
)
from fedchain.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fedchain.federation.simulation import SimulationResult

PARTITIONS = ("iid", "dirichlet")


@dataclass(frozen=True)
class Options:
    """Learner-side options every example understands."""

    data: str = "digits"  # digits | cifar10 (| folder for the DCGAN)
    data_dir: str = ""  # where cifar10 / folder data lives
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration: smaller is more skewed
    seed: int = 0  # data split, shuffling and initial weights
    local_test: float = 0.0  # share of each learner's partition kept as its own test data
    limit: int = 0  # keep at most this many training examples (0: all)
    output_dir: str = ""  # where evaluate_global writes pictures
    threads: int = 1  # torch threads in this process (0: torch's default, one per core)

    def check(self, datasets: Sequence[str] = ("digits", "cifar10")) -> None:
        """Raises ConfigError for a value no example can use."""
        if self.data not in datasets:
            raise ConfigError(f"data must be one of {', '.join(datasets)}, got {self.data!r}")
        if self.data != "digits" and not self.data_dir:
            raise ConfigError(
                f"data {self.data!r} needs a directory: set data_dir "
                "(--data-dir or FEDCHAIN_DATA_DIR)"
            )
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition must be iid or dirichlet, got {self.partition!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.local_test < 1:
            raise ConfigError(
                f"local_test must be 0 (evaluate on the held-out test set) or a share below 1, "
                f"got {self.local_test}"
            )
        if self.limit < 0:
            raise ConfigError(f"limit must be 0 (all) or positive, got {self.limit}")
        if self.threads < 0:
            raise ConfigError(
                f"threads must be 0 (torch's default) or positive, got {self.threads}"
            )


OptionsT = TypeVar("OptionsT", bound=Options)


def env_name(option: str) -> str:
    """The environment variable that sets an option."""
    return "FEDCHAIN_" + option.upper()


def _convert(field: dataclasses.Field[Any], value: Any) -> Any:
    kind = {"int": int, "float": float, "str": str}[str(field.type)]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {field.name} must be {field.type}, got {value!r}") from None


class Settings(Generic[OptionsT]):
    """An example's options: defaults < environment < configure() < keyword arguments."""

    def __init__(self, cls: type[OptionsT], datasets: Sequence[str], **defaults: Any) -> None:
        self.cls = cls
        self.datasets = tuple(datasets)
        self.fields = {f.name: f for f in dataclasses.fields(cls)}
        self._check_names(defaults)
        self.defaults = defaults
        self.configured: dict[str, Any] = {}

    def _check_names(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.fields))
        if unknown:
            raise ConfigError(f"unknown options {unknown}; known: {sorted(self.fields)}")

    def configure(self, **options: Any) -> None:
        """Sets options for this process (what run.py and the tests use)."""
        self._check_names(options)
        self.configured.update({k: v for k, v in options.items() if v is not None})

    def reset(self) -> None:
        """Forgets what configure() set."""
        self.configured.clear()

    def resolve(self, **overrides: Any) -> OptionsT:
        """The options in force, checked."""
        self._check_names(overrides)
        values: dict[str, Any] = dict(self.defaults)
        for name in self.fields:
            if os.environ.get(env_name(name)):
                values[name] = os.environ[env_name(name)]
        values.update(self.configured)
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = self.cls(**{k: _convert(self.fields[k], v) for k, v in values.items()})
        options.check(self.datasets)
        return options


def use_threads(options: Options) -> None:
    """Applies options.threads to torch.

    Several learners (and the aggregator) usually share a machine; torch's default of one
    thread per core each then oversubscribes the cores, and its spinning threads made a
    3-epoch MLP step 100× slower on 2 cores (50 s instead of 0.4 s).
    """
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)


# --- data ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_dataset(
    data: str, data_dir: str, image_size: int, channels: int, limit: int, seed: int
) -> Dataset:
    """digits (resized to image_size, `channels` channels) or CIFAR-10 from data_dir, cached."""
    if data == "digits":
        ds = load_digits_dataset(image_size=image_size, channels=channels, seed=seed)
    elif data == "cifar10":
        if (image_size, channels) != (32, 3):
            raise ConfigError(
                f"CIFAR-10 images are 32×32×3, not {image_size}×{image_size}×{channels}"
            )
        ds = load_cifar10(data_dir)
    else:
        raise ConfigError(f"unknown data set {data!r}")
    if 0 < limit < len(ds.x_train):
        keep = np.sort(np.random.default_rng(seed).permutation(len(ds.x_train))[:limit])
        ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    return ds


@dataclass(frozen=True)
class Shard:
    """One learner's slice of a data set, with the seed its shuffling derives from."""

    x: np.ndarray
    y: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.x)

    def loader(self, batch_size: int, round: int = 0, shuffle: bool = True) -> DataLoader[Any]:
        """Batches of this shard, shuffled the same way every time for a given round."""
        return to_torch_loader(
            self.x,
            self.y,
            batch_size=int(batch_size),
            shuffle=shuffle,
            seed=self.seed * 100_003 + round,
        )


def shards(
    ds: Dataset, learner_id: int, num_learners: int, options: Options
) -> tuple[Shard, Shard]:
    """A learner's training shard (IID or Dirichlet) and its test shard.

    The test shard is the learner's IID slice of the held-out test set (shared with other
    learners when there are more learners than test examples), or, with
    options.local_test > 0, that share of the learner's own partition (Flower's quickstarts
    split each partition into train and test this way); the held-out test set then stays
    the aggregator's alone.
    """
    if not 0 <= learner_id < num_learners:
        raise ConfigError(f"learner id {learner_id} is outside 0..{num_learners - 1}")
    seed = options.seed * 1000 + learner_id
    if options.partition == "dirichlet":
        index = dirichlet_partition(ds.y_train, num_learners, options.alpha, options.seed)
        idx = index[learner_id]
        train = Shard(ds.x_train[idx], ds.y_train[idx], seed)
    else:
        xs, ys = iid_partition(ds.x_train, ds.y_train, num_learners, options.seed)
        train = Shard(xs[learner_id], ys[learner_id], seed)
    if options.local_test > 0:
        return split_local(train, options.local_test)
    # More learners than held-out examples (1,000 learners on digits' 359): slices are shared,
    # learner i evaluating on slice i mod the number of slices.
    slices = min(num_learners, len(ds.y_test))
    xs, ys = iid_partition(ds.x_test, ds.y_test, slices, options.seed)
    return train, Shard(xs[learner_id % slices], ys[learner_id % slices], seed)


def split_local(shard: Shard, test_share: float) -> tuple[Shard, Shard]:
    """A partition split at random (seeded by the shard) into local training and test data."""
    if len(shard) < 2:
        raise ConfigError(f"a partition of {len(shard)} examples cannot be split in two")
    order = np.random.default_rng(shard.seed).permutation(len(shard))
    n_test = min(max(1, round(len(shard) * test_share)), len(shard) - 1)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return (
        Shard(shard.x[train], shard.y[train], shard.seed),
        Shard(shard.x[test], shard.y[test], shard.seed),
    )


def label_counts(shard: Shard, num_classes: int = 10) -> list[int]:
    """How many examples of each class a shard holds (shown when a learner starts)."""
    return np.bincount(shard.y, minlength=num_classes).tolist()


# --- the run script ------------------------------------------------------------------


def _add_option_flags(
    parser: argparse.ArgumentParser, settings: Settings[Any], job_options: Mapping[str, Any]
) -> None:
    g = parser.add_argument_group("learner options (also FEDCHAIN_<NAME> environment variables)")
    for name, field in settings.fields.items():
        if name == "output_dir":  # that is --output
            continue
        kind = {"int": int, "float": float, "str": str}[str(field.type)]
        g.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            metavar=name.upper(),
            help=f"default {job_options.get(name, settings.defaults.get(name, field.default))!r}",
        )


def run_example(job_file: Path, argv: Sequence[str] | None = None) -> SimulationResult:
    """`python examples/<name>/run.py`: the example's job in one process, flags overriding it."""
    from fedchain.cli.job import Job
    from fedchain.federation.simulation import simulate

    job = Job.load(job_file)
    task = importlib.import_module(job.learner.partition(":")[0] if job.learner else "")
    settings: Settings[Any] = task.SETTINGS
    parser = argparse.ArgumentParser(
        description=f"Runs {job_file.parent.name} in one process "
        "(embedded chain and store unless --chain/--store)."
    )
    parser.add_argument("--rounds", type=int, default=job.rounds)
    parser.add_argument("--learners", type=int, default=job.learners)
    parser.add_argument("--chain", default=job.chain)
    parser.add_argument("--store", default=job.store)
    parser.add_argument("--output", default=None, help=f"results directory, default {job.output}")
    for key, value in job.train.items():
        parser.add_argument(
            "--" + key.replace("_", "-"),
            dest=f"train_{key}",
            type=type(value),
            default=value,
            metavar=key.upper(),
            help=f"[train] {key}, default {value!r}",
        )
    _add_option_flags(parser, settings, job.learner_options)
    args = parser.parse_args(argv)

    options = {name: getattr(args, name, None) for name in settings.fields}
    if args.output is not None:
        options["output_dir"] = args.output
    settings.configure(**job.learner_options)  # the job's [model] options; flags win
    settings.configure(**options)
    output = settings.resolve().output_dir or job.output
    train = {key: getattr(args, f"train_{key}") for key in job.train}
    started = time.monotonic()
    config = dataclasses.replace(
        job.run_config(),
        rounds=args.rounds,
        # None: the default quorum of args.learners (federation.config.default_min_updates)
        min_updates=None if job.min_updates is None else min(job.min_updates, args.learners),
        train=train,
    )
    result = simulate(
        job.resolve(job.learner, "learner factory"),
        args.learners,
        chain=args.chain,
        store=args.store,
        config=config,
        initial_weights=job.resolve(job.initial, "initial model")() if job.initial else None,
        evaluate_fn=job.resolve(job.evaluate, "evaluate function") if job.evaluate else None,
        results_dir=output,
        title=f"{job_file.parent.name}: {args.learners} learners",
    )
    print_history(result)
    print(
        f"{len(result.rounds)} rounds in {time.monotonic() - started:.1f}s; "
        f"results: {result.results_path}  plot: {result.plot_path}"
    )
    return result


def main(job_file: Path) -> int:
    """The run scripts' entry point: run_example, with a fedchain error as one line (exit 2)."""
    import sys

    from fedchain.errors import FedChainError

    try:
        run_example(job_file)
    except FedChainError as exc:
        print(f"{Path(sys.argv[0]).name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def print_history(result: SimulationResult) -> None:
    """One line per round: updates included, distributed and centralized evaluation."""
    h = result.history
    dist_loss, cent_loss = dict(h.losses_distributed), dict(h.losses_centralized)
    for r in result.rounds:
        parts = [f"round {r.round:>3}: {len(r.included)} updates"]
        if r.round in dist_loss:
            parts.append(f"distributed loss {dist_loss[r.round]:.4f}")
            parts += [
                f"{k} {dict(v)[r.round]:.4f}"
                for k, v in h.metrics_distributed.items()
                if r.round in dict(v)
            ]
        if r.round in cent_loss:
            parts.append(f"| centralized loss {cent_loss[r.round]:.4f}")
            parts += [
                f"{k} {dict(v)[r.round]:.4f}"
                for k, v in h.metrics_centralized.items()
                if r.round in dict(v)
            ]
        print("  ".join(parts))
