"""Every shell command the READMEs show, run as written (`make docs-check`).

The READMEs (README.md, examples/*/README.md) show commands in fenced blocks: in ```bash and
```sh blocks every line that is not a comment (a line ending in `\\` goes on), in ```console
blocks every line starting with `$ `. Each such command is either run here exactly as written
or listed below (PLAN) with the reason it cannot run here. A command in a README that PLAN
does not know, or one PLAN names that no README shows any more, fails the check: a README's
commands cannot change without this file saying how the new ones are run.

How they run: in a scratch copy of the checkout (its tracked and new files; `.venv` and
`node_modules` linked to the checkout's), from its root, with `.venv/bin` first on PATH (what
`source .venv/bin/activate` does; the READMEs ask for it), the copy's `fedchain` package first
on PYTHONPATH, and an embedded store of its own (FEDCHAIN_STORE_DIR). Each has a timeout.
Commands meant for terminals of their own (`fedchain devnet` in terminal 1, an aggregator and
learners in terminals 2-5) run as a SESSION: the long-lived ones in the background, the
others in order, as the walkthrough says, and the dev chain stopped with Ctrl-C (SIGINT) at
the end. Such sessions use the ports the commands name (8545, 5001), so they need them free.

Output is compared where a README quotes it exactly (`check_output`): every quoted line
(those after the `$` line in a ```console block, plus the `quotes` named) must be a line of the
command's output, in order; `…` skips lines. The models' CIDs in such quotes are torch's on
AVX2 kernels: `make docs-check` sets DOCS_KERNELS (the Makefile) for every command.

    .venv/bin/python scripts/docs_commands.py --list        # every command and its plan
    .venv/bin/python scripts/docs_commands.py               # run them (not the --long ones)
    .venv/bin/python scripts/docs_commands.py --long        # the long ones too
    .venv/bin/python scripts/docs_commands.py --only committee compare.py   # a few
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_FENCES = ("bash", "sh", "shell", "console")
#: The start of a line that is a command, in a fenced block of another language (a check
#: that no command hides where it would not be found: tests/test_docs.py).
COMMAND_STARTS = ("$ ", "fedchain ", "python ", ".venv/bin/", "make ", "npm ", "source ")


# --- what the READMEs show -------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command a README shows, exactly as written, and the output it quotes after it."""

    path: str
    line: int
    text: str
    output: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, where it opens, its lines."""

    path: str
    line: int
    lang: str
    lines: tuple[str, ...]


def readmes(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "examples").glob("*/README.md"))]


def blocks(path: Path, root: Path = ROOT) -> Iterator[Block]:
    """The fenced blocks of a Markdown file."""
    rel = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if m:
            start, indent = i, len(m[1])
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i][indent:])
                i += 1
            yield Block(rel, start + 1, m[2], tuple(body))
        i += 1


def commands_in(block: Block) -> Iterator[Command]:
    """The commands of a ```bash / ```console block, continuation lines included. Output a
    console block quotes (its lines up to the next `$ `) goes with the command before it; in
    bash blocks, comment lines indented as `#   output` right after a command."""
    if block.lang not in SHELL_FENCES:
        return
    console = block.lang == "console"
    lines = block.lines
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        is_command = line.startswith("$ ") if console else (
            bool(stripped) and not stripped.startswith("#") and not line.startswith(" "))
        if not is_command:
            i += 1
            continue
        start = i
        text = [line[2:] if console else line]
        while text[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text.append(lines[i])
        i += 1
        output = []
        while i < len(lines):
            nxt = lines[i]
            if console and not nxt.startswith("$ "):
                output.append(nxt)
            elif not console and nxt.startswith("#   "):
                output.append(nxt[4:])
            else:
                break
            i += 1
        yield Command(block.path, block.line + 1 + start, "\n".join(text), tuple(output))


def extract(root: Path = ROOT) -> list[Command]:
    """Every command every README shows, in the order they appear."""
    return [c for path in readmes(root) for b in blocks(path, root) for c in commands_in(b)]


def hidden_commands(root: Path = ROOT) -> list[str]:
    """Lines of fenced blocks in other languages (text, plain) that look like commands: a
    command there would not be run. Empty when every command is where it is found."""
    found = []
    for path in readmes(root):
        for b in blocks(path, root):
            if b.lang in SHELL_FENCES or b.lang in ("python", "toml"):
                continue
            for n, line in enumerate(b.lines, b.line + 1):
                if line.startswith(COMMAND_STARTS) and not line.rstrip().endswith(":"):
                    found.append(f"{b.path}:{n}: {line}")
    return found


# --- how each is run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run as written, alone. `long`: why it runs only with --long. `quotes`: (README, first
    line of a fenced block or Markdown table) whose lines the output must also hold."""

    timeout: float = 600
    status: int = 0
    check_output: bool = False
    quotes: tuple[tuple[str, str], ...] = ()
    long: str = ""


