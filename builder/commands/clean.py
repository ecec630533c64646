"""``isobuild clean``: drop build trees and superseded artifacts;
``isobuild distclean``: remove everything isobuild made.

Keeps the source and package caches (the EL glibc source RPMs too), the
digest cache, every kernel a ``current`` link points at (the last good kernel
of each profile), the current glibc packages (Debian's, and each EL distro's
glibc RPMs) and each distro's last good root filesystem, so nothing good is
lost and the next build downloads nothing.  ISOs in the project's iso/ are never touched.

``distclean`` removes the whole work dir (caches included), the ISOs with
their sums, signatures and report, and the logs -- but only entries isobuild
makes, by name, and never a work or logs dir that is /, a home, the project
or a directory holding the project's own files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.infra import atomic, lock, log, paths
from builder.infra.config import Project
from builder.infra.errors import UserError
from builder.stages import base, registry
from builder.tools import chroot, sweep, vm


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def targets(work_dir: Path) -> list[Path]:
    """What every stage's ``clean_targets`` offers, keeping what any project still points at."""
    keep = base.kept_keys(work_dir)
    return sorted({path for stage in registry.STAGES for path in stage.clean_targets(work_dir, keep)})


def clean(work_dir: Path, dry_run: bool = False, iso_dir: Path | None = None) -> list[tuple[Path, int]]:
    removed = []
    for path in sorted({*targets(work_dir), *sweep.stale(work_dir, iso_dir)}):
        size = _size(path)
        removed.append((path, size))
        if not dry_run:
            sweep.remove(path)
            log.get().info("clean.removed", path=str(path), bytes=size)
    return removed



# --- distclean ----------------------------------------------------------------------------
# Everything isobuild made, by name: an entry that matches none of these is never removed
# (it is kept and listed), so a work or logs dir pointed somewhere shared loses nothing of
# anybody else's.  A stage that adds a top-level entry to the work dir adds its name here.

WORK_ENTRIES = (*paths.WORK_ENTRIES, *sorted(registry.work_entries()), "patches", "projects", "pkgs")
_TEMP = atomic.TEMP
ISO_TOP = re.compile(r"SHA256SUMS(\.asc)?|report\.html")
ISO_FILE = re.compile(r".+\.(iso|iso\.sha256|iso\.asc|manifest\.json)")
LOG_FILE = re.compile(r".+\.log|isobuild\.jsonl|(smoke|pkg)-.+\.(json|xml)")
_SYSTEM = {Path(p) for p in ("/var/tmp", "/var/lib", "/var/cache", "/var/log", "/usr/local", "/usr/share",
                             "/usr/lib", "/usr/src")}


