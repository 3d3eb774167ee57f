"""Register the initial learners (in batches, so large federations fit in a block)."""

BATCH = 100


def migrate(ctx):
    for start in range(0, len(ctx.learners), BATCH):
        ctx.contract.add_learners(ctx.learners[start : start + BATCH])