@dataclass(frozen=True)
class Skip:
    """Cannot run here: why."""

    reason: str


@dataclass(frozen=True)
class InSession:
    """Run as a step of a multi-terminal SESSION."""

    session: str


@dataclass(frozen=True)
class Step:
    """A session's step. kind: `start` (long-lived, in the background until the session
    ends: ready when `ports` answer), `spawn` (in the background, must end by itself with
    status 0 by the next `join`), `do` (in the foreground), `join` (waits for the spawned).
    `implied`: a command the README implies but does not spell out (a comment's "and --id 1")."""

    kind: str
    command: str = ""
    ports: tuple[int, ...] = ()
    timeout: float = 600
    implied: str = ""


DEVNET_PORTS = (8545, 5001)
CNN = "examples/cnn/fedchain-devnet.toml"
MLP = "examples/mlp/fedchain-devnet.toml"
DCGAN = "examples/dcgan/fedchain-devnet.toml"
SECAGG = "examples/cnn/fedchain-secagg-devnet.toml"


def _learners(job: str, ids: Sequence[int] = (0, 1, 2), implied: str = "") -> list[Step]:
    return [Step("spawn", f"fedchain learner --id {i} --job {job}", implied=implied)
            for i in ids]


#: The multi-terminal walkthroughs: the commands of terminals 1-5 in the order a reader runs
#: them. Each session starts from a checkout without deployments/ and .fedchain/.
SESSIONS: dict[str, list[Step]] = {
    # README.md, "Running a federation in separate terminals", the committee after it, and
    # the audit section's command (on the same chain and IPFS node).
    "terminals": [
        Step("do", "source .venv/bin/activate"),
        Step("start", "fedchain devnet                      # --hardhat or --ganache for "
                      "another dev chain", DEVNET_PORTS),
        Step("do", "fedchain deploy --dev-learners 3"),
        Step("spawn", f"fedchain aggregator --job {CNN}"),
        *_learners(CNN),
        Step("join", timeout=900),
        Step("do", "fedchain status"),
        Step("do", "fedchain audit --store http://127.0.0.1:5001 --verify"),
        Step("do", "fedchain audit --chain http://127.0.0.1:8545 --store http://127.0.0.1:5001 "
                   "--verify \\\n               --json audit.json --html audit.html"),
        Step("do", "fedchain deploy --fresh --dev-learners 3 --aggregators 3 --quorum 2"),
        Step("spawn", f"fedchain aggregator --id 0 --job {CNN}    # and --id 1, --id 2"),
        Step("spawn", f"fedchain aggregator --id 1 --job {CNN}",
             implied="the comment's '--id 1'"),
        Step("spawn", f"fedchain aggregator --id 2 --job {CNN}",
             implied="the comment's '--id 2'"),
        *_learners(CNN, implied="the committee needs the walkthrough's learners"),
        Step("join", timeout=1200),
        Step("do", "fedchain status"),
    ],
    # examples/cnn/README.md and examples/mlp/README.md, "Separate terminals" (the CNN's
    # aggregator and learners are the main README's, run above; its deploy is the MLP's).
    "mlp-terminals": [
        Step("start", "fedchain devnet", DEVNET_PORTS),
        Step("do", "fedchain deploy --chain http://127.0.0.1:8545 --dev-learners 3"),
        Step("spawn", f"fedchain aggregator --job {MLP}"),
        *_learners(MLP),
        Step("join", timeout=600),
    ],
    # examples/dcgan/README.md, "Separate terminals": 3 rounds.
    "dcgan-terminals": [
        Step("start", "fedchain devnet", DEVNET_PORTS),
        Step("do", "fedchain deploy --chain http://127.0.0.1:8545 --dev-learners 3"),
        Step("spawn", f"fedchain aggregator --job {DCGAN} --rounds 3"),
        *_learners(DCGAN, (0,), implied="'one learner per terminal (--id 0, 1, 2)'"),
        *_learners(DCGAN, (1,)),
        *_learners(DCGAN, (2,), implied="'one learner per terminal (--id 0, 1, 2)'"),
        Step("join", timeout=1200),
    ],
    # README.md, "Chains": Hardhat and the IPFS dev node, one way then the other; a
    # deployment on each shows that the commands work on it.
    "hardhat": [
        Step("start", "fedchain devnet --hardhat            # both, in one terminal; Ctrl-C "
                      "stops both", DEVNET_PORTS),
        Step("do", "fedchain deploy --dev-learners 3"),
        Step("stop"),
        Step("start", "npm run hardhat-node                 # or with npm, in two terminals",
             (8545,)),
        Step("start", "npm run ipfs-devnode                 # (its blocks and pins are kept "
                      "in .fedchain/ipfs)", (5001,)),
        Step("do", "fedchain deploy --fresh --dev-learners 3",
             implied="'every command above works on it unchanged': the walkthrough's deploy, "
                     "--fresh on a chain started again"),
    ],
    # README.md, "Privacy: secure aggregation": the committee of three, secure rounds.
    "secagg-terminals": [
        Step("start", "fedchain devnet", DEVNET_PORTS),
        Step("do", "fedchain deploy --fresh --dev-learners 3 --aggregators 3 --quorum 2"),
        Step("spawn", f"fedchain aggregator --id 0 --job {SECAGG}   # and --id 1, --id 2"),
        Step("spawn", f"fedchain aggregator --id 1 --job {SECAGG}",
             implied="the comment's '--id 1'"),
        Step("spawn", f"fedchain aggregator --id 2 --job {SECAGG}",
             implied="the comment's '--id 2'"),
        Step("spawn", f"fedchain learner --id 0 --job {SECAGG}      # and --id 1, --id 2"),
        *_learners(SECAGG, (1, 2), implied="the comment's '--id 1, --id 2'"),
        Step("join", timeout=1200),
        Step("do", "fedchain audit --store http://127.0.0.1:5001 --verify"),
    ],
    # README.md, "Scale": 1,000 learners (100 a round) on Anvil mining every 0.25 s.
    "scale": [
        Step("start", "fedchain devnet --block-time 0.25         # Anvil mining every 0.25 s, "
                      "and the IPFS dev node", DEVNET_PORTS),
        Step("do", "fedchain simulate --job examples/mlp/fedchain.toml --chain "
                   "http://127.0.0.1:8545 \\\n    --store http://127.0.0.1:5001 --run-config "
                   "run.learners=1000 protocol.fraction=0.1 \\\n    --engine pool --workers 256",
             timeout=1800),
    ],
}

