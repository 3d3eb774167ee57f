"""Secure aggregation's test vectors (SPEC.md §14): every derived value of a small round.

    .venv/bin/python scripts/secagg_vectors.py           # (re)write tests/data/secagg_vectors.json
    .venv/bin/python scripts/secagg_vectors.py --check   # fail if fedchain computes otherwise

Byte strings are hex; floats are given as Python's float.hex() (exact binary64).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.privacy import quantize as Q
from fedchain.privacy import secagg as S
from fedchain.privacy import shamir
from fedchain.privacy.prg import prg_words

PATH = Path(__file__).resolve().parent.parent / "tests" / "data" / "secagg_vectors.json"


def compute() -> dict[str, Any]:
    seed = bytes(range(32))
    ctx = S.RoundContext(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 3,
                         bytes.fromhex("ab" * 32))
    out: dict[str, Any] = {
        "prg": {"seed": seed.hex(), "bits": 26, "words": prg_words(seed, 8, 26).tolist()},
        "context": {"chain_id": ctx.chain_id, "contract": ctx.contract, "round": ctx.round,
                    "seed": ctx.seed.hex(), "encoded": ctx.encode().hex()},
    }
    addresses = [f"0x{(i + 1) * 0x1111:040x}" for i in range(4)]
    masters = [bytes([i + 1]) * 32 for i in range(4)]
    keys = [S.RoundKeys.derive(m, a, ctx) for m, a in zip(masters, addresses, strict=True)]
    out["learners"] = [
        {"address": k.learner, "secret": m.hex(), "private_key": k.private_key.hex(),
         "public_key": k.public_key.hex(), "self_seed": k.self_seed.hex(),
         "rounding_seed": k.rounding_seed.hex(),
         "commitment": k.announcement(ctx).commitment.hex()}
        for m, k in zip(masters, keys, strict=True)]
    values = [0.0, -0.0, 0.3, -0.3, 1.0, -1.0, 2.5, -7.0, 1e-300, 0.123456789, -0.999999,
              0.0004, 0.0006, -0.0004, -0.0006, 0.7777777, -0.5555555, 0.0009999]
    clip, qrange = 1.0, 1000
    out["quantize"] = {"values": [v.hex() for v in values], "clip": clip.hex(),
                       "range": qrange, "seed": keys[0].rounding_seed.hex(),
                       "q": Q.quantize(np.array(values), clip, qrange,
                                       keys[0].rounding_seed).tolist()}
    twelve = [f"0x{(i * 0x9E3779B1 + 5) % (1 << 160):040x}" for i in range(12)]
    out["neighbours"] = {"learners": twelve, "degree": 4,
                         "graph": {k: list(v) for k, v in S.neighbours(twelve, ctx, 4).items()},
                         "default_degree_graph": {
                             k: list(v) for k, v in S.neighbours(twelve, ctx).items()}}
    out["groups"] = {"learners": twelve, "min_size": 5,
                     "groups": [list(g) for g in S.groups(twelve, ctx, 5)]}
    pks = {k.learner: k.public_key for k in keys}
    graph = S.neighbours(addresses, ctx)  # 4 learners: everyone
    out["pairwise_seeds"] = {
        f"{a.learner} {b.learner}": S.pairwise_seed(a.private_key, a.learner, a.public_key,
                                                    b.learner, b.public_key, ctx).hex()
        for i, a in enumerate(keys) for b in keys[i + 1:]}
    bits = Q.bits_needed(4, qrange)
    qs = {k.learner: Q.quantize(np.linspace(-1.5, 1.5, 8) * (i + 1) / 4, clip, qrange,
                                k.rounding_seed) for i, k in enumerate(keys)}
    ys = {k.learner: S.mask(qs[k.learner], k, pks, graph, ctx, bits) for k in keys}
    out["masks"] = {"bits": bits, "quantized": {a: q.tolist() for a, q in qs.items()},
                    "masked": {a: y.tolist() for a, y in ys.items()},
                    "encoded_first": S.encode_masked(ys[keys[0].learner], bits).hex()}
    secret = int.from_bytes(keys[0].self_seed, "big")
    out["shamir"] = {"secret": f"{secret:064x}", "threshold": 3, "holders": 5,
                     "seed": keys[0].share_seeds[S.SELF].hex(),
                     "shares": [shamir.encode_share(v).hex() for v in shamir.split(
                         secret, 3, 5, keys[0].share_seeds[S.SELF])]}
    holders = {k.learner: k.public_key for k in keys[1:]}
    dealing = S.deal(keys[0], holders, 2, ctx)
    out["dealing"] = {
        "dealer": keys[0].learner, "threshold": 2, "holders": list(dealing.holders),
        "ciphertexts": {h: {kind: dealing.ciphertexts[h][kind].hex() for kind in (S.SELF, S.KEY)}
                        for h in dealing.holders},
        "share_keys": {h: {kind: S.reveal_key(keys[1 + i], dealing, kind, ctx).hex()
                           for kind in (S.SELF, S.KEY)} for i, h in enumerate(dealing.holders)}}
    dropped = keys[3]
    finished = {k.learner: ys[k.learner] for k in keys[:3]}
    total = S.unmask(finished, graph, pks, {k.learner: k.self_seed for k in keys[:3]},
                     {dropped.learner: dropped.private_key}, ctx, bits)
    out["unmask"] = {"finished": sorted(finished), "dropped": [dropped.learner],
                     "sum": total.tolist(),
                     "dequantized": [v.hex() for v in Q.dequantize(total, 3, clip, qrange)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = json.dumps(compute(), indent=1) + "\n"
    if args.check:
        if PATH.read_text() != text:
            sys.exit(f"{PATH} differs from what fedchain computes")
        print(f"{PATH}: ok")
        return
    PATH.write_text(text)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
