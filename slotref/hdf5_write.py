"""HDF5 files written so that a failed write is seen: no error swallowed, no half file under its name.

HDF5 reports some write errors only from a destructor ("Exception ignored
in h5py's ObjectID.__dealloc__") and, once a write has failed, its state is
damaged: the next flush or close may fail again or crash the interpreter.
``open_for_write`` therefore gives HDF5 a file whose writes go through
Python (h5py's ``fileobj`` driver): the first failure (disk full, quota,
I/O error) is recorded, the rest of the writes are dropped, and HDF5 sees
success, so it stays consistent and closes cleanly. ``close`` then flushes,
closes, fsyncs and raises the recorded error as a one-line ``WriteError``.
A file that closed cleanly is still only trusted once it was reopened and
checked (the callers' ``verify``), before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import io as pyio
import os

import h5py

from slotref.io import WriteError, write_error


class _Sink(pyio.FileIO):
    """A raw file for h5py's ``fileobj`` driver that records its first write error instead of raising.

    h5py ignores the count ``write`` returns, so short writes are completed
    here; ``readinto`` zero-fills what lies past the end (bytes dropped after
    an error), which HDF5 would otherwise take from uninitialised memory.
    """

    error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._raw_write(view[done:])
            except OSError as err:
                self.error = err
        return len(view)

    def _raw_write(self, data) -> int:  # the one call that reaches the disk (fault-injection tests replace it)
        return super().write(data)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        got = super().readinto(view) or 0
        view[got:] = bytes(len(view) - got)
        return len(view)

    def truncate(self, size=None):
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as err:
                self.error = err
        return size

    def flush(self) -> None:  # nothing buffered: writes go straight to the descriptor
        pass


class H5Writing:
    """An ``h5py.File`` (``.f``) open for writing whose write errors are raised by ``check`` and ``close``.

    ``mode``: "w" (create or truncate) or "r+" (continue an existing file).
    ``name``: the path errors name (default ``path``).
    """

    def __init__(self, path, mode: str = "w", name=None):
        self.path = os.fspath(path)
        self.name = self.path if name is None else os.fspath(name)
        try:
            self.sink = _Sink(self.path, "w+b" if mode == "w" else "r+b")
        except OSError as err:
            raise write_error(self.name, err) from None
        try:
            self.f = h5py.File(self.sink, mode)
        except BaseException as err:
            self.sink.close()
            if mode == "w":  # the empty file this call created
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            if isinstance(err, (OSError, RuntimeError, ValueError)):
                if self.sink.error is not None:
                    raise write_error(self.name, self.sink.error) from None
                raise write_error(self.name, OSError(f"not a writable HDF5 file ({_first_line(err)})")) from None
            raise

    def check(self) -> None:
        """Raise ``WriteError`` if a write has failed so far."""
        if self.sink.error is not None:
            raise write_error(self.name, self.sink.error)

    def close(self) -> None:
        """Flush, close and fsync; ``WriteError`` (one line) if any write failed, now or before."""
        problem = None
        try:
            if self.f.id.valid:
                self.f.flush()
                self.f.close()
        except (OSError, RuntimeError, ValueError) as err:
            problem = err
        with contextlib.suppress(OSError, ValueError):
            if self.sink.error is None and not self.sink.closed:
                try:
                    os.fsync(self.sink.fileno())
                except OSError as err:
                    self.sink.error = err
        with contextlib.suppress(OSError):
            self.sink.close()
        if self.sink.error is not None:
            raise write_error(self.name, self.sink.error)
        if problem is not None:
            raise write_error(self.name, OSError(f"HDF5 could not close the file ({_first_line(problem)})"))

    def abandon(self) -> None:
        """Close without raising (after another error) and remove the file."""
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def written(path, name=None, verify=None):
    """``with written(tmp) as f:`` fill the new HDF5 file ``f``; on leaving, it is closed (write errors
    raised as one ``WriteError``), reopened and checked by ``verify(path)``, or removed on any failure."""
    out = H5Writing(path, "w", name)
    try:
        yield out.f
        out.check()
        out.close()
        if verify is not None:
            verify(out.path)
    except BaseException:
        out.abandon()
        raise


__all__ = ["H5Writing", "WriteError", "written"]
