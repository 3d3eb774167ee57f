"""A hostile IPFS node for tests and bench/hostile.py: a fake Kubo RPC API that attacks.

`HostileKubo(mode)` serves `/api/v0/*` on 127.0.0.1 (a free port) from a thread, with the
stdlib's http.server. It holds a few real blocks (see `Blocks`) and answers each command
according to its mode:

    honest      serves its blocks as a node would (cat, block/get, block/stat, pin/add, ...)
    endless     `cat` streams without end
    dedup       honest blocks, but of a "dedup bomb": a valid canonical CID of a 1.29 TiB file
                whose DAG is 3 dag-pb blocks over one leaf linked 174**3 times; `cat` streams
                that leaf over and over, as a real node would
    drip        `cat` and `block/get` send their headers, then one byte every `interval` s
    silent      accepts connections and reads requests, but never answers
    gzip        pin/add, block/stat, version, add (and cat) answer a gzip bomb (one gzip member
                of `bomb_bytes` zeros, Content-Encoding: gzip), whatever was asked
    wrong       `cat` and `block/get` serve other bytes than the CID's
    truncated   `cat` declares a Content-Length and closes the connection half-way
    missing     JSON replies without the keys fedchain reads (version without Version, add
                without Hash)
    error500    every command answers HTTP 500 with Kubo's JSON error (a 16 MiB one for cat)

`requests` lists the commands received, `headers` the last request's headers.
`RateLimited` is a fake JSON-RPC chain node that answers every request with HTTP 429.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from fedchain.storage.cid import CID, DAG_PB, RAW
from fedchain.storage.dagpb import CHUNK_SIZE, MAX_LINKS, encode_file_node

MODES = (
    "honest", "endless", "dedup", "drip", "silent", "gzip", "wrong", "truncated", "missing",
    "error500",
)  # fmt: skip

LEAF = bytes(range(256)) * (CHUNK_SIZE // 256)  # one full chunk


def _raw(data: bytes) -> CID:
    return CID.v1(RAW, hashlib.sha256(data).digest())


def _node(children: list[tuple[CID, int, int]]) -> tuple[CID, bytes, int, int]:
    """(cid, block, tsize, filesize) of a file node over (cid, tsize, filesize) children."""
    block = encode_file_node(children)
    cid = CID.v1(DAG_PB, hashlib.sha256(block).digest())
    return cid, block, len(block) + sum(t for _, t, _ in children), sum(f for _, _, f in children)


@dataclass
class Blocks:
    """Real blocks the node holds, and the files (CID → how `cat` streams them) they make."""

    blocks: dict[str, bytes] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # declared file sizes

    def __post_init__(self) -> None:
        leaf = _raw(LEAF)
        self.blocks[str(leaf)] = LEAF
        self.sizes[str(leaf)] = CHUNK_SIZE
        self.leaf = leaf
        # A small file: 10 copies of the leaf, a canonical 2-level DAG (2.5 MiB).
        self.small, block, _, size = _node([(leaf, CHUNK_SIZE, CHUNK_SIZE)] * 10)
        self.blocks[str(self.small)] = block
        self.sizes[str(self.small)] = size
        # The dedup bomb: 174**3 leaves, 3 dag-pb blocks.
        child: tuple[CID, int, int] = (leaf, CHUNK_SIZE, CHUNK_SIZE)
        for _ in range(3):
            cid, block, tsize, size = _node([child] * MAX_LINKS)
            self.blocks[str(cid)] = block
            child = (cid, tsize, size)
        self.bomb = child[0]
        self.sizes[str(self.bomb)] = child[2]

    def content(self, cid: str) -> Iterator[bytes]:
        """The file bytes of a CID this node knows: its leaf repeated, `size` bytes in all."""
        left = self.sizes[cid]
        while left > 0:
            piece = LEAF[: min(left, CHUNK_SIZE)]
            left -= len(piece)
            yield piece


BLOCKS = Blocks()


def gzip_bomb(size: int) -> bytes:
    """One valid gzip member that inflates to `size` zero bytes (~ size / 1000 bytes of it).

    Built without deflating `size` bytes: after a full flush the deflate state is reset, so
    every further MiB of zeros compresses to the same bytes, which are repeated.
    """
    mib = 1024 * 1024
    zeros = bytes(mib)
    count = max(1, size // mib)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.flush()[:-8]  # the final block, without the trailer computed for 2 MiB
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (count * mib) & 0xFFFFFFFF)
    return first + again * (count - 1) + end + trailer


_BOMBS: dict[int, bytes] = {}
_BOMBS_LOCK = threading.Lock()


def cached_bomb(size: int) -> bytes:
    with _BOMBS_LOCK:
        if size not in _BOMBS:
            _BOMBS[size] = gzip_bomb(size)
        return _BOMBS[size]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-request is what these tests provoke


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        owner = self.server.owner
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        cmd = parts.path.removeprefix("/api/v0/")
        owner.requests.append(cmd)
        owner.headers = dict(self.headers)
        owner.paths.append(self.path)
        body = self._body()
        with contextlib.suppress(OSError):  # the client hung up: it gave up, as it should
            owner.answer(self, cmd, query, body)

    do_GET = do_POST  # noqa: N815

    # -- answers ---------------------------------------------------------------------------

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, value: Any) -> None:
        self.send(status, json.dumps(value).encode() + b"\n")

    def stream(self, chunks: Iterator[bytes], interval: float = 0.0) -> None:
        """A body delimited by closing the connection, written chunk by chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        stop = self.server.owner.stopping
        for chunk in chunks:
            if stop.is_set():
                return
            self.wfile.write(chunk)
            self.wfile.flush()
            if interval:
                stop.wait(interval)


