"""Content stores: `open_store(url)` → a ContentStore that puts bytes and gets them back by CID.

URLs: `embedded` (LocalStore in the default directory), `file:///abs/dir` (LocalStore in that
directory), `http://host:5001` (KuboStore: an IPFS node's Kubo RPC API).

Every store returns the CID `ipfs add --cid-version=1` gives, and every `get` recomputes the
CID of the bytes it received and raises ContentMismatch if they do not match, whoever served
them. CIDs not in fedchain's canonical form (CIDv1, sha2-256, raw or dag-pb) are refused with
InvalidCID before anything is fetched.

Every fetch is bounded in bytes and in time (see fedchain.storage.fetch): `get(cid,
max_bytes=None, timeout=None)` refuses content declared or found larger than `max_bytes`
(2 GiB by default) with ContentTooLarge, before fetching it where the store can read the
declared size first, and raises FetchTimeout when the content has not all arrived by its
deadline (by default derived from the size: `DeadlinePolicy`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from ..errors import ConfigError, StorageError, StoreUnavailable
from .cid import CID
from .fetch import DEFAULT_MAX_BYTES, DeadlinePolicy
from .store import ContentStore
from .unixfs import cid_of

__all__ = [
    "CID",
    "DEFAULT_MAX_BYTES",
    "ContentStore",
    "DeadlinePolicy",
    "check_reachable",
    "cid_of",
    "open_store",
]


def open_store(url: str) -> ContentStore:
    """The content store a URL names: `embedded`, `file:///dir` or `http(s)://host:port`."""
    from ..redact import redact_url
    from .kubo import KuboStore
    from .local import LocalStore

    if url == "embedded":
        return LocalStore()
    shown = redact_url(url) if "@" in url or "?" in url else url  # no credentials in messages
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"store URL {shown!r}: file URLs must be local (file:///abs/dir)"
            )
        return LocalStore(unquote(parsed.path))
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return KuboStore(url)
    raise ConfigError(
        f"store URL {shown!r} not understood: use 'embedded', 'file:///abs/dir' "
        "or an IPFS node's RPC API, e.g. 'http://127.0.0.1:5001'"
    )


def check_reachable(store: ContentStore, source: str = "") -> None:
    """Fails fast when `store` is an IPFS node that does not answer (a dead or mistyped URL),
    with StoreUnavailable naming the URL and what to check, instead of the long loops
    retrying it for minutes. Other stores (directories) are always there."""
    from .kubo import KuboStore

    if not isinstance(store, KuboStore):
        return
    probe = KuboStore(store._secret_url, retries=1, connect_timeout=3.0, timeout=10.0)
    try:
        probe.version()
    except StorageError as exc:
        where = f" ({source})" if source else ""
        raise StoreUnavailable(
            f"no IPFS node answers at {store.url}{where}: {exc}. Is the node running "
            "(`fedchain devnet` starts one at http://127.0.0.1:5001)? Check the URL's host and "
            "port: an IPFS node's RPC API is usually port 5001, not the gateway's 8080",
            url=store.url) from None
    finally:
        probe.close()
