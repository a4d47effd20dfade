"""What edgepack asks of the operating system and the machine, for the converters, the runtime and
the tools alike: how many threads, which LiteRT API this CPU can run, handing freed heap back, and
keeping native libraries' own logging off the user's terminal, and where derived files are cached."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import sys
from pathlib import Path
from typing import Iterator

from edgepack.errors import EdgepackError

CACHE_ENV = "EDGEPACK_CACHE"  # a folder, or "off"
DEFAULT_CACHE = Path.home() / ".cache" / "edgepack"
LITERT_API_ENV = "EDGEPACK_LITERT_API"  # "compiled" | "interpreter": overrides litert_api()
THREADS_ENV = "EDGEPACK_THREADS"  # engines' thread count when none is given (default: the cores)
_AT_HWCAP = 16
_HWCAP_ATOMICS = 1 << 8  # arm64 <asm/hwcap.h>


def cache_root(env: dict | None = None) -> Path | None:
    """Where edgepack keeps derived files (a .litertlm's main model and packed weights, tokenizers
    converted from GGUF), by `env` (default: this process's environment); None when
    EDGEPACK_CACHE=off."""
    value = (os.environ if env is None else env).get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else DEFAULT_CACHE


def check_private_folder(folder: Path) -> None:
    """A cache folder and its parent must be this user's and writable by nobody else: what another
    user can write there, edgepack would load (a model, a tokenizer). Raises OSError if not."""
    for d in (folder, folder.parent):
        st = d.stat()
        if (hasattr(os, "geteuid") and st.st_uid != os.geteuid()) or st.st_mode & 0o022:
            raise OSError(errno.EPERM, f"{d} is writable by another user")


def lock_exclusive(f) -> None:
    """Blocks until this process holds `f`'s exclusive lock (released when `f` is closed): edgepack
    processes sharing a cache folder take turns. Without POSIX locks, no other process to race."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(f, fcntl.LOCK_EX)


def default_threads() -> int:
    """EDGEPACK_THREADS, or the cores this process may use (a Pi 4 has 4; containers may allow
    fewer). The variable is for processes that share the cores: two engines that each spread over
    all of them spin against each other."""
    value = os.environ.get(THREADS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise EdgepackError(f"{THREADS_ENV} must be a whole number >= 1, got {value!r}")
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def has_lse_atomics() -> bool:
    """True unless this is an arm64 core without LSE atomics (the kernel's HWCAP, which qemu-user
    also sets from the CPU model it emulates)."""
    if platform.machine().lower() not in ("aarch64", "arm64"):
        return True
    try:
        hwcap = ctypes.CDLL(None).getauxval(ctypes.c_ulong(_AT_HWCAP))
    except (AttributeError, OSError):
        return False  # can't tell: the interpreter runs everywhere
    return bool(hwcap & _HWCAP_ATOMICS)


def litert_api(env: dict | None = None) -> str:
    """'compiled' or 'interpreter': the LiteRT API a process with `env` (default: this one's) runs
    on this machine. A CompiledModel environment executes LSE atomics, which the Raspberry Pi 4's
    Cortex-A72 lacks (SIGILL); EDGEPACK_LITERT_API overrides the choice."""
    env = os.environ if env is None else env
    api = env.get(LITERT_API_ENV) or ("compiled" if has_lse_atomics() else "interpreter")
    if api not in ("compiled", "interpreter"):
        raise EdgepackError(f"{LITERT_API_ENV} must be 'compiled' or 'interpreter', got {api!r}")
    return api


def release_freed_heap() -> None:
    """Hands glibc's freed heap back to the kernel (a no-op elsewhere): what a process frees
    stays in its resident set until then."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for a while: LiteRT's C++ logger writes there
    directly and has no Python switch. Python errors still surface as exceptions."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def quiet_native_exit() -> None:
    """For a process that has said everything: native libraries' own lines at teardown (static
    destructors run after Python's last statement) go nowhere instead of to the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


# Libraries that log at WARNING about what is normal here: torchao (imported by transformers) about
# its CUDA kernels on a CPU machine, torch's pytree about enums it now supports. Their errors stay.
CHATTY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_third_party_logs() -> None:
    """For the CLI: the libraries' notices about themselves off the user's terminal."""
    import logging

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
