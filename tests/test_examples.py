"""The examples run end to end on digits over the embedded chain and a file store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from examples.cnn import task as cnn
from examples.common import label_counts, run_example, shards
from examples.dcgan import task as dcgan
from examples.mlp import task as mlp

ROOT = Path(__file__).resolve().parents[1]
from fedchain.aggregation.strategy import strategy_from_plan  # noqa: E402
from fedchain.cli.job import Job  # noqa: E402
from fedchain.errors import ConfigError  # noqa: E402
from fedchain.federation.simulation import SimulationResult, simulate  # noqa: E402

TASKS = (cnn, dcgan, mlp)


@pytest.fixture(autouse=True)
def clean_options(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No FEDCHAIN_* variable of the caller's shell and no configure() leaks into a test."""
    for task in TASKS:
        for name in task.SETTINGS.fields:
            monkeypatch.delenv("FEDCHAIN_" + name.upper(), raising=False)
    yield
    for task in TASKS:
        task.SETTINGS.reset()


def run(
    task: ModuleType, name: str, tmp_path: Path, learners: int, rounds: int = 2, **train: Any
) -> tuple[SimulationResult, dict[str, Any]]:
    """The example's job file (train settings overridable), simulated; results.json parsed."""
    job = Job.load(ROOT / "examples" / name / "fedchain.toml")
    out = tmp_path / "out"
    task.configure(output_dir=str(out))
    result = simulate(
        task.make_learner,
        learners,
        strategy_from_plan(job.strategy),
        rounds,
        store=f"file://{tmp_path / 'store'}",
        initial_weights=task.initial_weights(),
        train_config={**job.train, **train},
        evaluate_fn=task.evaluate_global,
        results_dir=out,
    )
    return result, json.loads((out / "results.json").read_text())


def rounds_of(series: list[list[float]]) -> list[int]:
    return [int(r) for r, _ in series]


def test_cnn_learns_digits_above_chance_in_two_rounds(tmp_path: Path) -> None:
    result, saved = run(cnn, "cnn", tmp_path, learners=3, epochs=1, lr=0.03)
    assert [len(r.included) for r in result.rounds] == [3, 3]
    assert rounds_of(saved["metrics_distributed"]["accuracy"]) == [1, 2]
    accuracy = dict(saved["metrics_centralized"]["accuracy"])
    assert accuracy[2] > 0.25  # ten classes: chance is 0.1
    assert accuracy[2] > accuracy[1]
    assert (tmp_path / "out" / "history.png").stat().st_size > 0


def test_mlp_learns_digits_in_two_rounds(tmp_path: Path) -> None:
    result, saved = run(mlp, "mlp", tmp_path, learners=3, epochs=1)
    assert [len(r.included) for r in result.rounds] == [3, 3]
    distributed = dict(saved["metrics_distributed"]["accuracy"])
    assert sorted(distributed) == [1, 2]
    assert distributed[2] > 0.5
    # learners evaluate disjoint slices of the test set, so their weighted mean is the whole
    assert distributed[2] == pytest.approx(dict(saved["metrics_centralized"]["accuracy"])[2])


def test_dcgan_draws_every_round_and_scores_the_digits(tmp_path: Path) -> None:
    dcgan.configure(limit=256)
    result, saved = run(dcgan, "dcgan", tmp_path, learners=2, epochs=1)
    out = tmp_path / "out"
    assert [len(r.included) for r in result.rounds] == [2, 2]
    assert (out / "round_001.png").is_file() and (out / "round_002.png").is_file()
    from PIL import Image

    with Image.open(out / "strip.png") as strip, Image.open(out / "round_001.png") as grid:
        assert strip.width > strip.height  # two rounds side by side
        assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 64 samples of 32×32, 2 px apart
    for metric in ("confident", "inception_score", "d_real", "d_fake"):
        assert rounds_of(saved["metrics_centralized"][metric]) == [1, 2]
    assert rounds_of(saved["metrics_distributed"]["d_real"]) == [1, 2]
    assert 1.0 <= dict(saved["metrics_centralized"]["inception_score"])[2] <= 10.0


def test_dcgan_weights_are_generator_then_discriminator_and_train_reports_both_losses() -> None:
    weights = dcgan.initial_weights()
    names = list(weights)
    first_d = next(i for i, n in enumerate(names) if n.startswith("discriminator."))
    assert names[0].startswith("generator.") and first_d > 0
    assert all(n.startswith("discriminator.") for n in names[first_d:])
    learner = dcgan.make_learner(0, 2, limit=64)
    result = learner.train(weights, {"epochs": 1, "batch_size": 32, "round": 1})
    assert {"g_loss", "d_loss"} <= set(result.metrics)
    assert list(result.weights) == names


