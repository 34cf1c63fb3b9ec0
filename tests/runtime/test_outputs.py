"""The image writer: A1111 numbering, atomic writes, and no image lost to another writer's name."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path

import pytest
from PIL import Image

from sdstudio.runtime import outputs
from sdstudio.runtime.outputs import read_infotext, save_image


def _image(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value % 256, 0, 0))


def test_a_name_taken_by_another_writer_is_never_overwritten(tmp_path, monkeypatch):
    theirs = tmp_path / "00001-7.png"
    real_next_number = outputs.next_number
    calls = []

    def stale_listing(folder: Path) -> int:  # the number was read before the other process wrote it
        calls.append(folder)
        if len(calls) == 1:
            theirs.write_bytes(b"another server's image")
            return 1
        return real_next_number(folder)

    monkeypatch.setattr(outputs, "next_number", stale_listing)
    path = save_image(_image(1), "ours", tmp_path, 7, folder=tmp_path)
    assert path.name == "00002-7.png" and read_infotext(path) == "ours"
    assert theirs.read_bytes() == b"another server's image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-7.png", "00002-7.png"]  # no temp left


@pytest.mark.parametrize("code", [errno.EPERM, errno.EINVAL, errno.ENOSYS])
def test_without_hard_links_the_image_is_still_saved_atomically(tmp_path, monkeypatch, code):
    def no_links(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    first = save_image(_image(1), "one", tmp_path, 3, folder=tmp_path)
    second = save_image(_image(2), "two", tmp_path, 3, folder=tmp_path)
    assert (first.name, second.name) == ("00001-3.png", "00002-3.png")
    assert [read_infotext(p) for p in (first, second)] == ["one", "two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-3.png", "00002-3.png"]


def _save_many(folder: str, writer: int, count: int) -> None:
    for i in range(count):  # one seed for both writers: the same number means the same file name
        save_image(_image(i), f"writer {writer} image {i}", folder, 5, folder=folder)


def test_two_processes_on_one_folder_keep_every_image(tmp_path):
    count = 15
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_save_many, args=(str(tmp_path), w, count)) for w in (1, 2)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 * count
    assert sorted(int(p.name[:5]) for p in files) == list(range(1, 2 * count + 1))  # one number each
    texts = {read_infotext(p) for p in files}
    assert texts == {f"writer {w} image {i}" for w in (1, 2) for i in range(count)}
