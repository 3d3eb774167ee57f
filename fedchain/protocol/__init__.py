"""The protocol: the one place a round's rule lives, which every role applies.

    params   every protocol field, declared once: Plan, the run config's protocol fields, the
             job file's [protocol] keys, the contract's round parameters
    rules    pure rules: order, sampling, commitments, vote digests, staleness, duplicates,
             the default quorum, carry-over
    ledger   RoundRecord: everything round r depends on, read from the chain's events once
    round    run_round(plan, strategy, record, fetch) -> RoundOutcome: the aggregator votes
             it, a learner compares it with what was published (and disputes a difference),
             the audit reports it

`params` and `rules` sit below the Ethereum layer (the contract binding derives its round
parameters from them, the watcher samples with them); `ledger` and `round` above it. SPEC.md
is the normative text, `tests/data/spec_vectors/` its test vectors.
"""
