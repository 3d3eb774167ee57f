"""Secure aggregation (SecAgg+ over public deadlines): keys, neighbours, masks, shares, unmasking.

The normative text is SPEC.md §14; the section numbers below (§14.n) are its. A round of it:

1. every learner i derives its round keys from its own 32-byte secret (`RoundKeys.derive`) and
   publishes an `Announcement` (its X25519 public key and a commitment to its self-mask seed);
2. the learners whose announcement is in by the key deadline are the round's set; the round's
   on-chain seed draws their neighbour graph (`neighbours`) and, optionally, groups (`groups`);
3. each learner deals Shamir shares of its self-mask seed and of its round private key to the
   holders, encrypted to each (`deal` → `Dealing`), and uploads its masked quantized update
   (`quantize`, `mask`);
4. after the update deadline the finished set is public; each holder reveals, for every
   dealer, the key of exactly one of its two ciphertexts (`reveal_key`): the self-mask share's
   if the dealer finished, the private-key share's if it did not;
5. anyone recovers the secrets (`recover_secret`) and computes the exact sum (`unmask`).

`reveal` (step 4 for one holder, with the check that nobody's update would be exposed) and
`unmask_public` (step 5 from public data alone) run those steps end to end; `encode_*` and
`decode_*` are the wire formats (§14.10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedchain.errors import PrivacyError
from fedchain.privacy import shamir
from fedchain.privacy.prg import SEED_BYTES, SUITE, Expander, WordStream, hkdf

SELF = "self"  # the kind of a share of the self-mask seed b_i
KEY = "key"    # the kind of a share of the round's X25519 private key
_KINDS = (SELF, KEY)
_NONCE = bytes(12)


# --- identities and the round's context ----------------------------------------------


def learner_key(address: str) -> str:
    """The learner key of an address (SPEC §2): its text in lower case."""
    if not (isinstance(address, str) and len(address) == 42 and address[:2] in ("0x", "0X")):
        raise PrivacyError(f"not an address: {address!r}")
    key = "0x" + address[2:].lower()
    try:
        bytes.fromhex(key[2:])
    except ValueError:
        raise PrivacyError(f"not an address: {address!r}") from None
    return key


def _addr(address: str) -> bytes:
    return bytes.fromhex(learner_key(address)[2:])


@dataclass(frozen=True)
class RoundContext:
    """What binds every derivation to one round of one federation (§14.3)."""

    chain_id: int
    contract: str
    round: int
    seed: bytes  # the round's on-chain seed (RoundSeeded), 32 bytes

    def __post_init__(self) -> None:
        if not (0 <= self.chain_id < 1 << 256 and 0 <= self.round < 1 << 256):
            raise PrivacyError("chain id and round must be uint256")
        if len(self.seed) != 32:
            raise PrivacyError("a round seed is 32 bytes")
        learner_key(self.contract)

    def encode(self) -> bytes:
        """SUITE ‖ uint256(chain_id) ‖ contract (20) ‖ uint256(round) ‖ seed (32): 133 bytes."""
        return (SUITE + self.chain_id.to_bytes(32, "big") + _addr(self.contract)
                + self.round.to_bytes(32, "big") + bytes(self.seed))


def _derive(master: bytes, label: bytes, address: str, ctx: RoundContext) -> bytes:
    return hkdf(master, b"secret\x00" + label + b"\x00" + _addr(address) + ctx.encode())


def _public_bytes(private: bytes) -> bytes:
    try:
        key = X25519PrivateKey.from_private_bytes(bytes(private))
    except ValueError as exc:
        raise PrivacyError(f"not an X25519 private key: {exc}") from None
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def commitment(self_seed: bytes, address: str, ctx: RoundContext) -> bytes:
    """SHA-256(SUITE ‖ "self-mask-commitment" ‖ 0x00 ‖ context ‖ address ‖ b_i)."""
    return hashlib.sha256(SUITE + b"self-mask-commitment\x00" + ctx.encode() + _addr(address)
                          + bytes(self_seed)).digest()


@dataclass(frozen=True)
class Announcement:
    """A learner's public key material for one round (published before the key deadline)."""

    learner: str
    public_key: bytes  # X25519, 32 bytes
    commitment: bytes  # to the self-mask seed, 32 bytes


