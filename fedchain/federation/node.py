"""LearnerNode: runs one Learner against a federation (train each round, evaluate each model)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping

from ..errors import FedChainError
from ..eth.contract import FedChain, require_signer
from ..eth.reverts import (
    AlreadyReported,
    AlreadySubmitted,
    FederationFinished,
    NoGlobalModel,
    WrongRound,
)
from ..model.codec import ModelSpec, Weights, decode, encode, spec
from ..model.plan import Plan
from ..storage import ContentStore
from ..storage.cid import to_cid
from .learner import Learner
from .outage import ride_out

log = logging.getLogger("fedchain.learner")


#: The contract's limit on a metrics report.
MAX_METRICS_BYTES = 1024


def metrics_json(loss: float, metrics: Mapping[str, float]) -> bytes:
    """The compact, key-sorted JSON reported on chain, cut to the contract's 1 KiB limit.

    When the metrics do not fit, the loss is kept and as many metrics as fit, in key order.
    """
    body = {"loss": round(float(loss), 6)}
    for k, v in sorted(metrics.items()):
        candidate = {**body, k: round(float(v), 6)}
        if len(_compact(candidate)) > MAX_METRICS_BYTES:
            log.warning("evaluation metric %r and later ones dropped: the report is limited "
                        "to %d bytes on chain", k, MAX_METRICS_BYTES)
            break
        body = candidate
    return _compact(body)


def _compact(body: Mapping[str, float]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class LearnerNode:
    """Runs one learner against a federation: train each open round, evaluate each global model.

    Stateless across restarts: what was already submitted or reported is read from the chain,
    so a restarted learner never submits twice. A learner that joins late trains on the
    current global model.
    """

    def __init__(
        self,
        learner: Learner,
        contract: FedChain,
        store: ContentStore,
        *,
        name: str | None = None,
        poll_interval: float = 0.2,
        evaluate: bool = True,
        stop: threading.Event | None = None,
        max_outage: float = 600.0,
    ) -> None:
        require_signer(contract, "the learner")
        self.max_outage = max_outage
        self.learner = learner
        self.contract = contract
        self.store = store
        self.address = contract.account.address
        self.name = name or self.address[:10]
        self.poll = poll_interval
        self.evaluate_models = evaluate
        self.stop_event = stop or threading.Event()
        self._plan: Plan | None = None
        self._spec: ModelSpec | None = None
        self.submitted: list[int] = []
        self.reported: list[int] = []
        self._handled_round = -1

    # -- helpers -----------------------------------------------------------------------

    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = Plan.load(self.store, self.contract.plan())
        return self._plan

    def global_weights(self, round: int) -> Weights:
        """The verified, validated global model of `round` (0 = genesis)."""
        raw = self.contract.global_model(round)
        if not raw:
            raise NoGlobalModel(round)
        limit = self.plan().max_model_bytes
        data = self.store.get(to_cid(raw), max_bytes=limit)
        weights = decode(data, reference=self._spec, max_bytes=limit)
        if self._spec is None:
            self._spec = spec(weights)
        return weights

    # -- steps -------------------------------------------------------------------------

    def train_round(self, round: int) -> bool:
        """Trains on the global model before `round` and submits; False if the round moved on."""
        weights = self.global_weights(round - 1)
        result = self.learner.train(weights, self.plan().train_config(round))
        if self._spec is not None:
            self._spec.check(spec(result.weights))
        cid = self.store.put(encode(result.weights))
        try:
            self.contract.submit_update(round, cid, result.num_examples)
        except (WrongRound, FederationFinished) as exc:
            log.warning("%s: round %d closed before the update landed (%s)", self.name, round, exc)
            return False
        except AlreadySubmitted:
            return False
        self.submitted.append(round)
        train_info = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info(
            "[ROUND %d] %s submitted %s (%d examples) %s",
            round, self.name, cid, result.num_examples, train_info,
        )
        return True

    def evaluate_round(self, round: int) -> None:
        """Evaluates `round`'s global model on local test data and reports it on chain."""
        weights = self.global_weights(round)
        result = self.learner.evaluate(weights, self.plan().eval_config(round))
        try:
            self.contract.report_evaluation(
                round, result.num_examples, metrics_json(result.loss, result.metrics)
            )
        except AlreadyReported:
            return
        self.reported.append(round)
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info("[ROUND %d] %s evaluated global model: loss=%.4f %s", round, self.name,
                 result.loss, shown)

    def step(self) -> bool:
        """Does whatever is due now; returns False when the federation has finished."""
        c = self.contract
        round = c.current_round()
        if round == 0:
            return True
        if round == self._handled_round:
            # Nothing new to do until the round moves on or the federation finishes.
            return not c.finished()
        last_published = round - 1
        if (
            self.evaluate_models
            and last_published >= 1
            and not c.has_reported(last_published, self.address)
        ):
            self.evaluate_round(last_published)
        if c.finished():
            return False
        # Past the plan's last round only finish() is due: training would be wasted.
        if round <= self.plan().rounds and not c.has_submitted(round, self.address):
            self.train_round(round)
        self._handled_round = round
        return True

    def run(self, timeout: float | None = None) -> None:
        """Loops until the federation finishes (or `timeout` seconds, or stop is set)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if not ride_out(self.step, what=self.name, log=log, stop=self.stop_event,
                            max_outage=self.max_outage):
                log.info("%s: federation finished", self.name)
                return
            if deadline is not None and time.monotonic() > deadline:
                raise FedChainError(f"{self.name}: federation did not finish within {timeout}s")
            self.stop_event.wait(self.poll)
