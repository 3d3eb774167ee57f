"""Secure aggregation in a round (SPEC.md §14): who is in it, and what it publishes.

In a plan with `privacy = "secagg"` no learner's update is ever published in the clear. A
round runs in three phases, each ended by a deadline of block time:

1. **keys** (until `opened_at + key_window`): every committee member posts its round keys
   (`postSecagg(round, 0, pk ‖ commitment)`), then every learner posts its keys followed by
   its *dealing*: Shamir shares of its self-mask seed and of its round private key, one of
   each per holder (the members whose keys it saw), encrypted to that holder;
2. **updates** (until the update deadline): each learner in the round's set (whose keys are
   in by the key deadline) uploads its masked, quantized difference from the global model
   (a model file, §14.5) and submits its CID as usual;
3. **reveal** (once every learner of the set submitted, or the update deadline passed; until
   `update deadline + reveal_window`): each holder posts, for every dealer that named it, the
   key of exactly one of its two shares: the self-mask seed's if the dealer finished
   (submitted), the private key's if it did not (`postSecagg(round, 1, …)`). The first such
   revelation freezes the round's set and its finished learners (§14.12 item 5), so a round
   ends as soon as everyone is in.

Then anyone — a member voting, a learner checking, an auditor years later — recovers the
secrets from the revealed keys and computes the exact integer sum of the finished learners'
quantized differences, per group; the new model is the previous one plus the combined mean.

`SecureRound.of(plan, record)` is the round's public view (set, groups, graph, dealings,
revelations); `gather` and `aggregate` compute the outcome that `round.run_round` returns for
a secure plan (SPEC.md §14.13). `keys_message`, `masked_update` and `holder_revelation` are
what a learner and a holder send.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..aggregation.rules import sort_total
from ..errors import ConfigError, FedChainError, InvalidModel, PrivacyError
from ..eth.events import SecaggPosted, UpdateSubmitted
from ..model.codec import ModelSpec, TensorSpec, Weights
from ..privacy import distributed as D
from ..privacy import quantize as Q
from ..privacy import secagg as S
from ..privacy.prg import hkdf
from .fetching import Fetched, Outcome, Rejected
from .ledger import RoundRecord
from .params import Plan, SecaggParams
from .rules import ALL_PPM, draw_seed, fraction_to_ppm, is_selected

#: postSecagg kinds.
KEYS, REVEAL = 0, 1
#: Why a submission is outside U when its learner posted no keys; why nothing was unmasked.
NO_KEYS = "it posted no keys by the key deadline"
NONE_FINISHED = "no learner of the round's set finished"
#: The one layer of a masked update's model file.
MASKED_LAYER = "masked"
_FLOATING = ("float16", "float32", "float64")


class MaskedFetch(Protocol):
    """Fetches the masked updates of `submissions` as model files of `reference`."""

    def __call__(self, submissions: Sequence[UpdateSubmitted], *,
                 reference: ModelSpec) -> Iterable[Outcome]: ...


def is_secagg(plan: Plan) -> bool:
    return plan.privacy == "secagg"


def params_of(plan: Plan) -> SecaggParams:
    if not is_secagg(plan):
        raise PrivacyError("the plan does not use secure aggregation")
    return SecaggParams.parse(plan.secagg)


def _key(address: str) -> str:
    return S.learner_key(address)


def round_seed(plan: Plan, record: RoundRecord) -> bytes | None:
    """The seed that draws a secure-aggregation round's groups and graph (§14.12 item 1): with
    sampling, the round's RoundSeeded seed (None until drawn); without, the same formula over
    the opening block's hash with an empty sample (n = k = 0)."""
    if record.facts is None:
        raise PrivacyError(f"round {record.round}: the chain facts are not read")
    if fraction_to_ppm(plan.fraction) not in (0, ALL_PPM):
        return record.seed
    return draw_seed(record.facts.opened_hash, record.facts.contract, record.round, 0, 0)


def round_context(plan: Plan, record: RoundRecord, seed: bytes | None = None) -> S.RoundContext:
    """The round's context (§14.3): chain id, contract, round, seed."""
    seed = seed if seed is not None else round_seed(plan, record)
    if seed is None or record.facts is None:
        raise PrivacyError(f"round {record.round}: its seed is not drawn yet")
    return S.RoundContext(record.facts.chain_id, record.facts.contract, record.round, seed)


