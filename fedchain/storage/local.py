"""LocalStore: whole files keyed by their CID in a directory, shareable by local processes.

The store keeps each file whole (not split into IPFS blocks) at `<dir>/files/<xy>/<cid>`,
where `xy` are the CID's last two characters. The CID is the one `ipfs add --cid-version=1`
gives, so a LocalStore and an IPFS node agree on every model's CID.

`embedded` uses `$FEDCHAIN_STORE_DIR`, or else `$XDG_CACHE_HOME/fedchain/store` (by default
`~/.cache/fedchain/store`).

Crash safety: a file is written under `<dir>/tmp/`, flushed to disk, then renamed into place
with `os.replace`, which is atomic; so a reader sees either no file or the whole file, and a
killed writer leaves only a temporary file, which never has a CID's name (stale ones are
swept when a store is opened). Several processes may put and get concurrently: two writers
of the same CID both rename identical bytes into place. `get` re-verifies the bytes anyway,
so a file damaged on disk raises ContentMismatch instead of passing as the model.

Nothing is ever garbage-collected, so every stored file counts as pinned.

A file's size is its declared size: `get` refuses a file larger than its `max_bytes` before
reading any of it (and still counts the bytes it reads).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..errors import ContentNotFound, StoreUnavailable
from .cid import CID
from .fetch import DEFAULT_DEADLINES, Deadline, DeadlinePolicy
from .store import ContentStore, as_canonical
from .unixfs import CHUNK_SIZE, CidBuilder

#: Temporary files older than this belong to writers that died; younger ones may be live.
STALE_TMP_SECONDS = 24 * 3600


def default_dir() -> Path:
    """The directory of the `embedded` store."""
    if env := os.environ.get("FEDCHAIN_STORE_DIR"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fedchain" / "store"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


T = TypeVar("T")


class LocalStore(ContentStore):
    """Content-addressed files in a directory (see the module docstring)."""

    _threaded_reads = False  # local files: the deadline is checked between reads

    def __init__(
        self,
        directory: str | Path | None = None,
        read_size: int = 4 * CHUNK_SIZE,
        *,
        deadlines: DeadlinePolicy = DEFAULT_DEADLINES,
        durable: bool = True,
    ):
        self.root = Path(directory) if directory is not None else default_dir()
        #: Flush each file (and its directory) to disk before it counts as stored. False for
        #: a scratch store (a benchmark's, a test's): a file an OS crash cuts short is still
        #: never served, since every read re-verifies its bytes against the CID.
        self.durable = durable
        self.deadlines = deadlines
        self.url = self.root.resolve().as_uri()
        self._read_size = read_size
        self._files = self.root / "files"
        self._tmp = self.root / "tmp"
        try:
            self._files.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot use {self.root} as a store: {exc}") from exc
        self._sweep_stale()

    def _sweep_stale(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    def path_of(self, cid: CID | str) -> Path:
        """Where the file of a (canonical) CID is or would be kept."""
        text = str(as_canonical(cid))
        return self._files / text[-2:] / text

    def put_stream(self, chunks: Iterable[bytes]) -> CID:
        try:
            return self._put(chunks)
        except OSError as exc:  # a full disk, a permission, an I/O error
            raise StoreUnavailable(f"cannot write to the store at {self.root}: {exc}") from None

    def _put(self, chunks: Iterable[bytes]) -> CID:
        builder = CidBuilder()
        fd, tmp = tempfile.mkstemp(prefix="put-", suffix=".part", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    builder.update(chunk)
                    f.write(chunk)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            cid = builder.finish()
            target = self.path_of(cid)
            if target.exists():
                os.unlink(tmp)
                return cid
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
            if self.durable:
                _fsync_dir(target.parent)
            return cid
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _declared_size(self, cid: CID, deadline: Deadline) -> int | None:
        return self._file(cid, os.stat).st_size

    def _read(self, cid: CID, deadline: Deadline) -> Iterator[bytes]:
        # closed by the generator
        return self._chunks(self._file(cid, lambda path: open(path, "rb")))  # noqa: SIM115

    def _file(self, cid: CID, use: Callable[[Path], T]) -> T:
        """`use(path of cid)`, with a missing file as ContentNotFound, other I/O errors as
        StoreUnavailable."""
        try:
            return use(self.path_of(cid))
        except FileNotFoundError:
            raise ContentNotFound(f"{cid} is not in the store at {self.root}") from None
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot read {cid} from the store at {self.root}: {exc}"
            ) from None

    def _chunks(self, f: BinaryIO) -> Iterator[bytes]:
        with f:
            try:
                while chunk := f.read(self._read_size):
                    yield chunk
            except OSError as exc:
                raise StoreUnavailable(
                    f"reading from the store at {self.root} failed: {exc}"
                ) from None

    def pin(self, cid: CID | str) -> None:
        if not self.has(cid):
            raise ContentNotFound(f"cannot pin {cid}: it is not in the store at {self.root}")

    def has(self, cid: CID | str) -> bool:
        return self.path_of(cid).is_file()
