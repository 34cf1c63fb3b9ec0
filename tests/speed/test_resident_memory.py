"""Memory given back to the system: pages of read-only file mappings dropped (data unchanged), heap trimmed.

Real mappings of a real file, read through ``/proc/self/smaps``: the OpenVINO backend relies on a
dropped shared read-only mapping reading back the same bytes (madvise(2), MADV_DONTNEED).
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path

import pytest

from sdstudio.backends.resident_memory import (
    drop_mapped_pages,
    read_only_mappings,
    releasing_mapped_pages,
    trim_heap,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
SIZE = 8 * 2**20  # bytes


def resident_kib(path) -> int:
    """KiB of ``path``'s mappings resident in this process (summed ``Rss:`` of its smaps entries)."""
    total, inside = 0, False
    target = str(path.resolve())
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) == 6 and head[5] == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.fixture
def mapped(tmp_path):
    path = tmp_path / "weights.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # PROT_READ, MAP_SHARED
    yield path, view, data
    view.close()


def touch(view) -> int:
    return sum(view[i] for i in range(0, len(view), mmap.PAGESIZE))


def test_dropping_a_read_only_mapping_frees_its_pages_and_keeps_its_bytes(mapped):
    path, view, data = mapped
    touch(view)
    assert resident_kib(path) >= SIZE // 1024 * 0.9
    assert drop_mapped_pages(path) == SIZE
    assert resident_kib(path) == 0
    assert view[:] == data  # faulted back in from the page cache, unchanged
    assert resident_kib(path) >= SIZE // 1024 * 0.9


def test_writable_mappings_are_never_dropped(tmp_path):
    path = tmp_path / "scratch.bin"
    path.write_bytes(b"\0" * SIZE)
    with open(path, "r+b") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, writable
    view[:4] = b"edit"
    try:
        assert read_only_mappings(path) == []
        assert drop_mapped_pages(path) == 0
        assert view[:4] == b"edit"  # a private write survives: it would be lost if dropped
    finally:
        view.close()


def test_read_only_mappings_parses_maps_lines(tmp_path):
    target = (tmp_path / "w.bin").resolve()
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000100000 r--s 00000000 08:01 42 {target}\n"
        f"7f0000100000-7f0000200000 rw-p 00000000 08:01 42 {target}\n"
        "7f0000200000-7f0000300000 r--p 00000000 00:00 0\n"
        f"7f0000300000-7f0000301000 r--p 00000000 08:01 43 {target}.other\n"
    )
    assert read_only_mappings(target, maps=str(maps)) == [(0x7F0000000000, 0x100000)]


def test_pages_do_not_stay_resident_while_the_block_runs(mapped):
    path, view, data = mapped
    with releasing_mapped_pages([path]):
        for _ in range(3):  # read it all, as a repack would, then wait for the dropper
            assert view[:] == data
            deadline = time.monotonic() + 5
            while resident_kib(path) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert resident_kib(path) == 0  # dropped inside the block, not only at its end
    assert resident_kib(path) == 0


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_trim_heap_returns_freed_heap_to_the_system():
    chunks = [bytearray(b"x" * 64 * 1024) for _ in range(3200)]  # 200 MiB under the mmap threshold
    keep = bytearray(b"y" * 1024)  # allocated last, so the freed chunks are not the heap's top alone
    before = rss_anon_kib()
    del chunks
    assert trim_heap() is True
    assert before - rss_anon_kib() > 150 * 1024  # KiB
    assert keep[0] == ord("y")