#: Sessions run only with --long, and why.
LONG_SESSIONS = {
    "secagg-terminals": "ten secure CNN rounds in seven processes: several minutes of CPU",
    "dcgan-terminals": "three DCGAN rounds in four processes: several minutes of CPU",
    "scale": "1,000 learners: several minutes of CPU",
}

#: Every command the READMEs show, by its exact text, and how it is run.
PLAN: dict[str, Run | Skip | InSession] = {
    # README.md
    "make test   # the whole test suite (contract on embedded py-evm, Anvil and Ganache; IPFS)":
        Run(timeout=3600, long="the whole test suite, 8–17 minutes on 2 cores"),
    "make test                                  # everything: ~1,200 tests, 8–14 minutes on 2 "
    "cores, 9–17 beside a CPU hog":
        Run(timeout=3600, long="the whole test suite, 8–17 minutes on 2 cores"),
    "make demo   # a real federation: 3 learners, a CNN on the bundled digits, 10 rounds":
        Run(timeout=900),
    ".venv/bin/pytest tests/test_contract.py    # one file": Run(timeout=900),
    "make lint                                  # ruff + mypy": Run(timeout=900),
    "make compile                               # regenerate the contract artifact":
        Run(timeout=600),
    "make bench                                 # the benchmarks":
        Skip("every benchmark, hours of CPU; each prints its figures for the README's tables "
             "(bench/*.py), and is run on its own when they are measured"),
    "make docs-check                            # every README command run, every quoted CID "
    "and gas figure recomputed": Skip("this very check: it would run itself"),
    "fedchain simulate --job examples/cnn/fedchain.toml --run-config run.rounds=5 "
    "train.lr=0.01 \\\n    --run-config strategy.name=FedYogi protocol.vote_window=60":
        Run(timeout=900),
    'fedchain simulate --job examples/cnn/fedchain.toml --run-config "run.rounds=5 '
    'train.lr=0.01"': Run(timeout=900),
    "fedchain simulate --run-config run.rounds=zero":
        Run(timeout=120, status=2, check_output=True),
    "source .venv/bin/activate": InSession("terminals"),
    "fedchain devnet                      # --hardhat or --ganache for another dev chain":
        InSession("terminals"),
    "fedchain deploy --dev-learners 3": InSession("terminals"),
    f"fedchain aggregator --job {CNN}": InSession("terminals"),
    f"fedchain learner --id 0 --job {CNN}": InSession("terminals"),
    f"fedchain learner --id 1 --job {CNN}": InSession("terminals"),
    f"fedchain learner --id 2 --job {CNN}": InSession("terminals"),
    "fedchain status": InSession("terminals"),
    "fedchain audit --store http://127.0.0.1:5001 --verify": InSession("terminals"),
    "fedchain audit --chain http://127.0.0.1:8545 --store http://127.0.0.1:5001 --verify "
    "\\\n               --json audit.json --html audit.html": InSession("terminals"),
    "fedchain deploy --fresh --dev-learners 3 --aggregators 3 --quorum 2":
        InSession("terminals"),
    f"fedchain aggregator --id 0 --job {CNN}    # and --id 1, --id 2": InSession("terminals"),
    f"fedchain aggregator --id 0 --job {SECAGG}   # and --id 1, --id 2":
        InSession("secagg-terminals"),
    f"fedchain learner --id 0 --job {SECAGG}      # and --id 1, --id 2":
        InSession("secagg-terminals"),
    "fedchain devnet --hardhat            # both, in one terminal; Ctrl-C stops both":
        InSession("hardhat"),
    "npm run hardhat-node                 # or with npm, in two terminals": InSession("hardhat"),
    "npm run ipfs-devnode                 # (its blocks and pins are kept in .fedchain/ipfs)":
        InSession("hardhat"),
    "fedchain devnet --block-time 0.25         # Anvil mining every 0.25 s, and the IPFS dev "
    "node": InSession("scale"),
    "fedchain simulate --job examples/mlp/fedchain.toml --chain http://127.0.0.1:8545 \\\n"
    "    --store http://127.0.0.1:5001 --run-config run.learners=1000 protocol.fraction=0.1 "
    "\\\n    --engine pool --workers 256": InSession("scale"),
    # examples/cnn/README.md
    "fedchain simulate --job examples/cnn/fedchain.toml": Run(timeout=900),
    "fedchain simulate --job examples/cnn/fedchain-dp.toml": Run(timeout=900),
    "fedchain simulate --job examples/cnn/fedchain-ddp.toml": Run(
        timeout=1800, long="10 secure rounds of 100 learners: 2-3 minutes of CPU"),
    "python examples/cnn/run.py --learners 5 --partition dirichlet --alpha 0.3 --rounds 15":
        Run(timeout=1800, long="15 rounds of 5 CNN learners: several minutes of CPU"),
    "python examples/cnn/run.py --data cifar10 --data-dir ~/data/cifar-10-batches-py --lr 0.001":
        Skip("needs CIFAR-10 in ~/data, which fedchain neither ships nor downloads"),
    "fedchain devnet": InSession("mlp-terminals"),
    "fedchain deploy --chain http://127.0.0.1:8545 --dev-learners 3": InSession("mlp-terminals"),
    "python examples/cnn/compare.py": Run(
        timeout=900, check_output=True,
        quotes=(("examples/cnn/README.md", "| round | centralized |"),
                ("examples/cnn/README.md", "round 1: centralized"))),
    # examples/committee/README.md
    "python -m examples.committee.run": Run(
        timeout=600, check_output=True,
        quotes=(("README.md", "round  published"),)),
    # examples/dcgan/README.md
    "python examples/dcgan/run.py": Run(
        timeout=3600, long="10 DCGAN rounds: 5-15 minutes of CPU (make docs-check computes "
                           "the same rounds' CIDs through scripts/docs_numbers.py)"),
    "python examples/dcgan/run.py --data folder --data-dir ~/data/celeba/img_align_celeba \\\n"
    "      --limit 6000 --ngf 64 --ndf 64 --output runs/celeba":
        Skip("needs CelebA in ~/data, which fedchain neither ships nor downloads"),
    f"fedchain aggregator --job {DCGAN} --rounds 3": InSession("dcgan-terminals"),
    f"fedchain learner --id 1 --job {DCGAN}": InSession("dcgan-terminals"),
    # examples/mlp/README.md
    "fedchain simulate --job examples/mlp/fedchain.toml": Run(timeout=900),
    f"fedchain aggregator --job {MLP}": InSession("mlp-terminals"),
    f"fedchain learner --id 0 --job {MLP}": InSession("mlp-terminals"),
    f"fedchain learner --id 1 --job {MLP}": InSession("mlp-terminals"),
    f"fedchain learner --id 2 --job {MLP}": InSession("mlp-terminals"),
}

