"""The FedChain contract through its binding, on the embedded chain, Anvil and Ganache.

Every test gets a fresh deployment (`federation`): owner = dev account 0, aggregator = dev
account 1, learners = dev accounts 2..4. Each revert is checked as the typed fedchain
exception with its decoded fields, and with the contract's state left as it was.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eth_account import Account
from fixtures.chains import Federation, dev

from fedchain.errors import (
    AlreadyLearner,
    AlreadyReported,
    AlreadySubmitted,
    BitmapLength,
    CidTooLong,
    ConfigError,
    ContractRevert,
    EmptyCid,
    FedChainError,
    FederationFinished,
    GenesisAlreadySet,
    MetricsTooLarge,
    NoExamples,
    NoGlobalModel,
    NotAggregator,
    NotIncludable,
    NotLearner,
    NotOwner,
    NotPendingOwner,
    NotStarted,
    SubmissionsChanged,
    TooManyExamples,
    TransactionFailed,
    UnknownLearner,
    WrongRound,
    ZeroAddress,
)
from fedchain.eth import events as ev
from fedchain.eth.chain import Chain
from fedchain.eth.contract import FedChain
from fedchain.eth.events import ChainCid
from fedchain.protocol.rules import learner_key

ZERO = "0x" + "00" * 20


def _text(raw: bytes) -> str:
    return ChainCid(raw).text


def _digest(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def cid_v0(tag: str) -> bytes:
    """A CIDv0: a bare sha2-256 multihash, 34 bytes."""
    return b"\x12\x20" + _digest(tag)


def cid_v1_raw(tag: str) -> bytes:
    """A CIDv1 with the raw codec, 36 bytes (what fedchain's stores produce)."""
    return b"\x01\x55\x12\x20" + _digest(tag)


def cid_v1_pb(tag: str) -> bytes:
    """A CIDv1 with the dag-pb codec, 36 bytes."""
    return b"\x01\x70\x12\x20" + _digest(tag)


GENESIS = cid_v1_raw("genesis")
PLAN = cid_v1_raw("plan")


def addr(fc: FedChain) -> str:
    assert fc.account is not None
    return fc.account.address


def ascending(*bindings: FedChain) -> list[str]:
    return sorted((addr(b) for b in bindings), key=learner_key)


#: Rounds the tests' federations run: enough that none finishes by closing its last round.
ROUNDS = 100


def start(fed: Federation) -> None:
    fed.aggregator.set_genesis(GENESIS, PLAN, ROUNDS)


def snapshot(fed: Federation) -> dict[str, Any]:
    """Everything a revert must leave untouched, including the event log."""
    fc = fed.owner
    current = fc.current_round()
    return {
        "round": current,
        "owner": fc.owner(),
        "pending owner": fc.pending_owner(),
        "finished": fc.finished(),
        "learners": fc.learner_count(),
        "aggregator": fc.aggregator(),
        "genesis": fc.genesis(),
        "plan": fc.plan(),
        "globals": [fc.global_model(r) for r in range(current + 1)],
        "events": list(fc.events(from_block=fed.block)),
    }


@contextmanager
def unchanged(fed: Federation) -> Iterator[None]:
    """The block inside leaves the contract's state and event log as they were."""
    before = snapshot(fed)
    yield
    assert snapshot(fed) == before


def reverts(
    exc_type: type[ContractRevert], fields: dict[str, Any], call: Callable[[], Any]
) -> None:
    """`call` raises `exc_type` carrying these decoded fields."""
    with pytest.raises(exc_type) as err:
        call()
    assert err.value.fields == fields


# --- access control ------------------------------------------------------------------------


def test_only_the_owner_manages_learners_and_the_aggregator(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    caller = {"caller": addr(agg)}
    with unchanged(fed):
        reverts(NotOwner, caller, lambda: agg.add_learners([addr(fed.stranger)]))
        reverts(NotOwner, caller, lambda: agg.remove_learner(addr(fed.learners[0])))
        reverts(NotOwner, caller, lambda: agg.set_aggregator(addr(fed.stranger)))


def test_only_the_aggregator_sets_genesis_publishes_and_finishes(federation: Federation) -> None:
    fed, owner, learner = federation, federation.owner, federation.learners[0]
    with unchanged(fed):
        reverts(NotAggregator, {"caller": addr(owner)},
                lambda: owner.set_genesis(GENESIS, PLAN, ROUNDS))
    start(fed)
    learner.submit_update(1, cid_v1_raw("u"), 10)
    included = [addr(learner)]
    with unchanged(fed):
        reverts(
            NotAggregator,
            {"caller": addr(learner)},
            lambda: learner.publish_global(1, cid_v1_raw("g"), included),
        )
        reverts(NotAggregator, {"caller": addr(owner)}, owner.finish)


def test_owner_hands_the_aggregator_role_to_another_account(federation: Federation) -> None:
    fed = federation
    old, new = fed.aggregator, fed.stranger
    fed.owner.set_aggregator(addr(new))
    assert fed.owner.aggregator() == addr(new)
    with unchanged(fed):
        reverts(NotAggregator, {"caller": addr(old)},
                lambda: old.set_genesis(GENESIS, PLAN, ROUNDS))
    new.set_genesis(GENESIS, PLAN, ROUNDS)
    assert new.current_round() == 1
    changes = list(fed.owner.events("CommitteeChanged", from_block=fed.block))
    assert [(e.epoch, e.members, e.quorum) for e in changes] == [  # type: ignore[attr-defined]
        (1, (addr(old),), 1),
        (2, (addr(new),), 1),
    ]
    assert fed.owner.committee() == ([addr(new)], 1)
    assert fed.owner.is_aggregator(addr(new)) and not fed.owner.is_aggregator(addr(old))


# --- ownership -----------------------------------------------------------------------------


def test_ownership_moves_only_when_the_new_owner_accepts(federation: Federation) -> None:
    fed, owner, heir = federation, federation.owner, federation.stranger
    assert owner.pending_owner() is None
    owner.transfer_ownership(addr(heir))
    # Offered, not moved: the old owner stays in charge until the heir accepts.
    assert owner.pending_owner() == addr(heir) and owner.owner() == addr(owner)
    with unchanged(fed):
        reverts(NotOwner, {"caller": addr(heir)}, lambda: heir.set_aggregator(addr(heir)))
    owner.add_learners([dev(fed.chain, 6).address])
    heir.accept_ownership()
    assert owner.owner() == addr(heir) and owner.pending_owner() is None
    with unchanged(fed):
        reverts(NotOwner, {"caller": addr(owner)}, lambda: owner.remove_learner(addr(heir)))
        reverts(NotPendingOwner, {"caller": addr(heir)}, heir.accept_ownership)
    heir.remove_learner(dev(fed.chain, 6).address)
    events = list(owner.events("OwnershipTransferStarted", "OwnershipTransferred",
                               from_block=fed.block))
    assert [type(e) for e in events] == [ev.OwnershipTransferStarted, ev.OwnershipTransferred]
    assert [(e.previous_owner, e.new_owner) for e in events] == [  # type: ignore[attr-defined]
        (addr(owner), addr(heir)),
        (addr(owner), addr(heir)),
    ]


def test_only_the_owner_offers_and_only_the_pending_owner_accepts(
    federation: Federation,
) -> None:
    fed, owner, agg, heir = federation, federation.owner, federation.aggregator, federation.stranger
    with unchanged(fed):
        reverts(NotOwner, {"caller": addr(heir)}, lambda: heir.transfer_ownership(addr(heir)))
        reverts(NotPendingOwner, {"caller": addr(heir)}, heir.accept_ownership)
    owner.transfer_ownership(addr(heir))
    with unchanged(fed):
        reverts(NotPendingOwner, {"caller": addr(agg)}, agg.accept_ownership)
        reverts(NotPendingOwner, {"caller": addr(owner)}, owner.accept_ownership)


def test_a_new_offer_replaces_the_pending_one_and_none_withdraws_it(
    federation: Federation,
) -> None:
    fed, owner, agg, heir = federation, federation.owner, federation.aggregator, federation.stranger
    owner.transfer_ownership(addr(heir))
    owner.transfer_ownership(addr(agg))
    assert owner.pending_owner() == addr(agg)
    with unchanged(fed):
        reverts(NotPendingOwner, {"caller": addr(heir)}, heir.accept_ownership)
    owner.transfer_ownership(None)
    assert owner.pending_owner() is None
    with unchanged(fed):
        reverts(NotPendingOwner, {"caller": addr(agg)}, agg.accept_ownership)
    offers = list(owner.events("OwnershipTransferStarted", from_block=fed.block))
    assert [e.new_owner for e in offers] == [addr(heir), addr(agg), ZERO]  # type: ignore[attr-defined]
    assert owner.owner() == addr(owner)


def test_an_unregistered_account_can_neither_submit_nor_report(federation: Federation) -> None:
    fed, stranger, agg = federation, federation.stranger, federation.aggregator
    start(fed)
    caller = {"caller": addr(stranger)}
    with unchanged(fed):
        reverts(NotLearner, caller, lambda: stranger.submit_update(1, cid_v1_raw("u"), 10))
        reverts(NotLearner, caller, lambda: stranger.report_evaluation(0, 10, "{}"))
        reverts(NotLearner, {"caller": addr(agg)}, lambda: agg.submit_update(1, cid_v1_raw("u"), 1))


def test_the_zero_address_is_refused_as_learner_and_aggregator(federation: Federation) -> None:
    fed = federation
    with unchanged(fed):
        reverts(ZeroAddress, {}, lambda: fed.owner.add_learners([ZERO]))
        reverts(ZeroAddress, {}, lambda: fed.owner.set_aggregator(ZERO))


def test_deploying_with_the_zero_address_as_aggregator_reverts(chain: Chain) -> None:
    with pytest.raises(ZeroAddress):
        FedChain.deploy(chain, dev(chain, 0), ZERO)
    with pytest.raises(ZeroAddress):
        FedChain.deploy(chain, dev(chain, 0), [dev(chain, 1).address, ZERO, dev(chain, 2).address])


def test_adding_a_registered_learner_reverts_the_whole_batch(federation: Federation) -> None:
    fed = federation
    existing, new = addr(fed.learners[1]), addr(fed.stranger)
    with unchanged(fed):
        reverts(
            AlreadyLearner, {"learner": existing}, lambda: fed.owner.add_learners([new, existing])
        )
    assert not fed.owner.is_learner(new)


def test_removing_an_account_that_is_not_a_learner_reverts(federation: Federation) -> None:
    fed, owner = federation, federation.owner
    gone, stranger = addr(fed.learners[0]), addr(fed.stranger)
    owner.remove_learner(gone)
    with unchanged(fed):
        reverts(UnknownLearner, {"learner": gone}, lambda: owner.remove_learner(gone))
        reverts(UnknownLearner, {"learner": stranger}, lambda: owner.remove_learner(stranger))


# --- rounds --------------------------------------------------------------------------------


def test_nothing_happens_before_genesis(federation: Federation) -> None:
    fed, agg, learner = federation, federation.aggregator, federation.learners[0]
    assert (agg.current_round(), agg.genesis(), agg.plan(), agg.global_model(0)) == (
        0,
        b"",
        b"",
        b"",
    )
    with unchanged(fed):
        reverts(NotStarted, {}, lambda: learner.submit_update(0, cid_v1_raw("u"), 10))
        reverts(NotStarted, {}, lambda: agg.publish_global(0, cid_v1_raw("g"), []))
        reverts(NotStarted, {}, lambda: agg.close_round(0))
        reverts(NotStarted, {}, agg.finish)
        reverts(NoGlobalModel, {"round": 0}, lambda: learner.report_evaluation(0, 10, "{}"))


def test_genesis_can_be_set_only_once(federation: Federation) -> None:
    fed = federation
    start(fed)
    with unchanged(fed):
        reverts(
            GenesisAlreadySet,
            {},
            lambda: fed.aggregator.set_genesis(cid_v1_raw("other"), cid_v1_raw("other plan"), 5),
        )
    assert (fed.owner.genesis(), fed.owner.plan()) == (GENESIS, PLAN)


def test_rounds_advance_from_genesis_with_each_published_model(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    start(fed)
    assert agg.current_round() == 1
    assert agg.global_model(0) == agg.genesis() == GENESIS
    assert agg.plan() == PLAN
    for learner in fed.learners[:2]:
        learner.submit_update(1, cid_v1_raw(f"update {addr(learner)}"), 7)
    agg.publish_global(1, cid_v1_raw("global 1"), [addr(b) for b in fed.learners[:2]])
    assert agg.current_round() == 2
    assert agg.global_model(1) == cid_v1_raw("global 1")
    assert agg.global_model(2) == b""
    # A round may close without usable updates; the next one opens all the same.
    agg.publish_global(2, cid_v1_raw("global 1"), [])
    assert agg.current_round() == 3
    assert not agg.finished()


def test_an_update_for_a_round_that_is_not_open_reverts(federation: Federation) -> None:
    fed, agg, learner = federation, federation.aggregator, federation.learners[0]
    start(fed)
    cid = cid_v1_raw("u")
    with unchanged(fed):
        reverts(WrongRound, {"given": 3, "open": 1}, lambda: learner.submit_update(3, cid, 1))
        reverts(WrongRound, {"given": 0, "open": 1}, lambda: learner.submit_update(0, cid, 1))
        reverts(WrongRound, {"given": 2, "open": 1}, lambda: agg.publish_global(2, cid, []))
    agg.publish_global(1, cid, [])
    with unchanged(fed):
        reverts(WrongRound, {"given": 1, "open": 2}, lambda: learner.submit_update(1, cid, 1))


def test_a_second_update_in_the_same_round_reverts(federation: Federation) -> None:
    fed, learner = federation, federation.learners[0]
    start(fed)
    learner.submit_update(1, cid_v1_raw("first"), 10)
    with unchanged(fed):
        reverts(
            AlreadySubmitted,
            {"round": 1, "learner": addr(learner)},
            lambda: learner.submit_update(1, cid_v1_raw("second"), 10),
        )
    assert [u.model_cid.raw for u in learner.updates(1, from_block=fed.block)] == [
        cid_v1_raw("first")
    ]


def test_publishing_an_update_that_was_not_submitted_reverts(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    a, b = fed.learners[0], fed.learners[1]
    start(fed)
    a.submit_update(1, cid_v1_raw("a"), 10)
    g = cid_v1_raw("g")
    bit_b = 1 << (agg.learner_index(addr(b)) - 1)
    with unchanged(fed):
        reverts(NotIncludable, {"round": 1, "word": 0, "bits": bit_b},
                lambda: agg.publish_global(1, g, [addr(a), addr(b)]))
        with pytest.raises(ConfigError, match="never registered"):
            agg.publish_global(1, g, [addr(fed.stranger)])
    agg.publish_global(1, g, [addr(a)])
    # An update counts only for the round it was submitted in.
    bit_a = 1 << (agg.learner_index(addr(a)) - 1)
    with unchanged(fed):
        reverts(NotIncludable, {"round": 2, "word": 0, "bits": bit_a},
                lambda: agg.publish_global(2, g, [addr(a)]))


def test_a_vote_must_account_for_every_submission_of_the_round(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    a, b = fed.learners[0], fed.learners[1]
    start(fed)
    a.submit_update(1, cid_v1_raw("a"), 10)
    seen = agg.submitted_bits(1)
    b.submit_update(1, cid_v1_raw("b"), 10)  # lands after the aggregator read the round
    g = cid_v1_raw("g")
    with unchanged(fed):
        reverts(SubmissionsChanged, {"round": 1},
                lambda: agg.publish_global(1, g, [addr(a)], seen=seen))
        # Bitmaps have one word per 256 learner indices handed out: no more, no fewer.
        reverts(BitmapLength, {"given": 2, "expected": 1},
                lambda: agg._transact("publishGlobal", 1, g, b"", [0, 0], [0, 0]))
    agg.publish_global(1, g, [addr(a)])
    [published] = agg.events("GlobalModelPublished", from_block=fed.block)
    assert isinstance(published, ev.GlobalModelPublished)
    assert published.included == (addr(a),)


def test_a_member_reports_only_the_open_rounds_submissions_unavailable(
    federation: Federation,
) -> None:
    fed, agg = federation, federation.aggregator
    a, b = fed.learners[0], fed.learners[1]
    start(fed)
    a.submit_update(1, cid_v1_raw("a"), 10)
    bit_b = 1 << (agg.learner_index(addr(b)) - 1)
    with unchanged(fed):
        # Only a committee member, only the open round, only what was submitted in it.
        with pytest.raises(NotAggregator):
            fed.stranger.report_unavailable(1, [addr(a)])
        with pytest.raises(NotAggregator):
            a.report_unavailable(1, [addr(a)])
        reverts(WrongRound, {"given": 2, "open": 1},
                lambda: agg.report_unavailable(2, [addr(a)]))
        reverts(NotIncludable, {"round": 1, "word": 0, "bits": bit_b},
                lambda: agg.report_unavailable(1, [addr(b)]))
        reverts(BitmapLength, {"given": 2, "expected": 1},
                lambda: agg._transact("reportUnavailable", 1, [0, 0]))
    agg.report_unavailable(1, [addr(a)])
    [report] = agg.events("UnavailableReported", from_block=fed.block)
    assert isinstance(report, ev.UnavailableReported)
    assert (report.round, report.member, report.learners) == (1, addr(agg), (addr(a),))
    # The report leaves the round as it was: the vote still accounts for the submission.
    agg.publish_global(1, cid_v1_raw("g"), [])
    with pytest.raises(WrongRound):
        agg.report_unavailable(1, [addr(a)])


def test_empty_or_overlong_cids_and_updates_without_examples_revert(
    federation: Federation,
) -> None:
    fed, agg, learner = federation, federation.aggregator, federation.learners[0]
    too_long = {"length": 64, "max": 63}
    with unchanged(fed):
        reverts(EmptyCid, {}, lambda: agg.set_genesis(b"", PLAN, ROUNDS))
        reverts(EmptyCid, {}, lambda: agg.set_genesis(GENESIS, b"", ROUNDS))
        reverts(CidTooLong, too_long, lambda: agg.set_genesis(b"\x01" * 64, PLAN, ROUNDS))
        reverts(CidTooLong, too_long, lambda: agg.set_genesis(GENESIS, b"\x01" * 64, ROUNDS))
    start(fed)
    with unchanged(fed):
        reverts(EmptyCid, {}, lambda: learner.submit_update(1, b"", 10))
        reverts(CidTooLong, too_long, lambda: learner.submit_update(1, b"\x01" * 64, 10))
        reverts(NoExamples, {}, lambda: learner.submit_update(1, cid_v1_raw("u"), 0))
        reverts(TooManyExamples, {"given": 2**40 + 1, "max": 2**40},
                lambda: learner.submit_update(1, cid_v1_raw("u"), 2**40 + 1))
        reverts(EmptyCid, {}, lambda: agg.publish_global(1, b"", []))
        reverts(CidTooLong, too_long, lambda: agg.publish_global(1, b"\x01" * 64, []))


def test_a_cid_of_the_maximum_length_round_trips(federation: Federation) -> None:
    agg = federation.aggregator
    longest = bytes(range(1, 64))
    agg.set_genesis(longest, longest, ROUNDS)
    agg.publish_global(1, longest[::-1], [])
    assert (agg.genesis(), agg.plan(), agg.global_model(1)) == (longest, longest, longest[::-1])


def test_evaluations_need_a_trained_model_and_come_once(federation: Federation) -> None:
    fed, a, b = federation, federation.learners[0], federation.learners[1]
    start(fed)
    with unchanged(fed):
        reverts(NoGlobalModel, {"round": 1}, lambda: a.report_evaluation(1, 10, "{}"))
        # Round 0 is the genesis model: nothing was trained, so there is nothing to report.
        reverts(NoGlobalModel, {"round": 0}, lambda: a.report_evaluation(0, 10, "{}"))
    fed.aggregator.publish_global(1, cid_v1_raw("g1"), [])
    with unchanged(fed):
        reverts(NoExamples, {}, lambda: a.report_evaluation(1, 0, "{}"))
        reverts(TooManyExamples, {"given": 2**255, "max": 2**40},
                lambda: a.report_evaluation(1, 2**255, "{}"))
    a.report_evaluation(1, 10, '{"accuracy": 0.1}')
    with unchanged(fed):
        again = {"round": 1, "learner": addr(a)}
        reverts(AlreadyReported, again, lambda: a.report_evaluation(1, 10, "{}"))
    b.report_evaluation(1, 10, '{"accuracy": 0.2}')
    assert a.has_reported(1, addr(b))


def test_metrics_are_limited_to_one_kibibyte(federation: Federation) -> None:
    fed, a, b = federation, federation.learners[0], federation.learners[1]
    start(fed)
    fed.aggregator.publish_global(1, cid_v1_raw("g1"), [])
    with unchanged(fed):
        too_big = {"size": 1025, "max": 1024}
        reverts(MetricsTooLarge, too_big, lambda: a.report_evaluation(1, 10, b"x" * 1025))
    b.report_evaluation(1, 10, b"x" * 1024)
    assert b.has_reported(1, addr(b)) and not b.has_reported(1, addr(a))


def test_finish_closes_rounds_but_keeps_evaluations_open(federation: Federation) -> None:
    fed, agg, learner = federation, federation.aggregator, federation.learners[0]
    start(fed)
    learner.submit_update(1, cid_v1_raw("u"), 10)
    agg.publish_global(1, cid_v1_raw("g1"), [addr(learner)])
    agg.finish()
    assert agg.finished() and agg.current_round() == 2
    [done] = agg.events("Finished", from_block=fed.block)
    assert isinstance(done, ev.Finished) and done.last_round == 1
    cid = cid_v1_raw("late")
    with unchanged(fed):
        reverts(FederationFinished, {}, lambda: learner.submit_update(2, cid, 10))
        reverts(FederationFinished, {}, lambda: agg.publish_global(2, cid, []))
        reverts(FederationFinished, {}, agg.finish)
        reverts(GenesisAlreadySet, {}, lambda: agg.set_genesis(cid, cid, ROUNDS))
        reverts(NoGlobalModel, {"round": 2}, lambda: learner.report_evaluation(2, 10, "{}"))
    learner.report_evaluation(1, 10, '{"accuracy": 0.9}')
    assert learner.has_reported(1, addr(learner))


def test_finishing_right_after_genesis_reports_round_zero(federation: Federation) -> None:
    fed = federation
    start(fed)
    fed.aggregator.finish()
    [done] = fed.owner.events("Finished", from_block=fed.block)
    assert isinstance(done, ev.Finished) and done.last_round == 0


# --- membership ----------------------------------------------------------------------------


def test_a_removed_learner_cannot_submit_and_a_readded_one_can(federation: Federation) -> None:
    fed, owner, agg = federation, federation.owner, federation.aggregator
    learner = fed.learners[0]
    start(fed)
    learner.submit_update(1, cid_v1_raw("before removal"), 10)
    owner.remove_learner(addr(learner))
    assert not owner.is_learner(addr(learner)) and owner.learner_count() == 2
    # Its update stays on record, but can no longer be averaged into the open round.
    assert owner.has_submitted(1, addr(learner))
    bit = 1 << (agg.learner_index(addr(learner)) - 1)
    with unchanged(fed):
        reverts(NotIncludable, {"round": 1, "word": 0, "bits": bit},
                lambda: agg.publish_global(1, cid_v1_raw("g1"), [addr(learner)]))
    agg.publish_global(1, cid_v1_raw("g1"), [])
    with unchanged(fed):
        who = {"caller": addr(learner)}
        reverts(NotLearner, who, lambda: learner.submit_update(2, cid_v1_raw("u"), 10))
    owner.add_learners([addr(learner)])
    assert owner.is_learner(addr(learner)) and owner.learner_count() == 3
    learner.submit_update(2, cid_v1_raw("after re-adding"), 10)
    with unchanged(fed):
        twice = {"round": 2, "learner": addr(learner)}
        reverts(AlreadySubmitted, twice, lambda: learner.submit_update(2, cid_v1_raw("x"), 1))
    agg.publish_global(2, cid_v1_raw("g2"), [addr(learner)])
    assert agg.current_round() == 3


def test_learner_count_and_list_follow_membership_changes(federation: Federation) -> None:
    fed, owner = federation, federation.owner
    newcomers = [dev(fed.chain, 6).address, dev(fed.chain, 7).address]
    owner.add_learners(newcomers)
    assert owner.learner_count() == 5
    owner.remove_learner(addr(fed.learners[1]))
    assert owner.learner_count() == 4
    expected = [addr(fed.learners[0]), addr(fed.learners[2]), *newcomers]
    assert sorted(owner.learners()) == sorted(expected)


def test_submission_and_report_flags_are_per_round_and_learner(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    a, b = fed.learners[0], fed.learners[1]
    start(fed)
    a.submit_update(1, cid_v1_raw("a1"), 10)
    assert a.has_submitted(1, addr(a)) and not a.has_submitted(1, addr(b))
    assert not a.has_submitted(2, addr(a)) and not a.has_submitted(1, addr(fed.stranger))
    agg.publish_global(1, cid_v1_raw("g1"), [addr(a)])
    b.report_evaluation(1, 5, "{}")
    assert b.has_reported(1, addr(b)) and not b.has_reported(2, addr(b))
    assert not b.has_reported(1, addr(a)) and not b.has_reported(1, addr(fed.stranger))


# --- events and CIDs -----------------------------------------------------------------------


def test_events_carry_every_decoded_field(federation: Federation) -> None:
    fed, owner, agg = federation, federation.owner, federation.aggregator
    start(fed)
    submit_order = list(reversed(fed.learners))
    for n, learner in enumerate(submit_order, start=1):
        learner.submit_update(1, cid_v1_raw(f"u{n}"), 100 * n)
    agg.publish_global(1, cid_v1_raw("g1"), [addr(b) for b in submit_order])
    fed.learners[0].report_evaluation(1, 42, '{"accuracy":0.5}')
    owner.remove_learner(addr(fed.learners[2]))
    agg.finish()

    events = list(owner.events(from_block=fed.block))
    assert [type(e).__name__ for e in events] == [
        "CommitteeChanged",
        *["LearnerAdded"] * 3,
        "GenesisVoted",
        "GenesisSet",
        *["UpdateSubmitted"] * 3,
        "Voted",
        "GlobalModelPublished",
        "EvaluationReported",
        "LearnerRemoved",
        "Voted",
        "Finished",
    ]
    added, genesis = events[1:4], events[5]
    updates, vote, published, evaluation, removed, _, finished = events[6:9], *events[9:]
    assert [(e.learner, e.index) for e in added] == [  # type: ignore[attr-defined]
        (addr(b), i) for i, b in enumerate(fed.learners, start=1)
    ]
    assert isinstance(genesis, ev.GenesisSet)
    assert (genesis.model_cid.raw, genesis.plan_cid.raw, genesis.rounds) == (GENESIS, PLAN, ROUNDS)
    assert isinstance(vote, ev.Voted) and vote.member == addr(agg)
    assert vote.included == tuple(ascending(*fed.learners)) and vote.bits == (0b111,)
    assert [
        (u.round, u.learner, u.model_cid.raw, u.num_examples)  # type: ignore[attr-defined]
        for u in updates
    ] == [(1, addr(b), cid_v1_raw(f"u{n}"), 100 * n) for n, b in enumerate(submit_order, start=1)]
    assert isinstance(published, ev.GlobalModelPublished)
    assert published.round == 1 and published.model_cid.raw == cid_v1_raw("g1")
    assert published.included == tuple(ascending(*fed.learners))
    assert published.bits == (0b111,) and published.state_cid.raw == b""
    assert isinstance(evaluation, ev.EvaluationReported)
    assert (evaluation.round, evaluation.learner, evaluation.num_examples) == (
        1,
        addr(fed.learners[0]),
        42,
    )
    assert evaluation.metrics == b'{"accuracy":0.5}'
    assert isinstance(removed, ev.LearnerRemoved) and removed.learner == addr(fed.learners[2])
    assert isinstance(finished, ev.Finished) and finished.last_round == 1
    blocks = [(e.block, e.log_index) for e in events]
    assert blocks == sorted(blocks)


def test_updates_are_filtered_by_round(federation: Federation) -> None:
    fed, agg, a, b = federation, federation.aggregator, *federation.learners[:2]
    start(fed)
    a.submit_update(1, cid_v1_raw("a1"), 1)
    b.submit_update(1, cid_v1_raw("b1"), 2)
    agg.publish_global(1, cid_v1_raw("g1"), [addr(a), addr(b)])
    b.submit_update(2, cid_v1_raw("b2"), 3)
    assert [(u.learner, u.model_cid.raw) for u in agg.updates(1, from_block=fed.block)] == [
        (addr(a), cid_v1_raw("a1")),
        (addr(b), cid_v1_raw("b1")),
    ]
    assert [(u.learner, u.num_examples) for u in agg.updates(2, from_block=fed.block)] == [
        (addr(b), 3)
    ]


def test_cidv0_and_cidv1_round_trip_through_storage_and_events(federation: Federation) -> None:
    fed, agg, learner = federation, federation.aggregator, federation.learners[0]
    v0, raw, pb = cid_v0("genesis"), cid_v1_raw("update"), cid_v1_pb("global")
    assert (len(v0), len(raw), len(pb)) == (34, 36, 36)
    agg.set_genesis(v0, pb, ROUNDS)
    # The binding takes CID text too; the chain stores the binary form.
    learner.submit_update(1, _text(raw), 10)
    agg.publish_global(1, _text(pb), [addr(learner)])
    agg.publish_global(2, _text(v0), [])
    assert (agg.genesis(), agg.plan()) == (v0, pb)
    assert [agg.global_model(r) for r in range(3)] == [v0, pb, v0]
    assert _text(agg.global_model(0)).startswith("Qm")
    assert _text(pb).startswith("bafy") and _text(raw).startswith("bafk")
    events = list(
        agg.events("GenesisSet", "UpdateSubmitted", "GlobalModelPublished", from_block=fed.block)
    )
    assert [e.model_cid.raw for e in events] == [v0, raw, pb, v0]  # type: ignore[attr-defined]


def test_event_paging_returns_the_same_events_for_any_page_size(federation: Federation) -> None:
    fed, agg = federation, federation.aggregator
    start(fed)
    for r in (1, 2):
        for learner in fed.learners:
            learner.submit_update(r, cid_v1_raw(f"{r}{addr(learner)}"), r)
        agg.publish_global(r, cid_v1_raw(f"g{r}"), [addr(b) for b in fed.learners])
    whole = list(agg.events(from_block=fed.block, page=10_000))
    assert len(whole) == 4 + 2 + 2 * 5
    assert len({e.block for e in whole}) >= 10  # one transaction per block on these chains
    assert list(agg.events(from_block=fed.block, page=1)) == whole
    assert list(agg.events(from_block=fed.block, page=2)) == whole
    assert list(agg.events(from_block=fed.block, to_block=whole[5].block, page=3)) == whole[:6]


# --- keys stay private ---------------------------------------------------------------------

KNOWN_KEY = "0x" + hashlib.sha256(b"fedchain test key").hexdigest()


def test_the_private_key_never_shows_in_errors_reprs_or_logs(
    federation: Federation, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = federation
    caplog.set_level(logging.DEBUG)
    account = Account.from_key(KNOWN_KEY)
    keyed = fed.owner.with_account(account)
    start(fed)
    seen: list[str] = [repr(fed.chain), repr(keyed), str(keyed)]

    def record_failure(call: Callable[[], Any]) -> None:
        with pytest.raises(FedChainError) as err:
            call()
        seen.append("".join(traceback.format_exception(err.value)))

    fed.chain.transact(dev(fed.chain, 0), {"to": account.address, "value": 10**18})
    record_failure(lambda: keyed.submit_update(1, cid_v1_raw("u"), 10))  # not a learner
    fed.owner.add_learners([account.address])
    keyed.submit_update(1, cid_v1_raw("u"), 10)
    record_failure(lambda: keyed.submit_update(1, cid_v1_raw("u"), 10))  # already submitted
    record_failure(lambda: keyed.publish_global(1, cid_v1_raw("g"), []))  # not an aggregator

    out, err = capsys.readouterr()
    text = "\n".join([*seen, caplog.text, out, err]).lower()
    assert KNOWN_KEY[2:] not in text


def test_a_revert_mined_in_a_block_is_decoded_and_names_its_transaction(
    federation: Federation,
) -> None:
    fed, learner = federation, federation.learners[0]
    start(fed)
    data = learner.contract.functions.submitUpdate(1, cid_v1_raw("u"), 0)._encode_transaction_data()
    # An explicit gas limit skips estimation: the transaction is mined, and reverts there.
    with unchanged(fed), pytest.raises(NoExamples) as mined:
        fed.chain.transact(learner.account, {"to": learner.address, "data": data, "gas": 300_000},
                           decode_revert=learner.decode_revert)
    assert mined.value.tx_hash is not None and mined.value.url == fed.chain.url
    receipt = fed.chain.w3.eth.get_transaction_receipt(mined.value.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 0 and receipt["from"] == addr(learner)
    # Found at estimation instead: nothing was mined, so there is no hash to name.
    with pytest.raises(NoExamples) as estimated:
        learner.submit_update(1, cid_v1_raw("u"), 0)
    assert estimated.value.tx_hash is None and estimated.value.url == fed.chain.url


def test_a_transaction_that_runs_out_of_gas_says_so(federation: Federation) -> None:
    fed, learner = federation, federation.learners[0]
    start(fed)
    data = learner.contract.functions.submitUpdate(1, cid_v1_raw("u"), 5)._encode_transaction_data()
    with unchanged(fed), pytest.raises(TransactionFailed, match="ran out of gas") as err:
        fed.chain.transact(learner.account, {"to": learner.address, "data": data, "gas": 26_000},
                           decode_revert=learner.decode_revert)
    assert type(err.value) is TransactionFailed and err.value.tx_hash in str(err.value)
    learner.submit_update(1, cid_v1_raw("u"), 5)  # the update itself was fine


def test_an_unfunded_sender_gets_transaction_failed(federation: Federation) -> None:
    fed = federation
    pauper = Account.create()
    fed.owner.add_learners([pauper.address])
    start(fed)
    with pytest.raises(TransactionFailed) as err:
        fed.owner.with_account(pauper).submit_update(1, cid_v1_raw("u"), 10)
    assert "funds" in str(err.value).lower() or "afford" in str(err.value).lower()
    assert pauper.key.hex().removeprefix("0x") not in str(err.value)
    assert not fed.owner.has_submitted(1, pauper.address)
