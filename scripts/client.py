#!/usr/bin/env python
"""Run one learner ("client"): `python scripts/client.py --id 0 --job JOB.toml`.

The same as `fedchain learner`; learner N signs with dev account 2+N on a dev chain, or with
--key / FEDCHAIN_KEY / --keystore anywhere else.
"""

import sys

from fedchain.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("learner"))
