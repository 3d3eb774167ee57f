"""MetisFL's DCGAN tutorial on fedchain: Generator and Discriminator trained as one model.

Digits at 32×32×1 by default; CelebA (or any image folder) with `data = "folder"` and a
data_dir (64×64×3, as in the tutorial); CIFAR-10 with `data = "cifar10"`. Every round the
aggregator draws the global generator's samples of one fixed noise batch into
`round_NNN.png` and joins the rounds so far into `strip.png`; on digits it also scores the
samples with a digits classifier (see score.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from examples.common import Options, Settings, Shard, load_dataset, shards, use_threads
from examples.datasets import Dataset, load_image_folder
from examples.dcgan.images import ROUND_FILE, save_grid, write_strip
from examples.dcgan.model import DCGAN
from fedchain.errors import ConfigError
from fedchain.federation.learner import TorchLearner, takes_config
from fedchain.model.codec import Weights
from fedchain.model.torch import from_state_dict, to_state_dict
from fedchain.progress import progress

log = logging.getLogger("examples.dcgan")

#: Samples drawn from the fixed noise batch each round (the tutorial's 64).
FIXED_SAMPLES = 64
#: Samples the classifier scores each round.
SCORED_SAMPLES = 500


@dataclass(frozen=True)
class GANOptions(Options):
    """The tutorial's configuration; nc and image_size 0 mean "what the data set has"."""

    nz: int = 100  # size of the latent vector
    ngf: int = 32  # generator feature maps (the tutorial's 64 suits CelebA)
    ndf: int = 32  # discriminator feature maps
    nc: int = 0  # image channels: 1 for digits, 3 otherwise
    image_size: int = 0  # 32 for digits and CIFAR-10, 64 for an image folder

    def check(self, datasets: Any = ("digits", "cifar10", "folder")) -> None:
        super().check(datasets)
        if self.partition != "iid":
            raise ConfigError("the DCGAN's data is unlabelled for this purpose: use partition iid")
        if min(self.nz, self.ngf, self.ndf) < 1 or self.nc not in (0, 1, 3):
            raise ConfigError("nz, ngf and ndf must be positive and nc 1 or 3")

    @property
    def channels(self) -> int:
        return self.nc or (1 if self.data == "digits" else 3)

    @property
    def size(self) -> int:
        return self.image_size or (64 if self.data == "folder" else 32)


SETTINGS = Settings(GANOptions, datasets=("digits", "cifar10", "folder"), output_dir="runs/dcgan")
configure = SETTINGS.configure


def _model(opts: GANOptions) -> DCGAN:
    with torch.random.fork_rng():
        torch.manual_seed(opts.seed)
        return DCGAN(opts.nz, opts.ngf, opts.ndf, opts.channels, opts.size)


def _noise(n: int, nz: int, seed: int) -> torch.Tensor:
    return torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=2)
