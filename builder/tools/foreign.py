"""Running another arch's programs on this host: Debian's qemu-user-static through binfmt_misc.

A foreign root's maintainer scripts (mmdebstrap --arch, dpkg -i in the root, update-initramfs) are
that arch's programs; the kernel hands them to ``/usr/libexec/qemu-binfmt/<arch>-binfmt-P`` when
the binfmt entry is registered and enabled.  Debian's entries carry the F flag (the interpreter is
opened at registration), so they work inside a chroot that has no QEMU of its own.  isobuild never
registers entries itself -- that changes the host's kernel state -- it checks and says how.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.infra import runner
from builder.infra.arch import ARCHES, Arch
from builder.infra.errors import InfraError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def enable_hint(arches: list[Arch]) -> str:
    """The commands that make ``arches``' programs run here (what ``enable`` runs)."""
    return "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; " + \
        "; ".join(f"update-binfmts --enable {a.qemu_user}" for a in arches)


def binfmt_state(arch: Arch, binfmt_dir: Path | None = None) -> str | None:
    """None when ``arch``'s programs run here; otherwise what is missing, as a sentence."""
    if arch.native():
        return None
    binfmt_dir = binfmt_dir or BINFMT_DIR
    if shutil.which(f"{arch.qemu_user}-static") is None:
        return f"{arch.qemu_user}-static not found (package qemu-user-static)"
    if not (binfmt_dir / "status").exists():
        return f"binfmt_misc is not mounted at {binfmt_dir}"
    entry = binfmt_dir / arch.qemu_user
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return f"no binfmt entry {entry} (qemu-user-static's {arch.qemu_user} is not registered)"
    if not lines or lines[0].strip() != "enabled":
        return f"the binfmt entry {entry} is disabled"
    if not any(line.startswith("flags:") and "F" in line.split(":", 1)[1] for line in lines):
        return f"the binfmt entry {entry} lacks the F flag: it would not work inside a chroot"
    return None


def require(arch: Arch, bootstrap: str = "mmdebstrap", binfmt_dir: Path | None = None) -> None:
    """InfraError, with the commands that fix it, unless ``arch``'s programs run on this host (and
    mmdebstrap, when it bootstraps, has arch-test to find that out for itself)."""
    missing = binfmt_state(arch, binfmt_dir)
    if missing is not None:
        raise InfraError(f"{arch.name} programs cannot run on this host: {missing}",
                         hint=f"apt-get install qemu-user-static binfmt-support; {enable_hint([arch])}  "
                              "(isobuild doctor --install does both)")
    if bootstrap == "mmdebstrap" and shutil.which("arch-test") is None:
        raise InfraError(f"arch-test not found: mmdebstrap needs it for a foreign --arch ({arch.name})",
                         hint="apt-get install arch-test  (or isobuild doctor --install)")


def states(binfmt_dir: Path | None = None) -> dict[str, str | None]:
    """Every other arch's binfmt state (``binfmt_state``), by arch name: what ``isobuild doctor`` shows."""
    return {a.name: binfmt_state(a, binfmt_dir) for a in ARCHES.values() if not a.native()}


def enable(log_path: Path, binfmt_dir: Path | None = None) -> None:
    """``isobuild doctor --install``, as root: mount binfmt_misc if it is not, and enable Debian's
    qemu-user-static entries of the other arches (update-binfmts, binfmt-support's tool)."""
    binfmt_dir = binfmt_dir or BINFMT_DIR
    if not (binfmt_dir / "status").exists():
        runner.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)], log_path=log_path)
    for arch in ARCHES.values():
        if not arch.native() and binfmt_state(arch, binfmt_dir) is not None:
            runner.run(["update-binfmts", "--enable", arch.qemu_user], log_path=log_path, check=False)
