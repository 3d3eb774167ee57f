"""Partitioners and readers in examples.datasets, on small files written in the real formats."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from examples.datasets import (
    CIFAR10_CLASSES,
    Dataset,
    dirichlet_partition,
    iid_partition,
    iid_partition_dir,
    load_cifar10,
    load_digits_dataset,
    load_image_folder,
    to_torch_loader,
)
from fedchain.errors import DataError

# --- partitioners --------------------------------------------------------------------


def _labels(per_class: int = 100, classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def _max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over partitions of the largest single-class share: 1/classes when balanced."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_iid_partition_is_deterministic_disjoint_and_complete() -> None:
    x = np.arange(103) * 10
    y = np.arange(103) % 7
    parts = list(zip(*iid_partition(x, y, num_partitions=4, seed=1990), strict=True))

    again = list(zip(*iid_partition(x, y, num_partitions=4, seed=1990), strict=True))
    other = list(zip(*iid_partition(x, y, num_partitions=4, seed=1991), strict=True))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(parts, other, strict=True))

    assert sorted(len(px) for px, _ in parts) == [25, 26, 26, 26]
    assert np.array_equal(np.sort(np.concatenate([px for px, _ in parts])), x)
    for px, py in parts:
        assert np.array_equal(py, (px // 10) % 7)  # each label stays with its example


def test_iid_partition_refuses_more_partitions_than_examples() -> None:
    with pytest.raises(DataError, match="3 examples into 4"):
        iid_partition(np.zeros((3, 2)), np.zeros(3), num_partitions=4)


def test_dirichlet_partition_is_deterministic_disjoint_and_complete() -> None:
    labels = _labels()
    parts = dirichlet_partition(labels, num_partitions=5, alpha=0.5, seed=7)

    again = dirichlet_partition(labels, num_partitions=5, alpha=0.5, seed=7)
    other = dirichlet_partition(labels, num_partitions=5, alpha=0.5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))

    everything = np.concatenate(parts)
    assert len(everything) == len(labels)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    assert all(p.dtype == np.int64 for p in parts)


def test_dirichlet_partition_with_small_alpha_skews_label_distributions() -> None:
    labels = _labels()
    skewed = dirichlet_partition(labels, num_partitions=5, alpha=0.1, seed=0)
    near_iid = dirichlet_partition(labels, num_partitions=5, alpha=1000.0, seed=0)
    iid = np.array_split(np.random.default_rng(0).permutation(len(labels)), 5)

    assert _max_class_share(labels, skewed) > 0.4
    assert _max_class_share(labels, near_iid) < 0.2
    assert _max_class_share(labels, iid) < 0.2


def test_dirichlet_partition_respects_min_partition_size() -> None:
    labels = _labels()
    for seed in range(5):
        parts = dirichlet_partition(
            labels, num_partitions=8, alpha=0.1, seed=seed, min_partition_size=40
        )
        assert min(len(p) for p in parts) >= 40


def test_dirichlet_partition_reports_an_impossible_min_partition_size() -> None:
    with pytest.raises(DataError, match="cannot give 5 partitions"):
        dirichlet_partition(_labels(), num_partitions=5, min_partition_size=201)
    with pytest.raises(DataError, match="in 3 attempts"):
        dirichlet_partition(
            _labels(), num_partitions=10, alpha=0.01, min_partition_size=99, max_attempts=3
        )


def _write_files(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(f"content of {name}".encode())


def _chunk_listing(chunks: list[Path], subdir: str) -> list[list[str]]:
    return [sorted(p.name for p in (chunk / subdir).iterdir()) for chunk in chunks]


def test_iid_partition_dir_covers_every_file_exactly_once(tmp_path: Path) -> None:
    names = [f"{i:06d}.jpg" for i in range(11)]
    _write_files(tmp_path, [*names, "list_attr.txt"])

    chunks = iid_partition_dir(tmp_path, "jpg", 3, "img", seed=1)

    assert chunks == [tmp_path / f"chunk{i}" for i in range(3)]
    listing = _chunk_listing(chunks, "img")
    placed = [name for chunk in listing for name in chunk]
    assert sorted(placed) == names  # each .jpg once, the .txt left out
    assert sorted(len(chunk) for chunk in listing) == [3, 4, 4]
    for chunk, chunk_names in zip(chunks, listing, strict=True):
        for name in chunk_names:
            assert (chunk / "img" / name).read_bytes() == (tmp_path / name).read_bytes()
    assert all((tmp_path / name).is_file() for name in names)  # originals stay


def test_iid_partition_dir_is_deterministic_and_rerunnable(tmp_path: Path) -> None:
    names = [f"{i}.png" for i in range(9)]
    _write_files(tmp_path / "a", names)
    _write_files(tmp_path / "b", names)

    first = _chunk_listing(iid_partition_dir(tmp_path / "a", ".png", 3, "img", seed=5), "img")
    again = _chunk_listing(iid_partition_dir(tmp_path / "a", ".png", 3, "img", seed=5), "img")
    fresh = _chunk_listing(iid_partition_dir(tmp_path / "b", ".png", 3, "img", seed=5), "img")
    assert first == again == fresh

    with pytest.raises(DataError, match="partitioned with other arguments"):
        iid_partition_dir(tmp_path / "a", ".png", 3, "img", seed=6)
    with pytest.raises(DataError, match="more partitions"):
        iid_partition_dir(tmp_path / "a", ".png", 2, "img", seed=5)


# --- digits --------------------------------------------------------------------------


def test_digits_default_is_normalized_8x8_grey_with_a_stratified_split() -> None:
    data = load_digits_dataset()

    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_test.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert len(data.y_train) == len(data.x_train) and len(data.y_test) == len(data.x_test)
    assert data.x_train.min() == -1.0 and data.x_train.max() == 1.0
    assert data.classes == tuple(str(d) for d in range(10))
    totals = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.all(np.abs(np.bincount(data.y_test) - 0.2 * totals) <= 1)


def test_digits_upsampled_to_32x32_rgb_matches_torch_bilinear() -> None:
    small = load_digits_dataset(normalize=False)
    big = load_digits_dataset(image_size=32, channels=3, normalize=False)

    assert big.x_train.shape[1:] == (3, 32, 32) and big.x_train.dtype == np.float32
    assert big.x_train.min() >= 0.0 and big.x_train.max() <= 1.0
    assert np.array_equal(big.y_train, small.y_train)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(small.x_train), size=32, mode="bilinear", align_corners=False
    ).numpy()
    for channel in range(3):
        np.testing.assert_allclose(big.x_train[:, channel : channel + 1], expected, atol=1e-6)


def test_digits_split_is_deterministic_for_a_seed() -> None:
    a, b, c = (load_digits_dataset(seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


# --- CIFAR-10 ------------------------------------------------------------------------


def _cifar_batches(records: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Six small batches (five train, one test) with recognisable pixels and labels."""
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for name in names:
        data = rng.integers(0, 256, size=(records, 3072), dtype=np.uint8)
        batches[name] = (data, [int(v) for v in rng.integers(0, 10, size=records)])
    first = batches["data_batch_1"][0]
    first[0, :1024], first[0, 1024:2048], first[0, 2048:] = 255, 0, 128  # R, G, B planes
    return batches


