"""Which directories isobuild may write to, and which files it may read as project input.

isobuild runs as root on build hosts and CI runners, so a setting that names a
directory is checked when the settings are loaded, before any verb -- even a
read-only one -- touches it:

- output directories (``work_dir``, ``logs_dir``) are refused when they are
  ``/``, inside a system tree (``/usr``, ``/etc``, ``/var/lib``, ``/boot``, the
  kernel's pseudo-filesystems, ...), the project directory itself, one of its
  input directories or a parent of either, or not a directory;
- project inputs (patch series, profiles, fragments, overlays, kickstart
  templates) must resolve inside the project directory: a symlink or ``..``
  that leads elsewhere is refused, so no setting can make a build read a host
  file into an artifact.  Sources outside the project are pinned by sha256
  (tarballs) or named by URL (git).

A work dir isobuild made carries ``MARKER``; ``distclean`` removes nothing from a
directory without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.infra.errors import UserError

MARKER = ".isobuild-work-dir"
# what isobuild itself makes at the top of a work dir; the stages add theirs (builder.stages.registry)
WORK_ENTRIES = ("sources", "cache", "digests.json", "lock", "projects", MARKER)
# every name a stage or command of this version makes there (a work dir made before the marker
# existed is claimed when it holds nothing else; tests keep this in step with the stage registry)
KNOWN_ENTRIES = (*WORK_ENTRIES, "kernel", "glibc", "guest-tests", "distros", "patches", "images", "pkgs")
SYSTEM_TREES = tuple(Path(p) for p in (
    "/usr", "/etc", "/var/lib", "/var/log", "/var/spool", "/var/mail", "/var/backups", "/boot", "/proc", "/sys",
    "/dev", "/run", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/snap", "/lost+found"))
# shared top-level directories: fine to hold a work dir, never to be one
TOP_LEVEL = tuple(Path(p) for p in ("/home", "/root", "/tmp", "/var", "/var/tmp", "/var/cache", "/opt", "/srv",
                                     "/mnt", "/media", "/usr/local"))
# project directories that hold inputs: an output directory may be none of them (nor hold one)
INPUT_DIRS = ("patches", "profiles", "distros", "kickstart", "tests", "builder", ".git")


def _within(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents


def check_output_dir(path: Path, project_root: Path, setting: str, where: str) -> None:
    """UserError unless ``path`` may be a directory isobuild writes into (see the module docstring)."""
    resolved = path.resolve()
    root = project_root.resolve()
    reason = None
    if resolved == Path("/"):
        reason = "the root directory"
    elif any(_within(resolved, tree.resolve()) for tree in SYSTEM_TREES):
        reason = "inside a system directory tree"
    elif resolved in {t.resolve() for t in TOP_LEVEL}:
        reason = "a shared top-level directory"
    elif resolved == root:
        reason = "the project directory itself"
    elif resolved in root.parents:
        reason = "a parent of the project directory"
    elif any(_within(resolved, (root / d).resolve()) or resolved in (root / d).resolve().parents
             for d in INPUT_DIRS if (root / d).exists()):
        reason = "one of the project's input directories (or holds one)"
    elif resolved.exists() and not resolved.is_dir():
        reason = "not a directory"
    if reason:
        raise UserError(f"{where}: {setting}: {resolved} is {reason}",
                        hint=f"point {setting} at a directory of isobuild's own, e.g. ~/.cache/isobuild "
                             "(work_dir) or logs (logs_dir)")


def project_input(project_root: Path, value: str, setting: str, where: str, kind: str = "dir",
                  required: bool = True) -> Path:
    """``value`` (relative to the project) as a path that resolves inside the project.

    ``kind`` is ``dir`` or ``file``; a missing one is a UserError when ``required``."""
    root = project_root.resolve()
    path = Path(value) if Path(value).is_absolute() else project_root / value
    resolved = path.resolve()
    if not _within(resolved, root):
        raise UserError(f"{where}: {setting}: {value!r} resolves to {resolved}, outside the project {root}",
                        hint="project inputs (patches, profiles, fragments, overlays, kickstarts) live in the "
                             "project directory; copy it in")
    if not resolved.exists():
        if required:
            raise UserError(f"{where}: {setting}: {value!r} not found ({resolved})",
                            hint=f"create the {'directory' if kind == 'dir' else 'file'} or fix the setting")
        return resolved
    if kind == "dir" and not resolved.is_dir():
        raise UserError(f"{where}: {setting}: {value!r} is not a directory")
    if kind == "file" and not resolved.is_file():
        raise UserError(f"{where}: {setting}: {value!r} is not a regular file")
    if not os.access(resolved, os.R_OK):
        raise UserError(f"{where}: {setting}: {value!r} is not readable")
    return resolved


def read_text(path: Path, what: str) -> str:
    """A project input file's text: UTF-8, a regular file; UserError naming it otherwise."""
    try:
        if path.is_dir():
            raise UserError(f"{path}: {what} is a directory, not a file")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except PermissionError:
        raise UserError(f"{path}: {what} is not readable (permission denied)") from None
    except OSError as exc:
        raise UserError(f"{path}: {what} cannot be read: {exc.strerror or exc}") from None


def claim_work_dir(work_dir: Path, own_entries: tuple[str, ...]) -> None:
    """Mark ``work_dir`` as isobuild's: when making it, or when it holds nothing but entries isobuild
    makes (a work dir from before the marker existed)."""
    marker = work_dir / MARKER
    if marker.exists():
        return
    if work_dir.exists():
        foreign = [p.name for p in work_dir.iterdir() if p.name not in own_entries and not p.name.startswith(".")]
        if foreign:
            return
    else:
        work_dir.mkdir(parents=True)
    marker.write_text("This directory is an isobuild work dir: isobuild distclean may remove what it made here.\n")


def is_claimed(work_dir: Path) -> bool:
    return (work_dir / MARKER).is_file()