def masked_spec(previous: Weights, bits: int) -> ModelSpec:
    """The model file a learner uploads (§14.5): one layer `masked` of d values (every
    element of the model's floating layers), int32 when k ≤ 31, else int64."""
    d = dimension(previous)
    return ModelSpec((TensorSpec(MASKED_LAYER, (d,), "int32" if bits <= 31 else "int64"),))


def floating(previous: Weights) -> dict[str, np.ndarray]:
    """The layers a secure round aggregates (the floating ones), in the model's order."""
    return {k: v for k, v in previous.items() if v.dtype.name in _FLOATING}


def dimension(model: Weights) -> int:
    """d: the number of elements of the model's floating layers (a masked update's length)."""
    return sum(int(a.size) for a in floating(model).values())


def with_dimension(plan: Plan, model: Weights) -> Plan:
    """`plan` with its distributed DP's `dimension` (§14.16) filled in from the genesis
    model (its floating coordinates), so the plan alone gives the ε ledger's every figure;
    ConfigError if the plan names another."""
    if not is_secagg(plan) or not isinstance(plan.secagg, dict) or "dp" not in plan.secagg:
        return plan
    d = dimension(model)
    dp = dict(plan.secagg["dp"])
    if dp.get("dimension") not in (None, 0, d):
        raise ConfigError(f"secagg.dp.dimension is {dp['dimension']}, but the initial model "
                          f"has {d} floating coordinates")
    dp["dimension"] = d
    out = replace(plan, secagg={**plan.secagg, "dp": dp})
    p = params_of(out)
    assert p.dp is not None
    try:
        D.Noise.of(p.dp, p.clip, p.range, d)
    except PrivacyError as exc:
        raise ConfigError(f"secagg.dp does not fit the initial model: {exc}") from exc
    return out


