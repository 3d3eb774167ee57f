"""Shared pytest setup: dev-node fixtures live in tests/fixtures/."""

pytest_plugins = ["fixtures.chains", "fixtures.ipfs", "fixtures.embedded"]
