#!/usr/bin/env python
"""Deploy FedChain, as in the seed tutorials: `python scripts/deploy.py --dev-learners 3`.

The same as `fedchain deploy`: runs the migrations (fedchain/eth/migrations/) in order and
records the deployment in deployments/<chainId>.json, where the server and client scripts find it.
"""

import sys

from fedchain.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("deploy"))
