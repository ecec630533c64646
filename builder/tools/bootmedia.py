"""Booting an ISO in QEMU the ways a user will: BIOS or UEFI firmware, from a
CD drive, a USB stick or a disk -- the modes its arch boots in (``Arch.modes``:
x86_64 all four of BIOS/UEFI x CD/USB, arm64 UEFI from CD or USB, riscv64 UEFI
from a disk).  Distro-neutral: the smoke stage says what the console must show
(``console.Expect``) and gets a verdict.

Firmware: BIOS is QEMU's built-in SeaBIOS.  UEFI on x86_64 is OVMF from Debian's
``ovmf`` package, the non-Secure-Boot build (it needs no SMM, so it runs on
plain q35 under TCG); on arm64 AAVMF from ``qemu-efi-aarch64``; both with a
fresh copy of the variable store per boot so no boot entries leak from one boot
into the next.  On riscv64 it is U-Boot (``u-boot-qemu``), started by OpenSBI
(the arch's ``-bios``) as its S-mode payload: U-Boot's distro boot finds
``efi/boot/bootriscv64.efi`` on the ISO's ESP and runs it through its UEFI.

Media: the CD is an ATAPI drive on q35's AHCI controller, on ``virt`` (which
has none) a SCSI CD on virtio-scsi; the stick is a usb-storage device on an
xHCI controller, the ISO as a raw disk; the disk (riscv64: U-Boot 2023.01 boots
from virtio-blk only) the ISO on virtio-blk.  ``bootindex`` puts the medium
first in the firmwares' boot order, so none relies on its own device-probing
order (SeaBIOS, for one, lists USB disks late).

The smoke test tells the guest it runs under it with ``-fw_cfg`` items; where
the guest cannot read those (``Arch.smoke_channel == "drive"``: riscv64's 6.1
kernel has no FW_CFG_SYSFS) a tiny scratch drive with the serial
``SMOKE_DRIVE_SERIAL`` takes their place, which the guest sees as
``/dev/disk/by-id/virtio-isobuild-smoke``.  Not both: QEMU 7.2's riscv64 virt
board makes its fw_cfg device only once the machine is done, after QEMU has
refused the items ("-fw_cfg ...: fw_cfg device not available", exit 1).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.infra import log
from builder.infra.arch import ARCHES, Arch
from builder.infra.errors import InfraError, UserError
from builder.tools import console, qemu

Firmware = Literal["bios", "uefi"]
Media = Literal["cd", "usb", "disk"]
# x86_64's modes (= ARCHES["x86_64"].modes); every arch's: modes(arch)
MODES: tuple[tuple[Firmware, Media], ...] = (("bios", "cd"), ("bios", "usb"), ("uefi", "cd"), ("uefi", "usb"))

# Debian 12 ships both the 4 MiB (current) and the 2 MiB (legacy) builds; a
# code image needs the variable store of its own size.
OVMF_CANDIDATES: tuple[tuple[Path, Path], ...] = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)
# Debian's qemu-efi-aarch64: padded to the 64 MiB of each of virt's two flash banks (QEMU refuses
# a pflash image of another size on virt).  The AAVMF_CODE.ms/.snakeoil links are Secure Boot
# variants of the same code, not needed here.
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
VIRT_FLASH_SIZE = 64 << 20
# Debian's u-boot-qemu: the S-mode build, the one OpenSBI's fw_jump can start (qemu-riscv64/ is
# the M-mode build, which replaces OpenSBI).
UBOOT_RISCV64 = Path("/usr/lib/u-boot/qemu-riscv64_smode/uboot.elf")

SMOKE_DRIVE_SERIAL = "isobuild-smoke"
TESTS_DRIVE_SERIAL = "isobuild-tests"
SMOKE_DRIVE_SIZE = 4096  # bytes of zeros: the guest only looks for the device


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


def aavmf() -> Ovmf:
    """arm64's UEFI (AAVMF) code + vars; an InfraError naming the file and ``qemu-efi-aarch64``
    when one is missing or not the 64 MiB of a virt flash bank."""
    for path in (AAVMF_CODE, AAVMF_VARS):
        _require(path, "qemu-efi-aarch64", "arm64's UEFI firmware (AAVMF)")
        size = path.stat().st_size
        if size != VIRT_FLASH_SIZE:
            raise InfraError(f"{path} is {size} bytes; QEMU's virt board takes flash images of exactly "
                             f"{VIRT_FLASH_SIZE} bytes (64 MiB)", hint="apt-get install --reinstall qemu-efi-aarch64")
    return Ovmf(AAVMF_CODE, AAVMF_VARS)


def uboot_riscv64() -> Path:
    """U-Boot for OpenSBI to start; an InfraError naming it and ``u-boot-qemu`` when missing."""
    _require(UBOOT_RISCV64, "u-boot-qemu", "riscv64's UEFI (U-Boot, OpenSBI's payload)")
    return UBOOT_RISCV64


def _require(path: Path, package: str, what: str) -> None:
    if not path.is_file():
        raise InfraError(f"{path} not found: {what}", hint=f"apt-get install {package}  (or run: isobuild doctor)")


# The pflash firmwares (Arch.uefi names one per arch; its variable store is copied per boot); any
# other boots UEFI another way (u-boot: started by OpenSBI, see uefi_argv).
_PFLASH = {"ovmf": ovmf, "aavmf": aavmf}


def modes(arch: Arch) -> tuple[str, ...]:
    """The boot modes of ``arch``'s images, as ``firmware-media`` (``uefi-cd``...)."""
    return tuple(f"{firmware}-{media}" for firmware, media in arch.modes)


