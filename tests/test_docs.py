"""The numbers the READMEs quote are what the code produces now (scripts/docs_numbers.py).

The small cases run here: every gas figure, and the CIDs the MLP and CNN examples quote for
their genesis, plan and first round. `make docs-check` runs every round of every example.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_numbers  # noqa: E402


@pytest.mark.slow
def test_every_quoted_gas_figure_and_first_round_cid_is_what_the_code_produces(tmp_path):
    problems, checked = docs_numbers.stale_quotes(["mlp", "cnn"], 1, True, tmp_path)
    assert problems == []
    assert checked >= 20  # the gas table, three deploy outputs, and the examples' CIDs


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
