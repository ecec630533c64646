"""``isobuild clean``: drop build trees and superseded artifacts.

Keeps the source and package caches, the digest cache, every kernel a
``current`` link points at (the last good kernel of each profile) and each
distro's last good root filesystem, so nothing good is lost and the next
build downloads nothing.  ISOs in the project's iso/ are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from builder import log, rootfs, state


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
    out = list((root / "trees").glob("*"))
    out += [p for p in (root / "artifacts").glob("*") if p.resolve() not in keep]
    out += list((root / "boot").glob("*"))
    for distro in (work_dir / "distros").glob("*"):
        last_good = (state.load(distro / "state" / "rootfs.json") or {}).get("last_good")
        out += [p for p in (distro / "rootfs").glob("*") if p.name != last_good]
        out += list(distro.glob("iso-work"))
    return sorted(out)


def clean(work_dir: Path, dry_run: bool = False) -> list[tuple[Path, int]]:
    removed = []
    for path in targets(work_dir):
        size = _size(path)
        removed.append((path, size))
        if not dry_run:
            if path.name.startswith(".root-"):
                rootfs.remove_root(path)  # refuses while anything is mounted inside
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            log.get().info("clean.removed", path=str(path), bytes=size)
    return removed
