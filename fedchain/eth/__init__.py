"""The Ethereum layer: chain connections, accounts, the FedChain binding, deploy."""