def check_modes(arch: Arch, wanted: list[str]) -> None:
    """A UserError naming the first of ``wanted`` (``firmware-media``) that ``arch``'s images do
    not boot in, where they do, and which arches boot in it."""
    known = modes(arch)
    for mode in wanted:
        if mode in known:
            continue
        firmware = mode.split("-", 1)[0]
        if firmware == "bios":
            where = [a.name for a in ARCHES.values() if any(f == "bios" for f, _ in a.modes)]
            elsewhere = f"BIOS modes exist on {', '.join(where)} only"
        else:
            where = [a.name for a in ARCHES.values() if mode in modes(a)]
            elsewhere = f"{mode} exists on {', '.join(where)} only" if where else f"{mode} is no boot mode"
        raise UserError(f"boot mode {mode}: {arch.name} images boot in {', '.join(known)}; {elsewhere}",
                        hint=f"choose among: {', '.join(known)}")


def uefi_vars(arch: Arch) -> Path | None:
    """The variable store template a UEFI boot of ``arch`` copies, None where there is none (U-Boot)."""
    firmware = _PFLASH.get(arch.uefi)
    return firmware().vars if firmware else None


def opt(value: str | Path) -> str:
    # QEMU's option parser splits on commas; a literal comma is written twice.
    return str(value).replace(",", ",,")


