"""Safe writes: every output appears whole or not at all, and a failed write is one line.

``atomic_path(path)`` hands out a temporary name beside ``path``; when the
block ends normally the temporary file is flushed to disk (fsync), renamed
over ``path`` and the directory entry made durable (fsync of the folder).
On any failure, Ctrl-C included, the temporary file is removed and ``path``
is left as it was. ``append_line`` adds one whole line to a log (a failed
write is cut back off), ``read_jsonl`` reads a log whose last line may have
been torn by a crash. ``RunLock`` keeps two processes out of one run directory.

Disk-full and permission errors become ``WriteError``: one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path

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
    out = WriteError(" ".join(f"{path}: cannot write: {problem}; {todo}".split()))
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


def temporary_name(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success fsync it, rename it over ``path``, fsync the folder.

    The caller writes the temporary file by name (h5py, matplotlib). On any
    exception it is removed and ``path`` is unchanged; OSErrors become WriteError.
    """
    path = Path(path)
    tmp = temporary_name(path)
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
    data = (text.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as err:
        raise write_error(path, err) from None
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


# --------------------------------------------------------------------------
# Run directory lock
# --------------------------------------------------------------------------

LOCK_NAME = "run.lock"


class LockError(RuntimeError):
    """The run directory is in use by another live process; one line."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


class RunLock:
    """``run.lock`` (PID and host) held while a process writes a run directory.

    A lock of a dead process on this host is stale: it is taken over and
    ``note`` is called with a line saying so. A live process's lock, or one
    from another host, is refused (LockError).
    """

    def __init__(self, run_dir, note=None):
        self.path = Path(run_dir) / LOCK_NAME
        self.note = note
        self.held = False

    def _owner(self):
        try:
            text = self.path.read_text().split()
            return int(text[0]), (text[1] if len(text) > 1 else "")
        except (OSError, ValueError, IndexError):
            return None, ""

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                pid, host = self._owner()
                if pid is None:
                    problem = "holds an unreadable lock"
                elif host != socket.gethostname():
                    raise LockError(f"{self.path}: run directory in use by PID {pid} on host {host}; wait for it, "
                                    f"or delete {self.path} if that run has ended")
                elif pid != os.getpid() and _alive(pid):
                    raise LockError(f"{self.path}: run directory in use by PID {pid} on this host; wait for "
                                    f"it to end or choose another --out")
                else:
                    problem = f"has a stale lock of PID {pid} (no longer running)"
                if self.note:
                    self.note(f"{self.path.parent} {problem}: taken over")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError as err:
                raise write_error(self.path, err) from None
            try:
                os.write(fd, me.encode())
                os.fsync(fd)
            except OSError as err:
                os.close(fd)
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise write_error(self.path, err) from None
            os.close(fd)
            self.held = True
            return
        raise LockError(f"{self.path}: cannot take the run directory's lock; delete {self.path} if no run uses it")

    def release(self) -> None:
        if self.held:
            self.held = False
            pid, _ = self._owner()
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    self.path.unlink()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