def _write_cifar_bin(folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")


def _write_cifar_py(
    folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]], protocol: int = 4
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))


# The pure-Python pickler, whose per-type dispatch table a subclass can change.
_PurePythonPickler: Any = vars(pickle)["_Pickler"]


class _Python2Pickler(_PurePythonPickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as in the real release's pickles."""

    dispatch = dict(_PurePythonPickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        self.write(b"T" + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _write_cifar_py2(folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        buffer = io.BytesIO()
        _Python2Pickler(buffer, protocol=2).dump({b"labels": labels, b"data": data})
        payload = buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")
        assert b"cnumpy.core.multiarray\n_reconstruct" in payload
        (folder / name).write_bytes(payload)


def _assert_matches(data_set: Dataset, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    x_train, y_train = data_set.x_train, data_set.y_train
    x_test, y_test = data_set.x_test, data_set.y_test
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert y_train.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert y_test.tolist() == batches["test_batch"][1]
    red, green, blue = x_train[0, :, 5, 7]
    assert (red, green, blue) == (1.0, -1.0, pytest.approx(128 / 255 * 2 - 1, abs=1e-6))
    raw = batches["test_batch"][0].reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(x_test, (raw / 255 - 0.5) / 0.5, atol=1e-6)
    assert data_set.classes == CIFAR10_CLASSES


def test_cifar10_binary_release_is_read(tmp_path: Path) -> None:
    batches = _cifar_batches()
    _write_cifar_bin(tmp_path, batches)
    _assert_matches(load_cifar10(tmp_path), batches)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_cifar10_python_release_is_read(tmp_path: Path, protocol: int) -> None:
    batches = _cifar_batches()
    _write_cifar_py(tmp_path / "cifar-10-batches-py", batches, protocol)
    _assert_matches(load_cifar10(tmp_path), batches)


def test_cifar10_python_release_pickled_by_python2_is_read(tmp_path: Path) -> None:
    batches = _cifar_batches()
    _write_cifar_py2(tmp_path, batches)
    _assert_matches(load_cifar10(tmp_path), batches)


def test_cifar10_without_normalize_is_in_unit_range(tmp_path: Path) -> None:
    _write_cifar_bin(tmp_path, _cifar_batches())
    data = load_cifar10(tmp_path, normalize=False)
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0


class _Evil:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.call, (self.arg,)


def _evil_payloads(marker: Path) -> dict[str, object]:
    shell = _Evil(os.system, f"touch {marker}")
    python = _Evil(eval, f"open({str(marker)!r}, 'w').close()")
    return {
        "os.system as the whole payload": shell,
        "eval inside the labels": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [python]},
    }


@pytest.mark.parametrize("case", ["os.system as the whole payload", "eval inside the labels"])
@pytest.mark.parametrize("target", ["data_batch_3", "batches.meta"])
def test_cifar10_python_reader_refuses_pickles_naming_other_globals(
    tmp_path: Path, case: str, target: str
) -> None:
    marker = tmp_path / "pwned"
    _write_cifar_py(tmp_path, _cifar_batches())
    (tmp_path / target).write_bytes(pickle.dumps(_evil_payloads(marker)[case]))

    with pytest.raises(
        DataError, match=rf"{target}: refused to unpickle (posix\.system|builtins\.eval)"
    ):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_missing_release_says_which_files_were_expected(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match="data_batch_1.bin .* test_batch"):
        load_cifar10(tmp_path)


def test_cifar10_truncated_binary_batch_is_refused(tmp_path: Path) -> None:
    _write_cifar_bin(tmp_path, _cifar_batches())
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="data_batch_2.bin .*3073-byte records"):
        load_cifar10(tmp_path)


# --- image folders -------------------------------------------------------------------


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _solid(width: int, height: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (height, width, 3)).copy()


def test_image_folder_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    _save(tmp_path / "b" / "z.jpg", _solid(30, 50, (0, 255, 0)))
    _save(tmp_path / "a.png", _solid(40, 20, (255, 0, 0)))
    _save(tmp_path / "c.jpeg", _solid(64, 64, (0, 0, 255)))
    (tmp_path / "notes.txt").write_text("not an image")

    images = load_image_folder(tmp_path, image_size=16)

    assert images.shape == (3, 3, 16, 16) and images.dtype == np.float32
    colours = images.mean(axis=(2, 3))
    expected = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]  # a.png, b/z.jpg, c.jpeg
    np.testing.assert_allclose(colours, expected, atol=0.05)
    assert load_image_folder(tmp_path, image_size=16, limit=2).shape[0] == 2


def test_image_folder_resizes_the_shorter_side_then_center_crops(tmp_path: Path) -> None:
    wide = _solid(40, 20, (255, 255, 255))
    wide[:, :5] = wide[:, 35:] = 0  # black outer eighths fall well outside the center crop
    _save(tmp_path / "wide.png", wide)

    image = load_image_folder(tmp_path, image_size=16)[0]

    assert image.min() >= 0.95 and image.max() == 1.0


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path)
    _save(tmp_path / "good.png", _solid(8, 8, (1, 2, 3)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(tmp_path, image_size=8)


# --- torch batching ------------------------------------------------------------------


def test_torch_loader_shuffles_reproducibly_and_keeps_pairs() -> None:
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    y = np.arange(25, dtype=np.int64)

    first = [b[1].tolist() for b in to_torch_loader(x, y, batch_size=8, shuffle=True, seed=3)]
    again = [b[1].tolist() for b in to_torch_loader(x, y, batch_size=8, shuffle=True, seed=3)]
    other = [b[1].tolist() for b in to_torch_loader(x, y, batch_size=8, shuffle=True, seed=4)]

    assert first == again != other
    assert sorted(sum(first, [])) == list(range(25))
    for bx, by in to_torch_loader(x, y, batch_size=8, shuffle=True, seed=3):
        assert torch.equal(bx[:, 0], by.float() * 2)
    images_only = next(iter(to_torch_loader(x, batch_size=4)))
    assert len(images_only) == 1 and images_only[0].shape == (4, 2)
