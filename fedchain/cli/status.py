"""`fedchain status`: what a federation is doing, read from the chain alone.

The committee and its quorum, who voted what in the open round, the round's deadlines with
the time left on the chain's clock, recent disputes, the learners (with their `--id` on a dev
chain) and one line saying what the federation waits for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..eth.accounts import (
    DEV_CHAIN_IDS,
    DEV_NODE_ACCOUNTS,
    FIRST_LEARNER_INDEX,
    aggregator_index,
    dev_account,
)
from ..eth.contract import FedChainReader, RoundInfo
from ..eth.events import ChainCid, Disputed, GenesisVoted, LearnerAdded, Voted
from ..protocol.rules import is_selected

#: Rounds back from the open one whose disputes are listed.
DISPUTE_ROUNDS = 5
#: Learners listed one by one; past this many, the rest are counted.
MAX_LISTED = 50
#: Committee member ids looked up among the dev accounts (`fedchain aggregator --id K`).
MEMBER_IDS = 8


def short(cid: str, keep: int = 12) -> str:
    """A CID shortened for a table: its first `keep` characters and its last 4."""
    return cid if len(cid) <= keep + 5 else f"{cid[:keep]}…{cid[-4:]}"


def span(seconds: int) -> str:
    """A duration as people say it: 45 s, 3 min 5 s, 2 h 10 min."""
    seconds = abs(int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def until(deadline: int, now: int) -> str:
    """"in 45 s" or "passed 12 s ago" for a deadline on the chain's clock (past: now > it)."""
    return f"in {span(deadline - now)}" if now <= deadline else f"passed {span(now - deadline)} ago"


@dataclass
class Status:
    """A federation's state as `fedchain status` shows it."""

    round: int
    finished: bool
    now: int
    info: RoundInfo
    members: list[str]
    quorum: int
    learners: list[str]
    #: Learners registered at genesis: the learner count a round waits for without sampling.
    learner_count: int
    buffer_size: int
    sampling: bool
    #: Commit-reveal mode (the reveal deadline is the update deadline otherwise).
    commit_reveal: bool = False
    #: In the open round: learners who submitted (address → (CID text, examples)).
    submitted: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Learners expected to submit in the open round (the sampled ones, with sampling).
    expected: list[str] = field(default_factory=list)
    votes: list[Voted] = field(default_factory=list)
    genesis_votes: list[GenesisVoted] = field(default_factory=list)
    disputes: list[Disputed] = field(default_factory=list)
    #: Address → "--id K" of the dev accounts the CLI's ids map to (dev chains only).
    ids: dict[str, str] = field(default_factory=dict)
    #: Address → the learner's 1-based index on chain.
    indices: dict[str, int] = field(default_factory=dict)

    def best_votes(self) -> int:
        """The most votes any one outcome has in the open round."""
        counts = Counter(v.digest for v in self.votes)
        return max(counts.values(), default=0)

    def waiting_for(self) -> str:
        """What the federation waits for, in one line."""
        if self.finished:
            return f"nothing: the federation finished after round {self.round - 1}"
        if self.round == 0:
            voted = len({v.member for v in self.genesis_votes})
            return (f"genesis: {voted} of {self.quorum} needed votes of the committee "
                    f"({len(self.members)} members) for the genesis model and plan")
        info, now = self.info, self.now
        if info.vote_deadline and now > info.vote_deadline:
            return (f"anyone to close round {self.round}: its vote deadline passed "
                    f"{span(now - info.vote_deadline)} ago without a quorum (closeRound; the "
                    "previous model carries over)")
        votes = (f"votes: {self.best_votes()} of quorum {self.quorum} for one outcome "
                 f"({len({v.member for v in self.votes})} of {len(self.members)} members voted)")
        if info.vote_deadline:
            votes += f", vote deadline {until(info.vote_deadline, now)}"
        if info.frozen or self.votes:
            return votes
        missing = [a for a in self.expected if a not in self.submitted]
        if self.commit_reveal and now <= info.update_deadline:
            return (f"commitments from {len(missing)} learners (commit deadline "
                    f"{until(info.update_deadline, now)})")
        if self.commit_reveal and now <= info.reveal_deadline:
            return (f"reveals from {len(missing)} learners (reveal deadline "
                    f"{until(info.reveal_deadline, now)})")
        if missing and (not info.update_deadline or now <= info.update_deadline):
            needed = self.buffer_size or len(self.expected)
            line = (f"submissions from {len(missing)} learners ({len(self.submitted)} of "
                    f"{len(self.expected)} in")
            if self.buffer_size:
                line += f", a buffer of {needed} closes the round"
            if info.update_deadline:
                line += f"; update deadline {until(info.update_deadline, now)}"
            return line + ")"
        return votes

    def label(self, address: str) -> str:
        name = self.ids.get(address)
        return f"{address} ({name})" if name else address


