"""fedchain: decentralized federated learning on Ethereum and IPFS."""

__version__ = "0.1.0"