def _folder(data_dir: str, image_size: int, limit: int, seed: int) -> Dataset:
    images = load_image_folder(data_dir, image_size, limit=limit or None)
    order = np.random.default_rng(seed).permutation(len(images))
    test = np.sort(order[: max(1, len(images) // 10)])
    train = np.sort(order[max(1, len(images) // 10) :])
    zeros = np.zeros(len(images), np.int64)
    return Dataset(images[train], zeros[train], images[test], zeros[test], ("image",))


def _dataset(opts: GANOptions) -> Dataset:
    if opts.data == "folder":
        return _folder(opts.data_dir, opts.size, opts.limit, opts.seed)
    ds = load_dataset(
        opts.data,
        opts.data_dir,
        opts.size,
        3 if opts.data == "cifar10" else 1,
        opts.limit,
        opts.seed,
    )
    if opts.channels != ds.x_train.shape[1]:
        raise ConfigError(
            f"nc={opts.nc} but {opts.data} images have {ds.x_train.shape[1]} channels"
        )
    return ds


def train(model: DCGAN, shard: Shard, config: Mapping[str, Any]) -> dict[str, float]:
    """The tutorial's alternating updates (D on real and fake, then G); mean losses."""
    g, d = model.generator, model.discriminator
    lr, beta1 = float(config.get("lr", 2e-4)), float(config.get("beta1", 0.5))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(beta1, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(beta1, 0.999))
    round = int(config.get("round", 0))
    # Learners train in threads: a private generator keeps each one's noise reproducible.
    rng = torch.Generator().manual_seed(shard.seed * 100_003 + round)
    totals = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
    batches = 0
    epochs = int(config.get("epochs", 1))
    for epoch in range(epochs):
        loader = shard.loader(config.get("batch_size", 64), round=round * 1000 + epoch)
        for real, _ in progress(loader, f"train epoch {epoch + 1}/{epochs}"):
            n = len(real)
            noise = torch.randn(n, model.nz, 1, 1, generator=rng)
            d.zero_grad()
            out_real = d(real)
            fake = g(noise)
            out_fake = d(fake.detach())
            loss_d = F.binary_cross_entropy(out_real, torch.ones(n)) + F.binary_cross_entropy(
                out_fake, torch.zeros(n)
            )
            loss_d.backward()
            opt_d.step()
            g.zero_grad()
            loss_g = F.binary_cross_entropy(d(fake), torch.ones(n))
            loss_g.backward()
            opt_g.step()
            batches += 1
            for key, value in (
                ("d_loss", loss_d),
                ("g_loss", loss_g),
                ("d_real", out_real.mean()),
                ("d_fake", out_fake.mean()),
            ):
                totals[key] += value.item()
    return {k: v / max(batches, 1) for k, v in totals.items()}


def discriminator_loss(
    model: DCGAN, real: torch.Tensor, seed: int
) -> tuple[float, dict[str, float]]:
    """D's loss on held-out real images and as many generated ones, and its mean outputs."""
    fake = model.generator(_noise(len(real), model.nz, seed))
    out_real, out_fake = model.discriminator(real), model.discriminator(fake)
    loss = F.binary_cross_entropy(out_real, torch.ones(len(real))) + F.binary_cross_entropy(
        out_fake, torch.zeros(len(real))
    )
    return float(loss), {"d_real": float(out_real.mean()), "d_fake": float(out_fake.mean())}


def test(model: DCGAN, shard: Shard, config: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    """The learner-side evaluation: discriminator_loss on the learner's held-out images."""
    return discriminator_loss(model, torch.from_numpy(shard.x), shard.seed)


def initial_weights(**options: Any) -> Weights:
    """The genesis model (G then D), initialised as in the DCGAN paper from the seed."""
    return from_state_dict(_model(SETTINGS.resolve(**options)).state_dict())


#: The [train] keys train() reads (a job file with others is refused, naming the key);
#: test() reads none from [evaluate].
TRAIN_KEYS = {"epochs": int, "lr": float, "beta1": float, "batch_size": int}


@takes_config(train=TRAIN_KEYS, evaluate={})
def make_learner(learner_id: int, num_learners: int, **options: Any) -> TorchLearner:
    """Learner `learner_id` of `num_learners`: its IID shard of the images."""
    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    train_shard, test_shard = shards(_dataset(opts), learner_id, num_learners, opts)
    log.info(
        "learner %d: %d training images (%s, %d×%d×%d)",
        learner_id,
        len(train_shard),
        opts.data,
        opts.size,
        opts.size,
        opts.channels,
    )
    return TorchLearner(_model(opts), train, test, train_shard, test_shard)


def evaluate_global(round: int, weights: Weights, **options: Any) -> tuple[float, dict[str, float]]:
    """Draws round_NNN.png and strip.png; D's loss on the test images; digit scores."""
    from examples.dcgan.score import digit_scores, digits_classifier

    opts = SETTINGS.resolve(**options)
    use_threads(opts)
    model = _model(opts)
    model.load_state_dict(to_state_dict(weights))
    model.eval()
    out = Path(opts.output_dir)
    with torch.no_grad():
        samples = model.generator(_noise(FIXED_SAMPLES, opts.nz, opts.seed))
        save_grid(out / ROUND_FILE.format(round), samples.numpy())
        write_strip(out, round)
        ds = _dataset(opts)
        loss, metrics = discriminator_loss(model, torch.from_numpy(ds.x_test), opts.seed + 1)
        if opts.data == "digits":
            scored = model.generator(_noise(SCORED_SAMPLES, opts.nz, opts.seed + 2))
            metrics |= digit_scores(scored, digits_classifier(opts.size, opts.seed))
    return loss, metrics
