"""Stage records: what each stage last did, written atomically.

A record is written when a stage starts (status ``running``, with its pid)
and rewritten when it ends (``ok``, ``failed``, ``interrupted``).  A record
still saying ``running`` whose pid is gone means the run was killed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.infra import atomic, log


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class KeyedLayout:
    """A stage's directories under ``root``: per key an artifact and a scratch tree
    (a failed build of one key works in its own tree and never touches another's)."""

    root: Path

    def tree(self, key: str) -> Path:
        return self.root / "trees" / key[:16]

    def artifact(self, key: str) -> Path:
        return self.root / "artifacts" / key


class KeyedPlan:
    """What a plan over a KeyedLayout derives from its ``layout`` and ``key`` (dataclass fields)."""

    layout: KeyedLayout
    key: str

    @property
    def artifact(self) -> Path:
        return self.layout.artifact(self.key)

    @property
    def tree(self) -> Path:
        return self.layout.tree(self.key)


def load(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None.  A corrupt record is reported and ignored."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        log.get().warning("state.corrupt", path=str(path), error=str(exc))
        return None
    return data if isinstance(data, dict) else None


def save(path: Path, record: dict[str, Any]) -> None:
    atomic.write_json(path, record)


pid_alive = atomic.pid_alive


def effective_status(record: dict[str, Any]) -> str:
    status = str(record.get("status", "unknown"))
    if status == "running" and not pid_alive(record.get("pid")):
        return "killed"
    return status


@contextmanager
def recorded(path: Path, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Keep a stage's record while it runs.

    Written at once as ``running`` with this pid (a killed run then explains
    itself), rewritten as ``ok`` with the fields the stage put in the yielded
    dict, or as ``failed`` (with the error and its hint) or ``interrupted``.
    """
    running = dict(record, status="running", pid=os.getpid(), started=record.get("started") or now())
    save(path, running)
    done: dict[str, Any] = {}
    try:
        yield done
    except KeyboardInterrupt:
        save(path, dict(running, status="interrupted", finished=now()))
        raise
    except Exception as exc:
        save(path, dict(running, status="failed", finished=now(), error=getattr(exc, "message", str(exc)),
                        hint=getattr(exc, "hint", None)))
        raise
    save(path, {**running, **done, "status": "ok", "finished": now()})
