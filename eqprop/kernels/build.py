"""Compile eqprop's C kernels on first use and cache the shared library per machine.

The library is built with the system C compiler (`$CC`, else `cc`) at -O3 -march=native, into
`$EQPROP_KERNEL_CACHE` (else `$XDG_CACHE_HOME/eqprop/kernels`, else `~/.cache/eqprop/kernels`).
Its file name hashes the sources, the flags, the compiler's version and the CPU's feature flags:
a home directory shared by cluster nodes of different CPUs then holds one build per kind of node
(a -march=native build loaded on an older CPU would die of an illegal instruction).

That name is predictable by anyone, so the cache is trusted only when nobody else can write to it
(a shared cluster): the cache dir is created 0700, and a dir or library that is not owned by this
user, is group- or world-writable, or is a symbolic link is never loaded. A library is opened once
(no symlink followed), checked on that open file, and the checked file itself is loaded through
/proc/self/fd: nothing can swap it between the check and the load. A refused library is replaced by
a fresh build; in a refused dir, eqprop builds in a private temp dir for this process only. Builds
are compiled in a private temp dir and renamed into place, so concurrent jobs never load a
half-written library.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = ("dense_relax.c", "dense_relax_body.h")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11"]
UNSAFE_MODE = stat.S_IWGRP | stat.S_IWOTH

_lib = None
_error = None
_origin = None  # where the loaded library came from, for messages
_fd = None      # the loaded library's open file: kept so /proc/self/fd/<n> never names another file


class Untrusted(Exception):
    """A cache dir or library that someone else could have written."""


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


def _check_owned(fd: int, what: str, is_kind) -> None:
    st = os.fstat(fd)
    if not is_kind(st.st_mode):
        raise Untrusted(f"{what} is not a {'directory' if is_kind is stat.S_ISDIR else 'regular file'}")
    if st.st_uid != os.geteuid():
        raise Untrusted(f"{what} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
    if st.st_mode & UNSAFE_MODE:
        raise Untrusted(f"{what} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})")


def _open_checked(name, what: str, dir_fd=None, directory=False) -> int:
    """Open without following a symbolic link, and check the open file: FileNotFoundError if there
    is none, Untrusted if it is not this user's own private dir / file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        if os.path.islink(name if dir_fd is None else f"/proc/self/fd/{dir_fd}/{name}"):
            raise Untrusted(f"{what} is a symbolic link") from None
        raise Untrusted(f"{what} cannot be opened ({err.strerror})") from None
    try:
        _check_owned(fd, what, stat.S_ISDIR if directory else stat.S_ISREG)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private_cache_dir(cache: Path):
    """The cache dir, created 0700 if missing, opened and checked; None (with the reason logged)
    when it is not this user's own private dir."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.mkdir(mode=0o700, exist_ok=True)
        return _open_checked(cache, f"kernel cache dir {cache}", directory=True)
    except (Untrusted, OSError) as err:
        log.warning("eqprop: not using the kernel cache: %s; building the kernel in a private temp dir for "
                    "this process instead (point EQPROP_KERNEL_CACHE at a dir of your own, mode 0700, to "
                    "cache it)", err)
        return None


def _dlopen(fd: int, origin: str):
    """Load the file open as `fd` itself (the one that was checked), not whatever its path names now."""
    global _fd, _origin
    if not os.path.isdir("/proc/self/fd"):
        raise RuntimeError("loading the kernel safely needs /proc/self/fd (Linux)")
    lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    _fd, _origin = fd, origin
    return lib


def _compile(cc: str, out: str) -> None:
    base = [cc, *FLAGS, "-I", str(HERE), str(HERE / SOURCES[0]), "-o", out]
    # with glibc's vector exp first (x86-64); without it if this libc has none
    variants = ([["-DEQPROP_MVEC", "-lmvec", "-lm"]] if platform.machine() == "x86_64" else []) + [["-lm"]]
    for extra in variants:
        cmd = base + extra
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode == 0:
            return
    raise RuntimeError(f"compiling the dense relaxation kernel failed:\n$ {' '.join(cmd)}\n{res.stderr[-2000:]}")


def _build_and_load(cc: str, name: str, cache_fd, cache: Path):
    """Compile into a new private temp dir (inside the cache when it is trusted: same file system,
    so the rename into place is atomic), open and check the result, load that open file, and
    publish it in the cache."""
    parent = f"/proc/self/fd/{cache_fd}" if cache_fd is not None else None  # the dir checked, not its path
    work = tempfile.mkdtemp(prefix=".build-", dir=parent)
    # the compiler gets a path; what it wrote is then found through the work dir's open fd
    out_dir = str(cache / os.path.basename(work)) if cache_fd is not None else work
    try:
        work_fd = _open_checked(work, f"build dir {out_dir}", directory=True)
        try:
            _compile(cc, os.path.join(out_dir, name))
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=work_fd)
            try:
                if os.fstat(fd).st_uid == os.geteuid():  # the linker applies the umask (0775 under umask 002)
                    os.fchmod(fd, 0o700)
                _check_owned(fd, f"the library just built in {out_dir}", stat.S_ISREG)
                lib = _dlopen(fd, str(cache / name) if cache_fd is not None else f"a private build in {work}")
            except BaseException:
                os.close(fd)
                raise
            if cache_fd is not None:
                os.replace(name, name, src_dir_fd=work_fd, dst_dir_fd=cache_fd)
            return lib
        finally:
            os.close(work_fd)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build():
    cc, version = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found ({os.environ.get('CC', 'cc')!r} is not on PATH; "
                           "install gcc or set CC, or set dynamics.native=false)")
    target = library_path(version)
    cache_fd = _private_cache_dir(target.parent)
    try:
        if cache_fd is not None:
            try:
                fd = _open_checked(target.name, f"cached kernel {target}", dir_fd=cache_fd)
            except FileNotFoundError:
                pass
            except Untrusted as err:
                log.warning("eqprop: not loading %s; replacing it with a fresh build", err)
            else:
                try:
                    return _dlopen(fd, str(target))
                except BaseException:
                    os.close(fd)
                    raise
        return _build_and_load(cc, target.name, cache_fd, target.parent)
    finally:
        if cache_fd is not None:
            os.close(cache_fd)


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


def origin():
    """Where the loaded library came from: its cache path, or a private build."""
    return _origin
