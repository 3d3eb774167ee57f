"""The CNN example in one process: `python examples/cnn/run.py [--data cifar10 --data-dir DIR]`."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `examples`

from examples.common import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s | %(message)s")
    sys.exit(main(Path(__file__).with_name("fedchain.toml")))
