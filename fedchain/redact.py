"""Credentials out of output: URLs as fedchain shows them, scrubbed messages and log records.

Endpoints often carry secrets: `https://user:pass@ipfs.example.org:5001`, an API key in the
path (`https://mainnet.infura.io/v3/KEY`) or in the query (`…?token=KEY`). fedchain shows
such an endpoint only as `redact_url(url)` (`https://mainnet.infura.io/…`), and:

- `scrub(text, *urls)` removes each URL's secrets (userinfo, path, query and their parts)
  from a message, e.g. an HTTP library's exception text that quotes the request URL;
- `register(url)` remembers a URL's secrets for the logging filter and makes sure it is
  installed; stores and chains whose URL holds secrets register it themselves;
- `install()` scrubs the log records of fedchain's loggers and of the HTTP libraries it uses
  (httpx, httpcore, urllib3, requests, web3): a `RedactingFilter` on the handlers present, and a
  log record factory so that handlers added later (a CLI's, pytest's caplog) get clean records
  too. It is idempotent; `register` calls it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["LOGGERS", "RedactingFilter", "install", "redact_url", "register", "scrub"]

#: Logger name prefixes whose records are scrubbed.
LOGGERS = ("fedchain", "httpx", "httpcore", "urllib3", "requests", "web3")

#: What a removed secret is replaced with.
HIDDEN = "…"

# Path segments and query values shorter than this are not scrubbed on their own (they are
# still removed as part of the whole path or query): "v3" or "1" would mangle any message.
_MIN_TOKEN = 6
# user:password@ in any URL, whoever it belongs to.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s?#]+@")


def redact_url(url: str) -> str:
    """The URL as fedchain shows it: no credentials, no path or query (API keys live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # e.g. a port that is not a number
        return "<unparsable URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    hidden = (
        parts.username or parts.password or parts.path not in ("", "/") or parts.query
        or parts.fragment
    )  # fmt: skip
    return f"{parts.scheme}://{netloc}" + (f"/{HIDDEN}" if hidden else "")


def _needles(url: str) -> list[tuple[str, str]]:
    """(secret text, replacement) pairs for one URL, longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [(url, "<unparsable URL>")] if url else []
    shown = redact_url(url)
    pairs: list[tuple[str, str]] = []
    if url and shown != url:
        pairs.append((url, shown))
        pairs.append((url.rstrip("/"), shown))
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        pairs.append((userinfo + "@", ""))
        secret = parts.password if parts.password is not None else parts.username
        for form in {secret or "", unquote(secret or "")}:
            if len(form) >= 3:
                pairs.append((form, HIDDEN))
    path = parts.path
    if path not in ("", "/"):
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        pairs.append((origin + path, shown))
        for form in {path, unquote(path), quote(unquote(path))}:
            pairs.append((form.rstrip("/"), "/" + HIDDEN))
        for segment in path.split("/"):
            for form in {segment, unquote(segment)}:
                if len(form) >= _MIN_TOKEN:
                    pairs.append((form, HIDDEN))
    if parts.query:
        pairs.append((parts.query, HIDDEN))
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            for form in {value, quote(value, safe="")}:
                if len(form) >= 3:
                    pairs.append((f"{key}={form}", f"{key}={HIDDEN}"))
                if len(form) >= _MIN_TOKEN:
                    pairs.append((form, HIDDEN))
    if parts.fragment:
        pairs.append(("#" + parts.fragment, ""))
    pairs = [(needle, repl) for needle, repl in pairs if needle]
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def scrub(text: str, *urls: str | None) -> str:
    """`text` without the secrets of `urls` (userinfo, path, query) nor any URL's userinfo."""
    for url in urls:
        if not url:
            continue
        for needle, replacement in _needles(url):
            text = text.replace(needle, replacement)
    return _USERINFO.sub(r"\g<scheme>", text)


# --- logging -----------------------------------------------------------------------------

_lock = threading.Lock()
_registered: dict[str, list[tuple[str, str]]] = {}
_installed = False
_previous_factory: Callable[..., logging.LogRecord] | None = None


def _has_secrets(url: str) -> bool:
    return redact_url(url) != url.rstrip("/")


def register(url: str | None) -> None:
    """Scrub this URL's secrets from log records from now on (installs the filter if needed)."""
    if not url or not _has_secrets(url):
        return
    if url not in _registered:
        with _lock:
            _registered[url] = _needles(url)
    install()


def _scrub_registered(text: str) -> str:
    for needles in list(_registered.values()):
        for needle, replacement in needles:
            if needle in text:
                text = text.replace(needle, replacement)
    return _USERINFO.sub(r"\g<scheme>", text)


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in LOGGERS)


_FORMATTER = logging.Formatter()


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub one record in place: its message (arguments merged in) and exception text."""
    if getattr(record, "_fedchain_scrubbed", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string: leave it to logging to report
        return record
    clean = _scrub_registered(message)
    if clean != message or record.args:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = _scrub_registered(record.exc_text)
    if record.stack_info:
        record.stack_info = _scrub_registered(record.stack_info)
    setattr(record, "_fedchain_scrubbed", True)  # noqa: B010 - not a LogRecord field
    return record


class RedactingFilter(logging.Filter):
    """Scrubs registered secrets (and any URL's userinfo) from records; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ours(record.name):
            scrub_record(record)
        return True


FILTER = RedactingFilter()


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    record = _previous_factory(*args, **kwargs)
    if _ours(record.name):
        scrub_record(record)
    return record


def _handlers() -> Iterable[logging.Handler]:
    yield from logging.getLogger().handlers
    for name in LOGGERS:
        yield from logging.getLogger(name).handlers


def install() -> None:
    """Scrub the records of fedchain's and the HTTP libraries' loggers (idempotent)."""
    global _installed, _previous_factory
    with _lock:
        for handler in _handlers():
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)
        if _installed:
            return
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_factory)
        _installed = True
