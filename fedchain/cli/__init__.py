"""The `fedchain` command: compile, deploy, aggregator, learner, simulate, status, devnet, audit."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import FedChainError
from . import commands
from .options import add_account_options, add_federation_options, add_model_options


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)-7s %(asctime)s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("web3", "urllib3", "httpx", "httpcore", "matplotlib", "eth", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_audit_arguments(p: argparse.ArgumentParser) -> None:
    """The `fedchain audit` options."""
    p.add_argument("--job", help="job TOML file (flags override it)")
    p.add_argument("--chain", help="'embedded' or a JSON-RPC URL, e.g. http://127.0.0.1:8545")
    p.add_argument("--contract", help="FedChain address (default: deployments/<chainId>.json)")
    p.add_argument("--deployments", help="directory of deployment records")
    p.add_argument(
        "--store", help="'embedded', file:///dir, or a Kubo RPC URL (for the plan and --verify)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="fetch every model and re-run every round's aggregation",
    )
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument(
        "--from-block",
        type=int,
        help="first block to scan (default: the contract's deployment block)",
    )
    p.add_argument("--no-gas", action="store_true", help="skip the per-transaction receipts")
    p.add_argument("--workers", type=int, default=8, help="parallel receipt requests")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedchain", description="Decentralized federated learning on Ethereum and IPFS.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile contracts/FedChain.sol into the artifact")
    p.set_defaults(fn=commands.cmd_compile)

    p = sub.add_parser("deploy", help="deploy FedChain (runs migrations/, records deployments/)")
    add_federation_options(p, store=False)
    add_account_options(p)
    p.add_argument("--learners", type=int, help="register N dev accounts (2…N+1) as learners")
    p.add_argument("--learner", action="append", metavar="ADDR", help="register a learner")
    p.add_argument("--aggregator", help="aggregator address (dev chains: dev account 1)")
    p.add_argument("--fresh", action="store_true", help="deploy again even if recorded")
    p.set_defaults(fn=commands.cmd_deploy)

    p = sub.add_parser("aggregator", help="run the aggregator until the federation finishes")
    add_federation_options(p)
    add_account_options(p)
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-updates", type=int)
    p.add_argument("--round-timeout", type=float)
    p.add_argument("--learners", dest="num_learners", type=int, help="expected learners")
    p.add_argument("--strategy", help="strategy name (params from the job file)")
    p.add_argument("--output", help="directory for results.json and the plot")
    add_model_options(p)
    p.set_defaults(fn=commands.cmd_aggregator)

    p = sub.add_parser("learner", help="run one learner until the federation finishes")
    add_federation_options(p)
    add_account_options(p)
    p.add_argument("--id", type=int, required=True, help="learner id (dev account 2+id)")
    p.add_argument("--learners", dest="num_learners", type=int, help="number of partitions")
    add_model_options(p)
    p.set_defaults(fn=commands.cmd_learner)

    p = sub.add_parser("simulate", help="a whole federation in one process")
    add_federation_options(p)
    p.add_argument("--learners", dest="num_learners", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--min-updates", type=int)
    p.add_argument("--round-timeout", type=float)
    p.add_argument("--strategy", help="strategy name (params from the job file)")
    p.add_argument("--output", help="directory for results.json and the plot")
    p.add_argument("--audit", action="store_true",
                   help="audit the finished run from the chain and re-verify every round")
    add_model_options(p)
    p.set_defaults(fn=commands.cmd_simulate)

    p = sub.add_parser("status", help="the federation's current round and submissions")
    add_federation_options(p, store=False)
    p.set_defaults(fn=commands.cmd_status)

    p = sub.add_parser("devnet", help="start Anvil (or Ganache) and the IPFS dev node")
    p.add_argument("--ganache", action="store_true", help="Ganache instead of Anvil")
    p.add_argument("--chain-port", type=int, default=8545)
    p.add_argument("--ipfs-port", type=int, default=5001)
    p.add_argument("--no-ipfs", action="store_true")
    p.set_defaults(fn=commands.cmd_devnet)

    p = sub.add_parser("audit", help="round history from the chain, optionally re-verified")
    _add_audit_arguments(p)
    p.set_defaults(fn=commands.cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.fn(args) or 0)
    except FedChainError as exc:
        print(f"fedchain {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