@dataclass
class SecureRound:
    """A secure-aggregation round's public view, from the plan and the chain (§14.12)."""

    params: SecaggParams
    ctx: S.RoundContext
    key_deadline: int
    update_deadline: int
    reveal_deadline: int
    threshold: int
    #: Holders: committee members whose keys were in by the key deadline (key → pk).
    holders: dict[str, bytes]
    #: The round's set U: learner key → its announcement, and its dealing.
    announcements: dict[str, S.Announcement]
    dealings: dict[str, S.Dealing]
    #: Keys messages refused, and why (sender key → reason).
    refused: dict[str, str]
    groups: list[tuple[str, ...]]
    graph: dict[str, tuple[str, ...]]
    bits: int
    #: Revealed keys by holder: holder → dealer → (kind, key).
    revealed: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)
    ppm: int = 0
    #: Where the round froze: the first counted revelation (block, log index); None: not yet.
    frozen: tuple[int, int] | None = None
    #: With distributed DP (§14.16): the noise for the model's size (`for_model` sets it, and
    #: `bits` with its headroom); None otherwise.
    noise: D.Noise | None = None

    def for_model(self, previous: Weights) -> SecureRound:
        """This view for a model like `previous`: with distributed DP, its noise and the
        modulus widened by the noise's headroom (§14.16); else this view."""
        dp = self.params.dp
        if dp is None or self.noise is not None:
            return self
        noise = D.Noise.of(dp, self.params.clip, self.params.range, dimension(previous))
        bits = Q.bits_needed(max(1, len(self.announcements)), self.params.range + noise.headroom)
        return replace(self, noise=noise, bits=bits)

    def short_groups(self, finished: Iterable[str]) -> dict[int, int]:
        """With distributed DP: the groups (index → finished count) with finished learners
        but fewer than min_learners of them, whose sum nobody may unmask (§14.16)."""
        dp = self.params.dp
        if dp is None:
            return {}
        done = set(finished)
        counts = {j: sum(1 for a in g if a in done) for j, g in enumerate(self.groups)}
        return {j: n for j, n in counts.items() if 0 < n < dp.min_learners}

    @property
    def learners(self) -> list[str]:
        """U, sorted by key."""
        return sorted(self.announcements)

    @classmethod
    def of(cls, plan: Plan, record: RoundRecord, *, seed: bytes | None = None) -> SecureRound:
        params = params_of(plan)
        facts = record.facts
        if facts is None:
            raise PrivacyError(f"round {record.round}: the chain facts are not read")
        ctx = round_context(plan, record, seed)
        key_deadline = facts.opened_at + params.key_window
        update_deadline = facts.opened_at + plan.update_window
        reveal_deadline = update_deadline + params.reveal_window
        threshold = params.threshold or facts.quorum
        members = {_key(m) for m in facts.committee}
        ppm = fraction_to_ppm(plan.fraction)
        indices = {_key(a): i for a, i in facts.indices.items()}
        holders: dict[str, bytes] = {}
        announcements: dict[str, S.Announcement] = {}
        dealings: dict[str, S.Dealing] = {}
        refused: dict[str, str] = {}
        revealed: dict[str, dict[str, tuple[str, bytes]]] = {}
        seen: set[tuple[str, int]] = set()
        reveals: list[SecaggPosted] = []
        keyed: dict[str, tuple[int, int]] = {}  # learner -> where its keys are (chain order)
        for m in record.secagg:
            sender = _key(m.sender)
            if (sender, m.kind) in seen:
                continue  # the first message of each sender and kind counts
            seen.add((sender, m.kind))
            when = facts.block_times[m.block]
            if m.kind == REVEAL:
                reveals.append(m)
                continue
            if m.kind != KEYS:
                continue
            try:
                if when > key_deadline:
                    raise PrivacyError("posted after the key deadline")
                if sender in members:
                    if len(m.data) != 64:
                        raise PrivacyError("a holder's keys are 64 bytes")
                    holders[sender] = _decoded(sender, bytes(m.data))[0].public_key
                    continue
                if sender not in indices:
                    raise PrivacyError("not a registered learner")
                if ppm not in (0, ALL_PPM) and not is_selected(ctx.seed, indices[sender], ppm):
                    raise PrivacyError("not sampled for the round")
                ann, dealing = _decoded(sender, bytes(m.data))
                _check_dealing(dealing, ann, holders, threshold)
            except PrivacyError as exc:
                refused[sender] = str(exc)
                continue
            announcements[sender] = ann
            dealings[sender] = dealing
            keyed[sender] = (m.block, m.log_index)
        # The freeze point (§14.12 item 5): the first holder's revelation, by the reveal deadline,
        # that is past the update deadline, or after every learner whose keys came before it
        # submitted. The round's set and finished learners are those before it; revelations
        # count from it on.
        subs: dict[str, tuple[int, int]] = {}
        for sub in record.submissions:
            subs.setdefault(_key(sub.learner), (sub.block, sub.log_index))
        frozen: tuple[int, int] | None = None
        for m in reveals:
            at, when = (m.block, m.log_index), facts.block_times[m.block]
            if _key(m.sender) not in holders or when > reveal_deadline:
                continue
            before = [a for a, where in keyed.items() if where < at]
            if when > update_deadline or (before and all(
                    a in subs and subs[a] < at for a in before)):
                frozen = at
                break
        if frozen is not None:
            for a in [a for a, where in keyed.items() if where > frozen]:
                del announcements[a], dealings[a]
                refused[a] = "posted after the holders began to reveal"
            for m in reveals:
                sender, when = _key(m.sender), facts.block_times[m.block]
                if sender in holders and (m.block, m.log_index) >= frozen and \
                        when <= reveal_deadline:
                    with contextlib.suppress(PrivacyError):  # a malformed one reveals nothing
                        revealed[sender] = S.decode_revelation(m.data)
        u = sorted(announcements)
        groups: list[tuple[str, ...]] = []
        if params.group_size:
            if len(u) >= params.group_size:
                groups = S.groups(u, ctx, params.group_size)
        elif u:
            groups = [tuple(u)]
        degree = params.degree or None
        graph: dict[str, tuple[str, ...]] = {}
        if params.group_size:
            graph = S.group_neighbours(groups, ctx, degree)
        elif u:
            graph = S.neighbours(u, ctx, degree)
        bits = Q.bits_needed(max(1, len(u)), params.range)
        return cls(params, ctx, key_deadline, update_deadline, reveal_deadline, threshold,
                   holders, announcements, dealings, refused, groups, graph, bits, revealed,
                   ppm, frozen)

    def finished(self, record: RoundRecord) -> list[str]:
        """F: the learners of U with a submission on record (not removed) before the freeze
        point, by key."""
        done = {_key(s.learner) for s in record.usable
                if self.frozen is None or (s.block, s.log_index) < self.frozen}
        return [a for a in self.learners if a in done]

    def expected(self, record: RoundRecord) -> list[str]:
        """The learners that could still join U: active (and sampled) ones not in it."""
        facts = record.facts
        assert facts is not None
        ppm = self.ppm
        out = []
        for a in facts.active:
            k = _key(a)
            i = facts.indices.get(a, 0)
            if k in self.announcements or k in self.holders:
                continue
            if ppm not in (0, ALL_PPM) and not is_selected(self.ctx.seed, i, ppm):
                continue
            out.append(k)
        return sorted(out)

    def keys_final(self, record: RoundRecord, now: int) -> bool:
        """Whether U is final at block time `now`: past the key deadline, or every learner
        that could post keys did (and so is in U, or refused)."""
        return now > self.key_deadline or all(a in self.refused for a in self.expected(record))

    def updates_final(self, record: RoundRecord, now: int) -> bool:
        """Whether an honest holder may reveal at block time `now`: past the update deadline,
        or with the round's set final (`keys_final`) and every learner of it submitted."""
        done = {_key(s.learner) for s in record.submissions}
        return now > self.update_deadline or (
            bool(self.announcements) and self.keys_final(record, now)
            and all(a in done for a in self.announcements))

    def public_keys(self) -> dict[str, bytes]:
        return {a: v.public_key for a, v in self.announcements.items()}


