"""Write-then-rename helpers: a reader sees the old file or the new one,
never half of either, and a failure leaves the old one in place."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from builder.infra.errors import InfraError


def _disk_full(path: Path, exc: OSError) -> InfraError:
    """The error for a failed write of ``path``, naming the file that failed when the OS says which."""
    where = exc.filename if isinstance(exc.filename, str) and exc.filename.startswith("/") else path
    return InfraError(f"disk full writing {where}", hint="free space in the work dir (isobuild clean) and re-run") \
        if exc.errno == errno.ENOSPC else InfraError(f"cannot write {where}: {exc.strerror}")


# Every temporary name isobuild makes: a dot, the final name, the pid that made it, ".tmp"
# (a random part or a word may come before it, ".tar" after it).  A killed run's temps are
# found by it and removed by the next run that holds the work dir (``stale_temps``).
TEMP = re.compile(r"\..+\.(?P<pid>\d+)\.(?:[A-Za-z0-9_]+\.)?tmp(?:\.tar)?")


def temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def temp_path(final: Path, word: str = "") -> Path:
    """A temp name beside ``final`` that ``stale_temps`` recognises."""
    return final.with_name(f".{final.name}.{os.getpid()}.{word + '.' if word else ''}tmp")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(top: Path, depth: int = 4, skip: tuple[str, ...] = ("trees",)) -> list[Path]:
    """Temps under ``top`` (``depth`` levels at most; ``skip`` names not entered) whose
    process is gone: what killed runs left."""
    found: list[Path] = []

    def walk(directory: Path, level: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            m = TEMP.fullmatch(entry.name)
            if m:
                pid = int(m.group("pid"))
                if pid != os.getpid() and not pid_alive(pid):
                    found.append(Path(entry.path))
                continue
            if level < depth and entry.name not in skip and entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), level + 1)

    walk(top, 1)
    return found


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600; outputs are for everyone to read
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_full(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temp name in dst's directory."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_full(dst, exc) from exc


@contextmanager
def new_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory next to ``final``; rename it to ``final`` on success.

    An existing ``final`` is replaced only once the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.{os.getpid()}.old.tmp")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_full(final, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
