"""``python -m builder.tools.inroot --root DIR [--env K=V]... -- CMD...``: one command inside a build root.

Started only by ``builder.infra.sandbox`` inside fresh mount and PID namespaces
(it refuses to run as anything but PID 1 of its own PID namespace, so its
mounts can never land in the host's mount table).  It mounts what package
scripts expect in the root -- a fresh ``/proc`` of this PID namespace,
``/sys`` read-only, and a private ``/dev`` (a tmpfs holding the host's
null, zero, full, random, urandom and tty nodes bound in, its own devpts
instance and shm) -- then chroots into the root and execs the command with a
clean environment.  The mount points are resolved inside the root, so a root
whose ``proc`` is a symlink cannot make it mount elsewhere.  Nothing needs
unmounting: the mounts go away with the namespace when the command exits.

Standard library only: it runs once per command and must start fast.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _inside(root: str, rel: str) -> str:
    """Directory ``rel`` of ``root`` as a real path that is not a symlink (made if missing)."""
    path = root
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise SystemExit(f"isobuild inroot: {path} is not a directory; refusing to mount there")
    return path


def mount_all(root: str) -> None:
    proc = _inside(root, "proc")
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    sys_dir = _inside(root, "sys")
    try:
        _mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # in a user namespace sysfs cannot be mounted afresh: a read-only bind instead
        _mount("/sys", sys_dir, None, MS_BIND | MS_REC)
        _mount("none", sys_dir, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = _inside(root, "dev")
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=16m")
    for name in DEV_NODES:
        node = os.path.join(dev, name)
        with open(node, "w"):
            pass
        _mount(f"/dev/{name}", node, None, MS_BIND)
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    _mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    _mount("tmpfs", shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m builder.tools.inroot --root DIR [--env K=V]... -- CMD...", file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    root = next((o.split("=", 1)[1] for o in options if o.startswith("--root=")), None)
    if not root or not command:
        print("isobuild inroot: --root and a command are required", file=sys.stderr)
        return 2
    if os.getpid() != 1:
        print("isobuild inroot: not PID 1 of a fresh PID namespace; refusing to mount (run it through "
              "builder.infra.sandbox)", file=sys.stderr)
        return 2
    env = dict(BASE_ENV)
    for option in options:
        if option.startswith("--env="):
            key, _, value = option[len("--env="):].partition("=")
            env[key] = value
    root = os.path.realpath(root)
    mount_all(root)
    os.chroot(root)
    os.chdir("/")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"isobuild inroot: {command[0]}: {exc.strerror} (inside {root})", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