_PROBE = X25519PrivateKey.from_private_bytes(hashlib.sha256(SUITE + b"probe").digest())


def check_announcement(announcement: Announcement) -> None:
    """An announcement to refuse at the key deadline: a malformed address, a public key or
    commitment that is not 32 bytes, or a low-order X25519 public key (every key agreement with
    it gives zero: its neighbours could not mask)."""
    learner_key(announcement.learner)
    if len(announcement.public_key) != 32 or len(announcement.commitment) != 32:
        raise PrivacyError(f"the announcement of {announcement.learner} is malformed")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(bytes(announcement.public_key)))
    except ValueError:
        raise PrivacyError(f"{announcement.learner} announced a low-order public key") from None


@dataclass(frozen=True, repr=False)
class RoundKeys:
    """A participant's secrets for one round, all derived from its own 32-byte secret (§14.3)."""

    learner: str
    private_key: bytes    # X25519 raw private key
    public_key: bytes
    self_seed: bytes      # b_i
    rounding_seed: bytes  # the stochastic rounding's PRG seed
    share_seeds: Mapping[str, bytes]  # kind → Shamir coefficients' seed

    @classmethod
    def derive(cls, master: bytes, learner: str, ctx: RoundContext) -> RoundKeys:
        if len(master) != SEED_BYTES:
            raise PrivacyError(f"a learner's secret is {SEED_BYTES} bytes")
        learner = learner_key(learner)
        private = _derive(master, b"x25519", learner, ctx)
        return cls(learner=learner, private_key=private, public_key=_public_bytes(private),
                   self_seed=_derive(master, b"self-mask", learner, ctx),
                   rounding_seed=_derive(master, b"rounding", learner, ctx),
                   share_seeds={k: _derive(master, b"shamir-" + k.encode(), learner, ctx)
                                for k in _KINDS})

    def announcement(self, ctx: RoundContext) -> Announcement:
        return Announcement(self.learner, self.public_key,
                            commitment(self.self_seed, self.learner, ctx))

    def __repr__(self) -> str:  # never print secrets
        return f"RoundKeys({self.learner}, public_key={self.public_key.hex()})"


