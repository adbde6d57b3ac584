"""The C memory allocator of the job's worker processes, set through their environment at start.

glibc's malloc serves blocks above its mmap threshold (up to 32 MiB) with fresh mmaps and gives every
such block back to the kernel on free. A CPU model forward allocates and frees the same large
activations on every image, so each image re-faults about a million zeroed pages (system time of
seconds per image). Environment variables only act when a process starts, so they are set per Ray
worker through the runtime_env (``ray_runtime_env``) rather than in the driver.

Settings (``MCLD_DATA_ALLOCATOR``; measured in docs/CLUSTER.md):

- ``glibc-tuned`` (the default): glibc with ``MALLOC_MMAP_MAX_=0`` (large blocks from the heap too) and
  ``MALLOC_TRIM_THRESHOLD_`` high (freed heap is kept for the next image). Needs nothing installed.
- ``jemalloc`` / ``tcmalloc``: Debian's libjemalloc2 / libtcmalloc-minimal4 through ``LD_PRELOAD``; where
  the library is missing, glibc-tuned with a logged note.
- ``glibc``: leave the process alone.

Outputs do not depend on the allocator (tests/preprocess/job/test_allocator.py).
"""

from __future__ import annotations

import ctypes.util
import glob
import logging
import os
from typing import Literal

log = logging.getLogger(__name__)

ENV_VAR = "MCLD_DATA_ALLOCATOR"
Allocator = Literal["glibc-tuned", "jemalloc", "tcmalloc", "glibc"]
CHOICES: tuple[str, ...] = ("glibc-tuned", "jemalloc", "tcmalloc", "glibc")
DEFAULT: Allocator = "glibc-tuned"

# Large enough that glibc never trims the heap or maps a block by itself (1 TB).
GLIBC_TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}
LIBRARIES = {"jemalloc": ("jemalloc", "libjemalloc.so.2", "libjemalloc2"),
             "tcmalloc": ("tcmalloc_minimal", "libtcmalloc_minimal.so.4", "libtcmalloc-minimal4")}


class AllocatorError(ValueError):
    pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
DRIVER_MMAP_THRESHOLD = 128 * 1024  # glibc's own default


def pin_driver_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold fixed in the driver. Planning a million images builds and drops numpy
    arrays of tens of MB; glibc raises its threshold to the size of each freed mapping, so later arrays come
    from the heap, where freed memory stays with the process (measured: 620 -> 450 MB of driver growth at
    1M images). Setting it explicitly turns that adjustment off. Where the C library has no mallopt (not
    glibc), or the user set MALLOC_MMAP_THRESHOLD_, nothing changes. Returns whether it was set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, DRIVER_MMAP_THRESHOLD))


def find_library(name: str) -> str | None:
    """The shared library's path for LD_PRELOAD (which needs a path or a name the loader resolves)."""
    lib, soname, _ = LIBRARIES[name]
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                   "/usr/local/lib", *glob.glob("/usr/lib/*-linux-gnu")):
        path = os.path.join(folder, soname)
        if os.path.exists(path):
            return path
    found = ctypes.util.find_library(lib)  # a bare soname: the dynamic loader finds it on its own path
    return found or None


def choice_from_env() -> str:
    value = os.environ.get(ENV_VAR, DEFAULT).strip().lower() or DEFAULT
    if value not in CHOICES:
        raise AllocatorError(f"{ENV_VAR}={value!r}: use one of {', '.join(CHOICES)}")
    return value


def allocator_env(choice: str | None = None) -> dict[str, str]:
    """The environment variables that give a new process the allocator ``choice`` (default: from
    ``MCLD_DATA_ALLOCATOR``, else glibc-tuned). A preload library that is not installed falls back to
    glibc-tuned with a logged note naming the Debian package."""
    choice = choice or choice_from_env()
    if choice not in CHOICES:
        raise AllocatorError(f"allocator {choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "glibc":
        return {}
    if choice in LIBRARIES:
        path = find_library(choice)
        if path:
            return {"LD_PRELOAD": path}
        log.warning("%s is not installed (Debian: apt-get install %s); the workers use glibc with %s instead",
                    choice, LIBRARIES[choice][2], " ".join(f"{k}={v}" for k, v in GLIBC_TUNED.items()))
    return dict(GLIBC_TUNED)


def shell_exports(choice: str | None = None) -> str:
    """`export ...` lines for a shell that starts another CPU process (a CPU training run):
    ``eval "$(python -m preprocess.job.allocator)"``."""
    return " ".join(f"export {k}={v};" for k, v in allocator_env(choice).items())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m preprocess.job.allocator",
                                     description="Print the shell exports that set the workers' allocator.")
    parser.add_argument("--allocator", choices=CHOICES, help=f"default: ${ENV_VAR} or {DEFAULT}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(shell_exports(args.allocator))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
