"""``isobuild clean``: drop build trees and superseded artifacts.

Keeps the source cache, the digest cache and every artifact a ``current``
link points at (the last good kernel of each profile), so the next build is
incremental-cold, not download-cold, and nothing good is lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from builder import log


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def targets(work_dir: Path) -> list[Path]:
    root = work_dir / "kernel"
    keep = {(root / "current" / link.name).resolve() for link in (root / "current").glob("*")}
    out = [p for p in (root / "trees").glob("*")]
    out += [p for p in (root / "artifacts").glob("*") if p.resolve() not in keep]
    out += [p for p in (root / "boot").glob("*")]
    return sorted(out)


def clean(work_dir: Path, dry_run: bool = False) -> list[tuple[Path, int]]:
    removed = []
    for path in targets(work_dir):
        size = _size(path)
        removed.append((path, size))
        if not dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            log.get().info("clean.removed", path=str(path), bytes=size)
    return removed