def coverage(commands: Sequence[Command]) -> list[str]:
    """What is wrong between the READMEs and PLAN: commands PLAN does not know, entries no
    README shows, session steps that are neither shown nor marked implied, sessions no
    command belongs to."""
    shown = {c.text for c in commands}
    problems = [f"{c.path}:{c.line}: not in scripts/docs_commands.py's PLAN (run it, or say "
                f"why it cannot run): {c.text!r}" for c in commands if c.text not in PLAN]
    problems += [f"PLAN names a command no README shows (changed or removed?): {t!r}"
                 for t in PLAN if t not in shown]
    for name, steps in SESSIONS.items():
        for s in steps:
            if s.command and not s.implied and s.command not in shown:
                problems.append(f"session {name}: a step no README shows: {s.command!r}")
        if not any(isinstance(p, InSession) and p.session == name for p in PLAN.values()):
            problems.append(f"session {name}: no command of the READMEs belongs to it")
    for text, plan in PLAN.items():
        if isinstance(plan, InSession):
            if plan.session not in SESSIONS:
                problems.append(f"{text!r}: no session {plan.session!r}")
            elif not any(s.command == text for s in SESSIONS[plan.session]):
                problems.append(f"{text!r}: not a step of session {plan.session!r}")
    return problems


# --- running them ------------------------------------------------------------------------


