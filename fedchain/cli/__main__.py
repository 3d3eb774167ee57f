"""`python -m fedchain.cli`: the `fedchain` command."""

import sys

from . import main

sys.exit(main())
