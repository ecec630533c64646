"""A bootable GPT disk image (qcow2) from a root directory, made without loop devices or mounts.

Layout (``layout``), in 512-byte sectors from 2048 (1 MiB alignment):

- x86_64 only: a 1 MiB BIOS boot partition holding GRUB's ``core.img`` (i386-pc), which
  GRUB's ``boot.img`` in the protective MBR loads -- the layout ``grub-install`` makes on a GPT
  disk, written here by ``bios_boot`` instead (grub-install wants a block device);
- an EFI system partition (FAT, ``mkfs.vfat --offset`` + mtools at that offset) holding GRUB as
  ``EFI/BOOT/<Arch.efi_boot_name>``: OVMF (x86_64), AAVMF (arm64) and U-Boot's UEFI (riscv64)
  all run it as removable media, so no firmware boot entry is needed;
- the root: ext4 made by ``mkfs.ext4 -d`` straight into the image at its offset, typed with the
  Discoverable Partitions root type of the arch.

Both GRUBs carry a small embedded config that finds the root by its filesystem UUID and reads
``/boot/grub/grub.cfg`` there, so the kernel, the initramfs and the menu live in the root like
on an installed system.  UUIDs, the disk GUID and the filesystem's hash seed come from a
``seed`` (the stage key), timestamps from ``SOURCE_DATE_EPOCH``: the same inputs make the same
image.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from builder.infra import log, runner
from builder.infra.arch import Arch
from builder.infra.errors import InfraError, UserError
from builder.tools import chroot, iso9660

SECTOR = 512
MIB = 1 << 20
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# The Discoverable Partitions Specification's root partition type per arch
ROOT_TYPES = {"x86_64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
              "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
              "riscv64": "72EC70A6-CF74-40E6-BD49-4BDA08E8F224"}
ESP_MIB = 64
BIOS_BOOT_MIB = 1
ROOT_LABEL = "isobuild-root"
I386_PC = Path("/usr/lib/grub/i386-pc")
# boot.img's fields (GRUB's include/grub/i386/pc/boot.h) and diskboot.img's block list, which
# grub-setup fills in the same way for an embedded core.img
_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
_DRIVE_CHECK = 0x66  # a 2-byte jump that trusts only floppy/HD drive numbers: nop'd for hard disks
_MBR_CODE_END = 0x1B8  # boot code ends where the disk signature and partition table begin
_BLOCKLIST = SECTOR - 12  # in core.img's first sector: u64 start, u16 sectors, u16 segment
_CORE_SEGMENT = 0x820  # where diskboot loads the rest (GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20)
# what GRUB needs on BIOS to find the root by UUID, read ext4 and boot Linux on the serial port
GRUB_BIOS_MODULES = ("biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "normal", "linux", "configfile",
                     "echo", "test", "serial", "terminal", "gzio")
_GRUB_EFI_EXTRA = ("ext2", "search_fs_uuid")


@dataclass(frozen=True)
class Part:
    name: str
    type: str
    start: int  # sector
    sectors: int
    uuid: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class Layout:
    size: int  # bytes of the whole disk
    disk_uuid: str
    parts: tuple[Part, ...]
    fs_uuid: str  # the root filesystem's

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    @property
    def root(self) -> Part:
        part = self.part("root")
        assert part is not None
        return part


def _uuid(seed: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"isobuild:{seed}:{what}"))


def has_bios(arch: Arch) -> bool:
    return any(firmware == "bios" for firmware, _ in arch.modes)


def layout(arch: Arch, size: int, seed: str) -> Layout:
    """The partitions of a ``size``-byte disk for ``arch``; a UserError when it cannot hold them."""
    if size % MIB:
        raise UserError(f"disk size {size} is not a whole number of MiB")
    start = 2048
    parts: list[Part] = []
    if has_bios(arch):
        parts.append(Part("bios", BIOS_BOOT_TYPE, start, BIOS_BOOT_MIB * MIB // SECTOR, _uuid(seed, "bios")))
        start += BIOS_BOOT_MIB * MIB // SECTOR
    parts.append(Part("esp", ESP_TYPE, start, ESP_MIB * MIB // SECTOR, _uuid(seed, "esp")))
    start += ESP_MIB * MIB // SECTOR
    # the backup GPT takes the last 33 sectors; the root ends on a MiB boundary before them
    end = (size - 34 * SECTOR) // MIB * MIB // SECTOR
    if end - start < 256 * MIB // SECTOR:
        raise UserError(f"disk size {size // MIB} MiB leaves the root under 256 MiB",
                        hint="set vm.image_size larger (it also bounds what a VM can install)")
    parts.append(Part("root", ROOT_TYPES.get(arch.name, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"), start, end - start,
                      _uuid(seed, "root")))
    return Layout(size, _uuid(seed, "disk"), tuple(parts), _uuid(seed, "fs"))


def sfdisk_script(lay: Layout) -> str:
    lines = ["label: gpt", f"label-id: {lay.disk_uuid}", "unit: sectors", "first-lba: 2048", ""]
    lines += [f"start={p.start}, size={p.sectors}, type={p.type}, uuid={p.uuid}, name=\"{p.name}\"" for p in lay.parts]
    return "\n".join(lines) + "\n"


def grub_cfg(kernel: str, initrd: str, cmdline: str, arch: Arch, fs_uuid: str) -> str:
    """/boot/grub/grub.cfg of the root (both GRUBs read it): one entry, no wait."""
    serial = "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n" \
        if arch.name == "x86_64" else ""
    return (f"{serial}set default=0\nset timeout=0\n\n"
            f"menuentry 'isobuild {arch.name}' {{\n"
            f"\tsearch --no-floppy --fs-uuid --set=root {fs_uuid}\n"
            f"\tlinux {kernel} {cmdline}\n"
            f"\tinitrd {initrd}\n"
            "}\n")


def early_cfg(fs_uuid: str) -> str:
    """Embedded in both GRUB images: the root by UUID, then its grub.cfg."""
    return (f"search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n")


def patch_boot_img(boot_img: bytes, sector0: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img as the MBR's boot code: it loads the sector ``core_lba``; the disk
    signature and partition table of ``sector0`` (the protective MBR) stay."""
    if len(boot_img) != SECTOR or len(sector0) != SECTOR:
        raise InfraError(f"boot.img is {len(boot_img)} bytes, expected {SECTOR}")
    code = bytearray(boot_img[:_MBR_CODE_END])
    code[_KERNEL_SECTOR:_KERNEL_SECTOR + 8] = struct.pack("<Q", core_lba)
    code[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(code) + sector0[_MBR_CODE_END:]


def patch_core_img(core: bytes, core_lba: int) -> bytes:
    """core.img with its first sector's block list naming where the rest of it lies (right after)."""
    sectors = -(-len(core) // SECTOR)
    out = bytearray(core + bytes(sectors * SECTOR - len(core)))
    out[_BLOCKLIST:SECTOR] = struct.pack("<QHH", core_lba + 1, sectors - 1, _CORE_SEGMENT)
    return bytes(out)


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def require_bios_grub() -> None:
    """GRUB's i386-pc images and modules on the host, or an InfraError naming them and grub-pc-bin."""
    for f in ("boot.img", "linux.mod", "biosdisk.mod"):
        if not (I386_PC / f).is_file():
            raise InfraError(f"{I386_PC / f} not found: x86_64 disk images boot from BIOS through GRUB",
                             hint="apt-get install grub-pc-bin  (or run: isobuild doctor)")


def bios_boot(disk: Path, lay: Layout, log_path: Path, scratch: Path) -> None:
    """GRUB for BIOS: core.img (the embedded config, the modules above) in the BIOS boot partition,
    boot.img in the MBR pointing at it."""
    part = lay.part("bios")
    if part is None:
        return
    require_bios_grub()
    early = scratch / "early-bios.cfg"
    early.write_text(early_cfg(lay.fs_uuid))
    core = scratch / "core.img"
    runner.run(["grub-mkimage", "-O", "i386-pc", "-d", I386_PC, "-p", "/boot/grub", "-c", early, "-o", core,
                *GRUB_BIOS_MODULES], log_path=log_path)
    data = patch_core_img(core.read_bytes(), part.start)
    if len(data) > part.size:
        raise InfraError(f"GRUB's core.img is {len(data)} bytes; the BIOS boot partition holds {part.size}")
    _write_at(disk, part.offset, data)
    with disk.open("rb") as f:
        sector0 = f.read(SECTOR)
    _write_at(disk, 0, patch_boot_img((I386_PC / "boot.img").read_bytes(), sector0, part.start))


def esp(disk: Path, lay: Layout, arch: Arch, grub_modules: Path, epoch: int, log_path: Path, scratch: Path) -> None:
    """The EFI system partition: FAT at its offset, GRUB for ``arch`` as the removable-media loader."""
    part = lay.part("esp")
    assert part is not None
    early = scratch / "early-efi.cfg"
    early.write_text(early_cfg(lay.fs_uuid))
    efi = scratch / arch.efi_boot_name
    modules = (*iso9660.grub_platform(arch).modules, *_GRUB_EFI_EXTRA)
    runner.run(["grub-mkimage", "-O", arch.grub_target, "-d", grub_modules, "-p", "/boot/grub", "-c", early,
                "-o", efi, *modules], log_path=log_path)
    os.utime(efi, (epoch, epoch))
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}
    runner.run(["mkfs.vfat", "--invariant", "-F", "32", "-s", "1", "-i", iso9660.FAT_VOLUME_ID, "-n", "ESP",
                f"--offset={part.start}", disk, str(part.size // 1024)], log_path=log_path, env=env)
    image = f"{disk}@@{part.offset}"
    runner.run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], log_path=log_path, env=env)
    runner.run(["mcopy", "-m", "-i", image, efi, f"::/EFI/BOOT/{arch.efi_boot_name}"], log_path=log_path, env=env)


def root_fs(disk: Path, lay: Layout, tree: Path, epoch: int, log_path: Path) -> None:
    """The root partition: ext4 filled from ``tree`` by mkfs.ext4 -d (in the namespaces, so an
    ordinary user's root keeps its owners), its times pinned to ``epoch``."""
    part = lay.root
    blocks = part.size // 4096
    chroot.host(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", ROOT_LABEL, "-U", lay.fs_uuid,
                 "-E", f"offset={part.offset},hash_seed={lay.fs_uuid}",
                 "-d", str(tree), str(disk), str(blocks)], log_path,
                env={"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)})


def make(tree: Path, out: Path, arch: Arch, lay: Layout, grub_modules: Path, epoch: int, log_path: Path) -> None:
    """``out`` (qcow2): the GPT disk ``lay`` with ``tree`` as its root and GRUB on every firmware
    the arch boots with.  ``tree`` already holds /boot/grub/grub.cfg (``grub_cfg`` for ``lay``)."""
    size = lay.size
    scratch = out.parent / f".{out.name}.d"
    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / "disk.raw"
    try:
        with log.stage("image.partition", size=size):
            with raw.open("wb") as sparse:
                sparse.truncate(size)
            script = scratch / "sfdisk.script"
            script.write_text(sfdisk_script(lay))
            with script.open("rb") as stdin:
                runner.run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", raw],
                           log_path=log_path, stdin=stdin.fileno())
        with log.stage("image.root", tree=str(tree)):
            root_fs(raw, lay, tree, epoch, log_path)
        with log.stage("image.boot", arch=arch.name):
            esp(raw, lay, arch, grub_modules, epoch, log_path, scratch)
            if has_bios(arch):
                bios_boot(raw, lay, log_path, scratch)
        with log.stage("image.qcow2"):
            runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out], log_path=log_path)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
