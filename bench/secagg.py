"""Secure aggregation: its core per learner, rounds on a chain, Flower, accuracy, robustness.

    .venv/bin/python bench/secagg.py                    # the core: n = 100, 1000; d = 10^5, 10^6
    .venv/bin/python bench/secagg.py --part round       # secure vs plaintext rounds on Anvil
    .venv/bin/python bench/secagg.py --part flower      # Flower's SecAgg+ beside the rounds
    .venv/bin/python bench/secagg.py --part cnn         # the CNN example: secagg vs FedAvg
    .venv/bin/python bench/secagg.py --part robust      # attacks on the secagg rule
    .venv/bin/python bench/secagg.py --part forge       # a rogue past the quantizer, for real
    .venv/bin/python bench/secagg.py --part all         # all six (`make bench`)

Each part adds its results to bench/results/secagg.json (--out); the README's "Secure
aggregation: measured" quotes them. The parts:

round: a federation of MillionLearners (10^6 float32 parameters, training in milliseconds)
on a fresh Anvil node (automine) with the pool engine and a committee of 3, plain FedAvg,
every learner required, 3 rounds, once with privacy = "secagg" and once in the clear with the
same deadlines, at 10 and 100 learners (--round-learners): seconds per round (from the
committee's log lines), this process's CPU, each learner's masking CPU (thread CPU of
`masked_update`), keys and dealing, a member's revelation, each unmasking (`unmask_public`)
and secure outcome (`secure.aggregate`), and the bytes each learner uploads.

flower: Flower's SecAgg+ (SecAggPlusWorkflow, secaggplus_mod) on the same model and clients,
in process (Flower's simulation engine needs Ray, not installed): CPU and bytes per client.

cnn: `fedchain simulate --job examples/cnn/fedchain-secagg.toml --audit`, and the same job in
the clear with plain FedAvg weighted by num_examples and uniformly, for the example's seeds
0 to 4: final centralized accuracy, and the share of coordinates the clip cut.

robust: bench/attacks.py's engine (the MLP example, 10 learners, IID) with secure
aggregation's rule as a strategy (SecaggRule), one group (mean) and groups of ≥ 3 (median),
against sign flip (x-1), scaling (x-10) and a rogue that does not run the quantizer (range),
1 and 3 rogues of 10, for a tight and a loose clip; FedAvg in the clear beside them.

forge: the range rogue through a real secure round (embedded chain, committee of 3): how far
its forged masked vector moves the published model, which the audit verifies.

core (the default), without a chain. Per learner (measured, one learner of a round of n):
quantize + mask (the self mask and one pairwise mask per neighbour, degree =
secagg.default_degree(n)), and dealing its encrypted shares to a committee of 5 (threshold 3).
Upload bytes: the masked vector (⌈k/8⌉ bytes per value, SPEC.md §14.5; the round's model
file holds int32 values when k ≤ 31), the announcement (64 B) and the dealing (82 B + 118 B
per holder, SPEC.md §14.10); each holder then publishes 25 B + 53 B per dealer.

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
import contextlib
import hashlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fedchain

from fedchain.aggregation.strategy import FedAvg  # noqa: E402
from fedchain.cli import devnet  # noqa: E402
from fedchain.federation.config import RunConfig  # noqa: E402
from fedchain.federation.learner import EvalResult, Learner, TrainResult  # noqa: E402
from fedchain.federation.simulation import simulate  # noqa: E402
from fedchain.privacy import quantize as Q  # noqa: E402
from fedchain.privacy import secagg as S  # noqa: E402
from fedchain.privacy.prg import Expander, prg_words  # noqa: E402
from fedchain.storage.local import LocalStore  # noqa: E402

log = logging.getLogger("bench.secagg")

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


# --- the round on a chain: secure vs plaintext --------------------------------------------

#: The round-level comparison's model: one float32 layer of 10^6 parameters.
ROUND_PARAMS = 1_000_000
#: Issue 20's target: the 100-learner secure round within this many plaintext rounds.
ROUND_TARGET = 3.0


class MillionLearner(Learner):
    """A numpy learner with ROUND_PARAMS float32 parameters and almost free training: each
    step moves the weights a tenth of the way to the learner's own seeded target (so the
    round's time is the protocol's: chain, store, codec, masking)."""

    def __init__(self, learner_id: int, d: int = ROUND_PARAMS) -> None:
        self.seed, self.d = learner_id, d
        self.weights = million_weights(d)
        self._target: np.ndarray | None = None

    @property
    def target(self) -> np.ndarray:
        if self._target is None:  # made on first use (the pool builds learners lazily)
            rng = np.random.default_rng(10_000 + self.seed)
            self._target = rng.normal(0.0, 0.5, self.d).astype(np.float32)
        return self._target

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.weights

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = dict(weights)

    def train(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> TrainResult:
        w = weights["w"]
        new = (w + np.float32(0.1) * (self.target - w)).astype(np.float32)
        return TrainResult({"w": new}, 100 + self.seed, {})

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> EvalResult:
        mse = float(np.mean(np.square(weights["w"][:1000] - self.target[:1000])))
        return EvalResult(mse, 100 + self.seed, {"mse": mse})


def million_weights(d: int = ROUND_PARAMS) -> dict[str, np.ndarray]:
    return {"w": np.zeros(d, np.float32)}


class RoundClock(logging.Handler):
    """Wall-clock seconds per round from the committee's log lines: a round opens at genesis
    or at the previous round's first publication line, and closes at its own."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.opened: float | None = None
        self.published: dict[int, float] = {}
        self.included: dict[int, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("genesis model") and self.opened is None:
            self.opened = time.monotonic()
        elif text.startswith("[ROUND") and "published" in text:
            r = int(text[len("[ROUND "):].split("]")[0])
            self.published.setdefault(r, time.monotonic())
            self.included.setdefault(r, int(text.split("aggregated ")[1].split(",")[0]))

    def rounds(self) -> list[float]:
        if self.opened is None:
            return []
        marks = [self.opened] + [self.published[r] for r in sorted(self.published)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class CpuMeter:
    """Thread CPU seconds spent in a function, per call: wraps `owner.name` while in use."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.calls = owner, name, []
        self.original = getattr(owner, name)

    def __enter__(self) -> CpuMeter:
        original, calls = self.original, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append(time.thread_time() - t)

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.original)

    def mean(self) -> float | None:
        return statistics.mean(self.calls) if self.calls else None


def round_windows(n: int, members: int) -> dict[str, int]:
    """Deadlines generous for an automining chain, whose every block is stamped a second
    after its parent (so block time races ahead of the wall clock by about one second per
    transaction): every phase ends early once everyone is in."""
    key = 2 * n + members + 60
    return {"key_window": key, "update_window": 3 * key, "reveal_window": key,
            "vote_window": 2 * key}


def round_point(n: int, secure: bool, rounds: int, url: str, clip: float) -> dict[str, Any]:
    """One federation of n MillionLearners on the chain at `url`: seconds per round, the
    learners' masking CPU, the unmaskings' CPU, bytes uploaded per learner."""
    from fedchain.federation import aggregator as agg_mod
    from fedchain.federation import node as node_mod
    from fedchain.model.codec import encode
    from fedchain.protocol import secure as secure_mod

    w = windows = round_windows(n, 3)
    plan: dict[str, Any] = {"update_window": w["update_window"], "vote_window": w["vote_window"]}
    if secure:
        plan |= {"privacy": "secagg", "secagg": {"clip": clip, "key_window": w["key_window"],
                                                  "reveal_window": w["reveal_window"]}}
    config = RunConfig(strategy=FedAvg(), rounds=rounds, min_updates=n,
                       round_timeout=float(w["update_window"] + w["vote_window"]),
                       evaluation_timeout=120.0, **plan)
    clock = RoundClock()
    logger = logging.getLogger("fedchain.aggregator")
    logger.addHandler(clock)
    store = LocalStore(tempfile.mkdtemp(prefix="fedchain-secagg-"), durable=False)
    point: dict[str, Any] = {"learners": n, "mode": "secagg" if secure else "plaintext",
                             "params": ROUND_PARAMS, "rounds": rounds, **windows,
                             "error": None}
    meters = [CpuMeter(node_mod, "masked_update"), CpuMeter(node_mod, "keys_message"),
              CpuMeter(agg_mod, "holder_revelation"), CpuMeter(S, "unmask_public"),
              CpuMeter(secure_mod, "aggregate")]
    cpu0, started = time.process_time(), time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            for m in meters:
                stack.enter_context(m)
            simulate(lambda i, _: MillionLearner(i, ROUND_PARAMS), n, FedAvg(), rounds, chain=url,
                     store=store, config=config, timeout=7200.0, engine="pool",
                     aggregators=3, initial_weights=million_weights(ROUND_PARAMS))
    except Exception as exc:  # a failed point is recorded; the bench goes on
        point["error"] = f"{type(exc).__name__}: {exc}"
        log.error("%d learners (%s) failed: %s", n, point["mode"], point["error"],
                  exc_info=True)
    finally:
        logger.removeHandler(clock)
    point["wall_seconds"] = round(time.monotonic() - started, 1)
    point["process_cpu_seconds"] = round(time.process_time() - cpu0, 1)
    point["seconds_per_round"] = [round(s, 2) for s in clock.rounds()]
    point["included_per_round"] = [clock.included[r] for r in sorted(clock.included)]
    point["mean_round"] = (round(statistics.mean(point["seconds_per_round"]), 2)
                           if point["seconds_per_round"] else None)
    mask, deal, reveal, unmask, combine = (m.mean() for m in meters)
    point["mask_cpu_s"] = mask  # per learner per round: difference, quantize, mask
    point["keys_cpu_s"] = deal  # per learner per round: announcement and dealing
    point["reveal_cpu_s"] = reveal  # per member per round
    point["unmask_cpu_s"] = unmask  # per unmasking (member or verifier) per group
    point["aggregate_cpu_s"] = combine  # per secure outcome: unmask + combine
    point["unmaskings"] = len(meters[3].calls)
    d = ROUND_PARAMS
    if secure:
        bits = Q.bits_needed(n, RANGE)
        masked = {secure_mod.MASKED_LAYER: np.zeros(d, np.int32 if bits <= 31 else np.int64)}
        point["bits"] = bits
        point["upload_store_bytes"] = len(encode(masked))
        point["upload_chain_bytes"] = 64 + 82 + 118 * 3  # keys + dealing to 3 holders
    else:
        point["upload_store_bytes"] = len(encode(million_weights()))
        point["upload_chain_bytes"] = 0
    return point


def round_table(points: list[dict[str, Any]]) -> str:
    rows = ["| learners | mode | s/round | mean | mask CPU s/learner | unmask CPU s | "
            "upload B/learner (store + chain) | wall s |", "|" + "---|" * 8]
    for p in points:
        shown = ", ".join(f"{s:.1f}" for s in p["seconds_per_round"]) or "–"
        if p["error"]:
            shown += f" ERROR {p['error'][:60]}"
        mask = f"{p['mask_cpu_s']:.3f}" if p.get("mask_cpu_s") else "–"
        unmask = f"{p['aggregate_cpu_s']:.2f}" if p.get("aggregate_cpu_s") else "–"
        mean = f"{p['mean_round']:.1f}" if p["mean_round"] else "–"
        rows.append(f"| {p['learners']} | {p['mode']} | {shown} | {mean} | {mask} | {unmask} "
                    f"| {p['upload_store_bytes']:,} + {p['upload_chain_bytes']} | "
                    f"{p['wall_seconds']:.0f} |")
    return "\n".join(rows)


def round_bench(sizes: list[int], rounds: int, clip: float) -> dict[str, Any]:
    """Secure vs plaintext rounds on one Anvil node per point (a fresh chain each)."""
    logging.getLogger("fedchain.aggregator").setLevel(logging.INFO)
    points = []
    for n in sizes:
        for secure in (False, True):
            print(f"round: {n} learners, {'secagg' if secure else 'plaintext'} …", flush=True)
            node = devnet.start_anvil()
            try:
                points.append(round_point(n, secure, rounds, node.url, clip))
            finally:
                node.stop()
            print(round_table(points[-1:]).splitlines()[-1], flush=True)
    ratios = {}
    for n in sizes:
        by = {p["mode"]: p for p in points if p["learners"] == n}
        if by["plaintext"]["mean_round"] and by["secagg"]["mean_round"]:
            ratios[str(n)] = round(by["secagg"]["mean_round"] / by["plaintext"]["mean_round"], 2)
    print(round_table(points))
    print("secure / plaintext round time: " + ", ".join(f"{r}× at {n} learners"
                                                       for n, r in ratios.items())
          + f" (target at 100: ≤ {ROUND_TARGET:g}×)")
    return {"points": points, "ratio": ratios, "target": ROUND_TARGET, "clip": clip,
            "chain": "anvil (automine)", "engine": "pool", "committee": 3}


# --- Flower's SecAgg+ workflow, in process ------------------------------------------------

#: What a SecAgg+ client replies at each of the four stages of a round.
FLOWER_STAGES = ("setup: public keys", "share keys: encrypted shares", "masked vector",
                 "unmask: shares")


def flower_round(n: int, d: int, rounds: int = 1) -> dict[str, Any]:
    """Flower's SecAgg+ (its SecAggPlusWorkflow on the server, secaggplus_mod on the clients)
    run in this process: Flower's simulation engine needs Ray (its only backend), which is
    not installed, so a Grid of ours hands each message straight to the ClientApp (no
    network, no serialization but the byte count of each message's records). Same model
    and clients as the round bench (MillionLearner), FedAvg, num_shares = degree + 1 of our
    graph, threshold 3 of them. Measures the server's and clients' CPU and the bytes
    each client sends."""
    import copy
    import uuid

    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, Message
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as FlowerFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp.grid.grid import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1 << 40, 1

    def record_bytes(content: RecordDict) -> int:
        total = 0
        for rec in content.values():
            if isinstance(rec, ArrayRecord):
                total += sum(len(a.data) for a in rec.values())
            elif isinstance(rec, ConfigRecord | MetricRecord):
                for v in rec.values():
                    items = v if isinstance(v, list) else [v]
                    total += sum(len(x) if isinstance(x, bytes | str) else 8 for x in items)
        return total

    class Client(NumPyClient):
        def __init__(self, i: int) -> None:
            self.learner = MillionLearner(i, d)

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple:
            r = self.learner.train({"w": parameters[0]}, {})
            return [r.weights["w"]], r.num_examples, {}

    client_app = ClientApp(client_fn=lambda context: Client(context.node_id).to_client(),
                           mods=[secaggplus_mod])
    contexts = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(),
                           run_config={}) for i in range(1, n + 1)}
    client_cpu: list[float] = []
    sent: dict[str, list[int]] = {}
    stages: dict[int, int] = {}

    class DirectGrid(Grid):
        """Each message handed to the ClientApp at once, in this thread."""

        def set_run(self, run: Run) -> None:
            self._run = run

        @property
        def run(self) -> Run:
            return Run.create_empty(1)

        def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                           group_id: str, ttl: float | None = None) -> Message:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(range(1, n + 1))

        def push_messages(self, messages: Any) -> list[str]:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> list[Message]:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list:
            replies = []
            for m in messages:
                m = copy.deepcopy(m)  # each client its own copy, as if sent over the wire
                m.metadata.__dict__["_message_id"] = str(uuid.uuid4())
                m.metadata.__dict__["_src_node_id"] = 1 << 40
                t = time.thread_time()
                reply = client_app(m, contexts[m.metadata.dst_node_id])
                client_cpu.append(time.thread_time() - t)
                stage = FLOWER_STAGES[stages.get(m.metadata.dst_node_id, 0) % 4]
                stages[m.metadata.dst_node_id] = stages.get(m.metadata.dst_node_id, 0) + 1
                if reply.has_content():
                    sent.setdefault(stage, []).append(record_bytes(reply.content))
                replies.append(reply)
            return replies

    degree = min(n - 1, 2 * (n - 1).bit_length()) if n > 1 else 0
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=degree + 1, reconstruction_threshold=3, clipping_range=1.0,
        max_weight=1000.0))
    strategy = FlowerFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                            min_available_clients=n,
                            initial_parameters=__import__("flwr").common.ndarrays_to_parameters(
                                [np.zeros(d, np.float32)]))
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}), config=ServerConfig(num_rounds=rounds),
                            strategy=strategy)
    grid = DirectGrid()
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    wall, cpu = time.monotonic(), time.process_time()
    try:
        workflow(grid, context)
    finally:
        flwr_logger.setLevel(level)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    clients = sum(client_cpu)
    per_client = {k: statistics.mean(v) for k, v in sent.items()}
    return {"learners": n, "params": d, "rounds": rounds, "num_shares": degree + 1,
            "wall_seconds_per_round": round(wall / rounds, 2),
            "client_cpu_s_per_round": round(clients / n / rounds, 3),
            "server_cpu_s_per_round": round((cpu - clients) / rounds, 2),
            "bytes_sent_per_client_by_message": per_client,
            "upload_bytes_per_client": int(sum(per_client.values()))}


def flower_bench(sizes: list[int], ours: Mapping[str, Any] | None) -> dict[str, Any]:
    """Flower's SecAgg+ at the round bench's sizes, beside ours (the round part's figures
    from the same results file, when there)."""
    import flwr

    print(f"flwr {flwr.__version__}: SecAggPlusWorkflow in process (Flower's simulation "
          "engine runs clients only on its Ray backend, and ray is not installed)", flush=True)
    points = []
    for n in sizes:
        print(f"flower: {n} clients, {ROUND_PARAMS:,} parameters …", flush=True)
        points.append(flower_round(n, ROUND_PARAMS))
    mine = {p["learners"]: p for p in (ours or {}).get("points", []) if p["mode"] == "secagg"}
    print("| clients | system | client CPU s / round | aggregator CPU s / round | upload B / "
          "client | masked vector B / parameter |\n|---|---|---|---|---|---|")
    for p in points:
        n = p["learners"]
        masked = p["bytes_sent_per_client_by_message"].get("masked vector", 0)
        print(f"| {n} | Flower SecAgg+ (in process) | {p['client_cpu_s_per_round']:.3f} | "
              f"{p['server_cpu_s_per_round']:.2f} | {p['upload_bytes_per_client']:,} | "
              f"{masked / ROUND_PARAMS:.2f} |")
        o = mine.get(n)
        if o and o.get("mask_cpu_s"):
            up = o["upload_store_bytes"] + o["upload_chain_bytes"]
            print(f"| {n} | fedchain secagg (Anvil) | {o['mask_cpu_s'] + o['keys_cpu_s']:.3f} | "
                  f"{o['aggregate_cpu_s']:.2f} | {up:,} | "
                  f"{o['upload_store_bytes'] / ROUND_PARAMS:.2f} |")
    return {"flwr": flwr.__version__, "why_in_process": (
        "flwr.simulation.run_simulation's only backend is RayBackend (ray is not installed "
        "here: `pip install flwr[simulation]`), so the bench drives SecAggPlusWorkflow "
        "with a Grid that calls the ClientApp (secaggplus_mod) directly"), "points": points}


# --- the CNN example's accuracy with secure aggregation -----------------------------------

CNN_JOB = Path("examples/cnn/fedchain-secagg.toml")


class ClipMeter:
    """The share of coordinates the secure rounds' quantization clips, per learner update
    (wraps fedchain.privacy.quantize.quantize while in use)."""

    def __init__(self) -> None:
        self.fractions: list[float] = []
        self.largest: list[float] = []
        self.original = Q.quantize

    def __enter__(self) -> ClipMeter:
        original, fractions, largest = self.original, self.fractions, self.largest

        def quantize(delta: Any, clip: float, qrange: int, seed: bytes) -> np.ndarray:
            x = delta if isinstance(delta, np.ndarray) else Q.flatten(delta)
            fractions.append(float(np.count_nonzero(np.abs(x) > clip)) / max(x.size, 1))
            largest.append(float(np.max(np.abs(x), initial=0.0)))
            return original(delta, clip, qrange, seed)

        Q.quantize = quantize
        return self

    def __exit__(self, *exc: object) -> None:
        Q.quantize = self.original


def cnn_job(variant: str, out: Path) -> Path:
    """The secagg job, or the same job in the clear with plain FedAvg weighted by
    num_examples or uniformly (what secure aggregation computes)."""
    import tomllib

    text = CNN_JOB.read_text()
    if variant == "secagg":
        return CNN_JOB
    raw = tomllib.loads(text)
    assert raw["protocol"].pop("privacy", "secagg") == "secagg"
    raw["protocol"].pop("secagg")
    scaling = "uniform" if variant == "fedavg-uniform" else "num_examples"
    lines = []
    for section, body in raw.items():
        lines.append(f"[{section}]")
        if section == "strategy":
            body = {**body, "scaling": scaling}
        for k, v in body.items():
            lines.append(f"{k} = {toml_value(v)}")
    path = out / f"cnn-{variant}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def cnn_bench(variants: list[str], seeds: list[int], out: Path) -> dict[str, Any]:
    """`fedchain simulate --audit` of the CNN job (embedded chain and store), per variant and
    seed (the example's `seed` option: data split, shuffling, initial weights): the final
    centralized accuracy, per round, and the share of coordinates the quantization clipped."""
    from fedchain.cli import main as cli

    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for variant in variants:
            job = cnn_job(variant, out)
            where = out / f"{variant}-seed{seed}"
            print(f"cnn: {variant}, seed {seed} ({job}) …", flush=True)
            started = time.monotonic()
            with ClipMeter() as clipped:
                code = cli(["simulate", "--job", str(job), "--output", str(where), "--audit",
                            "--run-config", f"model.options={{ local_test = 0.2, seed = {seed} }}"])
            results = json.loads((where / "results.json").read_text())
            accuracies = [a for _, a in results["metrics_centralized"]["accuracy"]]
            r = {"variant": variant, "seed": seed, "exit": code,
                 "seconds": round(time.monotonic() - started, 1),
                 "accuracy": accuracies[-1] if accuracies else None, "accuracies": accuracies}
            if clipped.fractions:
                r |= {"clipped_fraction_max": max(clipped.fractions),
                      "clipped_fraction_mean": statistics.mean(clipped.fractions),
                      "max_abs_difference": max(clipped.largest)}
            runs.append(r)
            print(f"cnn: {variant}, seed {seed}: exit {code}, final accuracy {r['accuracy']}, "
                  f"{r['seconds']:.0f} s" + (
                      f", clipped {r['clipped_fraction_mean']:.2e} of coordinates (max "
                      f"{r['clipped_fraction_max']:.2e}), largest |difference| "
                      f"{r['max_abs_difference']:.3f}" if clipped.fractions else ""), flush=True)
    mean = {v: statistics.mean(r["accuracy"] for r in runs if r["variant"] == v)
            for v in variants}
    print("| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | secagg − it |")
    print("|" + "---|" * (len(seeds) + 3))
    for v in variants:
        by = {r["seed"]: r["accuracy"] for r in runs if r["variant"] == v}
        gap = (f"{100 * (mean['secagg'] - mean[v]):+.2f}" if "secagg" in mean and v != "secagg"
               else "")
        print(f"| {v} | " + " | ".join(f"{100 * by[s]:.2f}" for s in seeds)
              + f" | {100 * mean[v]:.2f} | {gap} |")
    return {"job": str(CNN_JOB), "seeds": seeds, "runs": runs, "mean_accuracy": mean,
            "target_points": 0.5}


# --- robustness under privacy: the attack suite on secure aggregation's rule --------------


class SecaggRule:
    """What a secure-aggregation round computes from the learners' updates (SPEC.md §14.7),
    as a Strategy for bench/attacks.py's engine: each learner's difference from the global
    model clipped per coordinate to ±clip and stochastically rounded (fedchain.privacy.
    quantize, its own rounding seed), the round's learners split into groups of at least
    `group_size` by the round's seed (fedchain.privacy.secagg.groups), each group's integer
    sum mod 2^k (what unmasking yields: the masks cancel exactly, tests/test_secagg.py)
    checked against the group's range [0, m·2R] as secure.aggregate checks it (out of range:
    the group is left out), turned into the group's mean, and the groups combined by their
    mean or coordinate-wise median. Masking and the chain are left out: they change no bit
    of the outcome.

    `range_rogues`: these learners do not run the quantizer (nobody can see that they do
    not): each masks an integer vector chosen so that its group's sum lands near the edge
    of the range check, opposite to the direction of its own honest difference (its
    estimate of its group's), i.e. the group's mean difference aimed at ∓aim·clip on every
    coordinate (attack "range": aim 0.5). An honest quantizer's rogue moves its group's
    mean by at most 2·clip/m per coordinate; this one, by up to about clip + |honest mean|
    while the others' sum leaves room, and a miss (a coordinate out of range) only knocks
    its group out of the round. Rogues of one group (groups are public) split the push
    between them."""

    stateful = False

    def __init__(self, clip: float, group_size: int = 0, combine: str = "mean",
                 qrange: int = RANGE, range_rogues: frozenset[str] = frozenset(),
                 aim: float = 0.5) -> None:
        self.clip, self.group_size, self.combine, self.qrange = clip, group_size, combine, qrange
        self.range_rogues = frozenset(S.learner_key(a) for a in range_rogues)
        self.aim = aim  # the group's sum aimed at aim · (the range check's edge)
        self.name = f"secagg {combine}" + (f", groups ≥ {group_size}" if group_size else "")
        self.round = 0
        self.clipped: list[float] = []  # per round: the share of coordinates clipped
        self.p999: list[float] = []  # per round: the 99.9th percentile of |difference|
        self.left_out = 0  # groups whose sum was out of range

    def aggregate(self, previous: Mapping[str, np.ndarray], updates: Any,
                  state: Any = None) -> tuple[dict[str, np.ndarray], None]:
        from fedchain.errors import AggregationError
        from fedchain.protocol import secure as secure_mod

        self.round += 1
        ctx = S.RoundContext(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", self.round,
                             hashlib.sha256(b"robust round %d" % self.round).digest())
        base = secure_mod.floating(dict(previous))
        q: dict[str, np.ndarray] = {}
        clipped = total = 0
        magnitudes = []
        for u in updates:
            key = S.learner_key(u.learner)
            delta = Q.flatten(Q.difference({k: u.weights[k] for k in base}, base))
            if key not in self.range_rogues:
                clipped += int(np.count_nonzero(np.abs(delta) > self.clip))
                total += delta.size
                magnitudes.append(np.abs(delta))
            seed = hashlib.sha256(b"rounding %d " % self.round + key.encode()).digest()
            q[key] = Q.quantize(delta, self.clip, self.qrange, seed).astype(np.int64)
        self.clipped.append(clipped / max(total, 1))
        self.p999.append(float(np.quantile(np.concatenate(magnitudes), 0.999)))
        keys = sorted(q)
        bits = Q.bits_needed(len(keys), self.qrange)
        parts = S.groups(keys, ctx, self.group_size) if self.group_size else [tuple(keys)]
        R = np.int64(self.qrange)
        s = np.float64(Q.scale(self.clip, self.qrange))
        means = []
        for part in parts:
            m = len(part)
            rogues = [a for a in part if a in self.range_rogues]
            if rogues:
                own = np.mean([q[a] - R for a in rogues], axis=0)  # centred, honest
                others = (m - len(rogues)) * own  # the rogues' estimate of the others' sum
                direction = np.where(own > 0, -1, 1)
                target = direction * np.int64(self.aim * m * self.qrange)
                push = np.round((target - others) / len(rogues)).astype(np.int64)
                for a in rogues:
                    q[a] = (push + R) % np.int64(1 << bits)  # any value in [0, 2^k) is valid
            t = np.sum([q[a] for a in part], axis=0, dtype=np.int64) % np.int64(1 << bits)
            if int(t.max()) > m * 2 * self.qrange:
                self.left_out += 1  # secure.aggregate: "the unmasked sum is out of range"
                continue
            means.append((m, t - np.int64(m * self.qrange)))
        if not means:
            raise AggregationError("every group's sum is out of range")
        if self.combine == "mean":
            count = sum(m for m, _ in means)
            centred = np.sum([t for _, t in means], axis=0, dtype=np.int64)
            delta = (centred.astype(np.float64) / s) / np.float64(count)
        else:
            stacked = np.stack([(t.astype(np.float64) / s) / np.float64(m) for m, t in means])
            stacked.sort(axis=0)
            g = stacked.shape[0]
            delta = (stacked[g // 2].copy() if g % 2 else
                     (stacked[g // 2 - 1] + stacked[g // 2]) / np.float64(2.0))
        return secure_mod.apply_delta(dict(previous), delta), None


def robust_bench(clip: float, attacks: list[str], rogues: list[int], partition: str,
                 group_size: int) -> dict[str, Any]:
    """The attack suite's sign-flip and scaling attacks on secure aggregation's rule (one
    group: mean; groups of ≥ group_size: mean and median of the group means), 10 learners of
    the MLP example, 1 and 3 rogues; beside plain FedAvg (in the clear)."""
    from bench import attacks as A

    print(f"robust: clip {clip}, MLP, 10 learners, {partition}", flush=True)
    rules = {
        "secagg mean": lambda: SecaggRule(clip),
        f"secagg median of groups ≥ {group_size}": lambda: SecaggRule(clip, group_size,
                                                                      "median"),
        "FedAvg (in the clear)": lambda: FedAvg(),
    }
    cells = []
    honest: dict[str, float] = {}
    for f in [0, *rogues]:
        for attack in (["none"] if f == 0 else attacks):
            for label, make in rules.items():
                setup = A.Setup("mlp", partition, 10, max(f, 1))
                rule = make()
                if attack.startswith("range"):  # secagg only: the rule plays the rogues
                    if not isinstance(rule, SecaggRule):
                        continue
                    rule.range_rogues = frozenset(
                        S.learner_key(A.address(i)) for i in range(10 - f, 10))
                cell = A.run_cell(setup, rule, label,
                                  "none" if attack.startswith("range") else attack)
                row = {"rogues": f, "attack": attack, "rule": label,
                       "accuracy": cell.accuracy, "accuracies": cell.accuracies,
                       "seconds": cell.seconds}
                if isinstance(rule, SecaggRule):
                    row["clipped_fraction"] = max(rule.clipped)
                    row["p999_abs_difference"] = max(rule.p999)
                    row["groups_left_out"] = rule.left_out
                row["carried"] = cell.carried
                if f == 0:
                    honest[label] = cell.accuracy
                cells.append(row)
                print(f"{f} of 10, {attack:>5}, {label:<32} accuracy {cell.accuracy:.4f} "
                      f"(groups left out {row.get('groups_left_out', 0)}, carried "
                      f"{cell.carried}) "
                      f"({cell.seconds:.0f} s)", flush=True)
    print(robust_table(cells, honest))
    return {"clip": clip, "group_size": group_size, "partition": partition, "learners": 10,
            "model": "mlp", "rounds": A.MODELS["mlp"].rounds, "honest": honest,
            "cells": cells}


def robust_table(cells: list[dict[str, Any]], honest: Mapping[str, float]) -> str:
    rules = list(honest)
    rows = ["| rogues | attack | " + " | ".join(rules) + " |", "|" + "---|" * (2 + len(rules))]
    keys = dict.fromkeys((c["rogues"], c["attack"]) for c in cells)
    for f, attack in keys:
        by = {c["rule"]: c["accuracy"] for c in cells if (c["rogues"], c["attack"]) == (f, attack)}
        shown = []
        for r in rules:
            a = by.get(r)
            if a is None:
                shown.append("–")
            elif f == 0:
                shown.append(f"{100 * a:.1f}")
            else:
                shown.append(f"{100 * a:.1f} ({100 * (a - honest[r]):+.1f})")
        rows.append(f"| {f} of 10 | {attack} | " + " | ".join(shown) + " |")
    return "\n".join(rows)


# --- a rogue that does not run the quantizer, through the real round ----------------------


def forge_bench(n: int = 10, d: int = 1000, clip: float = 1.0, aim: float = 0.5,
                chain: str = "embedded") -> dict[str, Any]:
    """One secure round of n MillionLearners (d parameters, one group, combine mean) on a
    real chain with a committee of 3, in which one learner (the highest learner key) masks a
    forged integer vector
    instead of its quantized difference (`masked_update` replaced for it alone): aimed so that
    the round's sum lands at `aim` of the range check's edge, opposite to its own honest
    difference. Everything else is fedchain's: the committee unmasks and publishes, the
    learners re-derive, the audit verifies. Reports how far the published model moved from
    the honest learners' mean, against the bound an honest quantizer's rogue has
    (2·clip/n per coordinate)."""
    from fedchain.audit import audit_federation
    from fedchain.federation import node as node_mod
    from fedchain.model.codec import decode
    from fedchain.protocol import secure as secure_mod

    honest_masked = node_mod.masked_update
    forged: dict[str, Any] = {}

    def masked_update(view: Any, keys: Any, update: Any, previous: Any) -> Any:
        base = secure_mod.floating(previous)
        delta = Q.flatten(Q.difference({k: update[k] for k in base}, base))
        me = keys.learner
        if me != max(view.announcements):
            return honest_masked(view, keys, update, previous)
        R = np.int64(view.params.range)
        own = Q.quantize(delta, view.params.clip, view.params.range,
                         keys.rounding_seed).astype(np.int64) - R
        m = len(next(g for g in view.groups if me in g))
        target = np.where(own > 0, -1, 1) * np.int64(aim * m * view.params.range)
        q = (target - (m - 1) * own + R) % np.int64(1 << view.bits)
        y = S.mask(q.astype(np.uint64), keys, view.public_keys(), view.graph, view.ctx,
                   view.bits)
        forged["honest_delta"], forged["rogue"] = delta, me
        return {secure_mod.MASKED_LAYER: y.astype(np.int32 if view.bits <= 31 else np.int64)}

    keys = 2 * n + 20
    config = RunConfig(strategy=FedAvg(), rounds=1, min_updates=n, update_window=keys + 120,
                       vote_window=120, privacy="secagg",
                       secagg={"clip": clip, "key_window": keys, "reveal_window": 60})
    store = LocalStore(tempfile.mkdtemp(prefix="fedchain-forge-"), durable=False)
    node_mod.masked_update = masked_update
    try:
        result = simulate(lambda i, _: MillionLearner(i, d), n, FedAvg(), 1, chain=chain,
                          store=store, config=config, timeout=1200.0, aggregators=3,
                          engine="threads", initial_weights=million_weights(d))
    finally:
        node_mod.masked_update = honest_masked
    contract = result.contract
    published = contract.published(1)
    assert published is not None
    new = decode(store.get(published.model_cid.require(), 1 << 24))["w"].astype(np.float64)
    rogue = next(i for i, node in enumerate(result.learners)
                 if S.learner_key(node.address) == forged["rogue"])
    honest = [MillionLearner(i, d) for i in range(n) if i != rogue]
    zero = million_weights(d)
    honest_mean = np.mean([np.clip(h.train(zero, {}).weights["w"].astype(np.float64), -clip,
                                   clip) for h in honest], axis=0)
    # What the round would publish had the rogue sent its honest difference, or the worst an
    # honest quantizer allows (−clip·sign of its difference on every coordinate).
    own = np.clip(forged["honest_delta"], -clip, clip)
    with_honest_rogue = ((n - 1) * honest_mean + own) / n
    worst_quantized = ((n - 1) * honest_mean - clip * np.sign(own)) / n
    shift = np.abs(new - with_honest_rogue)
    status = audit_federation(contract, store).exit_status()
    out = {"learners": n, "params": d, "clip": clip, "aim": aim,
           "included": len(published.included), "audit_exit_status": status,
           "mean_abs_shift": float(shift.mean()), "max_abs_shift": float(shift.max()),
           "bound_honest_quantizer": 2 * clip / n,
           "worst_honest_quantizer_mean_abs_shift": float(
               np.abs(worst_quantized - with_honest_rogue).mean())}
    print(f"forge: {n} learners, one group, clip {clip}: the forged round included "
          f"{out['included']} of {n}, audit exit status {status}; the published model moved "
          f"{out['mean_abs_shift']:.3f} per coordinate on average (max "
          f"{out['max_abs_shift']:.3f}) from the round with the rogue honest; an honest "
          f"quantizer's rogue moves it at most {out['bound_honest_quantizer']:.3f} "
          f"(its worst: {out['worst_honest_quantizer_mean_abs_shift']:.3f} on average)")
    return out


def core_bench(learners: str, params: str, full: bool) -> dict[str, Any]:
    """The core per learner (masking, dealing, bytes) and unmasking, without a chain."""
    units = unit_costs(1_000_000)
    print(f"unit costs: PRG {units['prg'] * 1e9:.2f} ns/word, add {units['add'] * 1e9:.2f} "
          f"ns/word, one secret recovered from {THRESHOLD} revealed keys "
          f"{units['recover'] * 1e3:.2f} ms")
    print(f"range {RANGE} (16-bit inputs), clip {CLIP}, committee {COMMITTEE} / threshold "
          f"{THRESHOLD}, {DROP:.0%} dropped after masking")
    print(f"{'n':>5} {'d':>8} {'deg':>4} {'k':>3} {'mask s':>7} {'deal ms':>7} "
          f"{'upload B/learner':>16} {'×f32':>5} {'×16b':>5} {'unmask s (30% drop)':>20}")
    rows = []
    for n in (int(x) for x in learners.split(",")):
        for d in (int(x) for x in params.split(",")):
            r = one_config(n, d, full or n * d <= 100 * 100_000, units)
            rows.append(r)
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
    return {"units": units, "rows": rows, "bonawitz_point": {"k": k, "upload": up}}


PARTS = ("core", "round", "flower", "cnn", "robust", "forge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="core",
                        help=f"comma-separated, of {', '.join(PARTS)}, or all")
    parser.add_argument("--learners", default="100,1000", help="core: learners per round")
    parser.add_argument("--params", default="100000,1000000", help="core: parameters")
    parser.add_argument("--full", action="store_true", help="core: unmask every configuration "
                        "in full")
    parser.add_argument("--round-learners", default="10,100", help="round: learners")
    parser.add_argument("--rounds", type=int, default=3, help="round: rounds per federation")
    parser.add_argument("--clip", type=float, default=1.0, help="round: secagg clip")
    parser.add_argument("--cnn", default="secagg,fedavg,fedavg-uniform",
                        help="cnn: the runs (secagg, fedavg, fedavg-uniform)")
    parser.add_argument("--cnn-seeds", default="0,1,2,3,4", help="cnn: the example's seeds")
    parser.add_argument("--cnn-out", type=Path, default=Path("runs/bench/secagg-cnn"))
    parser.add_argument("--robust-clip", default="0.01,1.0",
                        help="robust: secagg clips (the MLP's honest |differences| have their "
                        "99.9th percentile near 0.009)")
    parser.add_argument("--group-size", type=int, default=3, help="robust: groups of ≥ this")
    parser.add_argument("--attacks", default="x-1,x-10,range",
                        help="robust: attacks of bench/attacks.py, and range (SecaggRule)")
    parser.add_argument("--rogues", default="1,3", help="robust: rogues of 10")
    parser.add_argument("--partition", default="iid", help="robust: iid or dirichlet")
    parser.add_argument("--out", type=Path, default=Path("bench/results/secagg.json"))
    args = parser.parse_args()
    parts = PARTS if args.part == "all" else tuple(args.part.split(","))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-7s %(name)s | %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    results: dict[str, Any] = {}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    for part in parts:
        if part == "core":
            results["core"] = core_bench(args.learners, args.params, args.full)
        elif part == "round":
            sizes = [int(x) for x in args.round_learners.split(",")]
            results["round"] = round_bench(sizes, args.rounds, args.clip)
        elif part == "flower":
            results["flower"] = flower_bench([int(x) for x in args.round_learners.split(",")],
                                             results.get("round"))
        elif part == "cnn":
            results["cnn"] = cnn_bench(args.cnn.split(","),
                                       [int(x) for x in args.cnn_seeds.split(",")], args.cnn_out)
        elif part == "robust":
            results["robust"] = [
                robust_bench(float(clip), args.attacks.split(","),
                             [int(x) for x in args.rogues.split(",")], args.partition,
                             args.group_size) for clip in args.robust_clip.split(",")]
        elif part == "forge":
            results["forge"] = forge_bench()
        else:
            raise SystemExit(f"unknown part {part!r}: one of {', '.join(PARTS)}, or all")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