def read_status(contract: FedChainReader) -> Status:
    """Everything `fedchain status` shows, read from `contract`."""
    round = contract.current_round()
    finished = contract.finished()
    members, quorum = contract.committee()
    params = contract.params()
    status = Status(
        round=round, finished=finished, now=contract.block_time(),
        info=contract.round_info(), members=members, quorum=quorum,
        learners=contract.learners(), learner_count=contract.learner_count(),
        buffer_size=params.buffer_size, sampling=params.sampling,
        commit_reveal=params.reveal_window != 0,
    )
    status.indices = {e.learner: e.index for e in contract.events("LearnerAdded")
                      if isinstance(e, LearnerAdded)}
    if contract.chain.chain_id in DEV_CHAIN_IDS:
        status.ids = _dev_ids(len(status.learners))
    if round == 0:
        status.genesis_votes = [e for e in contract.events("GenesisVoted")
                                if isinstance(e, GenesisVoted)]
        return status
    if not finished:
        for u in contract.updates(round):
            status.submitted[u.learner] = (u.model_cid.text, u.num_examples)
        if status.sampling:  # the seed once (computed from the opening block if not drawn)
            seed = contract.round_seed()
            status.expected = [a for a in status.learners
                               if is_selected(seed, status.indices.get(a, 0), params.select_ppm)]
        else:
            status.expected = list(status.learners)
        status.votes = [e for e in contract.events("Voted", round=round)
                        if isinstance(e, Voted)]
    status.disputes = [e for e in contract.events("Disputed")
                       if isinstance(e, Disputed) and e.round > round - 1 - DISPUTE_ROUNDS]
    return status


def _dev_ids(learners: int) -> dict[str, str]:
    """The dev accounts `fedchain learner --id K` and `fedchain aggregator --id K` use."""
    ids: dict[str, str] = {dev_account(aggregator_index(k)).address: f"aggregator --id {k}"
           for k in range(MEMBER_IDS)}
    top = min(DEV_NODE_ACCOUNTS - MEMBER_IDS, FIRST_LEARNER_INDEX + learners + MEMBER_IDS)
    for index in range(FIRST_LEARNER_INDEX, top):
        ids.setdefault(dev_account(index).address, f"learner --id {index - FIRST_LEARNER_INDEX}")
    return ids


def print_status(contract: FedChainReader, status: Status, console: Any) -> None:
    """Prints `status` (the state line, the committee, deadlines, votes, disputes, learners
    and what the federation waits for)."""
    from rich.table import Table

    s = status
    chain = contract.chain
    console.print(f"FedChain {contract.address} on chain {chain.chain_id} ({chain.url})")
    console.print(f"owner {contract.owner()}")
    console.print(f"committee: {len(s.members)} member{'s' * (len(s.members) != 1)}, quorum "
                  f"{s.quorum}")
    voted = {v.member: v for v in s.votes}
    for member in s.members:
        vote = voted.get(member)
        if vote is None:
            what = "" if s.round == 0 or s.finished else "  not voted yet"
        elif not vote.model_cid.raw:
            what = "  voted to finish"
        else:
            what = (f"  voted {short(vote.model_cid.text)} ({len(vote.included)} "
                    "included)")
        console.print(f"  {s.label(member)}{what}")
    if s.finished:
        state = f"finished after round {s.round - 1}"
    elif s.round == 0:
        state = "waiting for genesis"
    else:
        state = f"round {s.round} {'frozen (voting)' if s.info.frozen else 'open'}"
    console.print(f"state: {state}; {len(s.learners)} learners")
    if s.round > 0:
        label = "final" if s.finished else "latest"
        console.print(f"{label} global model (round {s.round - 1}): "
                      f"{ChainCid(contract.global_model(s.round - 1)).text}")
    if s.round > 0 and not s.finished:
        info = s.info
        deadlines = [(name, at) for name, at in (
            ("updates", info.update_deadline),
            ("reveals", info.reveal_deadline if s.commit_reveal else 0),
            ("votes", info.vote_deadline)) if at]
        when = datetime.fromtimestamp(s.now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        clock = f"chain time {when}, round opened {span(s.now - info.opened_at)} ago"
        if deadlines:
            console.print(f"deadlines ({clock}): " + "; ".join(
                f"{name} {until(at, s.now)}" for name, at in deadlines))
        else:
            console.print(f"deadlines: none ({clock})")
    if s.disputes:
        console.print(f"disputes (the last {DISPUTE_ROUNDS} rounds):")
        for d in s.disputes:
            console.print(f"  round {d.round}: {s.label(d.learner)} computed "
                          f"{short(d.computed_cid.text)}")
    open_round = s.round > 0 and not s.finished
    table = Table(title=f"learners in round {s.round}" if open_round else "learners")
    for column in ("index", "id", "address", *(("submitted",) if open_round else ())):
        table.add_column(column)
    expected = set(s.expected)
    for address in s.learners[:MAX_LISTED]:
        name = s.ids.get(address, "-").removeprefix("learner ")
        row = [str(s.indices.get(address, "?")), name, address]
        if open_round:
            if address in s.submitted:
                cid, examples = s.submitted[address]
                row.append(f"{short(cid)} ({examples} examples)")
            elif address not in expected:
                row.append("not sampled")
            else:
                closed = s.info.frozen or (s.info.update_deadline
                                           and s.now > s.info.update_deadline)
                row.append("missed" if closed else "not yet")
        table.add_row(*row)
    if len(s.learners) > MAX_LISTED:
        table.caption = f"and {len(s.learners) - MAX_LISTED} more"
    if s.learners:
        console.print(table)
    console.print(f"waiting for: {s.waiting_for()}")