def _exchange(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(bytes(private)).exchange(
            X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError as exc:  # a low-order public key gives the all-zero secret
        raise PrivacyError(f"X25519 key agreement refused: {exc}") from None


# --- neighbours and groups (§14.4, §14.8) ----------------------------------------------


def _shuffle(items: Sequence[str], seed: bytes) -> list[str]:
    """Fisher–Yates: for i = n−1 … 1, swap items i and below(i + 1) of the word stream."""
    out = list(items)
    stream = WordStream(seed)
    for i in range(len(out) - 1, 0, -1):
        j = stream.below(i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def _sorted_keys(learners: Iterable[str]) -> list[str]:
    keys = sorted({learner_key(a) for a in learners})
    return keys


def default_degree(n: int) -> int:
    """min(n − 1, 2 · bit_length(n)): 14 at n = 100, 20 at n = 1000, 28 at n = 10 000."""
    return max(0, min(n - 1, 2 * n.bit_length()))


def neighbours(learners: Iterable[str], ctx: RoundContext, degree: int | None = None,
               domain: bytes = b"") -> dict[str, tuple[str, ...]]:
    """The round's neighbour graph (a Harary graph on a seeded permutation, SecAgg+): with
    degree ≥ n − 1 everyone neighbours everyone; else the learners, sorted by key, are shuffled
    with seed HKDF(ctx.seed, "neighbours" ‖ 0x00 ‖ domain ‖ 0x00 ‖ context) into π, and π[p]
    neighbours π[(p ± o) mod n] for o = 1 … degree/2 (degree even). Neighbours listed by key."""
    keys = _sorted_keys(learners)
    n = len(keys)
    degree = default_degree(n) if degree is None else degree
    if degree >= n - 1:
        return {k: tuple(x for x in keys if x != k) for k in keys}
    if degree < 2 or degree % 2:
        raise PrivacyError(f"a sparse degree must be even and ≥ 2, not {degree}")
    perm = _shuffle(keys, hkdf(ctx.seed, b"neighbours\x00" + domain + b"\x00" + ctx.encode()))
    half = degree // 2
    graph = {}
    for p, k in enumerate(perm):
        near = {perm[(p + o) % n] for o in range(1, half + 1)}
        near |= {perm[(p - o) % n] for o in range(1, half + 1)}
        graph[k] = tuple(sorted(near))
    return graph


def groups(learners: Iterable[str], ctx: RoundContext, min_size: int) -> list[tuple[str, ...]]:
    """The round's groups of at least `min_size`: the learners, sorted by key, shuffled with seed
    HKDF(ctx.seed, "groups" ‖ 0x00 ‖ context) into π; G = ⌊n / min_size⌋ groups, group j
    (0-based) the next n // G + (1 if j < n mod G else 0) learners of π; each group sorted."""
    keys = _sorted_keys(learners)
    n = len(keys)
    if min_size < 1 or n < min_size:
        raise PrivacyError(f"{n} learners cannot make groups of at least {min_size}")
    perm = _shuffle(keys, hkdf(ctx.seed, b"groups\x00" + ctx.encode()))
    count = n // min_size
    out, at = [], 0
    for j in range(count):
        size = n // count + (1 if j < n % count else 0)
        out.append(tuple(sorted(perm[at:at + size])))
        at += size
    return out


def group_neighbours(parts: Sequence[Sequence[str]], ctx: RoundContext,
                     degree: int | None = None) -> dict[str, tuple[str, ...]]:
    """One neighbour graph per group (domain = the group's index, 4 bytes big-endian), joined."""
    graph: dict[str, tuple[str, ...]] = {}
    for j, part in enumerate(parts):
        graph.update(neighbours(part, ctx, degree, domain=j.to_bytes(4, "big")))
    return graph


def components(graph: Mapping[str, Sequence[str]], members: Iterable[str]) -> list[list[str]]:
    """The connected components of the graph restricted to `members` (each sorted; by first)."""
    left = set(members)
    out = []
    for start in sorted(left):
        if start not in left:
            continue
        comp, todo = [], [start]
        left.discard(start)
        while todo:
            k = todo.pop()
            comp.append(k)
            for j in graph.get(k, ()):
                if j in left:
                    left.discard(j)
                    todo.append(j)
        out.append(sorted(comp))
    return out


def check_revealable(graph: Mapping[str, Sequence[str]], finished: Iterable[str],
                     min_size: int) -> None:
    """What a holder checks before it reveals anything (§14.7): once the round's secrets are
    public, anyone learns the sum of each connected component of the finished learners in the
    graph, so each must have at least `min_size` learners."""
    small = [c for c in components(graph, finished) if len(c) < min_size]
    if small:
        raise PrivacyError(f"revealing would expose the sum of {len(small[0])} learner(s) "
                           f"{', '.join(small[0])}: components smaller than {min_size}")


# --- masks (§14.5) --------------------------------------------------------------------


def pairwise_seed(private_key: bytes, me: str, my_public: bytes, other: str,
                  other_public: bytes, ctx: RoundContext) -> bytes:
    """s_ij = HKDF(X25519(sk_i, pk_j), "pairwise-mask" ‖ 0x00 ‖ context ‖ a_lo ‖ a_hi ‖ pk_lo ‖
    pk_hi), lo/hi the two learners in key order: the same seed from either side."""
    me, other = learner_key(me), learner_key(other)
    if me == other:
        raise PrivacyError("no pairwise mask with oneself")
    (lo, pk_lo), (hi, pk_hi) = sorted([(me, bytes(my_public)), (other, bytes(other_public))])
    info = b"pairwise-mask\x00" + ctx.encode() + _addr(lo) + _addr(hi) + pk_lo + pk_hi
    return hkdf(_exchange(private_key, other_public), info)


def mask(quantized: np.ndarray, keys: RoundKeys, public_keys: Mapping[str, bytes],
         graph: Mapping[str, Sequence[str]], ctx: RoundContext, bits: int) -> np.ndarray:
    """y_i = q_i + PRG(b_i) + Σ_{j∈N(i), j>i} PRG(s_ij) − Σ_{j∈N(i), j<i} PRG(s_ij) mod 2^bits."""
    q = np.asarray(quantized)
    if q.dtype != np.uint64 or q.ndim != 1:
        raise PrivacyError("quantized values are a flat uint64 array")
    if q.size and int(q.max()) >> bits:
        raise PrivacyError(f"a quantized value does not fit {bits} bits")
    n = q.size
    pks = _by_key(public_keys)
    prg = Expander(n)
    y = q + prg.words(keys.self_seed, bits)
    for j in graph[keys.learner]:
        if j not in pks:
            raise PrivacyError(f"no public key for {j}, a neighbour of {keys.learner}")
        words = prg.words(pairwise_seed(keys.private_key, keys.learner, keys.public_key,
                                        j, pks[j], ctx), bits)
        if j > keys.learner:
            y += words
        else:
            y -= words
    return _reduce(y, bits)


def _by_key(mapping: Mapping[str, bytes]) -> dict[str, bytes]:
    return {learner_key(a): v for a, v in mapping.items()}


def _reduce(v: np.ndarray, bits: int) -> np.ndarray:
    if bits < 64:
        v &= np.uint64((1 << bits) - 1)
    return v


def encode_masked(vector: np.ndarray, bits: int) -> bytes:
    """A masked vector's bytes: each value as ⌈bits/8⌉ bytes, little-endian, concatenated."""
    width = (bits + 7) // 8
    le = np.ascontiguousarray(vector, dtype="<u8")
    if width == 8:
        return le.tobytes()
    return le.view(np.uint8).reshape(-1, 8)[:, :width].tobytes()


def decode_masked(data: bytes, bits: int, length: int) -> np.ndarray:
    width = (bits + 7) // 8
    if len(data) != width * length:
        raise PrivacyError(f"a masked vector of {length} values is {width * length} bytes, "
                           f"not {len(data)}")
    raw = np.zeros((length, 8), np.uint8)
    raw[:, :width] = np.frombuffer(data, np.uint8).reshape(length, width)
    out = raw.reshape(-1).view("<u8").astype(np.uint64)
    if length and int(out.max()) >> bits:
        raise PrivacyError(f"a masked value does not fit {bits} bits")
    return out


# --- shares (§14.6) -------------------------------------------------------------------


@dataclass(frozen=True)
class Dealing:
    """A dealer's encrypted shares: for each holder (by key, position x = 1 …), two AES-256-GCM
    ciphertexts of 33-byte shares, of the self-mask seed and of the round private key."""

    dealer: str
    public_key: bytes
    threshold: int
    holders: tuple[str, ...]              # sorted by key
    ciphertexts: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    # holder → kind → ciphertext (49 bytes: 33 + the 16-byte tag)


def _share_info(kind: str, ctx: RoundContext, dealer: str, holder: str, pk_dealer: bytes,
                pk_holder: bytes) -> bytes:
    if kind not in _KINDS:
        raise PrivacyError(f"unknown share kind {kind!r}")
    return (b"share-" + kind.encode() + b"\x00" + ctx.encode() + _addr(dealer) + _addr(holder)
            + bytes(pk_dealer) + bytes(pk_holder))


def share_key(private_key: bytes, dealer: str, pk_dealer: bytes, holder: str, pk_holder: bytes,
              kind: str, ctx: RoundContext, *, as_holder: bool) -> bytes:
    """K = HKDF(X25519(own private key, the other's public key), "share-" ‖ kind ‖ 0x00 ‖ context ‖
    dealer ‖ holder ‖ pk_dealer ‖ pk_holder): the dealer and the holder derive the same key."""
    other = pk_dealer if as_holder else pk_holder
    return hkdf(_exchange(private_key, other),
                _share_info(kind, ctx, dealer, holder, pk_dealer, pk_holder))


def deal(keys: RoundKeys, holders: Mapping[str, bytes], threshold: int,
         ctx: RoundContext) -> Dealing:
    """Shamir shares (threshold of len(holders)) of b_i and of the round private key, each
    encrypted to its holder: AES-256-GCM under share_key, nonce 12 zero bytes (each key
    encrypts one message), associated data = the key's HKDF info."""
    order = _sorted_keys(holders)
    if len(order) != len(holders):
        raise PrivacyError("holders must be distinct addresses")
    pks = {learner_key(h): bytes(pk) for h, pk in holders.items()}
    secrets = {SELF: keys.self_seed, KEY: keys.private_key}
    shares = {kind: shamir.split(int.from_bytes(secrets[kind], "big"), threshold, len(order),
                                 keys.share_seeds[kind]) for kind in _KINDS}
    cts: dict[str, dict[str, bytes]] = {}
    for pos, holder in enumerate(order):
        cts[holder] = {}
        for kind in _KINDS:
            k = share_key(keys.private_key, keys.learner, keys.public_key, holder, pks[holder],
                          kind, ctx, as_holder=False)
            ad = _share_info(kind, ctx, keys.learner, holder, keys.public_key, pks[holder])
            cts[holder][kind] = AESGCM(k).encrypt(_NONCE, shamir.encode_share(shares[kind][pos]),
                                                  ad)
    return Dealing(keys.learner, keys.public_key, threshold, tuple(order), cts)


def reveal_key(holder_keys: RoundKeys, dealing: Dealing, kind: str, ctx: RoundContext) -> bytes:
    """What a holder publishes after the deadline for one dealer: the 32-byte key of that
    dealer's ciphertext of `kind` to it (SELF if the dealer finished, KEY if not; never both)."""
    return share_key(holder_keys.private_key, dealing.dealer, dealing.public_key,
                     holder_keys.learner, holder_keys.public_key, kind, ctx, as_holder=True)


def open_share(dealing: Dealing, holder: str, kind: str, key: bytes,
               holder_public: bytes, ctx: RoundContext) -> int:
    """The share in dealing's ciphertext of `kind` to `holder`, under a revealed key; a
    tampered ciphertext or key fails the GCM tag and raises PrivacyError."""
    holder = learner_key(holder)
    try:
        ct = dealing.ciphertexts[holder][kind]
    except KeyError:
        raise PrivacyError(f"{dealing.dealer} dealt no {kind} share to {holder}") from None
    ad = _share_info(kind, ctx, dealing.dealer, holder, dealing.public_key, holder_public)
    try:
        plain = AESGCM(bytes(key)).decrypt(_NONCE, bytes(ct), ad)
    except (InvalidTag, ValueError):
        raise PrivacyError(f"the {kind} share of {dealing.dealer} to {holder} does not decrypt "
                           "under the revealed key: tampered ciphertext or key") from None
    return shamir.decode_share(plain)


def check_secret(secret: bytes, kind: str, announcement: Announcement,
                 ctx: RoundContext) -> None:
    """A reconstructed secret must match what its dealer announced: b_i its commitment, the
    private key its public key."""
    ok = (commitment(secret, announcement.learner, ctx) == announcement.commitment
          if kind == SELF else _public_bytes(secret) == announcement.public_key)
    if not ok:
        raise PrivacyError(f"the reconstructed {kind} secret of {announcement.learner} does not "
                           "match its announcement: wrong or too few shares")


def recover_secret(dealing: Dealing, announcement: Announcement, kind: str,
                   revealed: Mapping[str, bytes], holder_keys: Mapping[str, bytes],
                   ctx: RoundContext) -> bytes:
    """The dealer's secret of `kind` from the holders' revealed keys (holder → key; holder_keys:
    holder → its public key): shares that do not decrypt are left out; the first `threshold`
    valid ones by position are interpolated; the result is checked against the announcement."""
    return _recover(dealing, announcement, kind, revealed, holder_keys, ctx)[0]


def _recover(dealing: Dealing, announcement: Announcement, kind: str,
             revealed: Mapping[str, bytes], holder_keys: Mapping[str, bytes],
             ctx: RoundContext) -> tuple[bytes, list[str]]:
    if learner_key(announcement.learner) != dealing.dealer or \
            announcement.public_key != dealing.public_key:
        raise PrivacyError(f"the dealing of {dealing.dealer} is not its announcement's")
    revealed, holder_keys = _by_key(revealed), _by_key(holder_keys)
    shares, refused = {}, []
    for pos, holder in enumerate(dealing.holders, start=1):
        if holder not in revealed:
            continue
        try:
            if holder not in holder_keys:
                raise PrivacyError(f"no public key for holder {holder}")
            shares[pos] = open_share(dealing, holder, kind, revealed[holder],
                                     holder_keys[holder], ctx)
        except PrivacyError:
            refused.append(holder)
    if len(shares) < dealing.threshold:
        raise PrivacyError(f"{len(shares)} valid {kind} shares of {dealing.dealer}, "
                           f"{dealing.threshold} needed" +
                           (f" (refused: {', '.join(refused)})" if refused else ""))
    value = shamir.reconstruct(shares, dealing.threshold)
    if value >> 256:
        raise PrivacyError(f"the reconstructed {kind} secret of {dealing.dealer} is not 256 bits")
    secret = value.to_bytes(32, "big")
    check_secret(secret, kind, announcement, ctx)
    return secret, refused


# --- unmasking (§14.7) ----------------------------------------------------------------


def unmask(masked: Mapping[str, np.ndarray], graph: Mapping[str, Sequence[str]],
           public_keys: Mapping[str, bytes], self_seeds: Mapping[str, bytes],
           dropped_keys: Mapping[str, bytes], ctx: RoundContext, bits: int) -> np.ndarray:
    """Σ_{i∈F} q_i mod 2^bits for the finished set F = masked's keys:
    Σ y_i − Σ PRG(b_i) − Σ_{i∈F} Σ_{j∈N(i)∖F} ±PRG(s_ij) (+ where i > j, − where i < j,
    undoing what i added), s_ij from j's reconstructed private key and i's public key."""
    finished = sorted(learner_key(k) for k in masked)
    if not finished:
        raise PrivacyError("nothing to unmask")
    public_keys, self_seeds = _by_key(public_keys), _by_key(self_seeds)
    dropped_keys = _by_key(dropped_keys)
    vectors = {learner_key(k): np.asarray(v) for k, v in masked.items()}
    length = vectors[finished[0]].size
    total = np.zeros(length, np.uint64)
    prg = Expander(length)
    for i in finished:
        y = vectors[i]
        if y.dtype != np.uint64 or y.shape != (length,) or (length and int(y.max()) >> bits):
            raise PrivacyError(f"the masked vector of {i} is not {length} values of {bits} bits")
        if i not in self_seeds:
            raise PrivacyError(f"no self-mask seed for {i}, which finished")
        if i not in graph:
            raise PrivacyError(f"{i} is not in the round's graph")
        total += y
        total -= prg.words(self_seeds[i], bits)
        for j in graph[i]:
            if j in vectors:
                continue
            if j not in dropped_keys:
                raise PrivacyError(f"no private key for {j}, a dropped neighbour of {i}")
            if j not in public_keys or i not in public_keys:
                raise PrivacyError(f"no public key for {i} or {j}")
            words = prg.words(pairwise_seed(dropped_keys[j], j, public_keys[j], i,
                                            public_keys[i], ctx), bits)
            if i < j:
                total -= words
            else:
                total += words
    return _reduce(total, bits)


# --- the public steps after the deadline (§14.7), end to end --------------------------


def reveal(holder_keys: RoundKeys, dealings: Iterable[Dealing], finished: Iterable[str],
           graph: Mapping[str, Sequence[str]], min_component: int,
           ctx: RoundContext) -> dict[str, tuple[str, bytes]]:
    """A holder's revelation: for each dealing it holds a share of, (kind, key) with kind SELF
    if the dealer finished and KEY if not, never both; nothing (PrivacyError) if a component of
    the finished learners is smaller than `min_component` (check_revealable)."""
    done = {learner_key(a) for a in finished}
    check_revealable(graph, done, max(2, min_component))
    out = {}
    for d in dealings:
        if holder_keys.learner in d.holders:
            kind = SELF if d.dealer in done else KEY
            out[d.dealer] = (kind, reveal_key(holder_keys, d, kind, ctx))
    return out


@dataclass(frozen=True)
class Unmasked:
    """The sum of a round (or group) from public data, and the shares refused on the way."""

    total: np.ndarray          # Σ q_i mod 2^k over the finished learners
    finished: tuple[str, ...]  # by key
    dropped: tuple[str, ...]   # the dropped neighbours whose keys were recovered
    refused: tuple[tuple[str, str], ...]  # (dealer, holder): revealed keys that did not open


def unmask_public(masked: Mapping[str, np.ndarray], announcements: Mapping[str, Announcement],
                  dealings: Mapping[str, Dealing], revealed: Mapping[str, Mapping[str, bytes]],
                  holder_keys: Mapping[str, bytes], graph: Mapping[str, Sequence[str]],
                  ctx: RoundContext, bits: int) -> Unmasked:
    """What anyone computes after the deadline: each finished learner's b_i and each dropped
    neighbour's private key recovered from the revealed keys (revealed: holder → dealer → key),
    checked against the announcements, then `unmask`. Raises PrivacyError if a secret cannot be
    recovered."""
    ann = {learner_key(a): v for a, v in announcements.items()}
    deal_by = {learner_key(a): v for a, v in dealings.items()}
    finished = sorted(learner_key(a) for a in masked)
    done = set(finished)
    dropped = sorted({j for i in finished for j in graph.get(i, ()) if j not in done})
    refused: list[tuple[str, str]] = []
    secrets: dict[str, dict[str, bytes]] = {SELF: {}, KEY: {}}
    for a in [*finished, *dropped]:
        if a not in deal_by or a not in ann:
            raise PrivacyError(f"no dealing or announcement of {a}")
        kind = SELF if a in done else KEY
        keys = {h: by_dealer[a] for h, by_dealer in revealed.items() if a in by_dealer}
        secrets[kind][a], bad = _recover(deal_by[a], ann[a], kind, keys, holder_keys, ctx)
        refused += [(a, h) for h in bad]
    public = {a: v.public_key for a, v in ann.items()}
    total = unmask({learner_key(a): v for a, v in masked.items()}, graph, public,
                   secrets[SELF], secrets[KEY], ctx, bits)
    return Unmasked(total, tuple(finished), tuple(dropped), tuple(refused))


# --- wire formats (§14.10) ------------------------------------------------------------

_DEALING_TAG = b"fedchain-secagg/1 dealing\x00"
_REVEAL_TAG = b"fedchain-secagg/1 reveal\x00"
_CT = shamir.SHARE_BYTES + 16


def encode_announcement(announcement: Announcement) -> bytes:
    """pk (32) ‖ commitment (32): the learner is whoever publishes it."""
    check_announcement(announcement)
    return bytes(announcement.public_key) + bytes(announcement.commitment)


def decode_announcement(learner: str, data: bytes) -> Announcement:
    if len(data) != 64:
        raise PrivacyError(f"an announcement is 64 bytes, not {len(data)}")
    out = Announcement(learner_key(learner), bytes(data[:32]), bytes(data[32:]))
    check_announcement(out)
    return out


def encode_dealing(dealing: Dealing) -> bytes:
    """tag ‖ dealer (20) ‖ pk (32) ‖ u16 threshold ‖ u16 m ‖ per holder, by key:
    holder (20) ‖ self ciphertext (49) ‖ key ciphertext (49)."""
    out = [_DEALING_TAG, _addr(dealing.dealer), bytes(dealing.public_key),
           dealing.threshold.to_bytes(2, "big"), len(dealing.holders).to_bytes(2, "big")]
    for h in dealing.holders:
        out += [_addr(h), dealing.ciphertexts[h][SELF], dealing.ciphertexts[h][KEY]]
    return b"".join(out)


def decode_dealing(data: bytes) -> Dealing:
    head = len(_DEALING_TAG) + 20 + 32 + 4
    if len(data) < head or not data.startswith(_DEALING_TAG):
        raise PrivacyError("not a dealing")
    at = len(_DEALING_TAG)
    dealer = "0x" + data[at:at + 20].hex()
    pk = bytes(data[at + 20:at + 52])
    threshold = int.from_bytes(data[at + 52:at + 54], "big")
    m = int.from_bytes(data[at + 54:at + 56], "big")
    if len(data) != head + m * (20 + 2 * _CT) or not 1 <= threshold <= m:
        raise PrivacyError(f"a malformed dealing from {dealer}")
    holders, cts = [], {}
    for x in range(m):
        at = head + x * (20 + 2 * _CT)
        h = "0x" + data[at:at + 20].hex()
        holders.append(h)
        cts[h] = {SELF: bytes(data[at + 20:at + 20 + _CT]), KEY: bytes(data[at + 20 + _CT:
                                                                             at + 20 + 2 * _CT])}
    if holders != sorted(set(holders)):
        raise PrivacyError(f"the holders of {dealer}'s dealing are not distinct and sorted")
    return Dealing(dealer, pk, threshold, tuple(holders), cts)


def encode_revelation(revelation: Mapping[str, tuple[str, bytes]]) -> bytes:
    """tag ‖ per dealer, by key: dealer (20) ‖ kind (1 byte: 0 self, 1 key) ‖ key (32)."""
    out = [_REVEAL_TAG]
    by_key = {learner_key(a): v for a, v in revelation.items()}
    for dealer in sorted(by_key):
        kind, key = by_key[dealer]
        if kind not in _KINDS or len(key) != 32:
            raise PrivacyError(f"a malformed revelation entry for {dealer}")
        out += [_addr(dealer), bytes([_KINDS.index(kind)]), bytes(key)]
    return b"".join(out)


def decode_revelation(data: bytes) -> dict[str, tuple[str, bytes]]:
    body = data[len(_REVEAL_TAG):]
    if not data.startswith(_REVEAL_TAG) or len(body) % 53:
        raise PrivacyError("not a revelation")
    out: dict[str, tuple[str, bytes]] = {}
    previous = b""
    for at in range(0, len(body), 53):
        dealer, kind, key = body[at:at + 20], body[at + 20], body[at + 21:at + 53]
        if kind > 1 or dealer <= previous:
            raise PrivacyError("a malformed revelation: unknown kind, or dealers not sorted")
        previous = dealer
        out["0x" + dealer.hex()] = (_KINDS[kind], bytes(key))
    return out