@functools.lru_cache(maxsize=1 << 14)
def _decoded(sender: str, data: bytes) -> tuple[S.Announcement, S.Dealing]:
    """A keys message's announcement and dealing (a holder's: an empty dealing), decoded and
    checked once per process: every party reads the round's messages about once a second
    while it runs (a refused message raises PrivacyError each time, uncached)."""
    ann = S.decode_announcement(sender, data[:64])
    if len(data) == 64:
        return ann, S.Dealing(ann.learner, ann.public_key, 1, ())
    return ann, S.decode_dealing(data[64:])


def _check_dealing(dealing: S.Dealing, ann: S.Announcement, holders: Mapping[str, bytes],
                   threshold: int) -> None:
    if dealing.dealer != ann.learner or dealing.public_key != ann.public_key:
        raise PrivacyError("its dealing is not its keys'")
    if dealing.threshold != threshold:
        raise PrivacyError(f"its dealing's threshold is {dealing.threshold}, the round's "
                           f"{threshold}")
    if threshold < 1 or len(dealing.holders) < threshold:
        raise PrivacyError(f"its dealing has {len(dealing.holders)} holders, fewer than the "
                           f"threshold {threshold}")
    unknown = [h for h in dealing.holders if h not in holders]
    if unknown:
        raise PrivacyError(f"its dealing names holders whose keys were not posted before it: "
                           f"{', '.join(unknown)}")


# --- what the participants send ---------------------------------------------------------


def master_secret(account_key: bytes) -> bytes:
    """A participant's 32-byte secret M (§14.3), derived from its account's private key: as
    secret as the key, and the same after a restart."""
    return hkdf(bytes(account_key), b"fedchain-secagg/1 master secret")


def keys_message(keys: S.RoundKeys, ctx: S.RoundContext, holders: Mapping[str, bytes] | None,
                 threshold: int = 0) -> bytes:
    """What a participant posts in the key phase: its announcement (pk ‖ commitment), and a
    learner's dealing to `holders` (holder → pk) with `threshold` (None: a holder's keys)."""
    message = S.encode_announcement(keys.announcement(ctx))
    if holders is None:
        return message
    return message + S.encode_dealing(S.deal(keys, holders, threshold, ctx))


def masked_update(view: SecureRound, keys: S.RoundKeys, update: Weights,
                  previous: Weights, rng: np.random.Generator | None = None) -> Weights:
    """A learner's masked update (§14.5): its floating layers' difference from `previous`,
    clipped per coordinate, quantized with its rounding seed, masked; as a model file's
    weights (one int32 or int64 layer). With distributed DP (§14.16) the difference is first
    clipped to the plan's L2 norm, and the learner's Skellam share (drawn from `rng`, by
    default the operating system's entropy) added before masking."""
    me = keys.learner
    if me not in view.announcements:
        raise PrivacyError(f"{me} is not in the round's set: its keys were refused or late "
                           f"({view.refused.get(me, 'none posted')})")
    view = view.for_model(previous)
    base = floating(previous)
    delta = Q.difference({k: update[k] for k in base}, base)
    if view.noise is not None:  # §14.16: clipped to the plan's L2 norm, then noised
        clipped = D.clip_l2(Q.flatten(delta), view.noise.dp.clip_norm)
        q = Q.quantize(clipped, view.params.clip, view.params.range, keys.rounding_seed)
        q = D.add_noise(q, view.noise, view.bits, rng)
    else:
        q = Q.quantize(delta, view.params.clip, view.params.range, keys.rounding_seed)
    y = S.mask(q, keys, view.public_keys(), view.graph, view.ctx, view.bits)
    dtype = np.int32 if view.bits <= 31 else np.int64
    return {MASKED_LAYER: y.astype(dtype)}


