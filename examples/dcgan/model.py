"""DCGAN generator and discriminator (the MetisFL tutorial's), for any power-of-two image size.

At image_size 64 the layers are exactly the tutorial's; at 32 (the digits default) each
network has one 2× stage fewer. Both live in one module, generator first, so their weights
travel as one model: `generator.main.0.weight` … then `discriminator.main.0.weight` ….
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _stages(image_size: int) -> int:
    """How many 2× up- (or down-) sampling stages lie between 4×4 and image_size."""
    stages = math.log2(image_size / 4) if image_size >= 8 else 0.0
    if not stages.is_integer() or stages < 1:
        raise ValueError(f"image_size must be a power of two ≥ 8, got {image_size}")
    return int(stages)


class Generator(nn.Module):
    """z (nz×1×1) → image (nc×image_size×image_size) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64) -> None:
        super().__init__()
        stages = _stages(image_size)
        width = ngf * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """image → probability that it is real."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64) -> None:
        super().__init__()
        stages = _stages(image_size)
        width = ndf
        layers: list[nn.Module] = [
            nn.Conv2d(nc, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class DCGAN(nn.Module):
    """Both networks as one model, so one state_dict (G's tensors, then D's) is the weights."""

    def __init__(
        self, nz: int = 100, ngf: int = 64, ndf: int = 64, nc: int = 3, image_size: int = 64
    ) -> None:
        super().__init__()
        self.nz = nz
        self.generator = Generator(nz, ngf, nc, image_size)
        self.discriminator = Discriminator(ndf, nc, image_size)
        self.apply(_init_weights)


def _init_weights(m: nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
