"""The run's plan: the JSON whose CID goes on chain with the genesis model.

It records everything needed to re-compute a round later (strategy and parameters, codec
version) and what learners need to train (the training and evaluation config).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import ConfigError
from ..jsonsafe import loads
from ..storage.cid import CID
from .codec import DEFAULT_MAX_BYTES, FORMAT, VERSION

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
#: How learners check a global model before training on it (see Plan.verify).
VERIFY_MODES = ("full", "sampled", "off")
#: Learners re-derive global models up to this size by default (bigger: see Plan.verify).
DEFAULT_VERIFY_MAX_BYTES = 256 * 1024 * 1024


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: field → (what it must be, check)
_FIELDS: dict[str, tuple[str, Any]] = {
    "strategy": (
        'an object with a "name"',
        lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    ),
    "rounds": (f"an integer in 1..{MAX_ROUNDS}", lambda v: _is_int(v) and 1 <= v <= MAX_ROUNDS),
    "min_updates": (
        f"an integer in 0..{MAX_ROUNDS}", lambda v: _is_int(v) and 0 <= v <= MAX_ROUNDS
    ),
    "train": ("an object", lambda v: isinstance(v, dict)),
    "evaluate": ("an object", lambda v: isinstance(v, dict)),
    "codec": (
        "an object of strings",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    ),
    "max_model_bytes": (
        f"an integer in 1..{MAX_MODEL_BYTES}",
        lambda v: _is_int(v) and 1 <= v <= MAX_MODEL_BYTES,
    ),
    "format": ("a string", lambda v: isinstance(v, str)),
    "software": ("a string", lambda v: isinstance(v, str)),
    "update_window": (f"seconds in 0..{MAX_WINDOW}", lambda v: _is_int(v) and 0 <= v <= MAX_WINDOW),
    "reveal_window": (f"seconds in 0..{MAX_WINDOW}", lambda v: _is_int(v) and 0 <= v <= MAX_WINDOW),
    "vote_window": (f"seconds in 0..{MAX_WINDOW}", lambda v: _is_int(v) and 0 <= v <= MAX_WINDOW),
    "fraction": (
        "a number in (0, 1]",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1,
    ),
    "buffer_size": ("an integer in 0..65535", lambda v: _is_int(v) and 0 <= v <= 65535),
    "max_staleness": ("an integer in 0..255", lambda v: _is_int(v) and 0 <= v <= 255),
    "verify": (f"one of {', '.join(VERIFY_MODES)}", lambda v: v in VERIFY_MODES),
    "verify_max_bytes": (
        f"an integer in 0..{MAX_MODEL_BYTES}", lambda v: _is_int(v) and 0 <= v <= MAX_MODEL_BYTES
    ),
    "exclude_duplicates": ("true or false", lambda v: isinstance(v, bool)),
    "verify_rate": (
        "a number in (0, 1]",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1,
    ),
}

#: Fields added after the first plan format: left out of the JSON while at their defaults, so
#: a plan that does not use them keeps the CID it always had.
_OPTIONAL = ("update_window", "reveal_window", "vote_window", "fraction", "buffer_size",
             "max_staleness", "verify", "verify_max_bytes", "verify_rate",
             "exclude_duplicates")


def check_field(name: str, value: Any) -> None:
    """ConfigError unless `value` is valid for the plan's field `name`."""
    what, ok = _FIELDS[name]
    if not ok(value):
        try:
            shown = repr(value)
        except ValueError:  # an int too long to print
            shown = type(value).__name__
        shown = shown if len(shown) <= 60 else shown[:60] + "…"
        raise ConfigError(f"malformed plan: {name} must be {what}, not {shown}")


@dataclass(frozen=True)
class Plan:
    """Strategy, rounds and configs of one federation, as published at genesis."""

    strategy: dict[str, Any]
    rounds: int
    min_updates: int = 1
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    codec: dict[str, str] = field(default_factory=lambda: {"format": FORMAT, "version": VERSION})
    max_model_bytes: int = DEFAULT_MAX_BYTES
    format: str = PLAN_FORMAT
    software: str = f"fedchain {__version__}"
    #: Deadlines, in seconds of block time from a round's opening (0: none). Updates (or, in
    #: commit-reveal mode, commitments) until update_window; reveals for reveal_window after
    #: it (non-zero: commit-reveal mode); votes for vote_window after that, then anyone may
    #: close the round with the previous model carried over.
    update_window: int = 0
    reveal_window: int = 0
    vote_window: int = 0
    #: Client sampling: each learner takes part in a round with this probability, drawn from
    #: the round's on-chain seed (1: everyone).
    fraction: float = 1.0
    #: Asynchronous (FedBuff) rounds: a round may close once buffer_size updates arrived;
    #: updates trained up to max_staleness rounds earlier are accepted (0: synchronous).
    buffer_size: int = 0
    max_staleness: int = 0
    #: How a learner checks round r's global model before training on it: "full" re-derives
    #: it from the chain and the store, bit for bit, for models up to verify_max_bytes (bigger
    #: ones as "sampled"); "sampled" does so for a random verify_rate of the rounds; "off"
    #: trusts the committee.
    verify: str = "full"
    verify_max_bytes: int = DEFAULT_VERIFY_MAX_BYTES
    verify_rate: float = 0.25
    #: Leave out a submission that exactly duplicates an earlier one of the round (same CID,
    #: or the same weights re-encoded): free-riding on another learner's update.
    exclude_duplicates: bool = False

    def __post_init__(self) -> None:
        if self.reveal_window and not self.update_window:
            raise ConfigError("malformed plan: commit-reveal (reveal_window) needs an "
                              "update_window")
        if self.reveal_window and self.max_staleness:
            raise ConfigError("malformed plan: commit-reveal rounds are synchronous "
                              "(max_staleness must be 0)")

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no whitespace, so the same plan has the same CID."""
        body = asdict(self)
        defaults = Plan.__dataclass_fields__
        for name in _OPTIONAL:
            if body[name] == defaults[name].default:
                del body[name]
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
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        for name, value in known.items():
            check_field(name, value)
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"malformed plan: {exc}") from None

    @classmethod
    def load(cls, store: ContentStore, cid: CID | str | bytes | None) -> Plan:
        """The plan behind a CID (or the binary CID the chain records), fetched through
        `store` (see `fedchain.model.fetch`: never more than MAX_PLAN_BYTES of it)."""
        if not cid:
            raise ConfigError("the federation has no plan yet (no genesis on chain)")
        from .fetch import fetch_plan  # fetch builds plans: imported here, not at the top

        return fetch_plan(store, CID.from_bytes(cid) if isinstance(cid, bytes) else cid)

    def train_config(self, round: int) -> dict[str, Any]:
        return {**self.train, "round": round}

    def eval_config(self, round: int) -> dict[str, Any]:
        return {**self.evaluate, "round": round}
