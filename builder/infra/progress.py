"""Compile progress: build steps done / expected (from the last build), ETA.

kbuild prints one line per step (``  CC      init/main.o``), other builds
one compiler command per object (the caller passes its ``step`` pattern).  We count them
and compare with the count of the last build of the same profile.  On a
terminal the line is redrawn in place; otherwise an event is logged every
``interval`` seconds so CI logs show the build is alive.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

from builder.infra import log

_STEP = re.compile(r"^\s{2}(CC|AS|LD|AR|HOSTCC|HOSTLD|CPP|OBJCOPY|GEN|BTF|MODPOST|SYNC|UPD|WRAP|ZSTD|XZKERN|LDS)\b")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, label: str, expected: int | None, stream: TextIO | None = None, interval: float = 60.0,
                 step: re.Pattern[str] = _STEP):
        self.label = label
        self.step = step
        self.expected = expected
        self.done = 0
        self.start = time.monotonic()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self._last_emit = self.start

    def line(self, text: str) -> None:
        if not self.step.match(text):
            return
        self.done += 1
        now = time.monotonic()
        if self.tty and now - self._last_emit >= 0.2:
            self.stream.write("\r" + self.render(now) + "\033[K")
            self.stream.flush()
            self._last_emit = now
        elif not self.tty and now - self._last_emit >= self.interval:
            log.get().info(f"{self.label}.progress", status=self.render(now))
            self._last_emit = now

    def render(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        if self.expected and self.done and self.done < self.expected:
            pct = 100 * self.done / self.expected
            eta = elapsed * (self.expected - self.done) / self.done
            return (f"{self.label}: {self.done}/{self.expected} steps ({pct:.0f}%), "
                    f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}")
        return f"{self.label}: {self.done} steps, {_clock(elapsed)} elapsed"

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