def uefi_argv(arch: Arch, vars_copy: Path | None) -> list[str]:
    """The firmware options of a UEFI boot: the pflash pair (code read-only, ``vars_copy``
    writable), or on riscv64 OpenSBI as ``-bios`` with U-Boot as its payload (``-kernel``)."""
    firmware = _PFLASH.get(arch.uefi)
    if firmware is None:
        return [*qemu.firmware(arch), "-kernel", str(uboot_riscv64())]
    if vars_copy is None:
        raise ValueError("UEFI boots need a writable copy of the firmware's variable store (OVMF, AAVMF)")
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={opt(firmware().code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={opt(vars_copy)}"]


def media_argv(arch: Arch, iso: Path, media: Media) -> list[str]:
    """The ISO attached as ``media``: read-only, first in the boot order."""
    if media == "cd" and arch.qemu_machine == "q35":
        return ["-drive", f"file={opt(iso)},format=raw,media=cdrom,if=none,id=cd,readonly=on",
                "-device", "ide-cd,drive=cd,bus=ide.0,bootindex=0"]
    if media == "cd":  # virt has no IDE/AHCI controller of its own
        return ["-device", "virtio-scsi-pci,id=scsi",
                "-drive", f"file={opt(iso)},format=raw,media=cdrom,if=none,id=cd,readonly=on",
                "-device", "scsi-cd,bus=scsi.0,drive=cd,bootindex=0"]
    if media == "usb":
        return ["-device", "qemu-xhci,id=xhci",
                "-drive", f"file={opt(iso)},format=raw,if=none,id=stick,readonly=on",
                "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
    if media == "disk":
        return ["-drive", f"file={opt(iso)},format=raw,if=none,id=disk,readonly=on",
                "-device", "virtio-blk-pci,drive=disk,bootindex=0"]
    raise ValueError(f"media {media!r}: expected cd, usb or disk")


def iso_argv(arch: Arch, accel: str, iso: Path, firmware: Firmware, media: Media, memory: int,
             vars_copy: Path | None, fw_cfg: Mapping[str, str] | None = None, cpus: int = 2,
             smoke_drive: Path | None = None) -> list[str]:
    """The QEMU command line that boots ``iso``; the serial console is stdout.

    ``fw_cfg`` items become ``-fw_cfg name=<key>,string=<value>``: how the host
    tells an in-guest check that it runs under the smoke test (names under
    ``opt/``, as QEMU asks).  Where the arch's smoke channel is a drive, they
    become ``smoke_drive`` as a virtio disk whose serial is ``SMOKE_DRIVE_SERIAL``
    instead (see the module docstring).  A mode the arch does not boot in is a
    UserError (``check_modes``).
    """
    if firmware not in ("bios", "uefi"):
        raise ValueError(f"firmware {firmware!r}: expected bios or uefi")
    check_modes(arch, [f"{firmware}-{media}"])
    argv = qemu.guest_argv(arch, accel, memory, cpus)
    if firmware == "uefi":
        argv += uefi_argv(arch, vars_copy)
    argv += media_argv(arch, iso, media)
    if fw_cfg and arch.smoke_channel == "drive":
        if smoke_drive is None:
            raise ValueError(f"a smoke boot of {arch.name} needs the scratch smoke drive")
        # after the ISO: U-Boot boots from the first virtio disk only
        return [*argv, "-drive", f"file={opt(smoke_drive)},format=raw,if=none,id=smoke",
                "-device", f"virtio-blk-pci,drive=smoke,serial={SMOKE_DRIVE_SERIAL}"]
    for name, value in sorted((fw_cfg or {}).items()):
        argv += ["-fw_cfg", f"name={opt(name)},string={opt(value)}"]
    return argv


@contextlib.contextmanager
def boot_argv(arch: Arch, accel: str, iso: Path, firmware: Firmware, media: Media, memory: int = 512,
              fw_cfg: Mapping[str, str] | None = None, cpus: int = 2,
              tests: Path | None = None) -> Iterator[list[str]]:
    """``iso_argv`` with the files one boot writes -- the copy of the UEFI variable store, the
    smoke drive -- made fresh in a temp dir that lives as long as the context; ``tests`` (the guest
    tests' drive image, builder.stages.guesttests) attached read-only after the medium."""
    check_modes(arch, [f"{firmware}-{media}"])
    with tempfile.TemporaryDirectory(prefix="isobuild-boot-") as scratch:
        vars_copy = smoke_drive = None
        template = uefi_vars(arch) if firmware == "uefi" else None
        if template is not None:
            vars_copy = Path(scratch) / template.name
            shutil.copyfile(template, vars_copy)
        if fw_cfg and arch.smoke_channel == "drive":
            smoke_drive = Path(scratch) / "smoke.img"
            smoke_drive.write_bytes(bytes(SMOKE_DRIVE_SIZE))
        yield iso_argv(arch, accel, iso, firmware, media, memory, vars_copy, fw_cfg, cpus, smoke_drive) + \
            (tests_argv(tests) if tests is not None else [])


def tests_argv(image: Path) -> list[str]:
    """The guest tests' drive: read-only, no boot index (the medium boots first), named by its serial
    (the guest sees /dev/disk/by-id/virtio-isobuild-tests; builder.stages.rootfs.GUEST_TESTS)."""
    return ["-drive", f"file={opt(image)},format=raw,if=none,id=tests,readonly=on",
            "-device", f"virtio-blk-pci,drive=tests,serial={TESTS_DRIVE_SERIAL}"]


def boot_iso(arch: Arch, iso: Path, firmware: Firmware, media: Media, expect: console.Expect, log_path: Path,
             timeout: float = 120.0, memory: int = 512, fw_cfg: Mapping[str, str] | None = None,
             cpus: int = 2, tests: Path | None = None) -> console.Verdict:
    """Boot ``iso`` once, watch its serial console, return the verdict.

    QEMU is ended as soon as the verdict is known (the guest finished its
    checks or panicked); ``timeout`` is a hard limit.  ``error`` means QEMU
    itself failed, not the guest.
    """
    if not iso.is_file():
        raise UserError(f"ISO {iso} not found")
    accel = qemu.accelerator(arch)
    with boot_argv(arch, accel, iso, firmware, media, memory, fw_cfg, cpus, tests) as argv, \
            log.stage("iso.boot", iso=str(iso), firmware=firmware, media=media, accel=accel, log=str(log_path)):
        verdict = qemu.watch(argv, expect, log_path, timeout)
    verdict.extra = {"accel": accel, "firmware": firmware, "media": media, "iso": str(iso), "cpus": cpus}
    return verdict
