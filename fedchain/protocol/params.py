"""Every protocol field, declared once: the plan JSON, the run config, the job file's
[protocol] section and the contract's round parameters are all derived from here.

A field is declared with `_field(default, what, ok, ...)`: its default, what a valid value is
(said in error messages), the check, whether the JSON leaves it out at its default (fields
added after the first plan format, so an older plan keeps its CID), and the contract's
`Params` member it becomes (if the contract enforces it). `ProtocolFields` holds the fields a
job's [protocol] section and `RunConfig` set; `Plan` adds the run's own (strategy, rounds,
configs, codec, limits). `RoundParams` is the contract's `Params` tuple, derived from a plan.

The plan is the JSON whose CID goes on chain with the genesis model: everything needed to
re-compute a round later (strategy and parameters, codec version) and what learners need to
train (the training and evaluation config). Its bytes are canonical (sorted keys, no
whitespace), so the same plan has the same CID. SPEC.md § "The plan" is the normative text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import ConfigError, ContentTooLarge
from ..jsonsafe import loads
from ..model.codec import DEFAULT_MAX_BYTES, FORMAT, VERSION
from ..model.fetch import fetch_bytes
from ..privacy.distributed import MAX_NORM_RATIO, DistributedDP
from ..storage.cid import CID
from .rules import ALL_PPM, fraction_to_ppm

if TYPE_CHECKING:
    from ..storage import ContentStore

PLAN_FORMAT = "fedchain-plan/1"
MAX_PLAN_BYTES = 1024 * 1024
#: Bounds of the plan's counts: rounds and min_updates fit the contract's uint32 counters;
#: a model is at most 1 TiB.
MAX_ROUNDS = 2**32 - 1
MAX_MODEL_BYTES = 2**40
#: The contract keeps windows in uint24 seconds (194 days), the buffer in uint16, staleness uint8.
MAX_WINDOW = 2**24 - 1
#: How learners check a global model before training on it (see ProtocolFields.verify).
VERIFY_MODES = ("full", "sampled", "off")
#: Privacy of the learners' updates (see ProtocolFields.privacy).
PRIVACY_MODES = ("none", "secagg")
#: How a secure-aggregation round combines its groups' means (SecaggParams.combine).
COMBINE_RULES = ("mean", "median")
#: Learners re-derive global models up to this size by default (bigger: see verify).
DEFAULT_VERIFY_MAX_BYTES = 256 * 1024 * 1024


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(low: int, high: int, unit: str = "an integer") -> tuple[str, Callable[[Any], bool]]:
    return f"{unit} in {low}..{high}", lambda v: _is_int(v) and low <= v <= high


_FRACTION = ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1)
_SECONDS = _integer(0, MAX_WINDOW, "seconds")


def _round_key(key: Any) -> bool:
    return (isinstance(key, str) and key.isascii() and key.isdigit() and key[0] != "0"
            and int(key) <= MAX_ROUNDS)


_SCHEDULE = ('{key: {"round": value}} with rounds as decimal strings, e.g. {"lr": {"3": 0.01}}',
             lambda v: v is None or isinstance(v, dict) and all(
                 isinstance(k, str) and isinstance(by, dict) and all(map(_round_key, by))
                 for k, by in v.items()))


def _field(default: Any = MISSING, check: tuple[str, Callable[[Any], bool]] | None = None, *,
           factory: Callable[[], Any] | None = None, optional: bool = False,
           chain: str | None = None) -> Any:
    """A declared field: `check` is (what a valid value is, the test); `optional`: left out of
    the plan JSON at its default; `chain`: the contract `Params` member it becomes."""
    metadata = {"check": check, "optional": optional, "chain": chain}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class ProtocolFields:
    """The protocol's settings a job's [protocol] section (and `RunConfig`) choose: deadlines,
    sampling, asynchronous rounds, learners' verification, duplicates. All are in the plan;
    the first six are also enforced by the contract."""

    #: Deadlines, in seconds of block time from a round's opening (0: none). Updates (or, in
    #: commit-reveal mode, commitments) until update_window; reveals for reveal_window after
    #: it (non-zero: commit-reveal mode); votes for vote_window after that, then anyone may
    #: close the round with the previous model carried over.
    update_window: int = _field(0, _SECONDS, optional=True, chain="update_window")
    reveal_window: int = _field(0, _SECONDS, optional=True, chain="reveal_window")
    vote_window: int = _field(0, _SECONDS, optional=True, chain="vote_window")
    #: Client sampling: the share of learners in each round (1: everyone). A round selects
    #: exactly ⌈fraction · n⌉ of the n learner indices handed out when it opened, drawn from
    #: its on-chain seed (`rules.is_selected`); the default quorum is two thirds of that.
    fraction: float = _field(1.0, _FRACTION, optional=True, chain="select_ppm")
    #: Asynchronous (FedBuff) rounds: a round may close once buffer_size updates arrived;
    #: updates trained up to max_staleness rounds earlier are accepted (0: synchronous).
    buffer_size: int = _field(0, _integer(0, 65535), optional=True, chain="buffer_size")
    max_staleness: int = _field(0, _integer(0, 255), optional=True, chain="max_staleness")
    #: How a learner checks round r's global model before training on it: "full" re-derives
    #: the round's whole outcome from the chain and the store, bit for bit, for models up to
    #: verify_max_bytes (bigger ones as "sampled"); "sampled" does so for a random verify_rate
    #: of the rounds; "off" trusts the committee.
    verify: str = _field("full", (f"one of {', '.join(VERIFY_MODES)}",
                                  lambda v: v in VERIFY_MODES), optional=True)
    verify_max_bytes: int = _field(DEFAULT_VERIFY_MAX_BYTES, _integer(0, MAX_MODEL_BYTES),
                                   optional=True)
    verify_rate: float = _field(0.25, _FRACTION, optional=True)
    #: Leave out a submission that exactly duplicates an earlier one of the round (same CID,
    #: or the same weights re-encoded): free-riding on another learner's update.
    exclude_duplicates: bool = _field(False, ("true or false", lambda v: isinstance(v, bool)),
                                      optional=True)

    #: Per-round training values (Flower's on_fit_config_fn, declared so every learner
    #: derives the same config from the plan): {key: {"round": value}}; from each listed
    #: round on, the key takes that value (before the first, the plan's `train` value).
    train_schedule: dict[str, dict[str, Any]] | None = _field(None, _SCHEDULE, optional=True)

    #: Privacy of the learners' updates: "none" (in the clear) or "secagg" (secure
    #: aggregation, SPEC.md §14: learners publish only masked, quantized differences, and
    #: only the sum of a round's (or each group's) differences can be unmasked, by anyone);
    #: `secagg` holds its parameters (SecaggParams).
    privacy: str = _field("none", (f"one of {', '.join(PRIVACY_MODES)}",
                                   lambda v: v in PRIVACY_MODES), optional=True)
    secagg: dict[str, Any] | None = _field(None, (
        "an object of secure-aggregation parameters",
        lambda v: v is None or isinstance(v, dict)), optional=True)

    def __post_init__(self) -> None:
        for f in protocol_fields():
            check_field(f.name, getattr(self, f.name))
        if self.privacy == "secagg":
            self._check_secagg()
        elif self.secagg is not None:
            raise ConfigError('malformed plan: secagg parameters need privacy = "secagg"')
        if self.reveal_window and not self.update_window:
            raise ConfigError("malformed plan: commit-reveal (reveal_window) needs an "
                              "update_window")
        if self.reveal_window and self.max_staleness:
            raise ConfigError("malformed plan: commit-reveal rounds are synchronous "
                              "(max_staleness must be 0)")

    def _check_secagg(self) -> None:
        p = SecaggParams.parse(self.secagg)
        why = None
        if not self.update_window or not self.vote_window:
            why = "needs an update_window and a vote_window (its phases are deadlines)"
        elif p.key_window >= self.update_window:
            why = (f"its key_window ({p.key_window} s) must end before the update deadline "
                   f"({self.update_window} s)")
        elif p.reveal_window >= self.vote_window:
            why = (f"its reveal_window ({p.reveal_window} s) must end before the vote "
                   f"deadline ({self.vote_window} s after the update deadline)")
        elif self.reveal_window or self.max_staleness or self.buffer_size:
            why = "rounds are synchronous, without commit-reveal or a buffer"
        elif self.exclude_duplicates:
            why = "cannot compare masked updates (exclude_duplicates must be false)"
        strategy = getattr(self, "strategy", None)
        if why is None and isinstance(strategy, dict) and (
                strategy.get("name") != "FedAvg" or any(
                    v not in (None, False, 1.0) for k, v in
                    (strategy.get("params") or {}).items() if k not in ("accumulator", "scaling"))):
            why = ("aggregates with its own rule (SPEC.md §14.13): the strategy must be plain "
                   f"FedAvg, not {strategy.get('name')} {strategy.get('params') or ''}".rstrip())
        if why is not None:
            raise ConfigError(f"malformed plan: secure aggregation {why}")

    def protocol(self) -> dict[str, Any]:
        """The protocol fields, by name."""
        return {f.name: getattr(self, f.name) for f in protocol_fields()}


@dataclass(frozen=True, kw_only=True)
class SecaggParams:
    """A secure-aggregation plan's parameters (the plan's `secagg` object; SPEC.md §14.11)."""

    #: Each coordinate of a learner's difference is clipped to [−clip, clip] ...
    clip: float
    #: ... and mapped to an integer in [−range, range] by stochastic rounding.
    range: int = (1 << 15) - 1
    #: Seconds after the round opens in which participants post their round keys (learners
    #: with their dealings); the round's set is the learners whose keys are in by then.
    key_window: int
    #: Seconds after the update deadline in which the holders reveal their share keys.
    reveal_window: int
    #: Shares needed to recover a secret (0: the committee's quorum when the round opened).
    threshold: int = 0
    #: Minimum group size (0: one group, the whole round): groups are unmasked apart and
    #: combined by `combine`.
    group_size: int = 0
    #: Holders reveal nothing if a connected component of the finished learners' graph
    #: (per group) is smaller than this: its sum would be public.
    min_component: int = 2
    combine: str = "mean"
    #: The neighbour graph's degree (0: min(n − 1, 2·bitlength(n)); else even, ≥ 2).
    degree: int = 0
    #: Learner-level differential privacy with noise from the learners (§14.16), or None.
    dp: DistributedDP | None = None

    @classmethod
    def parse(cls, raw: Any) -> SecaggParams:
        """The parameters in a plan's `secagg` object; ConfigError says what is wrong."""
        if not isinstance(raw, dict):
            raise ConfigError('malformed plan: privacy = "secagg" needs a secagg object with '
                              "clip, key_window and reveal_window")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"malformed plan: unknown secagg parameters {unknown}")
        checks: dict[str, tuple[str, Callable[[Any], bool]]] = {
            "clip": ("a positive finite number", lambda v: _is_number(v) and 0 < v < 1e300),
            "range": _integer(1, 1 << 30),
            "key_window": _integer(1, MAX_WINDOW, "seconds"),
            "reveal_window": _integer(1, MAX_WINDOW, "seconds"),
            "threshold": _integer(0, 255),
            "group_size": _integer(0, 1 << 20),
            "min_component": _integer(2, 1 << 20),
            "combine": (f"one of {', '.join(COMBINE_RULES)}", lambda v: v in COMBINE_RULES),
            "degree": ("0 or an even integer ≥ 2", lambda v: _is_int(v) and 0 <= v < 1 << 20
                       and v % 2 == 0),
            "dp": ("an object (§14.16)", lambda v: isinstance(v, dict)),
        }
        for name in ("clip", "key_window", "reveal_window"):
            if name not in raw:
                raise ConfigError(f"malformed plan: secagg needs {name}")
        for name, value in raw.items():
            what, ok = checks[name]
            if not ok(value):
                raise ConfigError(f"malformed plan: secagg.{name} must be {what}, "
                                  f"not {value!r}")
        if raw.get("combine", "mean") != "mean" and not raw.get("group_size"):
            raise ConfigError("malformed plan: secagg.combine other than mean needs groups "
                              "(group_size)")
        dp = DistributedDP.parse(raw["dp"]) if "dp" in raw else None
        if dp is not None:
            if dp.clip_norm > float(raw["clip"]) * MAX_NORM_RATIO:
                raise ConfigError("malformed plan: secagg.dp.clip_norm is more than 2^20 times "
                                  "secagg.clip")
            if raw.get("group_size") and dp.min_learners > raw["group_size"]:
                raise ConfigError(f"malformed plan: secagg.dp.min_learners ({dp.min_learners}) "
                                  f"is more than group_size ({raw['group_size']}): a group "
                                  "might never be unmasked")
        return cls(**{**raw, "clip": float(raw["clip"]), "dp": dp})