class HostileKubo:
    """A fake Kubo RPC node on 127.0.0.1 that answers according to `mode` (see the module)."""

    def __init__(
        self, mode: str = "honest", *, interval: float = 2.0, bomb_bytes: int = 1024**3
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: {MODES}")
        self.mode = mode
        self.interval = interval
        self.bomb_bytes = bomb_bytes
        self.blocks = BLOCKS
        self.requests: list[str] = []
        self.paths: list[str] = []
        self.headers: dict[str, str] = {}
        self.stopping = threading.Event()
        if mode == "gzip":
            cached_bomb(bomb_bytes)  # built before the test measures time
        self._huge_error = b""
        if mode == "error500":  # built before the test measures memory
            self._huge_error = json.dumps({"Message": "x" * 16 * 1024**2, "Type": "error"}).encode()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the node answers ---------------------------------------------------------------

    def answer(self, h: _Handler, cmd: str, q: dict[str, str], body: bytes) -> None:
        mode, arg = self.mode, q.get("arg", "")
        if mode == "silent":
            self.stopping.wait(3600)
            return
        if mode == "error500":
            if cmd == "cat":
                h.send(500, self._huge_error)
            else:
                h.send_json(500, {"Message": "pin: context canceled", "Code": 0, "Type": "error"})
            return
        if mode == "gzip" and cmd in ("pin/add", "block/stat", "version", "add", "cat"):
            h.send(200, cached_bomb(self.bomb_bytes), headers={"Content-Encoding": "gzip"})
            return
        if mode == "missing" and cmd in ("version", "add", "pin/add", "block/stat"):
            h.send_json(200, {"Name": "model"} if cmd == "add" else {})
            return
        if cmd == "version":
            h.send_json(200, {"Version": "0.0.1-hostile"})
        elif cmd == "block/get":
            self._block_get(h, arg)
        elif cmd == "cat":
            self._cat(h, arg)
        elif cmd in ("pin/add", "block/stat"):
            if arg in self.blocks.blocks:
                h.send_json(200, {"Pins": [arg]} if cmd == "pin/add" else {"Key": arg, "Size": 1})
            else:
                h.send_json(500, {"Message": f"could not find {arg}", "Code": 0, "Type": "error"})
        elif cmd == "add":
            h.send_json(200, {"Name": "model", "Hash": str(self.blocks.small), "Size": "1"})
        else:
            h.send(404, b"404 page not found", "text/plain")

    def _block_get(self, h: _Handler, arg: str) -> None:
        block = self.blocks.blocks.get(arg)
        if block is None:
            h.send_json(500, {"Message": f"could not find {arg}", "Code": 0, "Type": "error"})
        elif self.mode == "drip":
            h.stream(iter(lambda: b"\0", None), self.interval)
        elif self.mode == "wrong":
            h.send(200, block[::-1], "text/plain")
        else:
            h.send(200, block, "text/plain")

    def _cat(self, h: _Handler, arg: str) -> None:
        mode = self.mode
        if arg not in self.blocks.sizes and mode != "endless":
            h.send_json(500, {"Message": f"could not find {arg}", "Code": 0, "Type": "error"})
            return
        if mode == "endless":
            h.stream(iter(lambda: LEAF * 4, None))
        elif mode == "drip":
            h.stream(iter(lambda: b"\0", None), self.interval)
        elif mode == "wrong":
            h.stream(bytes(len(c)) for c in self.blocks.content(arg))
        elif mode == "truncated":
            size = min(self.blocks.sizes[arg], 4 * CHUNK_SIZE)
            h.send_response(200)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(size))
            h.end_headers()
            h.wfile.write(LEAF[: size // 3])
            h.wfile.flush()
            h.close_connection = True
        else:  # honest and dedup: the real content, however large
            h.stream(self.blocks.content(arg))


class RateLimited:
    """A fake JSON-RPC node answering HTTP 429 to everything, as a public RPC over quota does."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                owner.paths.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b'{"jsonrpc":"2.0","error":{"code":429,"message":"Too Many Requests"}}'
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- measuring -----------------------------------------------------------------------------


def _status(field_name: str) -> int:
    """A /proc/self/status field in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRSS:
    """Peak resident memory above the starting point while the block runs, in bytes.

    Resets the kernel's high-water mark (VmHWM, via /proc/self/clear_refs) where allowed, and
    samples VmRSS every 5 ms besides, so a peak is seen even where the reset is refused.
    """

    def __enter__(self) -> Self:
        self.start = _status("VmRSS")
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.sampled = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.monotonic()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.sampled = max(self.sampled, _status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.t0
        self._done.set()
        self._thread.join()
        peak = max(self.sampled, _status("VmRSS"))
        if self.reset:
            peak = max(peak, _status("VmHWM"))
        self.extra = max(0, peak - self.start)
