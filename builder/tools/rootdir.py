"""Writing into a root filesystem under construction without ever leaving it.

A root being built holds absolute symlinks (``etc/localtime ->
/usr/share/zoneinfo/...``, ``/etc/alternatives/*``, ``/etc/mtab``); a host path
joined onto the root and written through follows them onto the build host.
Every path here is resolved *inside* the root the way ``openat2(2)`` with
``RESOLVE_IN_ROOT`` resolves it: component by component from a descriptor of
the root, a symlink's target read and walked again from the root when it is
absolute, ``..`` stopping at the root.  Writes never follow the last
component: a symlink there is replaced, not written through, and every write
goes to a temporary name in the resolved directory first and is renamed over
the old entry.

Overlays (a directory of the project copied over a root) are vetted before
anything is copied: no entries under ``dev/ proc/ sys/ run/``, no device
nodes, fifos or sockets, no absolute symlinks and none that climb out of the
root.  The copy then goes through the same resolution, so an overlay file at
``etc/localtime`` replaces the root's link instead of writing to the host's
zoneinfo.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from builder.infra.errors import InfraError, UserError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's own limit on symlinks in one resolution
# Where an overlay must not put anything: the kernel's and the live system's own trees.
PSEUDO = ("dev", "proc", "sys", "run")


def _parts(path: str | PurePosixPath) -> list[str]:
    return [p for p in PurePosixPath(path).parts if p not in ("/", "", ".")]


@dataclass(frozen=True)
class Vetted:
    """An overlay that passed ``vet_overlay``: its entries, relative, parents first."""

    source: Path
    entries: list[tuple[str, os.stat_result]]


class Root:
    """A root filesystem directory; paths given to its methods are absolute inside it."""

    def __init__(self, path: Path):
        self.path = path

    # --- resolution -----------------------------------------------------------------

    @contextmanager
    def _dir(self, rel: str | PurePosixPath, create: bool = False) -> Iterator[int]:
        """A descriptor of directory ``rel``, resolved inside the root (parents made with ``create``)."""
        try:
            top = os.open(self.path, _DIR_FLAGS)
        except FileNotFoundError:
            raise InfraError(f"{self.path}: the build root does not exist") from None
        stack = [top]
        todo = _parts(rel)
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                try:
                    st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=stack[-1])
                    st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links", str(rel))
                    target = os.readlink(name, dir_fd=stack[-1])
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    todo = [*_parts(target), *todo]
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", f"{rel}")
                stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
            yield stack[-1]
        except PermissionError as exc:
            # as an ordinary user the root's files belong to subordinate ids: only what the root's own
            # root user owns is ours to write from outside its namespace
            raise InfraError(f"{self.path}: permission denied at {rel}/{exc.filename or ''} in the build root",
                             hint="as an ordinary user, isobuild can write only where the root's root user owns "
                                  "the directory") from None
        finally:
            for fd in stack:
                os.close(fd)

    def _split(self, path: str) -> tuple[str, str]:
        parts = _parts(path)
        if not parts or parts[-1] == "..":
            raise UserError(f"{path!r}: not a file path inside the root")
        return "/".join(parts[:-1]), parts[-1]

    def resolve(self, path: str) -> Path:
        """The host path where ``path`` lands inside the root, following symlinks only inside it."""
        parts = _parts(path)
        links = 0
        while True:
            parent, name = "/".join(parts[:-1]), parts[-1] if parts else ""
            with self._dir(parent) as fd:
                real_parent = Path(os.readlink(f"/proc/self/fd/{fd}"))
                if not name or name == "..":
                    return real_parent if name != ".." else real_parent.parent
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return real_parent / name
                if not stat.S_ISLNK(st.st_mode):
                    return real_parent / name
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = os.readlink(name, dir_fd=fd)
            base = [] if target.startswith("/") else _parts(parent)
            parts = [*base, *_parts(target)]

    def exists(self, path: str) -> bool:
        try:
            return self.resolve(path).exists()
        except (FileNotFoundError, NotADirectoryError):
            return False

    def is_symlink(self, path: str) -> bool:
        parent, name = self._split(path)
        try:
            with self._dir(parent) as fd:
                return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    # --- reading ----------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        """A regular file's bytes; its symlinks followed inside the root only."""
        real = self.resolve(path)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UserError(f"{path} in {self.path} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy a regular file of the root to ``dest`` on the host (its symlinks resolved inside)."""
        real = self.resolve(path)
        src = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise UserError(f"{path} in {self.path} is not a regular file")
            with os.fdopen(src, "rb", closefd=False) as fin, dest.open("wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
        finally:
            os.close(src)

    # --- writing ----------------------------------------------------------------------

    def _temp_name(self, name: str) -> str:
        return f".{name}.isobuild-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Make directory ``path`` and its parents; ``mode`` is set on a directory made here only
        (existing ones, and symlinks to them inside the root, stay as they are)."""
        new = not self.exists(path)
        with self._dir(path, create=True) as fd:
            if new and mode != 0o755:
                os.chmod(fd, mode)

    def _write(self, path: str, fill: Callable[[BinaryIO], None], mode: int, uid: int, gid: int) -> None:
        """A new file at a temp name in ``path``'s resolved directory, filled, then renamed over the entry."""
        parent, name = self._split(path)
        with self._dir(parent, create=True) as dfd:
            tmp = self._temp_name(name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    fill(f)
                if os.geteuid() == 0:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
                raise
            os.close(fd)
            self._replace(dfd, tmp, name, path)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Write a file at ``path``, replacing whatever entry is there (a symlink is replaced, never followed)."""
        def fill(out: BinaryIO) -> None:
            out.write(data)
        self._write(path, fill, mode, uid, gid)

    def copy_in(self, src: Path, path: str, mode: int = 0o644) -> None:
        """Copy the host file ``src`` to ``path`` in the root (replacing, never following, what is there)."""
        def fill(out: BinaryIO) -> None:
            with open(src, "rb") as fin:
                while chunk := fin.read(1 << 20):
                    out.write(chunk)
        self._write(path, fill, mode, 0, 0)

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        self.write_bytes(path, text.encode("utf-8"), mode)

    def symlink(self, path: str, target: str) -> None:
        """Make ``path`` a symlink to ``target``, replacing what is there."""
        parent, name = self._split(path)
        with self._dir(parent, create=True) as dfd:
            tmp = self._temp_name(name)
            os.symlink(target, tmp, dir_fd=dfd)
            self._replace(dfd, tmp, name, path)

    def _replace(self, dfd: int, tmp: str, name: str, path: str) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            os.unlink(tmp, dir_fd=dfd)
            raise UserError(f"{path}: a directory in the root, cannot replace it with a file") from None
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise

    def remove(self, path: str) -> None:
        """Remove the entry ``path`` (a file, a symlink itself, or a directory tree), if there is one."""
        parent, name = self._split(path)
        try:
            with self._dir(parent) as dfd:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if stat.S_ISDIR(st.st_mode):
                    _rmtree_at(dfd, name)
                else:
                    os.unlink(name, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return

    def glob(self, pattern: str) -> list[str]:
        """Paths inside the root matching ``pattern`` (fnmatch in the last component only)."""
        parent, name = self._split(pattern)
        if any(c in parent for c in "*?["):
            raise ValueError(f"{pattern}: wildcards only in the last component")
        try:
            with self._dir(parent) as dfd:
                names = sorted(os.listdir(dfd))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [f"/{parent}/{n}" if parent else f"/{n}" for n in names if fnmatch.fnmatchcase(n, name)]

    def chmod(self, path: str, mode: int) -> None:
        """chmod the entry ``path`` resolves to inside the root."""
        os.chmod(self.resolve(path), mode, follow_symlinks=False)

    # --- overlays ---------------------------------------------------------------------

    def copy_overlay(self, overlay: Vetted) -> list[str]:
        """Copy a vetted overlay over the root, replacing entries; returns what was written."""
        written = []
        for rel, st in overlay.entries:
            src = overlay.source / rel
            target = "/" + rel
            if stat.S_ISDIR(st.st_mode):
                self.mkdir(target, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                self.symlink(target, os.readlink(src))
            else:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    data = f.read()
                self.write_bytes(target, data, stat.S_IMODE(st.st_mode))
            written.append(target)
        return written


def _rmtree_at(dfd: int, name: str) -> None:
    """Remove directory ``name`` below ``dfd`` without following any symlink in it."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def vet_overlay(source: Path, where: str) -> Vetted:
    """Check an overlay directory before anything is copied; UserError naming the first bad entry.

    Refused: entries under dev/ proc/ sys/ run/, device nodes, fifos and sockets,
    absolute symlinks and relative ones that climb out of the root, names that are
    not UTF-8.  The overlay itself must be a real directory (not a symlink)."""
    hint = "overlays hold regular files, directories and relative symlinks that stay inside the root"
    if source.is_symlink() or not source.is_dir():
        raise UserError(f"{where}: overlay {source} is not a directory", hint=hint)
    entries: list[tuple[str, os.stat_result]] = []

    def walk(directory: Path, rel: PurePosixPath) -> None:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
        for entry in children:
            path = rel / entry.name
            shown = f"{where}: overlay entry {path}"
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{where}: overlay entry {rel / repr(entry.name)}: name is not UTF-8",
                                hint=hint) from None
            if path.parts[0] in PSEUDO:
                raise UserError(f"{shown}: nothing may go under /{path.parts[0]} (the running system's "
                                "own tree)", hint=hint)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                if target.startswith("/"):
                    raise UserError(f"{shown}: symlink to the absolute path {target!r}",
                                    hint=hint + " (make it relative)")
                depth = len(path.parts) - 1
                for part in PurePosixPath(target).parts:
                    depth += -1 if part == ".." else (0 if part == "." else 1)
                    if depth < 0:
                        raise UserError(f"{shown}: symlink to {target!r} leaves the root", hint=hint)
                entries.append((str(path), st))
            elif stat.S_ISDIR(st.st_mode):
                entries.append((str(path), st))
                walk(Path(entry.path), path)
            elif stat.S_ISREG(st.st_mode):
                entries.append((str(path), st))
            else:
                raise UserError(f"{shown}: a device node, fifo or socket", hint=hint)

    walk(source, PurePosixPath())
    return Vetted(source, entries)
