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
from ..storage.cid import CID
from .codec import DEFAULT_MAX_BYTES, FORMAT, VERSION

if TYPE_CHECKING:
    from ..storage import ContentStore

PLAN_FORMAT = "fedchain-plan/1"
MAX_PLAN_BYTES = 1024 * 1024


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

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no whitespace, so the same plan has the same CID."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"the plan is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
            raise ConfigError(f"not a fedchain plan (format {PLAN_FORMAT!r} expected)")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise ConfigError(f"malformed plan: {exc}") from None

    @classmethod
    def load(cls, store: ContentStore, cid: CID | str | None) -> Plan:
        """The plan behind a CID, fetched through `store` (see `fedchain.model.fetch`)."""
        if not cid:
            raise ConfigError("the federation has no plan yet (no genesis on chain)")
        from .fetch import fetch_plan  # fetch builds plans: imported here, not at the top

        return fetch_plan(store, cid)

    def train_config(self, round: int) -> dict[str, Any]:
        return {**self.train, "round": round}

    def eval_config(self, round: int) -> dict[str, Any]:
        return {**self.evaluate, "round": round}
