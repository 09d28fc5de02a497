"""Safe writes: every output appears whole or not at all, and a failed write is one line.

``atomic_path(path)`` hands out a temporary name beside ``path``; when the
block ends normally the temporary file is flushed to disk (fsync), renamed
over ``path`` and the directory entry made durable (fsync of the folder).
On any failure, Ctrl-C included, the temporary file is removed and ``path``
is left as it was. ``append_line`` adds one whole line to a log (a failed
write is cut back off), ``read_jsonl`` reads a log whose last line may have
been torn by a crash. ``RunLock`` (``slotref.runlock``) keeps two processes out of one run directory.

Disk-full and permission errors become ``WriteError``: one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path

from slotref.paths import FileError, file_kind, regular_file, shown, sibling_name  # noqa: F401

_REASONS = {
    errno.ENOSPC: ("no space left on the device (ENOSPC)", "free some space or choose another path"),
    errno.EDQUOT: ("disk quota exceeded (EDQUOT)", "free some space or choose another path"),
    errno.EACCES: ("permission denied (EACCES)", "choose a path you can write"),
    errno.EPERM: ("operation not permitted (EPERM)", "choose a path you can write"),
    errno.EROFS: ("read-only file system (EROFS)", "choose a writable path"),
}


class WriteError(OSError):
    """An output could not be written (disk full, no permission, read-only); one line naming the path."""


def write_error(path, err: BaseException) -> WriteError:
    """``err`` (an OSError, or h5py's wrapping of one) as a one-line ``WriteError`` naming ``path``."""
    if isinstance(err, WriteError):
        return err
    code = getattr(err, "errno", None)
    if code is None:  # h5py reports "errno = 28, error message = ..." inside its text
        text = str(err)
        for known in _REASONS:
            if f"errno = {known}," in text:
                code = known
                break
    problem, todo = _REASONS.get(code, (f"{getattr(err, 'strerror', None) or err}".splitlines()[0] if str(err)
                                        else type(err).__name__, "check the path and the disk"))
    out = WriteError(" ".join(f"{shown(path)}: cannot write: {problem}; {todo}".split()))
    out.errno = code
    return out


def fsync_dir(path) -> None:
    """Make the entries of folder ``path`` durable (where the system allows it)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_replaceable(path) -> None:
    """Refuse (``WriteError``) an output ``path`` that is a FIFO, a device or a socket: a new file takes
    the place of a regular file, a link or nothing, never of ``/dev/null`` renamed away under root."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there (or not reachable: the write itself says why)
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise write_error(path, OSError(f"is {file_kind(mode)}, not a regular file, and is never replaced"))


def drop_unless_regular(path) -> None:
    """Remove ``path`` if it is a link, a FIFO or a device: our temporary and partial files are regular
    files, and anything else planted under their names would be written through (a link) or block."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)


def temporary_name(path) -> Path:
    return sibling_name(path, ".tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success fsync it, rename it over ``path``, fsync the folder.

    The caller writes the temporary file by name (h5py, matplotlib). On any
    exception it is removed and ``path`` is unchanged; OSErrors become WriteError.
    """
    path = Path(path)
    check_replaceable(path)
    tmp = temporary_name(path)
    drop_unless_regular(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """``open(path, mode)`` that replaces ``path`` only once the block succeeds (``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def write_text(path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def append_line(path, text: str) -> None:
    """Append ``text`` and a newline as one whole line, fsynced.

    A line torn by an earlier crash (the file does not end in a newline) is
    cut off first; a write that fails part-way is cut back off, so the log
    never holds half a line of this call.
    """
    path = Path(path)
    data = (text.rstrip("\n") + "\n").encode("utf-8", "surrogateescape")  # a path's bytes as they came
    fd = open_log(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, -1, os.SEEK_END)
            if os.read(fd, 1) != b"\n":
                size = _last_newline(fd, size)
                os.ftruncate(fd, size)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise write_error(path, err) from None
    finally:
        os.close(fd)


def open_log(path, flags=os.O_WRONLY) -> int:
    """A descriptor appending to the log ``path`` (created if missing); a symbolic link, FIFO or device
    there is refused (``WriteError``, one line): a log never writes through to another file."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            err = OSError("is a symbolic link; a run's logs are written only to its own files, remove the link")
        elif err.errno == errno.ENXIO:  # a FIFO nothing reads (opened without blocking): never waited on
            err = OSError("is a FIFO (named pipe), not a regular file; remove it, logs are written to plain files")
        raise write_error(path, err) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise write_error(path, OSError("not a regular file; remove it, logs are written to plain files"))
    os.set_blocking(fd, True)
    return fd


def _last_newline(fd, size: int) -> int:
    """The length of the file up to and including its last newline (0 if none)."""
    block = 4096
    end = size
    while end > 0:
        start = max(0, end - block)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, end - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


class LogError(ValueError):
    """A log line other than the last cannot be read; one line naming the file and line."""


def read_jsonl(path) -> list[dict]:
    """The JSON objects of a log, one a line; a torn last line (a crash while writing) is left out."""
    path = Path(path)
    regular_file(path, "log")  # a FIFO is never read: the read would block
    lines = path.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == len(lines) - 1:
                break
            raise LogError(f"{path}: line {i + 1}: not a JSON object ({str(err).splitlines()[0]}); "
                           f"remove the line or the file") from None
        out.append(record)
    return out


# The run directory's lock lives in slotref.runlock; its names stay importable from here.
from slotref.runlock import LOCK_NAME, LockError, RunLock  # noqa: E402,F401
