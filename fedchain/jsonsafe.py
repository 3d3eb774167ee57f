"""JSON from untrusted sources, parsed without crashing the process.

py-evm raises Python's recursion limit to 100,000 when it is imported (every fedchain process
that talks to a chain imports it), and the json module's C scanner recurses once per nesting
level under that limit: `json.loads("[" * 100_000)` then overflows the C stack and the process
dies with a segmentation fault instead of raising RecursionError. So JSON that comes from a
model file, a plan, an IPFS node or any other peer is first checked for its nesting depth
(linear time: strings removed by a regular expression, levels counted with numpy).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

__all__ = ["MAX_DEPTH", "TooDeep", "check_depth", "loads"]

#: The deepest nesting fedchain's own JSON needs is 4 or so.
MAX_DEPTH = 100

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BLOCK = 1 << 20


class TooDeep(ValueError):
    """JSON nested deeper than the limit (a ValueError, like every json parse error)."""


def check_depth(data: bytes | bytearray | memoryview, max_depth: int = MAX_DEPTH) -> None:
    """Raise TooDeep if the JSON text `data` nests arrays/objects deeper than `max_depth`.

    Brackets inside strings do not count. (Unbalanced or crossed brackets are left to the
    parser, which fails on them no deeper than this counts.)
    """
    data = bytes(data)
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    structure = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(structure), _BLOCK):
        brackets = np.frombuffer(structure, np.uint8, min(_BLOCK, len(structure) - start), start)
        steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
        levels = np.cumsum(steps, dtype=np.int64) + depth
        if int(levels.max()) > max_depth:
            raise TooDeep(f"JSON nested deeper than {max_depth} levels")
        depth = int(levels[-1])


def loads(
    data: str | bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH, **kwargs: Any
) -> Any:
    """`json.loads(data, **kwargs)` once `check_depth` passed; ValueError on bad JSON."""
    if isinstance(data, str):
        check_depth(data.encode("utf-8", "surrogatepass"), max_depth)
        return json.loads(data, **kwargs)
    raw = bytes(data)
    check_depth(raw, max_depth)
    return json.loads(raw, **kwargs)
