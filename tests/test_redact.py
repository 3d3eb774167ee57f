"""fedchain.redact: URLs shown without secrets, messages and log records scrubbed of them."""

from __future__ import annotations

import io
import logging

import pytest

from fedchain import redact
from fedchain.eth.chain import redact_url as chain_redact_url
from fedchain.redact import redact_url, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("http://127.0.0.1:5001/", "http://127.0.0.1:5001"),
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io/…"),
        ("https://user:secret@rpc.example.org:8545", "https://rpc.example.org:8545/…"),
        ("https://TOKEN123@ipfs.example.org", "https://ipfs.example.org/…"),
        ("http://node:5001/?token=abc123", "http://node:5001/…"),
        ("http://[::1]:5001", "http://[::1]:5001"),
        ("http://host:notaport", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert chain_redact_url(url) == shown  # the old import keeps working


def test_scrub_removes_each_secret_of_the_urls_wherever_it_appears() -> None:
    key = "https://eth.example.org/v3/abcdef0123456789"
    basic = "http://alice:s3cr3t-pw@ipfs.example.org:5001"
    token = "http://node:5001/?token=tok-123456&x=1"
    text = (
        f"429 Client Error: Too Many Requests for url: {key} | "
        "POST http://ipfs.example.org:5001/api/v0/cat?arg=bafy "
        f"{basic}/api/v0/add failed; password s3cr3t-pw; "
        "GET http://node:5001/api/v0/version?token=tok-123456&x=1; "
        "key abcdef0123456789 alone; https://bob:pw@elsewhere.org/x"
    )
    clean = scrub(text, key, basic, token, None)
    for secret in ("abcdef0123456789", "s3cr3t-pw", "alice:", "tok-123456", "bob:pw"):
        assert secret not in clean
    assert "https://eth.example.org/…" in clean
    assert "/api/v0/cat?arg=bafy" in clean  # what is not secret stays
    assert "https://elsewhere.org/x" in clean


def test_installed_filter_scrubs_registered_secrets_from_any_handler() -> None:
    url = "https://carol:hunter22@rpc.example.org/v3/KEY0123456789"
    redact.register(url)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("httpx")
    old_level = logger.level
    logger.addHandler(handler)  # added after install: the record factory still scrubs
    logger.setLevel(logging.INFO)
    try:
        logger.info('HTTP Request: POST %s "HTTP/1.1 200 OK"', url + "/eth")
        try:
            raise RuntimeError(f"for url: {url}")
        except RuntimeError:
            logger.exception("failed")
        logging.getLogger("fedchain.x").warning("see %s", "https://dan:pw0rd@h.org")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    out = stream.getvalue()
    assert "HTTP Request: POST https://rpc.example.org/…" in out
    assert "failed" in out and "RuntimeError" in out
    for secret in ("hunter22", "KEY0123456789", "carol", "pw0rd"):
        assert secret not in out
    record = logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1,
                               '%s "POST /v3/KEY0123456789 HTTP/1.1" 429', ("rpc",), None)
    redact.FILTER.filter(record)
    assert "KEY0123456789" not in record.getMessage()
