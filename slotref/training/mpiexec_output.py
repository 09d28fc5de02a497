"""What mpiexec (MPICH's Hydra) prints of its own, taken out of the output of ``train --procs``.

When a rank ends badly Hydra prints a banner on its stdout (an empty line, a block of lines between two
rules of '=', and three lines after it); when it passes a Ctrl-C on, two lines. ``launch.relaunch``
passes everything else on as it comes and puts one line of its own in the banner's place.
"""

from __future__ import annotations

import re
from pathlib import Path

from slotref.paths import shown

# What mpiexec (MPICH's Hydra) prints itself, on its stdout: a banner when a rank ends badly, and two
# lines when it passes a Ctrl-C on. ``relaunch`` replaces them by one line of its own.
BANNER_RULE = re.compile(rb"^={20,}\r?$")
BANNER_FIELDS = re.compile(rb"^=\s+(PID|EXIT CODE):?\s+(\d+)")
BANNER_TAIL = (b"YOUR APPLICATION TERMINATED WITH THE EXIT STRING:", b"This typically refers to a problem",
               b"Please see the FAQ page")
CTRL_C_LINE = re.compile(rb"^\[mpiexec@[^\]]*\] (Sending Ctrl-C|Press Ctrl-C again)")
RANK_DIR_ENV = "SLOTREF_RANK_DIR"  # where each rank started by relaunch leaves a file PID holding its rank


class LauncherFilter:
    """One output stream of mpiexec with its banners and Ctrl-C lines taken out, byte for byte otherwise.

    ``feed(chunk) -> bytes`` gives what to pass on now; only a line that could begin such a block is held
    until it ends (a progress bar's carriage returns pass at once). ``banners``: one dict per banner seen,
    {"pid", "code", "signal"} (ints; signal None unless the exit string names one).
    """

    def __init__(self):
        self.pending, self.blank, self.in_banner, self.banners = b"", False, False, []
        self.mid_line = False  # a partial line was passed on: the next newline ends it

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        data, out = self.pending + chunk, []
        self.pending = b""
        while data:
            end = data.find(b"\n")
            if end < 0:  # a partial line: hold it only while it could begin a block
                if not final and self._could_begin(data):
                    self.pending = data
                else:
                    out.append(self._flush_blank() + data)
                    self.mid_line = True
                break
            line, data = data[:end + 1], data[end + 1:]
            out.append(self._line(line))
            self.mid_line = False
        if final:
            out.append(self._flush_blank())
        return b"".join(out)

    def _could_begin(self, partial: bytes) -> bool:
        starts = (b"=" * 20, b"[mpiexec@", *(BANNER_TAIL if self.banners else ()))
        return (self.in_banner or set(partial) <= {ord("=")}
                or any(s.startswith(partial[:len(s)]) for s in starts))

    def _flush_blank(self) -> bytes:
        blank, self.blank = self.blank, False
        return b"\n" if blank else b""

    def _line(self, line: bytes) -> bytes:
        text = line.rstrip(b"\n")
        if self.in_banner:
            if BANNER_RULE.match(text):
                self.in_banner = False
            elif field := BANNER_FIELDS.match(text):
                self.banners[-1]["pid" if field[1] == b"PID" else "code"] = int(field[2])
            return b""
        if BANNER_RULE.match(text):  # Hydra puts an empty line before its banner: dropped with it
            self.in_banner, self.blank = True, False
            self.banners.append({"pid": None, "code": None, "signal": None})
            return b""
        if self.banners and text.startswith(BANNER_TAIL):
            if found := re.search(rb"\(signal (\d+)\)", text):
                self.banners[-1]["signal"] = int(found[1])
            return b""
        if CTRL_C_LINE.match(text):
            return b""
        if text in (b"", b"\r") and not self.mid_line:  # held: it may open a banner
            before, self.blank = self._flush_blank(), True
            return before
        return self._flush_blank() + line


def rank_of(pid: int | None, rank_dir: str) -> int | None:
    """The rank whose process was ``pid``, as it noted it in ``rank_dir`` (None if it never did)."""
    try:
        return int((Path(rank_dir) / str(pid)).read_text())
    except (OSError, ValueError):
        return None


def banner_line(banner: dict, rank: int | None, run_dir) -> str:
    """One line for a rank that ended badly: which one, how, and what of the run is kept."""
    import signal as signals

    who = f"rank {rank} (pid {banner['pid']})" if rank is not None else f"a rank (pid {banner['pid']})"
    if banner["signal"]:
        try:
            name = signals.Signals(banner["signal"]).name.removeprefix("SIG")
        except ValueError:
            name = "unknown"
        how = f"was killed by signal {banner['signal']} ({name})"
    else:
        how = f"exited with status {banner['code']}"
    checkpoint = Path(run_dir) / "checkpoint.h5"
    kept = (f"the last checkpoint {shown(checkpoint)} is kept; resume with --resume" if checkpoint.is_file()
            else "no checkpoint had been written yet")
    return f"error: {who} {how}; {kept}"
