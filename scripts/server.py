#!/usr/bin/env python
"""Run the aggregator ("server" in Flower's words): `python scripts/server.py --job JOB.toml`.

The same as `fedchain aggregator`; it publishes the genesis model and plan, then one global
model per round, until the job's rounds are done.
"""

import sys

from fedchain.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("aggregator"))
