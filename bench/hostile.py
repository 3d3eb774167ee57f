"""Hostile stores and inputs: each attack, what it ends in, how long it took, peak extra memory.

    .venv/bin/python bench/hostile.py [--deadline 5] [--bomb-gib 1]

Runs KuboStore (and the plan loader and model codec) against the fake hostile node of
tests/hostile_kubo.py, one attack at a time, and prints a table. "Before" is what the same
attack did to fedchain before fetches were bounded (figures from the security issue).
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_kubo import BLOCKS, HostileKubo, PeakRSS  # noqa: E402

import fedchain.eth.chain  # noqa: E402, F401 - py-evm sets the recursion limit
from fedchain.model import codec  # noqa: E402
from fedchain.protocol.params import Plan
from fedchain.storage.kubo import KuboStore  # noqa: E402

MiB = 1024**2


Outcome = tuple[str, PeakRSS]


def measured(action: Callable[[], object]) -> Outcome:
    """The name of the exception `action()` ended in, and its time and memory."""
    with PeakRSS() as peak:
        try:
            action()
            outcome = "no error (!)"
        except Exception as exc:  # noqa: BLE001 - reported
            outcome = type(exc).__name__
    return outcome, peak


def attack(mode: str, action: Callable[[KuboStore], object], **node: Any) -> Callable[[], Outcome]:
    """An attack of a hostile node in `mode`: the node's start and stop are not measured."""

    def run() -> Outcome:
        with HostileKubo(mode, **node) as hostile, KuboStore(hostile.url) as store:
            return measured(lambda: action(store))

    return run


def local(action: Callable[[], object]) -> Callable[[], Outcome]:
    return lambda: measured(action)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deadline", type=float, default=5.0, help="timeout of slow fetches (s)")
    parser.add_argument("--bomb-gib", type=float, default=1.0, help="gzip bombs inflate to this")
    args = parser.parse_args()
    t = args.deadline
    bomb = int(args.bomb_gib * 1024**3)
    deep = struct.pack("<Q", 2_000_000) + b"[" * 1_000_000 + b"]" * 1_000_000
    attacks: list[tuple[str, str, Callable[[], Outcome]]] = [
        ("endless body, raw CID", "+5.7 GB in 20 s, no end",
         attack("endless", lambda s: s.get(BLOCKS.leaf))),
        ("endless body, dag-pb CID", "+5.7 GB in 20 s, no end",
         attack("endless", lambda s: s.get(BLOCKS.small))),
        ("Plan.load from an endless node", "+7 GB",
         attack("endless", lambda s: Plan.load(s, BLOCKS.small))),
        ("dedup bomb (1.29 TiB in 3 blocks)", "+2 GiB, then refused",
         attack("dedup", lambda s: s.get(BLOCKS.bomb))),
        (f"slow drip, cat (timeout {t:g} s)", "hung forever",
         attack("drip", lambda s: s.get(BLOCKS.leaf, timeout=t), interval=2.0)),
        (f"slow drip, block/get (timeout {t:g} s)", "hung forever",
         attack("drip", lambda s: s.get(BLOCKS.small, timeout=t), interval=2.0)),
        (f"silent node (timeout {t:g} s)", "per-read timeout",
         attack("silent", lambda s: s.get(BLOCKS.leaf, timeout=t))),
        ("gzip bomb on pin/add", "1.7 GB", attack("gzip", lambda s: s.pin(BLOCKS.small),
                                                 bomb_bytes=bomb)),
        ("gzip bomb on block/stat (has)", "1.7 GB",
         attack("gzip", lambda s: s.has(BLOCKS.small), bomb_bytes=bomb)),
        ("gzip bomb on version", "1.7 GB",
         attack("gzip", lambda s: s.version(), bomb_bytes=bomb)),
        ("gzip bomb on add", "1.7 GB",
         attack("gzip", lambda s: s.put(b"model"), bomb_bytes=bomb)),
        ("gzip bomb as cat content", "",
         attack("gzip", lambda s: s.get(BLOCKS.leaf), bomb_bytes=bomb)),
        ("wrong bytes", "", attack("wrong", lambda s: s.get(BLOCKS.leaf))),
        ("wrong root block", "", attack("wrong", lambda s: s.get(BLOCKS.small))),
        ("truncated body", "", attack("truncated", lambda s: s.get(BLOCKS.small))),
        ("version without Version", "KeyError", attack("missing", lambda s: s.version())),
        ("add without Hash", "", attack("missing", lambda s: s.put(b"model"))),
        ("HTTP 500, 16 MiB message", "", attack("error500", lambda s: s.get(BLOCKS.leaf))),
        ("model header nested 1M deep", "segfault", local(lambda: codec.decode(deep))),
        ("plan JSON nested 1M deep", "segfault",
         local(lambda: Plan.from_json(b"[" * 500_000 + b"]" * 500_000))),
    ]  # fmt: skip
    print(f"{'attack':<40} {'outcome':<20} {'seconds':>8} {'peak +RSS':>10}   before")
    for name, before, run in attacks:
        outcome, peak = run()
        print(
            f"{name:<40} {outcome:<20} {peak.seconds:8.2f} {peak.extra / MiB:7.1f} MiB   {before}"
        )


if __name__ == "__main__":
    main()
