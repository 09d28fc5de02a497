"""The run directory's lock: ``run.lock`` (PID, host, the process's start time) keeps two processes out
of one run directory, and a lock whose process has ended, or whose PID now names another process, is
taken over."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

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


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux's /proc), telling a reused PID from
    the lock's owner; None where the system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _same_process(pid: int, started: int | None) -> bool:
    """Whether live process ``pid`` is the one that started at ``started`` (True where either is unknown)."""
    now = _started(pid)
    return started is None or now is None or now == started


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
        """(PID, host, start time or None) of the lock's holder (``_started``); (None, "", None) if unreadable."""
        try:
            text = self.path.read_text().split()
            return int(text[0]), (text[1] if len(text) > 1 else ""), (int(text[2]) if len(text) > 2 else None)
        except (OSError, ValueError, IndexError):
            return None, "", None

    def acquire(self) -> None:
        from slotref.io import write_error  # slotref.io re-exports this module's names

        me = f"{os.getpid()} {socket.gethostname()} {_started(os.getpid()) or ''}".strip() + "\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                pid, host, started = owner[0], owner[1], (owner[2] if len(owner) > 2 else None)
                if pid is None:
                    problem = "holds an unreadable lock"
                elif host != socket.gethostname():
                    raise LockError(f"{self.path}: run directory in use by PID {pid} on host {host}; wait for it, "
                                    f"or delete {self.path} if that run has ended")
                elif pid != os.getpid() and _alive(pid) and _same_process(pid, started):
                    raise LockError(f"{self.path}: run directory in use by PID {pid} on this host; wait for "
                                    f"it to end or choose another --out (if no slotref run is PID {pid}, the "
                                    f"lock is stale: delete {self.path})")
                elif pid != os.getpid() and _alive(pid):
                    problem = f"has a stale lock of PID {pid} (that number now belongs to another process)"
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
            pid = self._owner()[0]
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    self.path.unlink()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
