"""Deploy FedChain with the deployer as owner and the given aggregator."""

from fedchain.eth.contract import FedChain


def migrate(ctx):
    contract, receipt = FedChain.deploy(ctx.chain, ctx.account, ctx.aggregator)
    ctx.contract = contract
    ctx.record.update(tx=receipt.tx_hash, block=receipt.block_number, gasUsed=receipt.gas_used)
