"""Compile eqprop's C kernels on first use and cache the shared library per machine.

The library is built with the system C compiler (`$CC`, else `cc`) at -O3 -march=native, into
`$EQPROP_KERNEL_CACHE` (else `$XDG_CACHE_HOME/eqprop/kernels`, else `~/.cache/eqprop/kernels`).
Its file name hashes the sources, the flags, the compiler's version and the CPU's feature flags:
a home directory shared by cluster nodes of different CPUs then holds one build per kind of node
(a -march=native build loaded on an older CPU would die of an illegal instruction). The build
writes a temporary file and renames it, so concurrent jobs never load a half-written library.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("dense_relax.c", "dense_relax_body.h")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11"]

_lib = None
_error = None


def cache_dir() -> Path:
    env = os.environ.get("EQPROP_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eqprop" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler():
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        return None, None
    out = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path, (out.stdout.splitlines() or [""])[0]


def library_path(cc_version: str) -> Path:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    h.update(" ".join(FLAGS).encode())
    h.update(cc_version.encode())
    h.update(_cpu_flags().encode())
    h.update(platform.machine().encode())
    return cache_dir() / f"dense_relax-{h.hexdigest()[:16]}.so"


def _build():
    cc, version = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found ({os.environ.get('CC', 'cc')!r} is not on PATH; "
                           "install gcc or set CC, or set dynamics.native=false)")
    target = library_path(version)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            base = [cc, *FLAGS, "-I", str(HERE), str(HERE / SOURCES[0]), "-o", tmp]
            # with glibc's vector exp first (x86-64); without it if this libc has none
            variants = ([["-DEQPROP_MVEC", "-lmvec", "-lm"]] if platform.machine() == "x86_64" else []) + [["-lm"]]
            for extra in variants:
                cmd = base + extra
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode == 0:
                    break
            else:
                raise RuntimeError(f"compiling the dense relaxation kernel failed:\n$ {' '.join(cmd)}\n"
                                   f"{out.stderr[-2000:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(target))


def load():
    """The kernel library (ctypes.CDLL), built if needed; None if it cannot be built (the reason is
    warned once and kept in `error()`), and the caller falls back to the torch path."""
    global _lib, _error
    if _lib is None and _error is None:
        try:
            _lib = _build()
        except (OSError, RuntimeError) as e:
            _error = str(e)
            warnings.warn(f"eqprop: native dense kernel unavailable, relaxing with torch ops instead: {e}",
                          RuntimeWarning, stacklevel=2)
    return _lib


def error():
    return _error
