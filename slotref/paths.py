"""Paths as the file system takes them: names within its length limit, printable whatever their bytes,
and files that are what they claim to be (a regular file, not a FIFO or a device).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, xfs, tmpfs, btrfs)


def sibling_name(path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its name; a name that would pass ``NAME_MAX`` bytes is cut
    and given a hash of the whole name instead, so every legal ``path`` has a legal, stable sibling."""
    path = Path(path)
    name = os.fsencode(path.name) + suffix.encode()
    if len(name) <= NAME_MAX:
        return path.with_name(path.name + suffix)
    tag = b"~" + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:12].encode() + suffix.encode()
    return path.with_name(os.fsdecode(os.fsencode(path.name)[: NAME_MAX - len(tag)] + tag))


def shown(path) -> str:
    """``path`` as text that can be printed whatever bytes it holds (undecodable ones as \\xNN)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def regular_file(path, what="file", exists=True):
    """Check, without opening it, that ``path`` is a regular file (a FIFO would block a read, a device
    never end one); ``FileError`` (one line naming the path) otherwise. ``exists=False``: a missing
    path is fine."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if not exists:
            return
        raise FileError(f"{shown(path)}: {what}: no such file; check the path") from None
    except OSError as err:
        raise FileError(f"{shown(path)}: {what}: cannot be read ({err.strerror or err}); check the path") from None
    if stat.S_ISREG(mode):
        return
    raise FileError(f"{shown(path)}: {what}: is {file_kind(mode)}, not a regular file; point at a file")


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a FIFO (named pipe)", "a device", ...)."""
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a symbolic link" if stat.S_ISLNK(mode) else "a regular file" if stat.S_ISREG(mode)
            else "not a regular file")


class FileError(ValueError):
    """A path that is not the regular file it should be (a FIFO, a device, a folder); one line."""
