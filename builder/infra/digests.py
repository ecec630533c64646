"""sha256 of files, remembered by (size, mtime, inode) so unchanged large
inputs (a 138 MB source tarball) are not re-read on every run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from builder.infra import atomic


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """sha256 over a directory's relative paths, modes, link targets and file bytes."""
    h = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        st = item.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if item.is_symlink():
            h.update(os.readlink(item).encode())
        elif item.is_file():
            h.update(item.read_bytes())
    return h.hexdigest()


class DigestCache:
    """A JSON file mapping absolute path → [size, mtime_ns, inode, sha256]."""

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list[object]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list[object]]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (FileNotFoundError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp: list[object] = [st.st_size, st.st_mtime_ns, st.st_ino]
        entries = self._load()
        hit = entries.get(key)
        if hit is not None and hit[:3] == stamp:
            return str(hit[3])
        value = sha256_file(path)
        entries[key] = [*stamp, value]
        self._dirty = True
        return value

    def tree(self, path: Path) -> str:
        """``sha256_tree(path)``, recomputed only when a stat walk (names, sizes, mtimes,
        inodes) differs from the one remembered: status stays fast over a 1,500-file dir."""
        h = hashlib.sha256()
        for item in sorted(path.rglob("*")):
            st = item.lstat()
            h.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_mode}\n".encode())
        key, stamp = f"tree:{path.resolve()}", h.hexdigest()
        entries = self._load()
        hit = entries.get(key)
        if hit is not None and hit[0] == stamp:
            return str(hit[1])
        value = sha256_tree(path)
        entries[key] = [stamp, value]
        self._dirty = True
        return value

    def remember(self, path: Path, sha256: str) -> None:
        """Record a digest computed elsewhere (e.g. of the temp file renamed to ``path``)."""
        st = path.stat()
        self._load()[str(path.resolve())] = [st.st_size, st.st_mtime_ns, st.st_ino, sha256]
        self._dirty = True

    def save(self) -> None:
        if self._dirty and self._entries is not None:
            atomic.write_json(self.path, self._entries)
            self._dirty = False