def test_dcgan_sizes_follow_the_tutorial_at_64_pixels() -> None:
    weights = dcgan.initial_weights(nc=3, image_size=64, ngf=64, ndf=64)
    assert weights["generator.main.0.weight"].shape == (100, 64 * 8, 4, 4)
    assert weights["generator.main.12.weight"].shape == (64, 3, 4, 4)
    assert weights["discriminator.main.11.weight"].shape == (1, 64 * 8, 4, 4)


def test_learner_options_come_from_environment_and_keywords_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    iid = [label_counts(cnn.make_learner(i, 3).train_data) for i in range(3)]
    monkeypatch.setenv("FEDCHAIN_PARTITION", "dirichlet")
    monkeypatch.setenv("FEDCHAIN_ALPHA", "0.1")
    skewed = [label_counts(cnn.make_learner(i, 3).train_data) for i in range(3)]
    back = [label_counts(cnn.make_learner(i, 3, partition="iid").train_data) for i in range(3)]
    assert back == iid
    assert max(max(c) / sum(c) for c in skewed) > 2 * max(max(c) / sum(c) for c in iid)
    # the shards are the whole training set, whichever split
    assert np.sum(skewed) == np.sum(iid) == len(cnn.load_dataset("digits", "", 32, 3, 0, 0).y_train)


def test_shards_are_the_same_on_every_call() -> None:
    opts = mlp.SETTINGS.resolve(partition="dirichlet")
    ds = mlp.load_dataset("digits", "", 8, 1, 0, 0)
    for i in range(3):
        (train_a, test_a), (train_b, test_b) = shards(ds, i, 3, opts), shards(ds, i, 3, opts)
        assert np.array_equal(train_a.x, train_b.x) and np.array_equal(test_a.y, test_b.y)


def test_more_learners_than_test_examples_share_the_test_slices() -> None:
    """1,000 learners on digits (the README's Scale command): 1,438 training examples give
    each learner its own, the 359 held-out ones are shared, learner i on slice i mod 359."""
    opts = mlp.SETTINGS.resolve()
    ds = mlp.load_dataset("digits", "", 8, 1, 0, 0)
    parts = {i: shards(ds, i, 1000, opts) for i in (0, 358, 359, 999)}
    assert all(len(train) >= 1 and len(test) == 1 for train, test in parts.values())
    assert np.array_equal(parts[0][1].x, parts[359][1].x)
    assert not np.array_equal(parts[0][0].x, parts[359][0].x)
    # up to 359 learners, each has a slice of its own, as before
    assert not np.array_equal(shards(ds, 0, 359, opts)[1].x, shards(ds, 1, 359, opts)[1].x)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data": "mnist"}, "data must be one of"),
        ({"data": "cifar10"}, "needs a directory"),
        ({"partition": "shards"}, "partition must be"),
        ({"colour": "blue"}, "unknown options"),
    ],
)
def test_bad_options_are_refused_with_the_reason(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cnn.make_learner(0, 3, **options)


def test_run_script_flags_override_the_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mlp"
    result = run_example(
        ROOT / "examples" / "mlp" / "fedchain.toml",
        [
            "--rounds",
            "1",
            "--learners",
            "2",
            "--epochs",
            "1",
            "--store",
            f"file://{tmp_path / 'store'}",
            "--output",
            str(out),
        ],
    )
    assert [len(r.included) for r in result.rounds] == [2]
    assert json.loads((out / "results.json").read_text())["metrics_centralized"]["accuracy"]
    assert "round   1: 2 updates" in capsys.readouterr().out


def test_fedchain_simulate_runs_the_job_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedchain.cli import main

    out = tmp_path / "out"
    job = ROOT / "examples" / "mlp" / "fedchain.toml"
    flags = f"--rounds 1 --learners 2 --min-updates 2 --store file://{tmp_path}/store"
    assert main(["simulate", "--job", str(job), *flags.split(), "--output", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rounds"][0]["included"]) == 2
    assert rounds_of(saved["losses_centralized"]) == [1]
    assert "1 rounds in" in capsys.readouterr().out


def test_run_script_with_missing_data_says_so_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cnn" / "run.py"), "--data", "cifar10",
         "--data-dir", str(tmp_path / "missing"), "--store", f"file://{tmp_path / 'store'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("run.py:")]
    assert "missing" in line
