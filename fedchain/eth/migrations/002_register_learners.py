"""Register the initial learners (in batches, so large federations fit in a block)."""


def migrate(ctx):
    ctx.contract.register_learners(ctx.learners)
