"""Structured events: console lines for people, JSON lines for machines.

Every event goes to ``logs/isobuild.jsonl`` (one JSON object per line) and to
stderr, rendered for a terminal or, with ``--log-format json`` (the default
when ``CI`` is set), as JSON too.  ``stage()`` wraps a stage run with
start/finish events that carry the elapsed time.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _JsonLinesSink:
    """A structlog processor that appends every event to a JSON-lines file."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = path.open("a", encoding="utf-8")

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self.stream is not None:
            self.stream.write(json.dumps(event, default=str, sort_keys=True) + "\n")
            self.stream.flush()
        return event


class _ConsoleLevelFilter:
    def __init__(self) -> None:
        self.minimum = _LEVELS["info"]

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if _LEVELS.get(method, 20) < self.minimum:
            raise structlog.DropEvent
        return event


_sink = _JsonLinesSink()
_filter = _ConsoleLevelFilter()


def setup(verbose: bool = False, json_console: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog once per process (the CLI calls this)."""
    if json_console is None:
        json_console = bool(os.environ.get("CI"))
    _filter.minimum = _LEVELS["debug" if verbose else "info"]
    out = stream or sys.stderr
    renderer: Any
    if json_console:
        renderer = structlog.processors.JSONRenderer(default=str, sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), pad_event_to=24)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _sink,
            _filter,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def open_jsonl(path: Path) -> None:
    """Start appending every event to ``path`` (logs/isobuild.jsonl)."""
    _sink.open(path)


def get(name: str = "isobuild") -> Any:
    return structlog.get_logger(name)


@contextmanager
def stage(name: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log ``<name>.start`` / ``<name>.finish`` (or ``.failed``) with timing.

    The yielded dict collects fields to add to the finish event.
    """
    log = get()
    extra: dict[str, Any] = {}
    start = time.monotonic()
    log.info(f"{name}.start", **fields)
    try:
        yield extra
    except BaseException as exc:
        log.error(f"{name}.failed", seconds=round(time.monotonic() - start, 3),
                  error=getattr(exc, "message", None) or type(exc).__name__, **fields)
        raise
    log.info(f"{name}.finish", seconds=round(time.monotonic() - start, 3), **fields, **extra)


class Phases:
    """A stage's phases, each logged as ``<prefix>.<phase>`` with its seconds kept for metadata."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        with stage(f"{self.prefix}.{name}"):
            yield
        self.seconds[name] = round(time.monotonic() - start, 3)


def count_since(log_path: Path, since: int, *patterns: re.Pattern[str]) -> list[int]:
    """How often each pattern occurs in a log after byte offset ``since`` (warnings in a build)."""
    with log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [len(p.findall(text)) for p in patterns]