@dataclass
class Outcome:
    what: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Scratch:
    """A scratch copy of the checkout in which the commands run."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, base: Path) -> Scratch:
        root = base / "checkout"
        files = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file() and not src.is_symlink():
                dst = root / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        for link in (".venv", "node_modules"):
            (root / link).symlink_to((ROOT / link).resolve())
        # `make` must see the installation as done (the Makefile's setup stamps), never
        # reinstall into the shared .venv from the copy: the copy's sources predate them.
        stamps = [ROOT / ".venv/.fedchain-installed", ROOT / "node_modules/.fedchain-installed"]
        if not all(s.exists() for s in stamps):
            raise SystemExit("docs_commands.py: run `make setup` first")
        old = min(s.stat().st_mtime for s in stamps) - 60
        for name in ("pyproject.toml", "package.json", "package-lock.json"):
            os.utime(root / name, (old, old))
        env = dict(os.environ)
        venv_bin = str(root / ".venv" / "bin")
        env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                   VIRTUAL_ENV=str(root / ".venv"), PYTHONPATH=str(root),
                   FEDCHAIN_STORE_DIR=str(base / "store"), PYTHONUNBUFFERED="1")
        env.pop("PYTHONHOME", None)
        return cls(root, env)

    def fresh_state(self) -> None:
        """What a session starts from: no deployment records, no IPFS dev node's blocks."""
        for name in ("deployments", ".fedchain"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def popen(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        return subprocess.Popen(["bash", "-c", command], cwd=self.root, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, grace: float = 30) -> int:
    """Stops a process group we started: `sig` (Ctrl-C), then SIGKILL after `grace` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def quoted_lines(command: Command, plan: Run, root: Path = ROOT) -> list[list[str]]:
    """The lines a README quotes as this command's output: one group per quote, each in the
    order the output must have them."""
    groups = [list(command.output)] + [_quote_block(root / path, first)
                                       for path, first in plan.quotes]
    return [[line for line in g if line.strip()] for g in groups]


def _quote_block(path: Path, first: str) -> list[str]:
    """The fenced block (or Markdown table) of `path` whose first line starts with `first`."""
    for b in blocks(path, path.parent):
        if b.lines and b.lines[0].startswith(first):
            return list(b.lines)
    text = path.read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith(first):
            table = []
            for row in text[i:]:
                if not row.startswith("|"):
                    break
                if not re.match(r"^\|[-:|]+\|$", row):
                    table.append(row)
            return table
    raise LookupError(f"{path}: no block or table starting with {first!r}")


def missing_lines(quoted: Sequence[str], output: str) -> list[str]:
    """Quoted lines not found in the output in order (`…` lines skip any number)."""
    got = [line.rstrip() for line in output.splitlines()]
    missing, at = [], 0
    for line in quoted:
        if line.strip() == "…":
            continue
        try:
            at = got.index(line.rstrip(), at) + 1
        except ValueError:
            missing.append(line)
    return missing


def run_one(scratch: Scratch, command: Command, plan: Run, logs: Path) -> Outcome:
    log = logs / f"{command.path.replace('/', '_')}-{command.line}.log"
    started = time.monotonic()
    proc = scratch.popen(command.text, log)
    try:
        status = proc.wait(plan.timeout)
    except KeyboardInterrupt:
        _stop(proc, signal.SIGTERM, 10)  # its own session: Ctrl-C here does not reach it
        raise
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGTERM, 10)
        return Outcome(command.text, False, time.monotonic() - started,
                       f"timed out after {plan.timeout:.0f} s (log: {log})")
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    if status != plan.status:
        return Outcome(command.text, False, seconds, f"exit status {status}, expected "
                       f"{plan.status}; last lines:\n" + _tail(output))
    if plan.check_output:
        missing = [m for group in quoted_lines(command, plan)
                   for m in missing_lines(group, output)]
        if missing:
            return Outcome(command.text, False, seconds, "output differs from the README; "
                           "quoted but not printed:\n" + "\n".join(f"    {m}" for m in missing)
                           + f"\n  (log: {log})")
    return Outcome(command.text, True, seconds)


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines()[-n:])


def run_session(scratch: Scratch, name: str, logs: Path) -> list[Outcome]:
    """A walkthrough's terminals: the long-lived commands in the background, stopped with
    Ctrl-C at the end (or at `stop`), the others as the README orders them."""
    busy = [p for p in DEVNET_PORTS if _answers(p)]
    if busy:
        return [Outcome(f"session {name}", False, 0,
                        f"port(s) {busy} already in use (another dev chain or IPFS node?): the "
                        "walkthrough's commands use them; stop it and run again")]
    scratch.fresh_state()
    outcomes: list[Outcome] = []
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    spawned: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
    failed = False

    def stop_all() -> None:
        for text, proc in reversed(started):
            status = _stop(proc)
            if status not in (0, -signal.SIGINT, 130):
                outcomes.append(Outcome(text, False, 0, f"Ctrl-C: exit status {status}"))
        started.clear()
        deadline = time.monotonic() + 30
        while any(_answers(p) for p in DEVNET_PORTS) and time.monotonic() < deadline:
            time.sleep(0.2)

    try:
        for n, step in enumerate(SESSIONS[name]):
            if failed:
                break
            log = logs / f"{name}-{n:02d}.log"
            what = step.command + (f"  [implied: {step.implied}]" if step.implied else "")
            t0 = time.monotonic()
            if step.kind == "start":
                proc = scratch.popen(step.command, log)
                started.append((what, proc))
                deadline = t0 + step.timeout
                while not all(_answers(p) for p in step.ports):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        outcomes.append(Outcome(what, False, time.monotonic() - t0,
                                                "did not start serving ports "
                                                f"{step.ports}:\n" + _tail(log.read_text())))
                        failed = True
                        break
                    time.sleep(0.3)
                else:
                    outcomes.append(Outcome(what, True, time.monotonic() - t0, "(running)"))
            elif step.kind == "spawn":
                spawned.append((what, scratch.popen(step.command, log), log, t0))
            elif step.kind == "do":
                proc = scratch.popen(step.command, log)
                try:
                    status = proc.wait(step.timeout)
                except subprocess.TimeoutExpired:
                    status = _stop(proc, signal.SIGTERM, 10)
                    status = status if status else -1
                ok = status == 0
                outcomes.append(Outcome(what, ok, time.monotonic() - t0, "" if ok else
                                        f"exit status {status}:\n" + _tail(log.read_text())))
                failed = not ok
            elif step.kind == "join":
                deadline = t0 + step.timeout
                for text, proc, plog, since in spawned:
                    try:
                        status = proc.wait(max(1.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        status = _stop(proc, signal.SIGTERM, 10)
                        outcomes.append(Outcome(text, False, time.monotonic() - since,
                                                f"still running after {step.timeout:.0f} s:\n"
                                                + _tail(plog.read_text())))
                        failed = True
                        continue
                    ok = status == 0
                    outcomes.append(Outcome(text, ok, time.monotonic() - since, "" if ok else
                                            f"exit status {status}:\n"
                                            + _tail(plog.read_text())))
                    failed = failed or not ok
                spawned.clear()
            elif step.kind == "stop":
                stop_all()
    finally:
        for text, proc, _, since in spawned:
            _stop(proc, signal.SIGTERM, 10)
            outcomes.append(Outcome(text, False, time.monotonic() - since,
                                    "stopped: an earlier step failed"))
        stop_all()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs_commands.py", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the commands and their plan")
    parser.add_argument("--long", action="store_true",
                        help="also run the long commands and sessions (hours of CPU: make test)")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="run only commands (and sessions) whose text or name holds TEXT")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)

    commands = extract()
    problems = coverage(commands) + [f"a command outside a shell block, never run: {h}"
                                     for h in hidden_commands()]
    for p in problems:
        print(f"FAIL  {p}")
    unique: dict[str, Command] = {}
    for c in commands:
        unique.setdefault(c.text, c)

    def wanted(text: str) -> bool:
        return not args.only or any(o in text for o in args.only)

    if args.list:
        for c in commands:
            plan = PLAN.get(c.text)
            print(f"{c.path}:{c.line}: {c.text!r}\n    {plan}")
        return 1 if problems else 0

    base = Path(tempfile.mkdtemp(prefix="fedchain-docs-"))
    logs = base / "logs"
    logs.mkdir()
    outcomes: list[Outcome] = []
    skipped: list[str] = []
    try:
        scratch = Scratch.make(base)
        print(f"running the READMEs' commands in {scratch.root} (logs in {logs})", flush=True)
        for text, c in unique.items():
            plan = PLAN.get(text)
            if not isinstance(plan, Run) or not wanted(text):
                continue
            if plan.long and not args.long:
                skipped.append(f"long: {text!r} ({plan.long}; --long runs it)")
                continue
            outcome = run_one(scratch, c, plan, logs)
            _print(outcome, f"{c.path}:{c.line}")
            outcomes.append(outcome)
        for name in SESSIONS:
            if not wanted(name) and not any(wanted(s.command) for s in SESSIONS[name]):
                continue
            if name in LONG_SESSIONS and not args.long:
                skipped.append(f"long: session {name} ({LONG_SESSIONS[name]}; --long runs it)")
                continue
            print(f"session {name}:", flush=True)
            for outcome in run_session(scratch, name, logs):
                _print(outcome, f"  {name}")
                outcomes.append(outcome)
    finally:
        if not args.keep and all(o.ok for o in outcomes):
            shutil.rmtree(base, ignore_errors=True)
    for text, plan in PLAN.items():
        if isinstance(plan, Skip) and wanted(text):
            skipped.append(f"not run: {text!r}: {plan.reason}")
    for s in skipped:
        print(f"skip  {s}")
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)} ran as the READMEs say, {len(failed)} failed, "
          f"{len(skipped)} not run (above, with why), {len(problems)} problem(s) with the list")
    if failed and not args.keep:
        print(f"logs kept in {logs}")
    return 1 if failed or problems else 0


def _print(o: Outcome, where: str) -> None:
    first = o.what.splitlines()[0] + (" \\…" if "\n" in o.what else "")
    print(f"{'ok  ' if o.ok else 'FAIL'}  {o.seconds:6.1f}s  {where}: {first}", flush=True)
    if o.detail and not o.ok:
        print(f"      {o.detail}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
