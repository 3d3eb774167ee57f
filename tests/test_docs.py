"""The numbers the READMEs quote are what the code produces now (scripts/docs_numbers.py).

Here, in `make test`: what every machine computes alike, i.e. every gas figure and every plan
CID. The CIDs of models torch makes (genesis, trained updates, global models) depend on the
CPU's instruction set and torch's version: `make docs-check` checks those, on torch's AVX2
kernels, and the READMEs say what computed them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_numbers  # noqa: E402


def test_every_quoted_gas_figure_and_plan_cid_is_what_the_code_produces(tmp_path):
    problems, checked = docs_numbers.stale_quotes(
        list(docs_numbers.EXAMPLES), None, True, tmp_path, models=False)
    assert problems == []
    # seven gas figures in the main README, three deploy outputs, and six plans (one of them
    # after `--rounds 3`)
    assert checked >= 16


def test_only_plans_count_as_the_same_everywhere():
    quotes = [q for name in docs_numbers.EXAMPLES
              for q in docs_numbers.example_quotes(ROOT / "examples" / name / "README.md")]
    kinds = {q.what.split()[0] for q in quotes}
    assert kinds == {"genesis", "plan", "published", "submitted"}
    assert {q.what.split()[0] for q in quotes if docs_numbers.same_everywhere(q)} == {"plan"}


def test_readmes_quoting_models_cids_say_what_computed_them():
    """Every README that quotes the CIDs of models torch made names the machine and torch
    they are quoted for, and says they differ on other CPUs."""
    readmes = [ROOT / "examples" / name / "README.md" for name in docs_numbers.EXAMPLES]
    for path in readmes:
        if any(not docs_numbers.same_everywhere(q) for q in docs_numbers.example_quotes(path)):
            text = " ".join(path.read_text().split())
            assert docs_numbers.QUOTED_ON in text, path
            assert re.search(r"other CPUs?\b", text), path
    # the demo's transcript in the main README shows the CNN's global models' CIDs
    assert docs_numbers.QUOTED_ON in " ".join((ROOT / "README.md").read_text().split())


def test_a_stale_quote_is_reported_with_its_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n| deployment | 1,000 | ≤ 1,500,000 | 2,040,000 |\n"
        "INFO fedchain.aggregator | genesis model bafkreihhb2loiifxg7eupi2fgl6g44owdsifjpla6"
        "vtuxtdntqkdqcsm5q, plan bafkreifqj5fgy5p63mtsviqaolp5cbw6akog6rvr3kziw7btoiamf7fbtq "
        "(FedAvg): round 1 open\n"
    )
    ((quote, key),) = list(docs_numbers.gas_quotes(readme, []))
    assert (quote.line, key, quote.value) == (2, "deployment", "1,000")
    genesis, plan = docs_numbers.example_quotes(readme)
    run = docs_numbers.Run(genesis="bafkreisomethingelse", plan=plan.value, rounds=1)
    assert docs_numbers.expected(run, genesis.what) != genesis.value
    assert docs_numbers.expected(run, plan.what) == plan.value
    assert not docs_numbers.same_everywhere(genesis) and docs_numbers.same_everywhere(plan)


# --- the READMEs' commands (scripts/docs_commands.py; `make docs-check` runs them) -------

import docs_commands  # noqa: E402


def test_every_readme_command_is_run_by_the_docs_check_or_excused_with_a_reason():
    """Each command the READMEs show has a plan in docs_commands.PLAN (run alone, in a
    walkthrough session, or not run, with why), every plan is for a command still shown, and
    no command hides in a block that is not a shell block."""
    commands = docs_commands.extract(ROOT)
    assert docs_commands.coverage(commands) == []
    assert docs_commands.hidden_commands(ROOT) == []
    texts = {c.text for c in commands}
    # the walkthroughs, the committee example, the comparison and the main README's demo
    assert {"fedchain devnet", "python -m examples.committee.run",
            "python examples/cnn/compare.py", "fedchain learner --id 2 --job "
            "examples/cnn/fedchain-devnet.toml"} <= texts
    for text, plan in docs_commands.PLAN.items():
        if isinstance(plan, docs_commands.Skip):
            assert len(plan.reason) > 20, text


def test_the_extractor_finds_commands_continuations_and_quoted_output(tmp_path):
    (tmp_path / "README.md").write_text(
        "intro\n\n```bash\n# a comment\nfedchain deploy --dev-learners 3   # terminal 2\n"
        "#   deployed FedChain at 0x5FbD\nfedchain simulate --job j.toml \\\n"
        "    --rounds 2\n```\n\n```console\n$ python run.py\nround 1: 0.5\n…\n"
        "$ fedchain status\n```\n\n```text\n$ fedchain audit --verify\n```\n\n"
        "```python\nimport fedchain\n```\n")
    commands = docs_commands.extract(tmp_path)
    assert [(c.line, c.text, c.output) for c in commands] == [
        (5, "fedchain deploy --dev-learners 3   # terminal 2", ("deployed FedChain at 0x5FbD",)),
        (7, "fedchain simulate --job j.toml \\\n    --rounds 2", ()),
        (12, "python run.py", ("round 1: 0.5", "…")),
        (15, "fedchain status", ()),
    ]
    # a command in a text block would never run: reported
    assert docs_commands.hidden_commands(tmp_path) == [
        "README.md:19: $ fedchain audit --verify"]
    # a command changed in a README: unknown to the plan, and the plan's old one unshown
    problems = docs_commands.coverage(commands)
    assert any(p.startswith("README.md:7: not in") and "--rounds 2" in p for p in problems)
    assert any("no README shows" in p and "python -m examples.committee.run" in p
               for p in problems)


def test_quoted_output_must_be_printed_in_order():
    output = "a\nb\nround 1: x\nc\nround 2: y\n"
    assert docs_commands.missing_lines(["a", "…", "round 1: x", "round 2: y"], output) == []
    assert docs_commands.missing_lines(["round 2: y", "round 1: x"], output) == ["round 1: x"]
    assert docs_commands.missing_lines(["round 3: z"], output) == ["round 3: z"]
