"""Accuracy per round: 3 IID learners, 3 Dirichlet(α) learners, and centralized training.

Centralized training gets the same total epochs: after "round" r it has trained r × epochs
epochs on the whole training set (the union of the learners' shards), from the same initial
weights, with the same optimizer settings. Prints a Markdown table and a summary, and writes
compare.json and a plot to --out (default runs/cnn-compare, untracked).

    python examples/cnn/compare.py                  # → runs/cnn-compare/
    python examples/cnn/compare.py --docs           # → examples/cnn/docs/, the README's figures

The README quotes what `make docs-check` computes (torch's AVX2 kernels); only --docs writes
into examples/cnn/docs, whose files are tracked.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `examples`

import torch  # noqa: E402

from examples.cnn import task  # noqa: E402
from examples.common import Shard, use_threads  # noqa: E402
from fedchain.aggregation.strategy import strategy_from_plan  # noqa: E402
from fedchain.cli.job import Job  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.model.torch import to_state_dict  # noqa: E402

JOB = Path(__file__).with_name("fedchain.toml")
#: Where --docs writes: the figures examples/cnn/README.md shows (tracked files).
DOCS = Path(__file__).with_name("docs")


def federated(
    partition: str, alpha: float, rounds: int, learners: int, train: dict[str, Any]
) -> list[float]:
    """Centralized accuracy of the global model after each round of a simulated federation."""
    job = Job.load(JOB)
    task.configure(partition=partition, alpha=alpha)
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(
            task.make_learner,
            learners,
            strategy_from_plan(job.strategy),
            rounds,
            store=f"file://{tmp}",
            initial_weights=task.initial_weights(),
            train_config=train,
            evaluate_fn=task.evaluate_global,
        )
    task.SETTINGS.reset()
    return [v for _, v in result.history.metrics_centralized["accuracy"]]


def centralized(rounds: int, train: dict[str, Any]) -> list[float]:
    """Test accuracy after each `epochs` epochs of training on the whole training set."""
    opts = task.SETTINGS.resolve()
    use_threads(opts)
    ds = task.load_dataset(opts.data, opts.data_dir, 32, 3, opts.limit, opts.seed)
    model = task.Net()
    model.load_state_dict(to_state_dict(task.initial_weights()))
    # A fresh optimizer each "round" mirrors what every learner does each round.
    everything = Shard(ds.x_train, ds.y_train, opts.seed * 1000)
    accuracies = []
    for r in range(1, rounds + 1):
        model.train()
        task.train(model, everything, {**train, "round": r})
        accuracies.append(_accuracy(model, ds))
    return accuracies


def _accuracy(model: torch.nn.Module, ds: Any) -> float:
    model.eval()
    with torch.no_grad():
        return task.test(model, Shard(ds.x_test, ds.y_test, 0), {})[1]["accuracy"]


def table(rows: dict[str, list[float]]) -> str:
    """A Markdown table: one row per round, one column per run (accuracy in %)."""
    names = list(rows)
    lines = ["| round | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for r in range(len(rows[names[0]])):
        lines.append(f"| {r + 1} | " + " | ".join(f"{100 * rows[n][r]:.1f}" for n in names) + " |")
    return "\n".join(lines)


def summary(rows: dict[str, list[float]], last: int = 3) -> list[str]:
    """How the runs compare: round 1, the final round, and the mean of the last rounds."""
    names = list(rows)
    rounds = len(rows[names[0]])
    last = min(last, rounds)

    def line(what: str, values: dict[str, float]) -> str:
        return f"{what}: " + ", ".join(f"{n} {100 * v:.1f}" for n, v in values.items())

    return [
        line("round 1", {n: rows[n][0] for n in names}),
        line(f"round {rounds}", {n: rows[n][-1] for n in names}),
        line(f"mean of rounds {rounds - last + 1}-{rounds}",
             {n: sum(rows[n][-last:]) / last for n in names}),
    ]


def plot(rows: dict[str, list[float]], path: Path, title: str) -> None:
    """Accuracy per round of every run in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (name, accs), style in zip(rows.items(), ("s--", "o-", "^-"), strict=False):
        ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], style, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    job = Job.load(JOB)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=job.rounds)
    p.add_argument("--learners", type=int, default=job.learners)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=job.train.get("epochs", 1))
    p.add_argument("--lr", type=float, default=job.train.get("lr", 0.001))
    p.add_argument("--momentum", type=float, default=job.train.get("momentum", 0.9))
    p.add_argument("--batch-size", type=int, default=job.train.get("batch_size", 32))
    p.add_argument("--out", type=Path, default=Path("runs/cnn-compare"),
                   help="where compare.json and accuracy.png go (default runs/cnn-compare)")
    p.add_argument("--docs", action="store_true",
                   help=f"write them to {DOCS.relative_to(DOCS.parents[2])} instead, the "
                        "README's figures (tracked files)")
    args = p.parse_args(argv)
    if args.docs:
        args.out = DOCS
    elif args.out.resolve() == DOCS.resolve():
        p.error(f"--out {args.out} holds the README's tracked figures: pass --docs to "
                "regenerate them")
    train = {
        "epochs": args.epochs,
        "lr": args.lr,
        "momentum": args.momentum,
        "batch_size": args.batch_size,
    }
    started = time.monotonic()
    rows = {
        "centralized": centralized(args.rounds, train),
        f"{args.learners} IID learners": federated(
            "iid", args.alpha, args.rounds, args.learners, train
        ),
        f"{args.learners} Dirichlet(α={args.alpha}) learners": federated(
            "dirichlet", args.alpha, args.rounds, args.learners, train
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    strategy = job.strategy
    bounds = "".join(f", {k} {v}" for k, v in strategy["params"].items()
                     if k in ("clip", "examples_cap"))
    settings = (
        f"digits 32×32×3, {args.epochs} epochs/round, SGD lr {args.lr} momentum "
        f"{args.momentum}, batch {args.batch_size}, {strategy['name']} by examples{bounds}"
    )
    (args.out / "compare.json").write_text(json.dumps({"settings": settings, **rows}, indent=2))
    plot(rows, args.out / "accuracy.png", "CNN on digits")
    print(settings)
    print(table(rows))
    print("\n".join(summary(rows)))
    print(
        f"({time.monotonic() - started:.0f}s; wrote {args.out / 'compare.json'} and "
        f"{args.out / 'accuracy.png'})"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
