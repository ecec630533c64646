"""What killed runs left in a work dir: found by name, removed by the next run that holds the lock.

Every temp name isobuild makes carries the pid that made it (``builder.infra.atomic.TEMP``); a
killed run cannot remove its own, so the next run -- under the work-dir lock, where no live run
owns them -- removes those of dead processes, build roots included (inside the namespaces when
they hold an ordinary user's subordinate-id files).
"""

from __future__ import annotations

from pathlib import Path

from builder.infra import atomic, log
from builder.tools import chroot


def stale(work_dir: Path, iso_dir: Path | None = None) -> list[Path]:
    """Temps (files and trees, build roots too) of processes that are gone."""
    found = atomic.stale_temps(work_dir)
    if iso_dir is not None:
        found += atomic.stale_temps(iso_dir, depth=2)
    return found


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        chroot.remove_root(path)  # refuses while anything is mounted inside
    else:
        path.unlink(missing_ok=True)


def sweep(work_dir: Path, iso_dir: Path | None = None) -> list[Path]:
    """Remove what killed runs left (call with the work-dir lock held)."""
    gone = stale(work_dir, iso_dir)
    for path in gone:
        remove(path)
        log.get().info("sweep.removed", path=str(path))
    return gone
