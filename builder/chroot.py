"""Running commands inside a root filesystem being built.

``Chroot`` mounts /proc, /sys, /dev and /dev/pts into the root for as long as
the context lasts (package scripts such as update-initramfs need them) and
always unmounts them, even when a step fails or is interrupted, so no mount
is left pinning the work dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from builder import runner

_MOUNTS: tuple[tuple[str, str, str | None, list[str]], ...] = (
    ("proc", "proc", "proc", []),
    ("sysfs", "sys", "sysfs", ["-o", "ro"]),
    ("/dev", "dev", None, ["--bind"]),
    ("devpts", "dev/pts", "devpts", ["-o", "newinstance,ptmxmode=0666"]),
)


class Chroot:
    def __init__(self, root: Path, log_path: Path, env: Mapping[str, str] | None = None):
        self.root = root
        self.log_path = log_path
        self.env = dict(env or {})
        self.mounted: list[Path] = []

    def __enter__(self) -> Chroot:
        try:
            for source, target, fstype, options in _MOUNTS:
                where = self.root / target
                where.mkdir(parents=True, exist_ok=True)
                argv = ["mount", *options, *(["-t", fstype] if fstype else []), source, str(where)]
                runner.run(argv, log_path=self.log_path)
                self.mounted.append(where)
        except BaseException:
            self._unmount()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._unmount()

    def _unmount(self) -> None:
        for where in reversed(self.mounted):
            runner.run(["umount", "--lazy", str(where)], log_path=self.log_path, check=False)
        self.mounted.clear()

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
            capture: bool = False) -> runner.Result:
        """Run ``argv`` inside the root (paths in argv are paths inside it)."""
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", **self.env, **(env or {})}
        return runner.run(["chroot", str(self.root), *argv], log_path=self.log_path, env=full_env,
                          capture=capture)

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        """Write a file inside the root (``path`` is absolute inside it)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, mode)
        return target
