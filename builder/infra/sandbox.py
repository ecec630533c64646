"""Namespaces for the commands that work on a build root.

Every command that runs inside a root (``dpkg``, ``update-initramfs``,
``usermod``, ``dracut``...) or on a root's files where ownership matters
(``tar``, ``mksquashfs``, ``rm``) runs in fresh mount and PID namespaces made
by util-linux ``unshare``: what it mounts (``/proc``, ``/sys``, a private
``/dev``) exists only in its namespace, so no mount can leak to the host or
outlive the command, and when the command ends -- or isobuild is killed
(``--kill-child``) -- every process it started dies with its PID namespace.

As an ordinary user (rootless builds) the namespaces sit in a user namespace
that maps root inside to the user outside and the user's ``/etc/subuid`` and
``/etc/subgid`` ranges to the other ids, the way mmdebstrap's unshare mode
needs them: files root owns in the root are the user's own on the host, so
isobuild can write them without privileges, and package scripts can still
chown to any id a Debian system uses.

The root's commands go through ``python -m builder.tools.inroot`` inside the
namespaces: it mounts what the root needs and chroots (see that module).
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.infra import runner
from builder.infra.errors import InfraError

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
# ids a Debian root uses: system users, nobody (65534); the range must reach past them
_MIN_RANGE = 65536


@dataclass(frozen=True)
class IdMap:
    """An ordinary user's ids: itself (root inside) and its subordinate ranges (1.. inside)."""

    uid: int
    gid: int
    subuid: int
    subuid_count: int
    subgid: int
    subgid_count: int

    def unshare_args(self) -> list[str]:
        return ["--map-root-user",
                f"--map-users={self.subuid},1,{self.subuid_count - 1}",
                f"--map-groups={self.subgid},1,{self.subgid_count - 1}"]


def _range(path: Path, user: str, uid: int) -> tuple[int, int] | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


@functools.cache
def idmap() -> IdMap | None:
    """None for root (no user namespace needed); the user's map otherwise (InfraError if it has none)."""
    uid = os.geteuid()
    if uid == 0:
        return None
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    subuid, subgid = _range(SUBUID, user, uid), _range(SUBGID, user, uid)
    hint = (f"rootless builds need subordinate ids for {user}: as root, "
            f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user} "
            "(and apt-get install uidmap); or run isobuild as root")
    if subuid is None or subgid is None:
        raise InfraError(f"no /etc/subuid and /etc/subgid range for user {user}", hint=hint)
    if min(subuid[1], subgid[1]) < _MIN_RANGE:
        raise InfraError(f"the subordinate id range of {user} is smaller than {_MIN_RANGE}", hint=hint)
    if shutil.which("newuidmap") is None or shutil.which("newgidmap") is None:
        raise InfraError("newuidmap/newgidmap not found (rootless builds map ids with them)",
                         hint="apt-get install uidmap")
    return IdMap(uid, os.getegid(), subuid[0], subuid[1], subgid[0], subgid[1])


def prefix() -> list[str]:
    """``unshare`` with fresh mount and PID namespaces (in a user namespace when not root)."""
    mapping = idmap()
    return ["unshare", *(mapping.unshare_args() if mapping else []), "--mount", "--pid", "--fork", "--kill-child"]


def wrap(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``argv`` run on the host in the namespaces (ownership as inside a root)."""
    return [*prefix(), *(str(a) for a in argv)]


def chroot_argv(root: Path, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` run inside ``root`` with /proc, /sys and a private /dev mounted there, in the namespaces."""
    env_args = [f"--env={k}={v}" for k, v in sorted((env or {}).items())]
    return [*prefix(), sys.executable, "-m", "builder.tools.inroot", f"--root={root}", *env_args, "--", *argv]


def rootless() -> bool:
    return os.geteuid() != 0


def probe() -> tuple[bool, str]:
    """Whether this host can run root commands in the namespaces for this user (for doctor)."""
    try:
        argv = wrap(["true"])
    except InfraError as exc:
        return False, exc.message + (f" ({exc.hint})" if exc.hint else "")
    if shutil.which("unshare") is None:
        return False, "unshare (util-linux) not found"
    done = runner.run(argv, capture=True, timeout=30, check=False)
    if done.returncode != 0:
        why = done.output.strip().splitlines()[-1] if done.output.strip() else f"exit {done.returncode}"
        return False, f"unshare failed: {why} (are unprivileged user namespaces allowed? " \
                      "sysctl user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns)"
    return True, "root" if not rootless() else "user namespaces with subordinate ids"
