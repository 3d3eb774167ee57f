"""Deploy FedChain with the deployer as owner and the given committee of aggregators."""

from fedchain.eth.contract import FedChain


def migrate(ctx):
    contract, receipt = FedChain.deploy(ctx.chain, ctx.account, ctx.committee or ctx.aggregator,
                                        ctx.quorum, ctx.owner_delay)
    ctx.contract = contract
    ctx.record.update(tx=receipt.tx_hash, block=receipt.block_number, gasUsed=receipt.gas_used)
