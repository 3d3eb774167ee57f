"""Partitioners and dataset readers: digits (bundled), CIFAR-10 and image folders from disk."""

from __future__ import annotations

import filecmp
import os
import pickle
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedchain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Dataset:
    """A labelled image data set split into train and test: float32 NCHW images, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


# --- partitioners --------------------------------------------------------------------


def _check_partitions(num_partitions: int, num_items: int, what: str) -> None:
    if num_partitions < 1:
        raise ConfigError(f"num_partitions must be at least 1, got {num_partitions}")
    if num_partitions > num_items:
        raise DataError(
            f"cannot split {num_items} {what} into {num_partitions} non-empty partitions"
        )


def iid_partition(
    x: np.ndarray, y: np.ndarray, num_partitions: int, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Shuffle (x, y) with `seed` and split it into near-equal chunks: (x_chunks, y_chunks).

    MetisFL's shape: `x_chunks, y_chunks = iid_partition(x, y, num_partitions=3, seed=1990)`.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} examples but y has {len(y)} labels")
    _check_partitions(num_partitions, len(x), "examples")
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.array_split(order, num_partitions)
    return [x[p] for p in parts], [y[p] for p in parts]


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float = 0.5,
    seed: int = 0,
    min_partition_size: int = 10,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Split example indices non-IID: each class is shared out by proportions ~ Dirichlet(alpha).

    Smaller alpha gives more skewed label distributions. Draws are repeated (up to
    max_attempts) until every partition holds at least min_partition_size examples.
    Returns one sorted int64 index array per partition.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    _check_partitions(num_partitions, len(labels), "examples")
    if num_partitions * min_partition_size > len(labels):
        raise DataError(
            f"{len(labels)} examples cannot give {num_partitions} partitions "
            f"of at least min_partition_size={min_partition_size} each"
        )
    _, class_of = np.unique(labels, return_inverse=True)
    by_class = [np.flatnonzero(class_of == k) for k in range(class_of.max() + 1)]
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for members in by_class:
            members = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = np.minimum(np.cumsum(shares)[:-1] * len(members), len(members))
            for p, chunk in enumerate(np.split(members, cuts.astype(np.int64))):
                parts[p].append(chunk)
        sizes = [sum(len(chunk) for chunk in part) for part in parts]
        smallest = min(sizes)
        if smallest >= min_partition_size:
            return [np.sort(np.concatenate(part)).astype(np.int64) for part in parts]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) split of {len(labels)} examples into {num_partitions} "
        f"partitions gave each at least min_partition_size={min_partition_size} examples in "
        f"{max_attempts} attempts (smallest last time: {smallest}); raise alpha or lower "
        "min_partition_size or num_partitions"
    )


def iid_partition_dir(
    root: str | os.PathLike[str],
    ext: str,
    num_partitions: int,
    subdir: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Share the `*.ext` files of `root` out at random into root/chunk0 … root/chunk{n-1}.

    Files land in `chunk{i}/<subdir>` when subdir is given (MetisFL's layout, e.g. "img"),
    as hard links where possible and copies otherwise; the originals stay. Re-running with
    the same arguments is a no-op; chunk directories left by a different split are refused.
    Returns the chunk directories in order: read each with load_image_folder(chunk), since
    root itself now holds every image twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    suffix = "." + ext.lstrip(".").lower()
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == suffix)
    _check_partitions(num_partitions, len(files), f"*{suffix} files in {root}")
    order = np.random.default_rng(seed).permutation(len(files))
    plan = [[files[j] for j in part] for part in np.array_split(order, num_partitions)]

    chunks = [root / f"chunk{i}" for i in range(num_partitions)]
    targets = [chunk / subdir if subdir else chunk for chunk in chunks]
    for old in root.iterdir():
        if old.is_dir() and re.fullmatch(r"chunk\d+", old.name) and old not in chunks:
            raise DataError(f"{old} is left from a split into more partitions; remove it first")
    for target, members in zip(targets, plan, strict=True):
        wanted = {p.name for p in members}
        strays = sorted(p.name for p in target.glob("*") if p.name not in wanted)
        if strays:
            raise DataError(
                f"{target} holds {strays[0]}, which this split does not put there (it was "
                "partitioned with other arguments); remove the chunk directories first"
            )
    for target, members in zip(targets, plan, strict=True):
        target.mkdir(parents=True, exist_ok=True)
        for src in members:
            _link_or_copy(src, target / src.name)
    return chunks


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        if os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False):
            return
        raise DataError(f"{dst} exists and differs from {src}")
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        shutil.copy2(src, dst)


# --- scikit-learn digits (bundled, no download) --------------------------------------


def load_digits_dataset(
    image_size: int = 8,
    channels: int = 1,
    normalize: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """scikit-learn's 8×8 digits as float32 NCHW, bilinearly resized, with a stratified split.

    Pixels are scaled to [0, 1], then to [-1, 1] when normalize is set (mean = std = 0.5).
    channels=3 repeats the grey channel for models built for RGB input.
    """
    from sklearn.datasets import load_digits

    if image_size < 1:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    digits = load_digits()
    x = digits.images[:, None, :, :] / 16.0  # pixel values are 0..16
    if image_size != x.shape[-1]:
        x = _resize_bilinear(x, image_size)
    if normalize:
        x = (x - 0.5) / 0.5
    x = np.repeat(x, channels, axis=1).astype(np.float32)
    y = digits.target.astype(np.int64)
    train, test = _stratified_split(y, test_fraction, seed)
    classes = tuple(str(c) for c in digits.target_names)
    return Dataset(x[train], y[train], x[test], y[test], classes)


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Written out rather than sklearn's train_test_split so a seed names the same split
    # on every scikit-learn version.
    rng = np.random.default_rng(seed)
    test = [
        rng.permutation(members)[: round(len(members) * test_fraction)]
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    # Half-pixel centres, edges clamped: torch's interpolate(mode="bilinear",
    # align_corners=False), so results match models trained on torch-resized inputs.
    src = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, size_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(size_out), hi), frac)
    return weights


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    rows = _bilinear_weights(images.shape[-2], size)
    cols = _bilinear_weights(images.shape[-1], size)
    return np.asarray(rows @ images @ cols.T)


# --- CIFAR-10 from a directory -------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_BIN = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
_CIFAR_PY = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# numpy's array (and scalar) reconstruction, under its 1.x and 2.x module names: all a
# CIFAR-10 pickle needs. Anything else could run code while unpickling.
_PICKLE_ALLOWED = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype")]
    + [
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    ]
)
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(f"refused to unpickle {module}.{name}: only numpy arrays are allowed")
        # Map numpy.core ⇄ numpy._core to this numpy's name (avoids deprecation warnings).
        module = re.sub(r"^numpy\._?core\b", _NUMPY_CORE, module)
        return super().find_class(module, name)


def load_cifar10(data_dir: str | os.PathLike[str], normalize: bool = True) -> Dataset:
    """CIFAR-10 from the binary or python release in data_dir (or its cifar-10-batches-* dir).

    Images are float32 NCHW in [0, 1], or in [-1, 1] when normalize is set (mean = std = 0.5).
    The python release is read with an unpickler that only rebuilds numpy arrays.
    """
    root = Path(data_dir)
    for folder in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if all((folder / name).is_file() for name in _CIFAR_BIN):
            parts = [_read_cifar_bin(folder / name) for name in _CIFAR_BIN]
            classes = _cifar_names_txt(folder / "batches.meta.txt")
            break
        if all((folder / name).is_file() for name in _CIFAR_PY):
            parts = [_read_cifar_py(folder / name) for name in _CIFAR_PY]
            classes = _cifar_names_pickle(folder / "batches.meta")
            break
    else:
        raise DataError(
            f"{root} holds neither CIFAR-10 release: expected data_batch_1.bin … "
            "data_batch_5.bin and test_batch.bin (binary release) or data_batch_1 … "
            "data_batch_5 and test_batch (python release), in it or in "
            "cifar-10-batches-bin/ or cifar-10-batches-py/ under it"
        )
    x_train = np.concatenate([x for x, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])
    x_test, y_test = parts[5]
    return Dataset(
        _scale_uint8(x_train, normalize), y_train, _scale_uint8(x_test, normalize), y_test, classes
    )


def _scale_uint8(images: np.ndarray, normalize: bool) -> np.ndarray:
    x = images.astype(np.float32)
    x /= 255  # in place: the training set is 600 MB as float32
    if normalize:
        x -= 0.5
        x /= 0.5
    return x


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError(
            f"{path} is {raw.size} bytes, not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), _check_labels(path, records[:, 0])


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"{path}: 'data' is not a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise DataError(
            f"{path}: 'data' has shape {data.shape}, expected ({len(labels)}, {3 * 32 * 32})"
        )
    return data.reshape(-1, 3, 32, 32), _check_labels(path, labels)


def _unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            # latin1 is how numpy arrays pickled by Python 2 (the real release) decode.
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        except Exception as e:  # a malformed pickle can fail in many ways
            raise DataError(f"{path} is not a readable CIFAR-10 pickle: {e!r}") from e


def _entry(batch: Any, key: str, path: Path) -> Any:
    if isinstance(batch, dict):
        for k in (key, key.encode()):
            if k in batch:
                return batch[k]
    raise DataError(f"{path} has no {key!r} entry")


def _check_labels(path: Path, labels: Any) -> np.ndarray:
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: labels are not integers: {e}") from e
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES))):
        raise DataError(f"{path}: labels must be a list of integers 0..9")
    return y


def _cifar_names_txt(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return CIFAR10_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return _check_names(path, names)


def _cifar_names_pickle(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return CIFAR10_CLASSES
    raw = _entry(_unpickle(path), "label_names", path)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    return _check_names(path, names)


def _check_names(path: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    if len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"{path} names {len(names)} classes, expected {len(CIFAR10_CLASSES)}")
    return names


# --- image folders (CelebA and the like) ---------------------------------------------


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 64,
    exts: Sequence[str] = (".jpg", ".jpeg", ".png"),
    limit: int | None = None,
) -> np.ndarray:
    """Every image under root (recursively, sorted by path) as float32 NCHW RGB in [-1, 1].

    Each image is resized so its shorter side is image_size, then center-cropped to a square
    (the DCGAN tutorial's Resize, CenterCrop, Normalize(0.5, 0.5)). limit keeps the first n.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    suffixes = {"." + e.lstrip(".").lower() for e in exts}
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )[:limit]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(suffixes))}) under {root}")
    out = np.empty((len(files), 3, image_size, image_size), dtype=np.float32)
    for i, path in enumerate(files):
        pixels = _read_image(path, image_size).transpose(2, 0, 1)
        out[i] = (pixels / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    return out


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale ≥ size
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, int(width * scale)), max(size, int(height * scale)))
    image = image.resize(resized, Image.Resampling.BILINEAR)
    left = int(round((resized[0] - size) / 2))
    top = int(round((resized[1] - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)


# --- torch batching without torchvision ----------------------------------------------


def to_torch_loader(
    x: np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader[Any]:
    """A torch DataLoader over (x, y) or (x,) whose shuffling is reproducible from `seed`."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if y is not None and len(x) != len(y):
        raise DataError(f"x has {len(x)} examples but y has {len(y)} labels")
    arrays = [x] if y is None else [x, y]
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator
    )
