"""Compiled loops for the bounded means' float64 sweeps (SPEC §8.5 clip, §8.15 align).

The default strategy reads its round three times (norms; direction and cosines; the fold),
each time converting, subtracting and summing in float64. In numpy each of those steps is a
pass over a block with a temporary; `_kernels.c` does a block's work for a group of updates
in one loop per step, with the SPEC's operations in the SPEC's order, so the bits are the
ones the numpy path (and a third party following SPEC.md) computes — on any CPU: the build
forbids fused multiply-adds and reordering, and vector lanes round as scalars do.

The library is built on first use with the machine's C compiler (`$CC`, else `cc`) into
fedchain's cache directory (`$FEDCHAIN_CACHE`, else `$XDG_CACHE_HOME/fedchain`, else
`~/.cache/fedchain`), named by a hash of the source, the flags and the machine, and checked
against the numpy path on a small round before it is used (`streaming.compiled_kernels`
passes that check to `kernels`). Without a compiler, when the build or that check fails, or
with `FEDCHAIN_KERNELS=0`, the sweeps run in numpy: slower, the same bits. `make setup`
builds it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Kernels", "build", "kernels"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_kernels.c")
#: -ffp-contract=off: no fused multiply-add (GCC fuses by default where the CPU has one);
#: no -ffast-math or -Ofast: no reordering, no flush of subnormals.
FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
         "-fexcess-precision=standard")
_VERSION = 1

_P = ctypes.c_void_p
_D = ctypes.c_double
_S = ctypes.c_size_t
_I = ctypes.c_int


class Kernels:
    """The loaded library: one function per step and dtype (`float32`, `float64`)."""

    DTYPES: tuple[np.dtype[Any], ...] = (np.dtype(np.float32), np.dtype(np.float64))

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        self.path = path
        if lib.fc_version() != _VERSION:
            raise OSError(f"{path} is version {lib.fc_version()}, not {_VERSION}")
        self.sqsums: dict[np.dtype[Any], Any] = {}
        self.direction: dict[np.dtype[Any], Any] = {}
        self.dots: dict[np.dtype[Any], Any] = {}
        self.fold: dict[np.dtype[Any], Any] = {}
        self.finish: dict[np.dtype[Any], Any] = {}
        for dtype, suffix in zip(self.DTYPES, ("f32", "f64"), strict=True):
            self.sqsums[dtype] = _fn(lib, f"fc_sqsums_{suffix}", None, _I, _P, _P, _S, _P, _P)
            self.direction[dtype] = _fn(lib, f"fc_direction_{suffix}", None,
                                        _I, _P, _P, _S, _P, _P)
            self.dots[dtype] = _fn(lib, f"fc_dots_{suffix}", None, _I, _P, _P, _S, _P, _P, _P)
            self.fold[dtype] = _fn(lib, f"fc_fold_{suffix}", None, _I, _P, _P, _S, _P, _P)
            self.finish[dtype] = _fn(lib, f"fc_finish_{suffix}", None, _P, _P, _S, _D, _P)
        self.squares = _fn(lib, "fc_squares", _D, _P, _S, _P)


def _fn(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


def _cache_dir() -> Path:
    if os.environ.get("FEDCHAIN_CACHE"):
        return Path(os.environ["FEDCHAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedchain"


def _compiler() -> str | None:
    """The C compiler's command line: $CC (which may carry flags, as make's does), else cc."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return cc or None


def _name(extra: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update("\0".join(FLAGS + extra).encode())
    digest.update(f"{platform.machine()}\0{sys.platform}\0{_compiler()}".encode())
    return f"kernels-{digest.hexdigest()[:20]}.so"


def build(directory: Path | None = None, extra: tuple[str, ...] = ()) -> Path:
    """Compiles `_kernels.c` into `directory` (the cache directory by default), unless it is
    there already; returns the library's path. `extra`: more compiler flags (the tests build
    a copy without the AVX2 clones with `-DFEDCHAIN_NO_CLONES`). Raises OSError or
    CalledProcessError (its stderr has the compiler's message)."""
    directory = directory or _cache_dir()
    target = directory / _name(extra)
    if target.exists():
        return target
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (set CC, or install cc)")
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        subprocess.run([*shlex.split(cc), *FLAGS, *extra, "-o", partial, str(SOURCE)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(partial, target)  # atomic: processes building at once each get a whole one
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _build_some(directory: Path) -> Path:
    """`build`, and where the compiler or the platform refuses the AVX2 clones (they need
    ELF's ifunc: not on macOS, not with every compiler), a build without them."""
    try:
        return build(directory)
    except subprocess.CalledProcessError:
        return build(directory, extra=("-DFEDCHAIN_NO_CLONES",))


_lock = threading.Lock()
_loaded: list[Kernels | None] = []


Check = Callable[[Kernels], "str | None"]


def kernels(check: Check) -> Kernels | None:
    """The compiled kernels, built and passed through `check` (which returns what is wrong
    with them, or None) on first use; None where they cannot be had (see the module
    docstring), or with FEDCHAIN_KERNELS=0."""
    if os.environ.get("FEDCHAIN_KERNELS", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            _loaded.append(_load(check))
    return _loaded[0]


def _load(check: Check) -> Kernels | None:
    failures = []
    directories = [_cache_dir()]
    if not os.environ.get("FEDCHAIN_CACHE"):  # a read-only home: the temporary directory
        directories.append(Path(tempfile.gettempdir()) / f"fedchain-{os.getuid()}")
    for directory in directories:
        try:
            lib = Kernels(_build_some(directory))
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            failures.append(f"{directory}: {exc} {detail}".strip())
            continue
        try:
            problem = check(lib)
        except Exception as exc:  # noqa: BLE001 - a broken library must not break a round
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return lib
        failures.append(f"{lib.path}: {problem}")
    log.info("the compiled sweeps are not available (the bounded means run in numpy, slower, "
             "with the same results): %s", "; ".join(failures))
    return None