def holder_revelation(view: SecureRound, keys: S.RoundKeys, record: RoundRecord) -> bytes:
    """A holder's revelation once the round's updates are in (§14.7, §14.14): for every
    dealer of U that named it, the key of its self-mask share if the dealer finished, else of
    its private-key share. PrivacyError (reveal nothing) if a group's finished learners would have a
    connected component smaller than min_component. With distributed DP, nothing for the
    dealers of a group with fewer than min_learners finished learners (§14.16)."""
    done = set(view.finished(record))
    for group in view.groups:
        S.check_revealable(view.graph, [a for a in group if a in done],
                           view.params.min_component)
    short = view.short_groups(done)  # §14.16: their sums would carry too little noise
    unrevealed = {a for j in short for a in view.groups[j]}
    out: dict[str, tuple[str, bytes]] = {}
    for dealer, dealing in view.dealings.items():
        if dealer in unrevealed:
            continue
        if keys.learner in dealing.holders:
            kind = S.SELF if dealer in done else S.KEY
            out[dealer] = (kind, S.reveal_key(keys, dealing, kind, view.ctx))
    return S.encode_revelation(out)


# --- the outcome (§14.13) ----------------------------------------------------------------


@dataclass
class GroupSum:
    members: tuple[str, ...]  # the group's finished learners
    centred: np.ndarray       # Σ (q_i − range) (+ the noise, §14.16): int64, exact


@dataclass
class SecureResult:
    """What secure aggregation made of a round: the difference to add (None: nothing to add),
    the learners whose differences are in it, and the ones left out with why."""

    delta: np.ndarray | None
    included: list[str]
    left_out: dict[str, str]
    reason: str | None = None


