"""Progress of the long commands (``diceloss demo``, ``diceloss eval``): a bar on a terminal, a line now and then
elsewhere.

A tqdm bar redraws itself with carriage returns several times a second. On a terminal that is one line that
moves; written to a file (a CI log, the output of a batch job) every redraw stays, and a two-minute demo left
about 1,500 of them. So :func:`progress` gives a tqdm bar only when its stream is a terminal and tqdm is
installed; otherwise a :class:`LineProgress`, which prints one plain line at most every ``interval`` seconds
and a last one when it is closed. Both take the calls the commands make: ``update``, ``set_postfix``,
``set_description``, ``write`` and ``close``.

Example:
    >>> import io
    >>> out = io.StringIO()                                   # not a terminal
    >>> bar = progress(3, desc="DiceLoss", unit="step", file=out)
    >>> for _ in range(3):
    ...     bar.update(1)
    >>> bar.set_postfix(loss="0.1234")
    >>> bar.close()
    >>> out.getvalue().count("\\n"), out.getvalue().startswith("DiceLoss: 3/3 steps (100%) in ")
    (1, True)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

INTERVAL = 5.0
"""Seconds between two progress lines when the stream is not a terminal."""


def _is_terminal(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(
    total: int,
    *,
    desc: str = "",
    unit: str = "it",
    file: IO[str] | None = None,
    enabled: bool = True,
    leave: bool = True,
    interval: float | None = None,
):
    """A progress bar over ``total`` items written to ``file`` (default ``sys.stderr``): tqdm's on a terminal,
    a :class:`LineProgress` elsewhere or without tqdm (a line every ``interval`` seconds, default
    :data:`INTERVAL`), a silent one when not ``enabled``."""
    file = sys.stderr if file is None else file
    if not enabled:
        return SilentProgress(file)
    if _is_terminal(file):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is in the demo extra; without it, plain lines
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, file=file, leave=leave, dynamic_ncols=True)
    return LineProgress(total, desc=desc, unit=unit, file=file, interval=INTERVAL if interval is None else interval)


class LineProgress:
    """Progress as plain lines: at most one every ``interval`` seconds while ``update`` is called, and one when
    ``close`` is called (never a carriage return).

    A line reads ``desc: n/total units (pct%) in 12 s, ETA 30 s; key=value ...`` (the postfix last).
    ``clock`` is the time source (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        unit: str = "it",
        file: IO[str] | None = None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be a number of seconds >= 0, got {interval!r}")
        self.total, self.n = int(total), 0
        self.desc, self.unit = desc.strip(), unit
        self.file = sys.stderr if file is None else file
        self.interval, self._clock = float(interval), clock
        self._start = self._last = clock()
        self._postfix = ""
        self._closed = False
        self.lines = 0  # progress lines written so far

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self._postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = (desc or "").strip()

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self) -> None:
        now = self._clock()
        self._last = now
        elapsed = now - self._start
        units = self.unit if self.total == 1 else self.unit + "s"
        text = f"{self.n}/{self.total} {units}"
        if self.total > 0:
            text += f" ({100 * self.n // self.total}%)"
        text += f" in {elapsed:.0f} s"
        if 0 < self.n < self.total:
            text += f", ETA {elapsed / self.n * (self.total - self.n):.0f} s"
        if self._postfix:
            text += f"; {self._postfix}"
        print(f"{self.desc}: {text}" if self.desc else text, file=self.file, flush=True)
        self.lines += 1


class SilentProgress:
    """The progress of ``--no-progress``: counts nothing, prints nothing but what is ``write``-n."""

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = sys.stderr if file is None else file

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        pass

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        pass

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file or self.file)

    def close(self) -> None:
        pass


__all__ = ["INTERVAL", "progress", "LineProgress", "SilentProgress"]
