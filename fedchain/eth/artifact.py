"""The committed FedChain artifact (ABI and bytecode) that ships in the wheel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTRACT = "FedChain"
#: The installed `fedchain` package directory.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
ARTIFACT_PATH = PACKAGE_DIR / "artifacts" / f"{CONTRACT}.json"


def load_artifact() -> dict[str, Any]:
    """The committed FedChain artifact (ABI and bytecode)."""
    return json.loads(ARTIFACT_PATH.read_text())
