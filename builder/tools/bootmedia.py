"""Booting an ISO in QEMU the four ways a user will: BIOS or UEFI firmware,
from a CD drive or from a USB stick.  Distro-neutral: the smoke stage says
what the console must show (``console.Expect``) and gets a verdict.

Firmware: BIOS is QEMU's built-in SeaBIOS.  UEFI is OVMF from Debian's
``ovmf`` package, the non-Secure-Boot build (it needs no SMM, so it runs on
plain q35 under TCG), with a fresh copy of the variable store per boot so no
boot entries leak from one boot into the next.

Media: the CD is an ATAPI drive on q35's AHCI controller; the stick is a
usb-storage device on an xHCI controller, the ISO as a raw disk.  ``bootindex``
puts the medium first in both firmwares' boot order, so neither relies on its
own device-probing order (SeaBIOS, for one, lists USB disks late).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.infra import log
from builder.infra.arch import Arch
from builder.infra.errors import InfraError, UserError
from builder.tools import console, qemu

Firmware = Literal["bios", "uefi"]
Media = Literal["cd", "usb"]
MODES: tuple[tuple[Firmware, Media], ...] = (("bios", "cd"), ("bios", "usb"), ("uefi", "cd"), ("uefi", "usb"))

# Debian 12 ships both the 4 MiB (current) and the 2 MiB (legacy) builds; a
# code image needs the variable store of its own size.
OVMF_CANDIDATES: tuple[tuple[Path, Path], ...] = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)


@dataclass(frozen=True)
class Ovmf:
    code: Path  # read-only flash
    vars: Path  # template of the writable variable store: copy it, never use it directly


def ovmf(candidates: tuple[tuple[Path, Path], ...] | None = None) -> Ovmf:
    """The first OVMF code + vars pair that exists (of ``OVMF_CANDIDATES`` by default)."""
    candidates = OVMF_CANDIDATES if candidates is None else candidates
    for code, variables in candidates:
        if code.is_file() and variables.is_file():
            return Ovmf(code, variables)
    looked = ", ".join(str(code) for code, _ in candidates)
    raise InfraError(f"UEFI firmware (OVMF) not found; looked for {looked}", hint="apt-get install ovmf")


def _opt(value: str | Path) -> str:
    # QEMU's option parser splits on commas; a literal comma is written twice.
    return str(value).replace(",", ",,")


def iso_argv(arch: Arch, accel: str, iso: Path, firmware: Firmware, media: Media, memory: int,
             vars_copy: Path | None, fw_cfg: Mapping[str, str] | None = None, cpus: int = 2) -> list[str]:
    """The QEMU command line that boots ``iso``; the serial console is stdout.

    ``fw_cfg`` items become ``-fw_cfg name=<key>,string=<value>``: how the host
    tells an in-guest check that it runs under the smoke test (names under
    ``opt/``, as QEMU asks).
    """
    argv = qemu.guest_argv(arch, accel, memory, cpus)
    if firmware == "uefi":
        if vars_copy is None:
            raise ValueError("UEFI boots need a writable copy of the OVMF variable store")
        fw = ovmf()
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(fw.code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(vars_copy)}"]
    elif firmware != "bios":
        raise ValueError(f"firmware {firmware!r}: expected bios or uefi")
    if media == "cd":
        argv += ["-drive", f"file={_opt(iso)},format=raw,media=cdrom,if=none,id=cd,readonly=on",
                 "-device", "ide-cd,drive=cd,bus=ide.0,bootindex=0"]
    elif media == "usb":
        argv += ["-device", "qemu-xhci,id=xhci",
                 "-drive", f"file={_opt(iso)},format=raw,if=none,id=stick,readonly=on",
                 "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
    else:
        raise ValueError(f"media {media!r}: expected cd or usb")
    for name, value in sorted((fw_cfg or {}).items()):
        argv += ["-fw_cfg", f"name={_opt(name)},string={_opt(value)}"]
    return argv


def boot_iso(arch: Arch, iso: Path, firmware: Firmware, media: Media, expect: console.Expect, log_path: Path,
             timeout: float = 120.0, memory: int = 512, fw_cfg: Mapping[str, str] | None = None,
             cpus: int = 2) -> console.Verdict:
    """Boot ``iso`` once, watch its serial console, return the verdict.

    QEMU is ended as soon as the verdict is known (the guest finished its
    checks or panicked); ``timeout`` is a hard limit.  ``error`` means QEMU
    itself failed, not the guest.
    """
    if not iso.is_file():
        raise UserError(f"ISO {iso} not found")
    accel = qemu.accelerator(arch)
    with tempfile.TemporaryDirectory(prefix="isobuild-boot-") as scratch:
        vars_copy = None
        if firmware == "uefi":
            vars_copy = Path(scratch) / "OVMF_VARS.fd"
            shutil.copyfile(ovmf().vars, vars_copy)
        argv = iso_argv(arch, accel, iso, firmware, media, memory, vars_copy, fw_cfg, cpus)
        with log.stage("iso.boot", iso=str(iso), firmware=firmware, media=media, accel=accel, log=str(log_path)):
            verdict = qemu.watch(argv, expect, log_path, timeout)
    verdict.extra = {"accel": accel, "firmware": firmware, "media": media, "iso": str(iso), "cpus": cpus}
    return verdict
