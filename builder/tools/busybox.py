"""The busybox a kernel boot check's initramfs runs, for the kernel's arch.

The host's own ``/bin/busybox`` (Debian's ``busybox-static``) serves its own arch.  Another arch's
comes from Debian's archive: ``busybox-static`` of that arch from the configured suite, verified the
way apt verifies it (signed InRelease -> Packages -> sha256, builder.tools.aptrepo), the binary taken
out of the package by reading its data tarball -- nothing of it is run on the host -- and checked to
be a static executable for that arch.  Both the package and the extracted binary are cached by
sha256, so a second boot check needs no network.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from builder.infra import atomic, runner, state
from builder.infra.arch import Arch
from builder.infra.digests import sha256_file
from builder.infra.errors import InfraError, UserError
from builder.tools import aptrepo, initramfs

HOST_BUSYBOX = initramfs.BUSYBOX
PACKAGE = "busybox-static"
# ELF e_machine of each arch: the binary must be the guest's, not the host's
E_MACHINE = {"x86_64": 62, "arm64": 183, "riscv64": 243}
_MEMBERS = ("bin/busybox", "usr/bin/busybox")  # bookworm; trixie is /usr-merged


def elf_machine(data: bytes) -> int | None:
    if data[:4] != b"\x7fELF" or len(data) < 20:
        return None
    machine: int = struct.unpack_from("<H", data, 18)[0]
    return machine


def check_binary(data: bytes, arch: Arch, origin: str) -> None:
    """A static ELF executable for ``arch``; a UserError naming ``origin`` otherwise."""
    machine = elf_machine(data)
    if machine != E_MACHINE.get(arch.name):
        raise UserError(f"{origin}: not an executable for {arch.name} (ELF machine {machine})",
                        hint="the boot check's busybox must be the guest's architecture")
    if not initramfs.is_static_elf(data):
        raise UserError(f"{origin}: dynamically linked; an initramfs has no libraries for it",
                        hint=f"use Debian's {PACKAGE}")


def extract(deb: Path, into: Path, origin: str, log_path: Path | None = None) -> bytes:
    """The busybox binary inside ``deb``: the package unpacked into ``into`` with dpkg-deb -x
    (which runs nothing of it)."""
    runner.run(["dpkg-deb", "-x", str(deb), str(into)], log_path=log_path)
    for name in _MEMBERS:
        path = into / name
        if path.is_file() and not path.is_symlink():
            return path.read_bytes()
    raise UserError(f"{origin}: no busybox binary in the package ({' or '.join(_MEMBERS)})")


def for_arch(arch: Arch, mirror: str, suite: str, cache: Path, log_path: Path | None = None,
             keyring: Path = aptrepo.DEBIAN_KEYRING) -> Path:
    """A static busybox for ``arch`` from the archive (cached); the host's own arch uses HOST_BUSYBOX."""
    where = f"kernel.boot.busybox_suites ({arch.name}: {suite})"
    last = cache / "busybox" / f"{suite}-{arch.deb_arch}"  # -> the last one verified
    try:
        rel = aptrepo.release(mirror, suite, keyring, where=where, log_path=log_path)
    except InfraError:
        if (last / "busybox").is_file():  # offline: the one verified last time
            return (last / "busybox").resolve()
        raise
    # the same signed InRelease lists the same Packages index and so the same .deb: parsing that
    # index (megabytes of xz) again would only find the package already verified for it
    seen = state.load(last.with_suffix(".json")) or {}
    if seen.get("release") == rel.sha256 and (last / "busybox").is_file():
        return (last / "busybox").resolve()
    aptrepo.require(rel, arch.deb_arch, ["main"], where)
    deb = aptrepo.deb(rel, "main", arch.deb_arch, PACKAGE, cache)
    final = cache / "busybox" / sha256_file(deb)
    if not (final / "busybox").is_file():
        _unpack(deb, final, arch, f"{PACKAGE} ({suite}, {arch.deb_arch})", log_path)
    atomic.symlink(final.name, last)
    state.save(last.with_suffix(".json"), {"release": rel.sha256, "deb": final.name})
    return final / "busybox"


def _unpack(deb: Path, final: Path, arch: Arch, origin: str, log_path: Path | None) -> None:
    with atomic.new_dir(final) as tmp:
        data = extract(deb, tmp / "package", origin, log_path)
        check_binary(data, arch, origin)
        shutil.rmtree(tmp / "package")
        (tmp / "busybox").write_bytes(data)
