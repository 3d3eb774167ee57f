"""Secure aggregation's core (fedchain.privacy): time and bytes per learner, and unmasking.

    .venv/bin/python bench/secagg.py                    # n = 100, 1000; d = 10^5, 10^6 (< 1 min)
    .venv/bin/python bench/secagg.py --learners 100 --params 100000 --full

Per learner (measured, one learner of a round of n): quantize + mask (the self mask and one
pairwise mask per neighbour, degree = secagg.default_degree(n)), and dealing its encrypted
shares to a committee of 5 (threshold 3). Upload bytes: the masked vector (⌈k/8⌉ bytes per
value), the announcement (64 B) and the dealing (82 B + 118 B per holder, SPEC.md §14.10);
each holder then publishes 25 B + 53 B per dealer.

Unmasking (anyone, from public data), with 30 % of the round dropped after masking: summing the
finished vectors, removing their self masks, and the pairwise masks they share with dropped
neighbours; plus recovering one secret per learner from 3 revealed keys. Measured in full for
the small configurations (or all with --full); for the others it is estimated from the measured
unit costs (one PRG expansion, one vector add, one secret recovery) — printed as "≈". The
estimate is checked against the measurement where both exist.

Expansion: upload bytes / float32 bytes (4 per parameter), beside Bonawitz et al. (CCS 2017):
1.73× at 2^10 users, 2^20 parameters, 16-bit inputs (their baseline being the 16-bit input
sent in the clear, so the figure comparable to theirs is ours / 2 bytes per parameter); and
Flower's SecAgg+ (int64 masked vectors: 2.0× float32).
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from fedchain.privacy import quantize as Q
from fedchain.privacy import secagg as S
from fedchain.privacy.prg import Expander, prg_words

CTX = S.RoundContext(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, bytes(32))
CLIP, RANGE = 2.0, (1 << 15) - 1  # 16-bit inputs, as in Bonawitz et al.
COMMITTEE, THRESHOLD, DROP = 5, 3, 0.3


def addr(i: int) -> str:
    return f"0x{i + 1:040x}"


def secret(i: int) -> bytes:
    return hashlib.sha256(b"bench %d" % i).digest()


def best(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def upload_bytes(n: int, d: int, holders: int = COMMITTEE) -> tuple[int, int]:
    k = Q.bits_needed(n, RANGE)
    return k, d * ((k + 7) // 8) + 64 + 82 + 118 * holders  # vector, announcement, dealing


def one_config(n: int, d: int, full: bool, units: dict) -> dict:
    learners = [addr(i) for i in range(n)]
    graph = S.neighbours(learners, CTX)
    degree = len(graph[learners[0]])
    k = Q.bits_needed(n, RANGE)
    me = learners[0]
    # Only the keys one learner's masking touches are derived (all n when unmasking in full).
    needed = learners if full else [me, *graph[me]]
    keys = {a: S.RoundKeys.derive(secret(i), a, CTX)
            for i, a in enumerate(learners) if a in set(needed)}
    pks = {a: keys[a].public_key for a in keys}
    delta = np.random.default_rng(0).normal(0, 1, d)

    def mask_one():
        q = Q.quantize(delta, CLIP, RANGE, keys[me].rounding_seed)
        return S.mask(q, keys[me], pks, graph, CTX, k)

    t_mask = best(mask_one)
    members = {addr(10**6 + m): S.RoundKeys.derive(secret(10**6 + m), addr(10**6 + m), CTX)
               for m in range(COMMITTEE)}
    holders = {m: mk.public_key for m, mk in members.items()}
    t_deal = best(lambda: S.deal(keys[me], holders, THRESHOLD, CTX))
    _, up = upload_bytes(n, d)
    dropped = set(learners[:: round(1 / DROP)][: int(n * DROP)])
    finished = [a for a in learners if a not in dropped]
    pairs = sum(1 for a in finished for j in graph[a] if j in dropped)
    per_mask = (units["prg"] + units["add"]) * d  # expand, then add into the total
    estimate = (len(finished) * (units["add"] * d + per_mask) + pairs * per_mask
                + n * units["recover"])
    row = {"n": n, "d": d, "degree": degree, "k": k, "mask_s": t_mask, "deal_s": t_deal,
           "upload": up, "expansion_f32": up / (4 * d), "unmask_est_s": estimate,
           "pairs": pairs, "unmask_s": None}
    if full:
        ys = {a: S.mask(Q.quantize(delta, CLIP, RANGE, keys[a].rounding_seed), keys[a], pks,
                        graph, CTX, k) for a in finished}
        dealing = {a: S.deal(keys[a], holders, THRESHOLD, CTX) for a in learners}
        ann = {a: keys[a].announcement(CTX) for a in learners}
        revealers = sorted(members)[:THRESHOLD]
        t = time.perf_counter()
        seeds, dkeys = {}, {}
        for a in learners:
            kind = S.KEY if a in dropped else S.SELF
            rev = {m: S.reveal_key(members[m], dealing[a], kind, CTX) for m in revealers}
            (dkeys if a in dropped else seeds)[a] = S.recover_secret(dealing[a], ann[a], kind,
                                                                      rev, holders, CTX)
        S.unmask(ys, graph, pks, seeds, dkeys, CTX, k)
        row["unmask_s"] = time.perf_counter() - t
    return row


def unit_costs(d: int) -> dict:
    seed = secret(0)
    expander = Expander(d)
    prg = best(lambda: expander.words(seed, 26), 7) / d
    a, b = prg_words(seed, d), prg_words(secret(1), d)
    add = best(lambda: np.add(a, b, out=a), 7) / d
    members = {addr(m): S.RoundKeys.derive(secret(m), addr(m), CTX) for m in range(COMMITTEE)}
    holders = {m: mk.public_key for m, mk in members.items()}
    dealer = S.RoundKeys.derive(secret(99), addr(99), CTX)
    dealing = S.deal(dealer, holders, THRESHOLD, CTX)
    ann = dealer.announcement(CTX)

    def recover():
        rev = {m: S.reveal_key(members[m], dealing, S.SELF, CTX) for m in sorted(members)[:3]}
        S.recover_secret(dealing, ann, S.SELF, rev, holders, CTX)

    return {"prg": prg, "add": add, "recover": best(recover, 5)}


def flower(units: dict) -> None:
    """Flower's SecAgg+ primitives on the same d (flwr is the bench extra), when installed."""
    try:
        from flwr.common.secure_aggregation.quantization import quantize as fq
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    except ImportError:
        print("flwr not installed: no Flower comparison (pip install -e '.[bench]')")
        return
    d = 1_000_000
    delta = np.random.default_rng(0).normal(0, 1, d)
    t_prg = best(lambda: pseudo_rand_gen(secret(0), 1 << 32, [(d,)]), 3) / d
    t_q = best(lambda: fq([delta], 8.0, 1 << 22), 3)
    t_ours = best(lambda: Q.quantize(delta, CLIP, RANGE, secret(1)), 3)
    print(f"Flower SecAgg+ at d = 10^6: mask PRG {t_prg * 1e9:.2f} ns/word (MT19937 seeded with "
          f"32 bits, int64) vs ours {units['prg'] * 1e9:.2f} (AES-256-CTR); quantize "
          f"{t_q:.3f} s (unseeded) vs ours {t_ours:.3f} s (seeded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", default="100,1000")
    parser.add_argument("--params", default="100000,1000000")
    parser.add_argument("--full", action="store_true", help="unmask every configuration in full")
    args = parser.parse_args()
    units = unit_costs(1_000_000)
    print(f"unit costs: PRG {units['prg'] * 1e9:.2f} ns/word, add {units['add'] * 1e9:.2f} "
          f"ns/word, one secret recovered from {THRESHOLD} revealed keys "
          f"{units['recover'] * 1e3:.2f} ms")
    print(f"range {RANGE} (16-bit inputs), clip {CLIP}, committee {COMMITTEE} / threshold "
          f"{THRESHOLD}, {DROP:.0%} dropped after masking")
    print(f"{'n':>5} {'d':>8} {'deg':>4} {'k':>3} {'mask s':>7} {'deal ms':>7} "
          f"{'upload B/learner':>16} {'×f32':>5} {'×16b':>5} {'unmask s (30% drop)':>20}")
    for n in (int(x) for x in args.learners.split(",")):
        for d in (int(x) for x in args.params.split(",")):
            full = args.full or n * d <= 100 * 100_000
            r = one_config(n, d, full, units)
            unmask = f"≈{r['unmask_est_s']:.1f}"
            if r["unmask_s"] is not None:
                unmask = f"{r['unmask_s']:.2f} ({unmask})"
            print(f"{n:>5} {d:>8} {r['degree']:>4} {r['k']:>3} {r['mask_s']:>7.3f} "
                  f"{r['deal_s'] * 1e3:>7.2f} {r['upload']:>16,} {r['expansion_f32']:>5.2f} "
                  f"{r['upload'] / (2 * d):>5.2f} {unmask:>20}")
    flower(units)
    k, up = upload_bytes(1024, 1 << 20)
    print(f"Bonawitz et al. 2017 point (2^10 users, 2^20 params, 16-bit): k = {k}, "
          f"{up / (4 << 20):.2f}× float32, {up / (2 << 20):.2f}× the 16-bit input "
          f"(theirs: 1.73× the input; Flower SecAgg+: int64, 2.00× float32)")


if __name__ == "__main__":
    main()
