"""Storage throughput: codec vs numpy.save, CID vs hashlib.sha256, LocalStore and KuboStore.

    .venv/bin/python bench/storage.py [--floats 10000000] [--repeat 3] [--no-kubo]

Prints MB/s (10^6 bytes per second, best of --repeat runs) for each measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from collections.abc import Callable

import numpy as np

from fedchain.cli.devnet import start_ipfs_devnode
from fedchain.model import codec
from fedchain.storage import ContentStore
from fedchain.storage.kubo import KuboStore
from fedchain.storage.local import LocalStore
from fedchain.storage.unixfs import CHUNK_SIZE, cid_of


def best(fn: Callable[[], object], repeat: int) -> float:
    """The shortest wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def row(what: str, nbytes: int, seconds: float, ref: float | None = None) -> None:
    rate = nbytes / seconds / 1e6
    extra = f"   ({ref / seconds:.0%} of the reference)" if ref else ""
    print(f"  {what:<42} {rate:9.0f} MB/s{extra}")


def model(floats: int) -> codec.Weights:
    """A CNN-like model of about `floats` float32 values, with a BatchNorm counter."""
    rng = np.random.default_rng(0)
    weights: codec.Weights = {}
    layers = 8
    for i in range(layers):
        weights[f"layer{i}.weight"] = rng.standard_normal(floats // layers, np.float32)
        weights[f"layer{i}.bias"] = rng.standard_normal(64, np.float32)
    weights["bn.num_batches_tracked"] = np.array(100, np.int64)
    return weights


def bench_store(name: str, store: ContentStore, data: bytes, repeat: int) -> None:
    cid = store.put(data)
    row(f"{name} put", len(data), best(lambda: store.put(data), repeat))
    row(f"{name} get (verified)", len(data), best(lambda: store.get(cid), repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floats", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-kubo", action="store_true", help="skip the IPFS dev node")
    args = parser.parse_args()

    weights = model(args.floats)
    data = codec.encode(weights)
    n = len(data)
    print(f"model: {len(weights)} tensors, {args.floats:,} float32, {n / 1e6:.1f} MB encoded")

    print("codec")
    flat = np.concatenate([a.ravel() for a in weights.values() if a.dtype == np.float32])

    def np_save() -> bytes:
        buf = io.BytesIO()
        np.save(buf, flat, allow_pickle=False)
        return buf.getvalue()

    saved = np_save()
    t_save = best(np_save, args.repeat)
    t_load = best(lambda: np.load(io.BytesIO(saved), allow_pickle=False), args.repeat)
    row("numpy.save (one flat array, reference)", n, t_save)
    row("codec.encode", n, best(lambda: codec.encode(weights), args.repeat), t_save)
    row("numpy.load (one flat array, reference)", n, t_load)
    row("codec.decode (validated)", n, best(lambda: codec.decode(data), args.repeat), t_load)
    ref = codec.spec(weights)
    row(
        "codec.decode with reference", n, best(lambda: codec.decode(data, ref), args.repeat), t_load
    )
    row(
        "codec.decode(copy=False) (aggregator)",
        n,
        best(lambda: codec.decode(data, ref, copy=False), args.repeat),
        t_load,
    )

    print("CID")
    t_sha = best(lambda: hashlib.sha256(data).digest(), args.repeat)
    row("hashlib.sha256 (reference)", n, t_sha)
    view = memoryview(data)

    def sha_chunks() -> None:
        for i in range(0, n, CHUNK_SIZE):
            hashlib.sha256(view[i : i + CHUNK_SIZE]).digest()

    row("hashlib.sha256 per 256 KiB chunk", n, best(sha_chunks, args.repeat), t_sha)
    row("unixfs.cid_of", n, best(lambda: cid_of(data), args.repeat), t_sha)

    print("stores")
    with tempfile.TemporaryDirectory() as tmp:
        bench_store("LocalStore", LocalStore(tmp), data, args.repeat)
    if not args.no_kubo:
        with start_ipfs_devnode() as node, KuboStore(node.url) as kubo:
            print(f"  (IPFS dev node {kubo.version()} at {node.url})")
            bench_store("KuboStore (dev node)", kubo, data, args.repeat)


if __name__ == "__main__":
    main()
