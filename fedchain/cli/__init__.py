"""The `fedchain` command: compile, deploy, aggregator, learner, simulate, status, devnet, audit,
privacy.

`main(argv)` runs it; `run_script(command)` runs one subcommand as a script of its own
(scripts/deploy.py, server.py, client.py), under the script's name.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .. import __version__, redact
from ..errors import FedChainError
from . import commands
from .job import DEVNET_CHAIN
from .options import (
    add_account_options,
    add_chain_options,
    add_job_option,
    add_model_options,
    add_run_options,
    add_store_option,
    count,
    port,
    positive_int,
    seconds,
    writable_file,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)-7s %(asctime)s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("web3", "urllib3", "httpx", "httpcore", "matplotlib", "eth", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _verbose_option(p: argparse.ArgumentParser, default: object) -> None:
    # The subcommands take -v too (`fedchain status -v`); SUPPRESS there keeps a -v given
    # before the subcommand from being reset by the subparser's default.
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging, and a traceback with every error")


def _hidden_learners_alias(p: argparse.ArgumentParser, dest: str, type: Callable[[str], int]
                           ) -> None:
    """The old spelling --learners, still accepted (shown as --num-learners or, in deploy,
    --dev-learners)."""
    p.add_argument("--learners", dest=dest, type=type, help=argparse.SUPPRESS)


# --- the subcommands' arguments --------------------------------------------------------------


def _compile_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _deploy_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    add_chain_options(p, contract=False)
    g = p.add_argument_group("the federation")
    g.add_argument("--dev-learners", type=count, metavar="N",
                   help="register dev accounts 2…N+1 as learners: those of `fedchain learner "
                   "--id 0` … `--id N-1` (dev chains)")
    _hidden_learners_alias(p, "dev_learners", count)
    g.add_argument("--learner", action="append", metavar="ADDR",
                   help="register this address as a learner (repeatable)")
    g.add_argument("--aggregator", metavar="ADDR", action="append",
                   help="an aggregator's address; repeat it for a committee (default: dev "
                   "account 1 on dev chains, else the deploying account)")
    g.add_argument("--aggregators", type=positive_int, metavar="N",
                   help="dev chains: a committee of N aggregators, those of `fedchain "
                   "aggregator --id 0` … `--id N-1` (dev accounts 1, 99, 98, …)")
    g.add_argument("--quorum", type=positive_int, metavar="Q",
                   help="votes that close a round: a majority of the committee (default)")
    g.add_argument("--owner-delay", type=count, metavar="SECONDS", default=0,
                   help="after genesis, the owner's changes of the learners and the committee "
                   "take effect only this long after being announced (or once a committee "
                   "quorum approves them); default 0: at once")
    g.add_argument("--fresh", action="store_true",
                   help="deploy a new federation even if one is recorded for this chain")
    add_account_options(p, "dev account 0, the owner")


def _aggregator_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    p.add_argument("--id", type=int, default=0, metavar="K",
                   help="committee member K (dev account 1 for 0, then 99, 98, …): each "
                   "member computes every round and votes for it (default: 0); member K > 0 "
                   "writes its results to <output>/member-K unless given --output")
    add_chain_options(p)
    add_store_option(p)
    add_account_options(p, "dev account 1, or that of --id K")
    add_run_options(p)
    # The aggregator builds learner 0 for the genesis model when the job names no initial
    # model; the old --learners flag said how many partitions that learner's data is one of.
    p.add_argument("--num-learners", dest="num_learners", type=positive_int,
                   help=argparse.SUPPRESS)
    _hidden_learners_alias(p, "num_learners", positive_int)
    add_model_options(p)


def _learner_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    p.add_argument("--id", type=int, required=True,
                   help="learner id 0…N-1: its data partition, and dev account 2+id")
    p.add_argument("--num-learners", dest="num_learners", type=positive_int, metavar="N",
                   help="the federation's number of learners: the data is split into N "
                   "partitions and this learner takes partition --id (default: the job's "
                   "[run] learners, else 3)")
    _hidden_learners_alias(p, "num_learners", positive_int)
    add_chain_options(p)
    add_store_option(p)
    add_account_options(p, "dev account 2+id")
    add_model_options(p)


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    p.add_argument("--num-learners", dest="num_learners", type=positive_int, metavar="N",
                   help="how many learners to simulate, each on its own data partition "
                   "(default: the job's [run] learners, else 3)")
    _hidden_learners_alias(p, "num_learners", positive_int)
    add_chain_options(p, contract=False, deployments=False, default="embedded")
    add_store_option(p)
    add_run_options(p)
    p.add_argument("--audit", action="store_true",
                   help="audit the finished run from the chain and re-verify every round")
    p.add_argument("--no-gas", action="store_true",
                   help="with --audit: skip the per-transaction receipts (the gas column), "
                   "which take the longest for a federation of many learners")
    p.add_argument("--engine", choices=("threads", "pool", "ray"), default=None,
                   help="threads: a thread per learner polling the chain; pool: one chain "
                   "watcher and a pool of lazily made learners, for dozens to thousands of "
                   "learners (see the README's Scale section); ray: such pools as Ray tasks "
                   "(pip install 'fedchain[ray]'; a shared chain node and store). Default: "
                   "threads up to 8 learners, pool past that")
    p.add_argument("--shards", type=positive_int, metavar="N", default=2,
                   help="--engine ray: Ray tasks the learners are dealt into (default 2)")
    p.add_argument("--workers", type=positive_int, metavar="N", default=None,
                   help="--engine pool: learners stepped at once (default 32)")
    add_model_options(p)


def _status_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    add_chain_options(p)


def _devnet_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ganache", action="store_true", help="Ganache instead of Anvil")
    which.add_argument("--hardhat", action="store_true",
                       help="Hardhat's node instead of Anvil (project-local Node 24)")
    p.add_argument("--chain-port", type=port, default=8545, metavar="PORT",
                   help="the chain's JSON-RPC port on 127.0.0.1 (default 8545)")
    p.add_argument("--ipfs-port", type=port, default=5001, metavar="PORT",
                   help="the IPFS dev node's RPC port on 127.0.0.1 (default 5001)")
    p.add_argument("--no-ipfs", action="store_true", help="start the chain only")
    p.add_argument("--block-time", type=seconds, metavar="SECONDS", default=None,
                   help="Anvil: mine a block every SECONDS (e.g. 0.25) instead of one per "
                   "transaction, as a real network does; faster past a few hundred learners")


def _audit_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    add_chain_options(p)
    add_store_option(p, "for the plan and --verify; default: the job's with --job or --verify, "
                     "else none")
    p.add_argument("--verify", action="store_true",
                   help="fetch every model and re-run every round's aggregation")
    p.add_argument("--json", metavar="FILE", type=writable_file,
                   help="write the full report as JSON")
    p.add_argument("--html", metavar="FILE", type=writable_file,
                   help="write a self-contained HTML report")
    p.add_argument("--from-block", type=count, metavar="N",
                   help="first block to scan (default: the contract's deployment block)")
    p.add_argument("--no-gas", action="store_true", help="skip the per-transaction receipts")
    p.add_argument("--workers", type=positive_int, default=8, metavar="N",
                   help="parallel receipt requests (default 8)")


def _privacy_arguments(p: argparse.ArgumentParser) -> None:
    add_job_option(p)
    add_chain_options(p)
    add_store_option(p, "for the plan, whose learner-level DP (SPEC.md §14.16) the ledger "
                     "recomputes; default: the job's (skipped, said so, if it does not answer)")
    p.add_argument("--json", metavar="FILE", type=writable_file,
                   help="write every learner's ledger as JSON")
    p.add_argument("--from-block", type=count, metavar="N",
                   help="first block to scan (default: the contract's deployment block)")


#: name: (help, arguments, function)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "compile": ("compile contracts/FedChain.sol into the artifact", _compile_arguments,
                commands.cmd_compile),
    "deploy": ("deploy FedChain and register learners (records deployments/<chainId>.json)",
               _deploy_arguments, commands.cmd_deploy),
    "aggregator": ("run the aggregator until the federation finishes", _aggregator_arguments,
                   commands.cmd_aggregator),
    "learner": ("run one learner until the federation finishes", _learner_arguments,
                commands.cmd_learner),
    "simulate": ("a whole federation in one process (embedded chain by default)",
                 _simulate_arguments, commands.cmd_simulate),
    "status": ("the federation's state: committee and votes, deadlines, disputes, learners, "
               "and what it waits for", _status_arguments, commands.cmd_status),
    "devnet": ("start a dev chain (Anvil, Ganache or Hardhat) and the IPFS dev node",
               _devnet_arguments, commands.cmd_devnet),
    "audit": ("round history from the chain, optionally re-verified", _audit_arguments,
              commands.cmd_audit),
    "privacy": ("each learner's differential privacy (epsilon) after each round, recomputed "
                "from the chain", _privacy_arguments, commands.cmd_privacy),
}

EPILOG = (f"deploy, aggregator, learner, status and audit run in processes of their own and "
          f"use the chain at {DEVNET_CHAIN} (`fedchain devnet`) unless given --chain; "
          "simulate runs everything in one process on an embedded chain.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedchain", description="Decentralized federated learning on Ethereum and IPFS.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fedchain {__version__}")
    _verbose_option(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, arguments, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        arguments(p)
        _verbose_option(p, argparse.SUPPRESS)
        p.set_defaults(fn=fn)
    return parser


def script_parser(command: str, prog: str) -> argparse.ArgumentParser:
    """The parser of one subcommand as a script of its own, e.g. `usage: deploy.py …`."""
    help, arguments, fn = COMMANDS[command]
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{help[0].upper() + help[1:]} (the same as `fedchain {command}`).")
    parser.add_argument("--version", action="version", version=f"fedchain {__version__}")
    arguments(parser)
    _verbose_option(parser, False)
    parser.set_defaults(fn=fn, command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def run_script(command: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Runs `fedchain COMMAND` as the script `prog` (default: the running script's name)."""
    prog = prog or Path(sys.argv[0]).name
    return _run(script_parser(command, prog).parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    redact.install()  # no credential of a chain or store URL reaches the log, whoever logs it
    where = f"fedchain {args.command}"
    try:
        return int(args.fn(args) or 0)
    except FedChainError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        # A path or value the checks above let through: one line, the traceback with -v.
        # Any other exception is a bug in fedchain and keeps its traceback.
        if args.verbose:
            raise
        print(f"{where}: {type(exc).__name__}: {exc} (-v shows the traceback)", file=sys.stderr)
        return 2
