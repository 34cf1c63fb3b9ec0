"""Atomic image writer with A1111 file naming and the infotext in the PNG ``parameters`` chunk.

Layout as A1111: ``<outdir>/<kind>-images/YYYY-MM-DD/00001-<seed>.png``; the number is one more
than the highest number already in the folder. Files are written to a temp file in the same folder
and hard-linked into place, so a crash never leaves a half-written image under a final name, and a
name another process (a second server on the same outputs folder) took in the meantime is never
overwritten: the next free number is used instead.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import tempfile
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdstudio.errors import SDStudioError

_NUMBERED = re.compile(r"^(\d{5,})-")
_lock = threading.Lock()  # numbering is read-then-write; one writer at a time per process


def images_dir(outdir: str | Path, kind: str = "txt2img", date: dt.date | None = None) -> Path:
    """``outdir/<kind>-images/YYYY-MM-DD`` (not created)."""
    day = (date or dt.date.today()).isoformat()
    return Path(outdir) / f"{kind}-images" / day


def next_number(folder: Path) -> int:
    """One more than the highest ``NNNNN-`` prefix in ``folder`` (1 if none)."""
    highest = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _NUMBERED.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def save_image(
    image: Image.Image,
    infotext: str,
    outdir: str | Path,
    seed: int,
    *,
    kind: str = "txt2img",
    ext: str = "png",
    folder: str | Path | None = None,
) -> Path:
    """Write ``image`` atomically with its infotext; returns the final path.

    ``folder`` overrides the dated A1111 sub-folder (e.g. the CLI's ``--outdir``).
    """
    target_dir = Path(folder) if folder is not None else images_dir(outdir, kind)
    ext = ext.lower().lstrip(".")
    if ext not in ("png", "jpg", "jpeg", "webp"):
        raise SDStudioError(f"unsupported image format {ext!r}; use png, jpg or webp")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(image, infotext, target_dir, ext)
        try:
            with _lock:
                path = _publish(tmp, target_dir, seed, ext)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # disk full, read-only or missing outputs folder: say so, keep serving
        full = exc.errno == errno.ENOSPC
        raise SDStudioError(
            f"could not save the image in {target_dir}: {exc.strerror or exc} "
            f"({'free some disk space' if full else 'check that the outputs folder is writable'})",
            field="outdir",
            status=507 if full else 500,
        ) from exc
    return path


def _write_temp(image: Image.Image, infotext: str, folder: Path, ext: str) -> Path:
    """Write and fsync ``image`` with its infotext to a hidden temp file in ``folder``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f".{ext}", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            if ext == "png":
                meta = PngImagePlugin.PngInfo()
                meta.add_text("parameters", infotext)
                image.save(fh, format="PNG", pnginfo=meta)
            else:
                exif = Image.Exif()
                exif[0x9286] = b"UNICODE\x00" + infotext.encode("utf-16-be")  # EXIF UserComment, as A1111
                image.convert("RGB").save(
                    fh, format="JPEG" if ext in ("jpg", "jpeg") else "WEBP", exif=exif, quality=95
                )
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _publish(tmp: Path, folder: Path, seed: int, ext: str) -> Path:
    """Give the written ``tmp`` the next free ``NNNNN-<seed>.<ext>`` name without replacing a file.

    ``os.link`` fails if the name exists (another process numbered from the same listing), so the
    next number is tried. Where linking fails otherwise (FAT, some network and FUSE mounts) a free
    name is taken with ``os.replace``: still atomic, but only this process's lock guards the name.
    """
    for _ in range(1000):
        path = folder / f"{next_number(folder):05d}-{seed}.{ext}"
        try:
            os.link(tmp, path)
            return path
        except FileExistsError:
            continue
        except OSError:  # no hard links here (EPERM, ENOTSUP, EINVAL, ENOSYS, ...): a plain rename
            if path.exists():
                continue
            os.replace(tmp, path)
            return path
    raise SDStudioError(f"could not find a free file name in {folder}", field="outdir", status=500)


def read_infotext(source) -> str:
    """The infotext of an image file or PIL image (PNG ``parameters`` chunk or EXIF UserComment)."""
    image = source if isinstance(source, Image.Image) else _open(source)
    text = image.info.get("parameters")
    if text:
        return str(text)
    comment = image.getexif().get_ifd(0x8769).get(0x9286) or image.getexif().get(0x9286)
    if isinstance(comment, bytes):
        body = comment[8:]
        return body.decode("utf-16-be" if comment.startswith(b"UNICODE") else "utf-8", errors="replace")
    return comment or ""


def _open(path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise SDStudioError(f"image file not found: {path}") from None
    except (OSError, SyntaxError) as exc:
        raise SDStudioError(f"not a readable image: {path} ({exc})") from None