def aggregate(view: SecureRound, masked: Mapping[str, np.ndarray],
              finished_set: Iterable[str]) -> SecureResult:
    """Unmasks each group's sum from public data and combines the groups (§14.13).
    `finished_set`: F (learner keys); `masked`: the usable masked vectors (uint64) of F; a
    finished learner missing from it makes its group fail."""
    done_all = set(finished_set)
    p = view.params
    if p.dp is not None and view.noise is None:
        raise PrivacyError("a distributed-DP round's view needs the model's size (for_model)")
    short = view.short_groups(done_all)
    sums: list[GroupSum] = []
    left_out: dict[str, str] = {}
    holders = view.holders
    revealed = {h: {d: key for d, (kind, key) in by.items()} for h, by in view.revealed.items()}
    kinds = {h: {d: kind for d, (kind, key) in by.items()} for h, by in view.revealed.items()}
    for j, group in enumerate(view.groups):
        finished = [a for a in group if a in done_all]
        if not finished:
            continue
        if j in short:
            why = (f"group {j} cannot be unmasked: {len(finished)} finished learners, fewer "
                   f"than secagg.dp.min_learners ({p.dp.min_learners if p.dp else 0}): its "
                   "sum would carry less noise than the plan promises")
            left_out.update({a: why for a in finished})
            continue
        missing = [a for a in finished if a not in masked]
        if missing:
            why = f"the masked update of {missing[0]} is unusable, so its group cannot be unmasked"
            left_out.update({a: why for a in finished})
            continue
        try:
            S.check_revealable(view.graph, finished, p.min_component)
            done = set(finished)
            # Only the keys of the kind each dealer's state calls for count (§14.13).
            usable = {h: {d: k for d, k in by.items()
                          if kinds[h][d] == (S.SELF if d in done else S.KEY)}
                      for h, by in revealed.items()}
            un = S.unmask_public({a: masked[a] for a in finished}, view.announcements,
                                 view.dealings, usable, holders, view.graph, view.ctx,
                                 view.bits)
            if view.noise is not None:
                centred = D.centred(un.total, len(finished), p.range, view.bits,
                                    view.noise.headroom)
            else:
                total = un.total.astype(np.int64)
                if total.size and int(total.max()) > len(finished) * 2 * p.range:
                    raise PrivacyError("the unmasked sum is out of range: a learner masked "
                                       "inconsistently")
                centred = total - np.int64(len(finished) * p.range)
        except PrivacyError as exc:
            why = f"group {j} cannot be unmasked: {exc}"
            left_out.update({a: why for a in finished})
            continue
        sums.append(GroupSum(tuple(finished), centred))
    if not sums:
        reason = next(iter(left_out.values()), NONE_FINISHED)
        return SecureResult(None, [], left_out, reason)
    s = np.float64(Q.scale(p.clip, p.range))
    if p.combine == "mean":
        count = sum(len(g.members) for g in sums)
        centred = sums[0].centred.copy()
        for g in sums[1:]:
            centred += g.centred
        delta = (centred.astype(np.float64) / s) / np.float64(count)
    else:  # median of the group means
        # Rows = coordinates, sorted in IEEE-754's total order (−0 before +0: the same on
        # every CPU, where numpy's float sort is not), as SPEC §8.6 sorts.
        means = np.ascontiguousarray(np.stack([
            (g.centred.astype(np.float64) / s) / np.float64(len(g.members)) for g in sums],
            axis=1))
        sort_total(means)
        g = means.shape[1]
        if g % 2:
            delta = means[:, g // 2].copy()
        else:
            delta = (means[:, g // 2 - 1] + means[:, g // 2]) / np.float64(2.0)
    included = sorted(a for g in sums for a in g.members)
    return SecureResult(delta, included, left_out)


def apply_delta(previous: Weights, delta: np.ndarray) -> Weights:
    """previous + delta on the floating layers (F64(p) ⊕ δ, cast to the layer's dtype once);
    the other layers carried over."""
    out: dict[str, np.ndarray] = {}
    at = 0
    for name, p in previous.items():
        if p.dtype.name not in _FLOATING:
            out[name] = p
            continue
        size = int(p.size)
        new = p.reshape(-1).astype(np.float64) + delta[at:at + size]
        at += size
        value = new.astype(p.dtype).reshape(p.shape)
        if not np.all(np.isfinite(value)):
            raise InvalidModel(f"layer {name} is not finite after the secure sum")
        out[name] = value
    return out


def gather(view: SecureRound, record: RoundRecord, fetch: MaskedFetch, previous: Weights,
           excused: frozenset[str], raise_errors: tuple[type[Exception], ...] = ()
           ) -> tuple[dict[str, np.ndarray], list[Rejected],
                                              list[UpdateSubmitted], list[Rejected]]:
    """Fetches the finished learners' masked vectors: (the vectors, the rejected finished
    submissions, the finished submissions, the submissions outside U)."""
    view = view.for_model(previous)
    u, done = set(view.announcements), set(view.finished(record))
    outsiders, finished = [], []
    for s in record.usable:
        if _key(s.learner) in done:
            finished.append(s)
        elif _key(s.learner) in u:
            outsiders.append(Rejected.because_of(
                s, "submitted after the holders began to reveal (the round's finished set "
                   "was final)"))
        else:
            outsiders.append(outsider(s, view.refused.get(_key(s.learner), NO_KEYS)))
    spec = masked_spec(previous, view.bits)
    vectors: dict[str, np.ndarray] = {}
    rejected: list[Rejected] = []
    wanted = [s for s in finished if s.learner not in excused]
    for s in finished:
        if s.learner in excused:
            rejected.append(Rejected.because_of(s, "reported unavailable by every member whose "
                                                   "vote closed the round"))
    for o in fetch(wanted, reference=spec):
        if isinstance(o, Rejected):
            if o.error is not None and isinstance(o.error, raise_errors):
                raise o.error
            rejected.append(o)
            continue
        assert isinstance(o, Fetched)
        y = np.asarray(o.weights[MASKED_LAYER])
        if y.size and (int(y.min()) < 0 or int(y.max()) >> view.bits):
            rejected.append(Rejected.because_of(
                o.submission, f"a masked value outside [0, 2^{view.bits})"))
            continue
        vectors[_key(o.learner)] = y.astype(np.uint64)
    return vectors, rejected, finished, outsiders


def outsider(submission: UpdateSubmitted, why: str) -> Rejected:
    """A submission of a learner outside the round's set U, rejected with why (§14.13 step 4)."""
    return Rejected.because_of(submission,
                               f"not in the round's secure-aggregation set: {why}")


def keyless(record: RoundRecord) -> bool:
    """Whether the round's set is empty for want of any keys message: then its outcome needs
    no chain facts (no seed, deadline or committee decides anything), which the ledger reads
    only for rounds with SecaggPosted events. A round with messages and no facts is an error
    of the caller."""
    if record.facts is not None:
        return False
    if record.secagg:
        raise FedChainError(f"round {record.round} is a secure-aggregation round: read its "
                            "record with the chain facts (Ledger.record(round, facts=True))")
    return True


learner_key = S.learner_key
