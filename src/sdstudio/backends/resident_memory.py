"""Give memory back to the system: resident pages of read-only file mappings, freed heap.

OpenVINO maps a cached graph's ``.bin`` (``ENABLE_MMAP``, read-only, shared) and its CPU plugin
repacks every weight into its own blocked layout on the graph's first inference; the mapping stays
resident beside the repacked copy, so the SD 1.5 UNet (1.7 GB of bf16 weights) was held twice:
5.5 GiB peak RSS at 512 px against 3.2 GiB on PyTorch (BENCHMARKS.md run 6). The plugin never reads
the originals again once repacked (measured: a second and a third input shape re-touched <0.1 GB).

``madvise(MADV_DONTNEED)`` on a shared read-only file mapping drops this process's page-table
entries only: the data stay in the kernel's page cache and a later read faults them back in,
unchanged (madvise(2)), so dropping is always safe for such a mapping; writable mappings are never
touched. :func:`releasing_mapped_pages` runs the drop every few milliseconds while a block runs, so
the mapped pages never accumulate during the repack (peak RSS of the UNet's first inference
3.8 -> 1.8 GiB), and once more at the end. Linux only; elsewhere it does nothing.

:func:`trim_heap` asks glibc to return freed heap to the system (``malloc_trim(3)``): the PyTorch
UNet's weights are freed in many pieces under glibc's mmap threshold, and without a trim their
1.4 GB stayed resident after the OpenVINO graph replaced them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

MADV_DONTNEED = 4  # <sys/mman.h> on Linux
DROP_INTERVAL_S = 0.02


@functools.cache
def _libc():
    """The C library, loaded once (None where it is not glibc/Linux; ``find_library`` runs ldconfig)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def trim_heap() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``); False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


@functools.cache
def _madvise():
    """libc's ``madvise`` (None where there is none: not Linux, no libc)."""
    libc = _libc()
    if libc is None:
        return None
    fn = libc.madvise
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def read_only_mappings(path: str | Path, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of ``path`` that are not writable."""
    target = str(Path(path).resolve())
    found = []
    try:
        lines = Path(maps).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end - start))
    return found


def drop_mapped_pages(path: str | Path) -> int:
    """Drop the resident pages of this process's read-only mappings of ``path``; returns bytes covered."""
    madvise = _madvise()
    if madvise is None:
        return 0
    covered = 0
    for start, length in read_only_mappings(path):
        if madvise(start, length, MADV_DONTNEED) == 0:
            covered += length
    return covered


@contextlib.contextmanager
def releasing_mapped_pages(paths: list[Path]) -> Iterator[None]:
    """Keep the read-only mappings of ``paths`` from staying resident while the block runs."""
    if not paths or _madvise() is None:
        yield
        return
    stop = threading.Event()

    def drop_all() -> None:
        for path in paths:
            drop_mapped_pages(path)

    def loop() -> None:
        while not stop.wait(DROP_INTERVAL_S):
            drop_all()

    worker = threading.Thread(target=loop, name="sdstudio-drop-pages", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        drop_all()
