"""The project's npm packages: node_modules/ and the project-local Node 24 it installs."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def project_root() -> Path:
    """The directory holding node_modules/ (the repo root, or the current directory)."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        for d in (base, *base.parents):
            if (d / "node_modules").is_dir():
                return d
    raise ConfigError(
        "node_modules/ not found: run `make setup` (npm ci) in the fedchain checkout first"
    )


def node_bin(relative: str) -> Path:
    """A file under node_modules/, with a clear error when npm packages are missing."""
    path = project_root() / "node_modules" / relative
    if not path.exists():
        raise ConfigError(f"{path} is missing: run `make setup` (npm ci) to install it")
    return path


def node24() -> Path:
    """The project-local Node 24 (the `node` npm package), needed by Helia and Hardhat 3."""
    return node_bin("node/bin/node")
