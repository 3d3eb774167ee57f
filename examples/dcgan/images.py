"""Image grids of generated samples (round_003.png …) and the strip that joins the rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROUND_FILE = "round_{:03d}.png"


def grid(images: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """NCHW images in [-1, 1] tiled into one uint8 picture (H×W grey, or H×W×3 colour)."""
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    pixels = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    out = np.zeros((c, rows * (h + padding) + padding, cols * (w + padding) + padding), np.uint8)
    for i in range(n):
        top = (i // cols) * (h + padding) + padding
        left = (i % cols) * (w + padding) + padding
        out[:, top : top + h, left : left + w] = pixels[i]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def save_grid(path: Path, images: np.ndarray, nrow: int = 8) -> Path:
    """Writes `images` as one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(images, nrow)).save(path, optimize=True)
    return path


def write_strip(directory: Path, last_round: int, show: int = 16, name: str = "strip.png") -> Path:
    """Joins the top-left `show` samples of round_001.png … round_<last>.png side by side.

    Only rounds up to `last_round` are used, so a longer earlier run in the same directory
    does not leak into this one.
    """
    tiles = []
    for r in range(1, last_round + 1):
        path = directory / ROUND_FILE.format(r)
        if path.is_file():
            with Image.open(path) as im:
                tiles.append((r, _top_left(im.copy(), show)))
    if not tiles:
        raise FileNotFoundError(f"no round_NNN.png in {directory}")
    mode = "L" if all(t.mode == "L" for _, t in tiles) else "RGB"
    label = 14
    width = sum(t.width for _, t in tiles) + 4 * (len(tiles) - 1)
    height = max(t.height for _, t in tiles) + label
    strip = Image.new(mode, (width, height), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for r, tile in tiles:
        strip.paste(tile.convert(mode), (x, label))
        draw.text((x + 2, 1), f"round {r}", fill="black")
        x += tile.width + 4
    out = directory / name
    strip.save(out, optimize=True)
    return out


def _top_left(image: Image.Image, show: int) -> Image.Image:
    """The first √show × √show cells of a grid written by save_grid (8 per row, 2 px padding)."""
    side = int(np.sqrt(show))
    cell = (image.width - 2) // 8
    return image.crop((0, 0, side * cell + 2, side * cell + 2))