@dataclass
class DistClean:
    removed: list[tuple[Path, int]] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _homes() -> set[Path]:
    homes = {Path(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir not in ("", "/")}
    if os.environ.get("HOME"):
        homes.add(Path(os.environ["HOME"]))
    return {h.resolve() for h in homes}


def _inputs(project: Project) -> list[Path]:
    """The project's own files: a directory holding any of them is not isobuild's to remove."""
    s = project.settings
    return [project.config_file, project.root / "profiles", project.root / "distros",
            project.path(s.kernel.patches), project.path(s.glibc.patches)]


def refuse_unsafe(project: Project, path: Path, setting: str) -> None:
    """UserError unless ``path`` can only be a directory of isobuild's own."""
    resolved = path.resolve()
    reason = None
    if resolved == Path("/") or resolved in _SYSTEM:
        reason = "a system directory"
    elif any(resolved == home or resolved in home.parents or resolved == home / ".cache" for home in _homes()):
        reason = "a home directory (or holds one)"
    elif len(resolved.parts) <= 2:
        reason = "a system directory"
    elif resolved == project.root.resolve() or resolved in project.root.resolve().parents:
        reason = "the project directory (or holds it)"
    elif any(resolved == p.resolve() or resolved in p.resolve().parents for p in _inputs(project)):
        reason = "holding the project's own files (settings, patches, profiles or distros)"
    elif (resolved / ".git").exists():
        reason = "a git repository"
    if reason:
        raise UserError(f"refusing to distclean {setting} {resolved}: it is {reason}",
                        hint=f"point {setting} at a directory of isobuild's own (e.g. ~/.cache/isobuild; "
                             f"{project.config_file.name} or ISOBUILD_WORK_DIR), or remove it by hand")


def _plan(project: Project) -> tuple[list[Path], list[Path], list[Path]]:
    """(remove, keep, prune): prune lists directories to drop once they are empty, deepest first."""
    remove: list[Path] = []
    keep: list[Path] = []
    prune: list[Path] = []

    def sort(entries: list[Path], wanted: Callable[[Path], bool]) -> None:
        for entry in entries:
            (remove if wanted(entry) else keep).append(entry)

    work = project.work_dir.resolve()
    if work.is_dir():
        sort(sorted(work.iterdir()), lambda p: p.name in WORK_ENTRIES or bool(_TEMP.fullmatch(p.name)))
        prune.append(work)
    iso = project.iso_dir.resolve()
    if iso.is_dir():
        for entry in sorted(iso.iterdir()):
            if entry.is_dir() and not entry.is_symlink():  # iso/<distro>/
                sort(sorted(entry.iterdir()),
                     lambda p: p.is_file() and bool(ISO_FILE.fullmatch(p.name) or _TEMP.fullmatch(p.name)))
                prune.append(entry)
            else:
                sort([entry], lambda p: p.is_file() and bool(ISO_TOP.fullmatch(p.name) or _TEMP.fullmatch(p.name)))
        prune.append(iso)
    logs = project.logs_dir.resolve()
    if logs.is_dir():
        sort(sorted(logs.iterdir()), lambda p: p.is_file() and bool(LOG_FILE.fullmatch(p.name)))
        prune.append(logs)
    # every directory goes through remove_root, which refuses one with a mount inside; distros/
    # (the build roots, where isobuild mounts) goes first, so that refusal comes before anything
    # is removed; the lock file goes last, when all else is gone
    remove.sort(key=lambda p: (p.parent != work or p.name != "distros",
                               p.parent == work and p.name in ("lock", paths.MARKER)))
    return remove, keep, prune


def distclean(project: Project, dry_run: bool = False) -> DistClean:
    """Remove everything isobuild made: the work dir (caches too), iso/ and the logs."""
    for path, setting in ((project.work_dir, "work_dir"), (project.iso_dir, "the ISO directory"),
                          (project.logs_dir, "logs_dir")):
        refuse_unsafe(project, path, setting)
    if project.work_dir.is_dir() and not paths.is_claimed(project.work_dir):
        raise UserError(f"refusing to distclean work_dir {project.work_dir}: it carries no {paths.MARKER} "
                        "(isobuild marks the work dirs it makes)",
                        hint="if isobuild made it, any build there marks it; otherwise remove it by hand")
    busy = vm.running(project.work_dir)
    if busy:
        raise UserError(f"refusing to distclean work_dir {project.work_dir}: build VMs are running over its images "
                        f"({', '.join(str(m.directory) for m in busy)})",
                        hint="stop them first: isobuild vm clean --all (in each project that started them)")
    remove, keep, prune = _plan(project)
    result = DistClean([(p, _size(p)) for p in remove], keep)
    if dry_run:
        return result
    with contextlib.ExitStack() as stack:
        if project.work_dir.is_dir():
            stack.enter_context(lock.held(project.work_dir, claim=False))  # never under a running build
        for path in remove:
            if path.is_dir() and not path.is_symlink():
                chroot.remove_root(path)  # refuses while anything is mounted inside
            else:
                path.unlink(missing_ok=True)
            log.get().info("distclean.removed", path=str(path))
    for directory in prune:
        with contextlib.suppress(OSError):  # not empty: something isobuild did not make is kept in it
            directory.rmdir()
    return result