def protocol_fields() -> tuple[Field[Any], ...]:
    """The protocol's fields, in declaration order."""
    return fields(ProtocolFields)


def _check_of(name: str) -> tuple[str, Callable[[Any], bool]] | None:
    found = {f.name: f for f in fields(Plan)}.get(name)
    return None if found is None else found.metadata.get("check")


def describe(name: str) -> str:
    """What a valid value of the plan's field `name` is, e.g. "seconds in 0..16777215"."""
    check = _check_of(name)
    return "any value" if check is None else check[0]


def check_field(name: str, value: Any) -> None:
    """ConfigError unless `value` is valid for the plan's field `name`."""
    check = _check_of(name)
    if check is None or check[1](value):
        return
    try:
        shown = repr(value)
    except ValueError:  # an int too long to print
        shown = type(value).__name__
    shown = shown if len(shown) <= 60 else shown[:60] + "…"
    raise ConfigError(f"malformed plan: {name} must be {check[0]}, not {shown}")


@dataclass(frozen=True)
class Plan(ProtocolFields):
    """Strategy, rounds and configs of one federation, as published at genesis."""

    strategy: dict[str, Any] = _field(check=(
        'an object with a "name"',
        lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)))
    rounds: int = _field(check=_integer(1, MAX_ROUNDS))
    min_updates: int = _field(1, _integer(0, MAX_ROUNDS))
    train: dict[str, Any] = _field(factory=dict, check=("an object",
                                                         lambda v: isinstance(v, dict)))
    evaluate: dict[str, Any] = _field(factory=dict, check=("an object",
                                                            lambda v: isinstance(v, dict)))
    codec: dict[str, str] = _field(
        factory=lambda: {"format": FORMAT, "version": VERSION},
        check=("an object of strings",
               lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values())))
    max_model_bytes: int = _field(DEFAULT_MAX_BYTES, _integer(1, MAX_MODEL_BYTES))
    format: str = _field(PLAN_FORMAT, ("a string", lambda v: isinstance(v, str)))
    software: str = _field(f"fedchain {__version__}", ("a string",
                                                       lambda v: isinstance(v, str)))

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no whitespace, so the same plan has the same CID."""
        body = asdict(self)
        for f in fields(self):
            if f.metadata.get("optional") and body[f.name] == f.default:
                del body[f.name]
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        """The plan in JSON bytes; ConfigError says what is wrong with a malformed one."""
        if not isinstance(data, bytes | bytearray | str):
            raise ConfigError(f"a plan is JSON bytes, not {type(data).__name__}")
        if len(data) > MAX_PLAN_BYTES:
            raise ConfigError(f"plan of {len(data)} bytes exceeds {MAX_PLAN_BYTES}")
        try:
            raw = loads(data)  # depth-checked: see fedchain.jsonsafe
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"the plan is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
            raise ConfigError(f"not a fedchain plan (format {PLAN_FORMAT!r} expected)")
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in raw.items() if k in names}
        for name, value in known.items():
            check_field(name, value)
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"malformed plan: {exc}") from None

    @classmethod
    def load(cls, store: ContentStore, cid: CID | str | bytes | None) -> Plan:
        """The plan behind a CID (or the binary CID the chain records), fetched through
        `store`: never more than MAX_PLAN_BYTES of it."""
        if not cid:
            raise ConfigError("the federation has no plan yet (no genesis on chain)")
        return fetch_plan(store, CID.from_bytes(cid) if isinstance(cid, bytes) else cid)

    def train_config(self, round: int) -> dict[str, Any]:
        """The plan's `train` with `train_schedule` applied for `round`, FedProx's
        `proximal_mu` (its learners' proximal term) and the round number."""
        config = dict(self.train)
        for key, by_round in (self.train_schedule or {}).items():
            reached = [int(r) for r in by_round if int(r) <= round]
            if reached:
                config[key] = by_round[str(max(reached))]
        params = self.strategy.get("params")
        if self.strategy.get("name") == "FedProx" and isinstance(params, dict):
            # FedProx.to_plan always writes it; the strategy checks its range when built.
            mu = params.get("proximal_mu")
            if isinstance(mu, int | float) and not isinstance(mu, bool):
                config["proximal_mu"] = float(mu)
        return {**config, "round": round}

    def eval_config(self, round: int) -> dict[str, Any]:
        return {**self.evaluate, "round": round}


def fetch_plan(store: ContentStore, cid: CID | str, *, deadline: float | None = None) -> Plan:
    """The plan behind `cid`: never more than MAX_PLAN_BYTES of it is read (ConfigError)."""
    try:
        data = fetch_bytes(store, cid, max_bytes=MAX_PLAN_BYTES, deadline=deadline)
    except ContentTooLarge:
        raise ConfigError(f"the plan {cid} is larger than {MAX_PLAN_BYTES} bytes") from None
    return Plan.from_json(data)


@dataclass(frozen=True)
class RoundParams:
    """The contract's `Params` tuple, fixed at genesis: the plan's fields the contract
    enforces (declared with `chain=` above), in the ABI's order.

    Windows are seconds (0: no deadline); `select_ppm` is the share of learners a round
    samples, in parts per million (0: everyone; each round selects exactly
    `rules.sample_size(select_ppm, n)` of its n learners); `buffer_size` and `max_staleness`
    drive asynchronous rounds.
    """

    rounds: int
    update_window: int = 0
    reveal_window: int = 0
    vote_window: int = 0
    select_ppm: int = 0
    buffer_size: int = 0
    max_staleness: int = 0

    @classmethod
    def from_plan(cls, plan: Plan) -> RoundParams:
        values: dict[str, int] = {"rounds": plan.rounds}
        for f in protocol_fields():
            member = f.metadata.get("chain")
            if member is not None:
                value = getattr(plan, f.name)
                values[member] = fraction_to_ppm(value) if member == "select_ppm" else value
        return cls(**values)

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def sampling(self) -> bool:
        return 0 < self.select_ppm < ALL_PPM
