"""Running commands inside a root filesystem being built.

Each command runs through ``builder.infra.sandbox``: in its own mount and PID
namespaces, where ``builder.tools.inroot`` mounts /proc, /sys and a private /dev in
the root for that command alone and chroots.  Nothing is mounted in the root
while isobuild itself writes into it (``builder.tools.rootdir``), no mount can reach
the host or outlive the command, and every process a package script starts
dies with the command.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from builder.infra import runner, sandbox
from builder.infra.errors import InfraError


class Chroot:
    def __init__(self, root: Path, log_path: Path, env: Mapping[str, str] | None = None):
        self.root = root
        self.log_path = log_path
        self.env = dict(env or {})

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, capture: bool = False,
            check: bool = True, on_line: Callable[[str], bool | None] | None = None) -> runner.Result:
        """Run ``argv`` inside the root (paths in argv are paths inside it)."""
        wrapped = sandbox.chroot_argv(self.root, list(argv), {**self.env, **(env or {})})
        return runner.run(wrapped, log_path=self.log_path, capture=capture, check=check, on_line=on_line,
                          display=["chroot", str(self.root), *argv])


def host(argv: Sequence[str], log_path: Path, capture: bool = False,
         env: Mapping[str, str] | None = None) -> runner.Result:
    """A host tool that works on a root's files (tar, mksquashfs, rm) with the root's ownership:
    in the namespaces, as root inside them."""
    return runner.run(sandbox.wrap(argv), log_path=log_path, capture=capture, display=list(argv), env=env)


_TAR = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]


def pack(root: Path, tarball: Path, log_path: Path) -> None:
    """A root as a tarball, its owners and modes kept (in the namespaces: see ``host``)."""
    host([*_TAR, "-cf", str(tarball), "-C", str(root), "."], log_path)


def unpack(tarball: Path, root: Path, log_path: Path) -> None:
    """A root's tarball into ``root``.  As an ordinary user the device nodes under /dev are left out:
    a user namespace may not make them, and nothing needs them -- every command in the root gets a
    private /dev (builder.tools.inroot) and the booted system mounts devtmpfs."""
    skip = ["--exclude=./dev/*"] if sandbox.rootless() else []
    host([*_TAR, *skip, "-xpf", str(tarball), "-C", str(root)], log_path)


def remove_tree(path: Path, log_path: Path | None = None) -> None:
    """Remove a tree a bootstrap or build made (as an ordinary user: inside the namespaces, where
    its subordinate-id files are the user's to remove)."""
    if not path.exists() and not path.is_symlink():
        return
    if sandbox.rootless():
        runner.run(sandbox.wrap(["rm", "-rf", "--one-file-system", "--", str(path)]), log_path=log_path,
                   display=["rm", "-rf", str(path)])
    else:
        shutil.rmtree(path)


def _mounted_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if (line.split()[1] + "/").startswith(prefix)]


def remove_root(root: Path, log_path: Path | None = None) -> None:
    """Delete a build root, refusing while anything is mounted inside it (isobuild's own mounts live
    in namespaces that end with each command; one here was made by someone else)."""
    if not root.exists() and not root.is_symlink():
        return
    busy = _mounted_under(root)
    if busy:
        raise InfraError(f"{root}: still mounted inside ({', '.join(busy)}); not deleting it",
                         hint="unmount them (umount -R) and run isobuild clean")
    remove_tree(root, log_path)
