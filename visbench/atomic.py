"""The one atomic writer: a file or a folder appears whole under its final name, or not at all.

Every file visbench must not leave half-written (``result.json``, COCO annotations, checkpoints and
their ``latest`` pointer) goes through here. The new content is written to a temporary sibling (same
folder, so the rename never crosses file systems), fsynced, renamed over the target with
``os.replace``, and the folder is fsynced so the rename itself survives a power cut. A process killed
at any moment leaves the old content or the new one, never a mix; a write that fails with an
exception also removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary siblings start with this; a killed writer may leave one behind


def fsync_dir(path: str | Path) -> None:
    """Make the entries of folder ``path`` (a rename into it) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that cannot fsync a folder
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a file that another library wrote (torch.save, safetensors) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_sibling(path: Path) -> Path:
    # pid + random token: two writers of the same target never share a temporary file.
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; the parent folder must exist."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        # os.open with 0o666: the file gets the usual umask-derived mode (mkstemp would make it 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; when the block ends it becomes ``path``.

    Every file in it is fsynced, then the folder is renamed into place. An existing ``path`` is moved
    aside first and deleted after the rename (POSIX cannot rename over a non-empty folder), so the
    target is missing only between two renames. An exception in the block removes the temporary
    folder and leaves an existing ``path`` untouched.
    """
    path = Path(path)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync_file(file)
        fsync_dir(tmp)
        if path.exists():
            old = _tmp_sibling(path)
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not path.exists():  # the second rename failed: put the old folder back
            os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
