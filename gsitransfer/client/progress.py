"""Progress of transfers: the listener contract, and bars on a terminal.

What this module owns:

* :class:`ProgressListener` -- the events an upload or download reports
  (a phase message, the files of the transfer, bytes moved, a retry, the end
  of a file), all called on the reactor thread; :class:`NullProgress` ignores
  them and :class:`CallbackProgress` adapts a plain
  ``callback(name, done_bytes, total_bytes)`` (the seed's progress callback);
* :class:`TerminalProgress` -- one bar per active file and one for the whole
  transfer, with transfer rate and ETA, redrawn in place at most ten times a
  second with ANSI cursor movement. It is only for a terminal: the command
  line uses it when stderr is a TTY and neither ``--quiet`` nor ``--json``
  is given;
* :class:`LineProgress` -- for a pipe or a log file: no bars, only the
  notices (``a.bin: resumed at 60.0% (614.4 MiB held by the server)``) and
  the retries, one line each;
* :func:`notify` -- tell a listener a notice (listeners written before
  ``notice`` existed are skipped);
* :func:`human_size` and :func:`human_duration` for people-facing numbers.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, TextIO, cast

from .text import printable


class ProgressListener(Protocol):
    """What a transfer reports while it runs (every method is called on the reactor thread)."""

    def phase(self, message: str) -> None:
        """A step without bytes to count (``computing MD5 of 3 files``)."""

    def transfer_started(self, files: Sequence[tuple[str, int]]) -> None:
        """The files (name, size) this transfer will move."""

    def file_started(self, name: str, size: int | None, offset: int = 0) -> None:
        """``name`` starts moving; ``offset`` bytes were already there (a resumed download)."""

    def file_advanced(self, name: str, nbytes: int) -> None:
        """``nbytes`` more bytes of ``name`` moved."""

    def file_restarted(self, name: str, reason: str) -> None:
        """``name`` is being sent or fetched again (``reason``); its count starts over."""

    def file_finished(self, name: str, error: str | None) -> None:
        """``name`` is done (``error`` None) or failed."""

    def notice(self, message: str) -> None:
        """A line worth telling the user as it happens (a resumed file, a server that cannot resume)."""


def notify(listener: ProgressListener, message: str) -> None:
    """``listener.notice(message)``, if the listener has it (it is newer than the other events)."""
    notice = getattr(listener, "notice", None)
    if notice is not None:
        notice(message)


class NullProgress:
    """A listener that ignores everything."""

    def phase(self, message: str) -> None:
        pass

    def transfer_started(self, files: Sequence[tuple[str, int]]) -> None:
        pass

    def file_started(self, name: str, size: int | None, offset: int = 0) -> None:
        pass

    def file_advanced(self, name: str, nbytes: int) -> None:
        pass

    def file_restarted(self, name: str, reason: str) -> None:
        pass

    def file_finished(self, name: str, error: str | None) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


class LineProgress(NullProgress):
    """Notices and retries as plain lines on ``stream`` (stderr that is not a terminal), ``PREFIX: `` first."""

    def __init__(self, stream: TextIO, prefix: str = "") -> None:
        self.stream = stream
        self.prefix = prefix

    def notice(self, message: str) -> None:
        self._line(message)

    def file_restarted(self, name: str, reason: str) -> None:
        self._line(f"{name}: {reason}; again")

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.prefix}{printable(text)}\n")
        self.stream.flush()


class CallbackProgress(NullProgress):
    """Calls ``callback(name, done_bytes, total_bytes_or_None)`` whenever a file advances."""

    def __init__(self, callback: Callable[[str, int, int | None], object]) -> None:
        self.callback = callback
        self.done: dict[str, int] = {}
        self.sizes: dict[str, int | None] = {}

    def file_started(self, name: str, size: int | None, offset: int = 0) -> None:
        self.sizes[name] = size
        self.done[name] = offset
        self.callback(name, offset, size)

    def file_advanced(self, name: str, nbytes: int) -> None:
        self.done[name] = self.done.get(name, 0) + nbytes
        self.callback(name, self.done[name], self.sizes.get(name))


def as_listener(progress: "ProgressListener | Callable[[str, int, int | None], object] | None") -> ProgressListener:
    """A listener for what the caller gave: a listener, a plain callback, or None."""
    if progress is None:
        return NullProgress()
    if hasattr(progress, "file_advanced"):  # a listener (a callable object may be one too)
        return cast(ProgressListener, progress)
    return CallbackProgress(progress)


# ---------------------------------------------------------------------------
# Numbers for people
# ---------------------------------------------------------------------------


def human_size(n: float) -> str:
    """``1.5 GiB``; bytes below 1 KiB as ``512 B``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``0:42``, ``12:03``, ``2:05:00``."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RateMeter:
    """Bytes per second over the last ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


# ---------------------------------------------------------------------------
# The terminal
# ---------------------------------------------------------------------------


@dataclass
class _Bar:
    name: str
    size: int | None
    done: int = 0
    meter: RateMeter = field(default_factory=RateMeter)


class TerminalProgress(NullProgress):
    """Bars redrawn in place on ``stream`` (a terminal): active files, then the total."""

    #: seconds between redraws
    interval = 0.1
    bar_width = 20

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 width: int | None = None) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width or shutil.get_terminal_size((100, 24)).columns
        self.bars: dict[str, _Bar] = {}
        self.sizes: dict[str, int] = {}
        self.finished = 0
        self.moved = 0
        self.total_meter = RateMeter()
        self.message = ""
        self._permanent: list[str] = []
        self._drawn = 0
        self._last = 0.0

    # -- events -----------------------------------------------------------------

    def phase(self, message: str) -> None:
        self.message = message
        self._render(force=True)

    def transfer_started(self, files: Sequence[tuple[str, int]]) -> None:
        self.sizes = dict(files)
        self.message = ""
        self._render(force=True)

    def file_started(self, name: str, size: int | None, offset: int = 0) -> None:
        bar = _Bar(name, size, offset)
        bar.meter.add(self.clock(), offset)
        self.bars[name] = bar
        if name not in self.sizes and size is not None:
            self.sizes[name] = size
        self.moved += offset
        self._render(force=True)

    def file_advanced(self, name: str, nbytes: int) -> None:
        bar = self.bars.get(name)
        if bar is None:
            return
        now = self.clock()
        bar.done += nbytes
        bar.meter.add(now, bar.done)
        self.moved += nbytes
        self.total_meter.add(now, self.moved)
        self._render()

    def file_restarted(self, name: str, reason: str) -> None:
        bar = self.bars.pop(name, None)
        if bar is not None:
            self.moved -= bar.done
        self._permanent.append(f"{name}: {reason}; again")
        self._render(force=True)

    def notice(self, message: str) -> None:
        self._permanent.append(message)
        self._render(force=True)

    def file_finished(self, name: str, error: str | None) -> None:
        bar = self.bars.pop(name, None)
        self.finished += 1
        size = bar.done if bar is not None else self.sizes.get(name, 0)
        self._permanent.append(f"{name}  {human_size(size)}  {'done' if error is None else 'failed'}")
        self._render(force=True)

    def close(self) -> None:
        """Draw the final state and leave the cursor below it."""
        self._render(force=True)

    # -- drawing ---------------------------------------------------------------------

    def _render(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")
        out.append("\x1b[J")
        out += [self._fit(line) + "\n" for line in self._permanent]
        self._permanent = []
        active = [self._file_line(bar) for bar in self.bars.values()]
        if self.sizes:
            active.append(self._total_line())
        if self.message:
            active.append(self.message)
        out += [self._fit(line) + "\n" for line in active]
        self._drawn = len(active)
        self.stream.write("".join(out))
        self.stream.flush()

    def _fit(self, line: str) -> str:
        """``line`` escaped (names and reasons may come from the server) and cut to the terminal's width."""
        line = printable(line)
        return line if len(line) < self.width else line[: self.width - 2] + "…"

    def _file_line(self, bar: _Bar) -> str:
        name = bar.name if len(bar.name) <= 24 else bar.name[:23] + "…"
        return f"{name:<24} " + self._gauge(bar.done, bar.size, bar.meter.rate())

    def _total_line(self) -> str:
        total = sum(self.sizes.values())
        label = f"total {self.finished}/{len(self.sizes)} files"
        return f"{label:<24} " + self._gauge(self.moved, total, self.total_meter.rate())

    def _gauge(self, done: int, size: int | None, rate: float | None) -> str:
        if size:
            fraction = min(done / size, 1.0)
            filled = int(fraction * self.bar_width)
            bar = "[" + "#" * filled + "-" * (self.bar_width - filled) + f"] {fraction * 100:3.0f}%"
            amount = f"{human_size(done)}/{human_size(size)}"
        else:
            bar = "[" + " " * self.bar_width + "]     "
            amount = human_size(done)
        speed = f"{human_size(rate)}/s" if rate else "--/s"
        eta = ""
        if rate and size:
            eta = f"  ETA {human_duration((size - done) / rate)}"
        return f"{bar}  {amount}  {speed}{eta}"


__all__ = [
    "CallbackProgress",
    "LineProgress",
    "NullProgress",
    "ProgressListener",
    "RateMeter",
    "TerminalProgress",
    "as_listener",
    "human_duration",
    "human_size",
    "notify",
]
