"""ISO mastering: a directory tree in, one hybrid bootable ISO out.

Distro-neutral: the distro plugins lay out the tree (kernel, initrd, squashfs,
...) and say what to boot in a ``BootSpec``; this module owns everything that
makes the tree a medium that boots four ways on x86_64:

- BIOS from CD: El Torito no-emulation entry with ISOLINUX (boot info table);
- UEFI from CD: a second El Torito entry, a FAT image holding a GRUB
  ``BOOTX64.EFI`` whose embedded config finds the ISO by its volume label;
- BIOS and UEFI from USB: pycdlib's isohybrid MBR boot code, with the
  partition tables rewritten after writing into a protective MBR + a valid GPT
  holding the EFI image as EFI System partition (see
  ``repair_partition_tables``).

An arch without BIOS modes (arm64, riscv64: ``Arch.modes``) gets the UEFI half
only: no ISOLINUX, one El Torito entry (platform 0xEF) for the FAT image with
GRUB as ``EFI/BOOT/<Arch.efi_boot_name>``, made by the host's grub-mkimage from
that arch's modules (``BootSpec.grub_dir``: the target root's), and partition
tables written from scratch (``write_partition_tables``: pycdlib's isohybrid
needs ISOLINUX) -- the same protective MBR + GPT with the image as ESP, so the
file boots as a CD and as a disk.

Names: ISO9660 level 3 names are mangled to ``A-Z 0-9 _`` and de-duplicated;
Rock Ridge and Joliet carry the real names.

Reproducibility: pycdlib reads the clock and draws random GUIDs, so the
mastering itself runs in a forked child process that pins ``time.time``,
``uuid.uuid4`` and ``random`` before touching pycdlib, with TZ=UTC because
pycdlib records local time (``python -m builder.tools.iso9660`` does the same by hand).  The FAT image is made with
``mkfs.vfat --invariant`` and mtools under SOURCE_DATE_EPOCH.  Same inputs and
epoch give the same bytes.

The ISO is written under a temp name next to ``out`` and renamed into place:
a failure or an interrupt leaves the previous ISO as it was.
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import os
import random
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from builder.infra import arch as arches
from builder.infra import atomic, runner
from builder.infra.arch import Arch
from builder.infra.errors import InfraError, UserError

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
HOST_GRUB_LIB = Path("/usr/lib/grub")  # the host's GRUB modules, one dir per platform (x86_64-efi, ...)
GRUB_EFI_DIR = HOST_GRUB_LIB / "x86_64-efi"  # x86_64's, where its ISOs take GRUB from

# What the UEFI GRUB image needs to find the ISO by label (on a CD or on either
# partition table of a USB stick), read its grub.cfg and boot Linux on a serial
# console or a screen.
GRUB_MODULES = ("part_gpt", "part_msdos", "iso9660", "fat", "search", "search_label", "normal", "linux",
                "configfile", "echo", "all_video", "efi_gop", "efi_uga", "serial", "terminal", "test")
# The same on arm64-efi and riscv64-efi, less efi_uga (an x86 graphics protocol: riscv64-efi has no
# such module and grub-mkimage fails) and serial/terminal (their grub.cfg leaves the console to the
# firmware), plus gzio: a kernel may be a gzip-compressed Image (bindeb-pkg's vmlinuz on riscv64).
GRUB_EFI_ONLY_MODULES = ("part_gpt", "part_msdos", "iso9660", "fat", "search", "search_label", "normal", "linux",
                         "configfile", "echo", "all_video", "efi_gop", "test", "gzio")


@dataclass(frozen=True)
class GrubPlatform:
    """What the GRUB of one ``grub-mkimage -O`` target gets: its modules and how its grub.cfg starts."""

    modules: tuple[str, ...]
    serial: bool  # grub.cfg drives the serial port itself (else the firmware's console carries GRUB's)
    timeout: int  # seconds the menu waits


GRUB_PLATFORMS = {
    # OVMF's console reaches the serial port too, but GRUB's own serial terminal is what the
    # ISOLINUX half of the same ISO matches (SERIAL 0 115200)
    "x86_64-efi": GrubPlatform(GRUB_MODULES, serial=True, timeout=1),
    # U-Boot has no EFI serial protocol: on riscv64-efi `serial --unit=0` fails ("serial port 'com0'
    # isn't found"), while its ConOut already is the UART (AAVMF's likewise).  GRUB's clock on
    # riscv64 under TCG is calibrated with one 1 ms Stall() and runs slow on a loaded host:
    # `timeout=1` was seen to take 19 s, so the menu does not wait.
    "arm64-efi": GrubPlatform(GRUB_EFI_ONLY_MODULES, serial=False, timeout=0),
    "riscv64-efi": GrubPlatform(GRUB_EFI_ONLY_MODULES, serial=False, timeout=0),
}

# Where the generated boot files live inside the ISO (relative to its root).
ISOLINUX_DIR = "isolinux"
GRUB_DIR = "boot/grub"
EFI_IMAGE = f"{GRUB_DIR}/efiboot.img"
BOOT_CATALOG = f"{ISOLINUX_DIR}/boot.cat"
EFI_ONLY_BOOT_CATALOG = f"{GRUB_DIR}/boot.cat"  # where there is no ISOLINUX

# Fixed so the MBR is reproducible ("ISOB"); it only has to be unlikely to clash
# with the disks of the machine the stick is plugged into.
MBR_ID = 0x424F5349
FAT_VOLUME_ID = "49534f42"
# An El Torito entry counts 512-byte sectors in 16 bits: the EFI image must stay
# under 32 MiB.
_EFI_IMAGE_MAX = 0xFFFF * 512
_SECTOR = 512
_GPT_SIGNATURE = b"EFI PART"
_ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
_GPT_HEADER = struct.Struct("<8s4sIIIQQQQ16sQIII")
_GPT_ENTRIES = 128
_GPT_ENTRY_SIZE = 128
_GPT_ARRAY_SECTORS = _GPT_ENTRIES * _GPT_ENTRY_SIZE // _SECTOR
_GPT_RESERVED = 1 + _GPT_ARRAY_SECTORS  # sectors at each end: header + entry array
_PVD_OFFSET = 16 * 2048

_LABEL = re.compile(r"[A-Z0-9_]{1,16}")  # the Joliet volume name holds 16 (UCS-2) characters
# isolinux.cfg cannot quote file names; keep boot file names to what both
# loaders read without escaping.
_BOOT_PATH = re.compile(r"[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")
_GRUB_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@%^-]+")
_ISO_UNSAFE = re.compile(r"[^A-Z0-9_]")
_JOLIET_UNSAFE = re.compile(r"[\x00-\x1f*/:;?\\]")
# Ecma-119 10.2 (levels 2 and 3): name + extension <= 30, a directory <= 31.
_ISO_FILE_MAX = 30
_ISO_DIR_MAX = 31
_ISO_EXT_MAX = 8  # ours: keeps "filesystem.squashfs" recognisable, leaves room for the name
_JOLIET_MAX = 64  # bytes of UTF-8, pycdlib's check (the spec's limit is 64 UCS-2 chars)


@dataclass(frozen=True)
class BootSpec:
    """What the ISO boots: paths are relative to the tree, with ``/`` separators."""

    label: str  # ISO9660 volume id; GRUB finds the medium by it
    kernel: str  # e.g. "live/vmlinuz"
    initrd: str  # e.g. "live/initrd.img"
    cmdline: str  # kernel command line
    title: str  # boot menu entry
    arch: str = "x86_64"  # an ARCHES name: which loaders, which El Torito entries and tables
    # GRUB's EFI modules for the arch (<target root>/usr/lib/grub/<grub_target>, from the root's
    # grub-efi-<arch>-bin); None: the host's /usr/lib/grub/<grub_target>
    grub_dir: Path | None = None


def boot_arch(spec: BootSpec) -> Arch:
    """The spec's arch (a UserError naming the known ones if there is no such arch)."""
    return arches.get(spec.arch, "ISO boot spec")


def has_bios(arch: Arch) -> bool:
    """Whether images of ``arch`` boot from BIOS too (ISOLINUX + isohybrid MBR) or from UEFI only."""
    return any(firmware == "bios" for firmware, _ in arch.modes)


def grub_platform(arch: Arch) -> GrubPlatform:
    try:
        return GRUB_PLATFORMS[arch.grub_target]
    except KeyError:
        raise InfraError(f"no GRUB module list for {arch.grub_target} ({arch.name})",
                         hint="add it to GRUB_PLATFORMS in builder/tools/iso9660.py") from None


def validate_label(label: str) -> None:
    if not _LABEL.fullmatch(label):
        raise UserError(f"ISO label {label!r} is not allowed: use 1 to 16 characters of A-Z, 0-9 and _ "
                        "(the Joliet volume name holds 16)")


def validate_boot_path(what: str, rel: str) -> None:
    if not _BOOT_PATH.fullmatch(rel) or ".." in rel.split("/"):
        raise UserError(f"boot {what} path {rel!r} is not allowed: use a relative path of letters, digits "
                        "and . _ - + (ISOLINUX cannot quote file names)")


def _validate_spec(tree: Path, spec: BootSpec) -> None:
    boot_arch(spec)
    validate_label(spec.label)
    for what, rel in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        validate_boot_path(what, rel)
        if not (tree / rel).is_file():
            raise UserError(f"boot {what} {rel} is not a file in the ISO tree {tree}")
    for what, text in (("kernel command line", spec.cmdline), ("menu title", spec.title)):
        if any(ord(c) < 0x20 for c in text):
            raise UserError(f"{what} {text!r} must be one line without control characters")


# --- the boot files ---------------------------------------------------------

def _grub_word(word: str) -> str:
    """Quote one word for grub.cfg: GRUB expands $ and splits on ; and quotes."""
    if _GRUB_SAFE.fullmatch(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def isolinux_cfg(spec: BootSpec) -> str:
    # SERIAL must come first so every later message also reaches ttyS0;
    # TIMEOUT is in tenths of a second.
    return (f"SERIAL 0 115200\n"
            f"DEFAULT live\nPROMPT 0\nTIMEOUT 10\n\n"
            f"LABEL live\n  MENU LABEL {spec.title}\n  LINUX /{spec.kernel}\n  INITRD /{spec.initrd}\n"
            f"  APPEND {spec.cmdline}\n")


def grub_cfg(spec: BootSpec) -> str:
    # The kernel gets GRUB's words joined by single spaces, so quoting each
    # word on its own hands it exactly the command line we were given.
    args = " ".join(_grub_word(w) for w in spec.cmdline.split())
    platform = grub_platform(boot_arch(spec))
    serial = ("serial --unit=0 --speed=115200\n"
              "terminal_input serial console\nterminal_output serial console\n") if platform.serial else ""
    return (f"{serial}set default=0\nset timeout={platform.timeout}\n\n"
            f"menuentry {_grub_word(spec.title)} {{\n"
            f"\tlinux /{spec.kernel} {args}\n"
            f"\tinitrd /{spec.initrd}\n"
            "}\n")


def grub_early_cfg(label: str) -> str:
    # Embedded in BOOTX64.EFI (BOOTAA64.EFI, ...): the FAT image it runs from holds nothing else, so
    # it finds the ISO9660 volume by label.  The FAT image has no label (its
    # volume name reads "NO NAME"), which no valid ISO label can match.
    return (f"search --no-floppy --set=root --label {label}\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n")


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise InfraError(f"{path} not found", hint=f"apt-get install {package}  (or run: isobuild doctor)")


def _write(path: Path, data: bytes, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (epoch, epoch))


def grub_dir(spec: BootSpec, arch: Arch) -> Path:
    """The directory of GRUB's EFI modules for ``arch``; an error naming it and the package if
    it has no ``linux.mod``: the spec's (from the target root) is the distro's to fix, the host's
    (``grub_dir`` None) the host's."""
    if spec.grub_dir is not None:
        if not (spec.grub_dir / "linux.mod").is_file():
            raise UserError(f"{spec.grub_dir} holds no GRUB {arch.grub_target} modules (no linux.mod): the "
                            f"{arch.name} ISO's EFI loader is made from them",
                            hint=f"they come from {arch.grub_efi_package} in the target root: keep it in the "
                                 "root's packages")
        return spec.grub_dir
    return host_grub_dir(arch)


def host_grub_dir(arch: Arch) -> Path:
    """The host's GRUB EFI modules for ``arch``; an error naming the package when absent."""
    directory = HOST_GRUB_LIB / arch.grub_target
    if not (directory / "linux.mod").exists() and not arch.native():
        raise UserError(f"{directory}/linux.mod not found: the {arch.name} ISO needs GRUB's {arch.grub_target} "
                        "modules and the spec names none",
                        hint=f"pass the target root's /usr/lib/grub/{arch.grub_target} (from its "
                             f"{arch.grub_efi_package}) as BootSpec.grub_dir")
    _require(directory / "linux.mod", arch.grub_efi_package)
    return directory


def make_boot_files(boot: Path, spec: BootSpec, epoch: int, log_path: Path) -> None:
    """Fill the empty dir ``boot`` with the loaders and their configs, laid out as in the ISO:
    ISOLINUX where the arch boots from BIOS, GRUB's grub.cfg and the EFI image everywhere."""
    arch = boot_arch(spec)
    bios = has_bios(arch)
    if bios:
        _require(ISOLINUX_BIN, "isolinux")
        _require(LDLINUX_C32, "syslinux-common")
    modules = grub_dir(spec, arch)
    if bios:
        _write(boot / ISOLINUX_DIR / "isolinux.bin", ISOLINUX_BIN.read_bytes(), epoch)
        _write(boot / ISOLINUX_DIR / "ldlinux.c32", LDLINUX_C32.read_bytes(), epoch)
        _write(boot / ISOLINUX_DIR / "isolinux.cfg", isolinux_cfg(spec).encode(), epoch)
    _write(boot / GRUB_DIR / "grub.cfg", grub_cfg(spec).encode(), epoch)
    _make_efi_image(boot, spec, arch, modules, epoch, log_path)


def _make_efi_image(boot: Path, spec: BootSpec, arch: Arch, modules: Path, epoch: int, log_path: Path) -> None:
    """``EFI_IMAGE`` under ``boot``: a FAT image holding GRUB as ``EFI/BOOT/<arch.efi_boot_name>``."""
    scratch = boot.parent / f"{boot.name}.efi"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        early = scratch / "early.cfg"
        early.write_text(grub_early_cfg(spec.label))
        efi = scratch / arch.efi_boot_name
        runner.run(["grub-mkimage", "-O", arch.grub_target, "-d", modules, "-p", "/boot/grub", "-c", early,
                    "-o", efi, *grub_platform(arch).modules], log_path=log_path)
        os.utime(efi, (epoch, epoch))  # mcopy -m keeps it
        # FAT overhead for a file this size is a few KiB; the slack keeps room
        # for the FAT tables and directories at any cluster size mkfs picks;
        # whole MiB keep the size stable across GRUB rebuilds.
        kib = -(-(efi.stat().st_size + 512 * 1024) // (1024 * 1024)) * 1024
        if kib * 1024 > _EFI_IMAGE_MAX:
            raise InfraError(f"the UEFI boot image would be {kib} KiB; El Torito allows under 32 MiB",
                             hint="check the GRUB module list in builder/tools/iso9660.py")
        image = boot / EFI_IMAGE
        env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}
        runner.run(["mkfs.vfat", "--invariant", "-i", FAT_VOLUME_ID, "-C", image, str(kib)], log_path=log_path)
        runner.run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], log_path=log_path, env=env)
        runner.run(["mcopy", "-m", "-i", image, efi, f"::/EFI/BOOT/{arch.efi_boot_name}"], log_path=log_path,
                   env=env)
        os.utime(image, (epoch, epoch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the file tree ----------------------------------------------------------

@dataclass
class _Node:
    """One entry of the merged tree the ISO is made from."""

    source: Path | None = None  # file or symlink on the host; None for a directory
    link: str | None = None  # symlink target
    mode: int = 0o040555
    children: dict[str, _Node] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.source is None


def _scan(roots: list[Path]) -> _Node:
    """Merge ``roots`` into one tree; the same file in two roots, a name that is
    not UTF-8 or a device/fifo/socket is the caller's mistake."""
    top = _Node()

    def add(node: _Node, directory: Path, rel: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = f"{rel}{entry.name}"
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"file name {path!r} in the ISO tree is not UTF-8",
                                hint="rename it; Rock Ridge and Joliet names must be UTF-8") from None
            st = entry.stat(follow_symlinks=False)
            child = node.children.get(entry.name)
            if stat.S_ISDIR(st.st_mode):
                if child is None:
                    child = node.children[entry.name] = _Node()
                elif not child.is_dir:
                    raise UserError(f"{path} is both a file and a directory in the ISO's sources")
                add(child, Path(entry.path), f"{path}/")
                continue
            if child is not None:
                raise UserError(f"{path} comes from two sources of the ISO (the tree and the generated boot files)",
                                hint="remove it from the tree: the ISO stage writes it")
            if stat.S_ISREG(st.st_mode):
                # Normalised: the medium is read-only, and the umask of whoever
                # made the tree must not change the ISO's bytes.
                mode = 0o100555 if st.st_mode & 0o100 else 0o100444
                node.children[entry.name] = _Node(Path(entry.path), mode=mode)
            elif stat.S_ISLNK(st.st_mode):
                node.children[entry.name] = _Node(Path(entry.path), link=os.readlink(entry.path), mode=0o120777)
            else:
                raise UserError(f"{path} in the ISO tree is a device, fifo or socket; an ISO holds files only")

    for root in roots:
        add(top, root, "")
    return top


def _unique(used: set[str], stem: str, tail: str, fits: Callable[[str], bool]) -> str:
    """``stem + tail``, the stem cut until it ``fits``; on a clash (ignoring
    case) ``_1``, ``_2``, ... goes between stem and tail."""
    n = 0
    while True:
        suffix = f"_{n}" if n else ""
        cut = len(stem)
        while cut > 0 and not fits(stem[:cut] + suffix + tail):
            cut -= 1
        candidate = stem[:cut] + suffix + tail
        if candidate.upper() not in used:
            used.add(candidate.upper())
            return candidate
        n += 1


def iso9660_names(children: dict[str, bool]) -> dict[str, str]:
    """Real name -> ISO9660 level 3 identifier for one directory's entries.

    ``children`` maps each real name to whether it is a directory.  Files get
    ``NAME.EXT;1`` (name + extension <= 30, extension <= 8), directories up to
    31 characters; clashes after mangling get ``_1``, ``_2``, ... in sorted order.
    """
    used: set[str] = set()
    names: dict[str, str] = {}
    for real in sorted(children):
        if children[real]:
            names[real] = _unique(used, _ISO_UNSAFE.sub("_", real.upper()), "", lambda c: len(c) <= _ISO_DIR_MAX)
            continue
        stem, dot, ext = real.rpartition(".")
        if not dot:
            stem, ext = real, ""
        ext = _ISO_UNSAFE.sub("_", ext.upper())[:_ISO_EXT_MAX]
        stem = _ISO_UNSAFE.sub("_", stem.upper()) or ("" if ext else "_")
        name = _unique(used, stem, "." + ext, lambda c: len(c) <= _ISO_FILE_MAX + 1)
        names[real] = f"{name};1"
    return names


def joliet_names(children: list[str]) -> dict[str, str]:
    """Real name -> Joliet name: forbidden characters replaced, cut to 64 bytes
    keeping a short extension, de-duplicated ignoring case (as Windows reads it)."""
    used: set[str] = set()
    names: dict[str, str] = {}
    for real in sorted(children):
        clean = _JOLIET_UNSAFE.sub("_", real)
        stem, dot, ext = clean.rpartition(".")
        if not dot or not stem or len(ext) > 16:
            stem, dot, ext = clean, "", ""
        names[real] = _unique(used, stem, dot + ext, lambda c: len(c.encode("utf-8")) <= _JOLIET_MAX)
    return names


def _add_tree(iso: Any, node: _Node, iso_dir: str, joliet_dir: str, rel: str, paths: dict[str, str]) -> None:
    iso_names = iso9660_names({n: c.is_dir for n, c in node.children.items()})
    jol_names = joliet_names(list(node.children))
    for name in sorted(node.children):
        child = node.children[name]
        iso_path = f"{iso_dir}/{iso_names[name]}"
        joliet_path = f"{joliet_dir}/{jol_names[name]}"
        paths[f"{rel}{name}"] = iso_path
        if child.is_dir:
            iso.add_directory(iso_path=iso_path, rr_name=name, joliet_path=joliet_path, file_mode=child.mode)
            _add_tree(iso, child, iso_path, joliet_path, f"{rel}{name}/", paths)
        elif child.link is not None:
            # Joliet has no symlinks: they exist for Rock Ridge readers only.
            iso.add_symlink(symlink_path=iso_path, rr_symlink_name=name, rr_path=child.link)
        else:
            iso.add_file(str(child.source), iso_path=iso_path, rr_name=name, joliet_path=joliet_path,
                         file_mode=child.mode)


def _new_iso(roots: list[Path], label: str) -> tuple[Any, dict[str, str]]:
    """A pycdlib ISO holding the merged ``roots``, and each real path's ISO9660 path."""
    import pycdlib  # heavy: the mastering child and describe() load it, nothing else

    tree = _scan(roots)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, sys_ident="LINUX", vol_ident=label, app_ident_str="ISOBUILD",
            rock_ridge="1.09", joliet=3)
    paths: dict[str, str] = {}
    _add_tree(iso, tree, "", "", "", paths)
    return iso, paths


def _write_iso(roots: list[Path], out: Path, label: str) -> None:
    """The child process's work for a BIOS + UEFI hybrid; the globals pycdlib reads are pinned by the caller."""
    iso, paths = _new_iso(roots, label)
    catalog = paths[ISOLINUX_DIR] + "/BOOT.CAT;1"
    iso.add_eltorito(paths[f"{ISOLINUX_DIR}/isolinux.bin"], bootcatfile=catalog, rr_bootcatname="boot.cat",
                     joliet_bootcatfile=f"/{BOOT_CATALOG}", boot_load_size=4, boot_info_table=True)
    iso.add_eltorito(paths[EFI_IMAGE], efi=True)
    iso.add_isohybrid(efi=True, mbr_id=MBR_ID)
    iso.write(str(out), blocksize=1 << 20)
    iso.close()


def _write_efi_iso(roots: list[Path], out: Path, label: str) -> None:
    """The child process's work for a UEFI-only ISO: one El Torito entry, no partition tables yet.

    pycdlib takes the first entry's platform from ``platform_id`` (its ``efi`` flag only
    marks later sections), and ``add_isohybrid`` insists on ISOLINUX: the tables are written
    after writing (``write_partition_tables``)."""
    iso, paths = _new_iso(roots, label)
    iso.add_eltorito(paths[EFI_IMAGE], bootcatfile=paths[GRUB_DIR] + "/BOOT.CAT;1", rr_bootcatname="boot.cat",
                     joliet_bootcatfile=f"/{EFI_ONLY_BOOT_CATALOG}", platform_id=0xEF, efi=True)
    iso.write(str(out), blocksize=1 << 20)
    iso.close()


def cylinders_with_gpt_room(self: Any, iso_size: int) -> tuple[int, int]:
    """pycdlib's ``IsoHybrid._calc_cc`` (cylinder count, padding), but the
    padding always has room for the backup GPT.

    pycdlib 1.22.0 pads the ISO to whole cylinders and writes the backup GPT
    (33 sectors) at the very end: an ISO ending less than 33 sectors before a
    cylinder boundary had its last sectors overwritten.
    """
    cylinder = self.geometry_heads * self.geometry_sectors * _SECTOR
    padding = -iso_size % cylinder
    if padding < _GPT_RESERVED * _SECTOR:
        padding += cylinder
    return min((iso_size + padding) // cylinder, 1024), padding


# The pycdlib this module was checked against: its clock, GUIDs and isohybrid padding are pinned
# below by replacing what it calls, which another version may call differently.
PYCDLIB_VERSION = "1.22.0"


def _write_pinned(roots: list[Path], out: Path, label: str, epoch: int, bios: bool = True) -> None:
    """``_write_iso`` (``_write_efi_iso`` without ``bios``) with what pycdlib reads pinned: the
    clock (``time.time``), the local time zone (TZ=UTC: it records local time), the GUIDs
    (``uuid.uuid4`` and ``random``, seeded from label and epoch) and its isohybrid padding
    (``cylinders_with_gpt_room``).  Process-wide: only ever called in a process of its own (a
    forked child, or ``python -m``)."""
    from pycdlib import isohybrid  # heavy: see _write_iso

    found = importlib.metadata.version("pycdlib")
    if found != PYCDLIB_VERSION:
        raise InfraError(f"pycdlib {found} is installed; isobuild's ISO mastering is verified with "
                         f"{PYCDLIB_VERSION}", hint=f"pip install pycdlib=={PYCDLIB_VERSION} (scripts/bootstrap.sh)")
    os.environ["TZ"] = "UTC"
    time.tzset()
    rng = random.Random(f"isobuild-iso:{label}:{epoch}")
    random.seed(f"isobuild-iso:{label}:{epoch}")
    time.time = lambda: float(epoch)
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    isohybrid.IsoHybrid._calc_cc = cylinders_with_gpt_room  # type: ignore[method-assign]
    if bios:
        _write_iso(roots, out, label)
    else:
        _write_efi_iso(roots, out, label)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.tools.iso9660",
                                     description="master an ISO (run by builder.tools.iso9660.master, not by hand)")
    parser.add_argument("--root", type=Path, action="append", required=True, help="a source dir; repeatable")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--efi-only", action="store_true",
                        help="one UEFI El Torito entry, no ISOLINUX (arches without BIOS); no partition tables")
    args = parser.parse_args(argv)
    _write_pinned(args.root, args.out, args.label, args.epoch, bios=not args.efi_only)
    return 0


# --- after writing: the partition tables ----------------------------------

def _mbr_entry(status: int, ptype: int, start: int, count: int, chs_first: bytes, chs_last: bytes) -> bytes:
    return struct.pack("<B3sB3sII", status, chs_first, ptype, chs_last, start, count)


def _gpt_header(current: int, backup: int, first: int, last: int, disk_guid: bytes, entries_lba: int,
                entries_crc: int) -> bytes:
    fields = [_GPT_SIGNATURE, b"\x00\x00\x01\x00", _GPT_HEADER.size, 0, 0, current, backup, first, last,
              disk_guid, entries_lba, _GPT_ENTRIES, _GPT_ENTRY_SIZE, entries_crc]
    fields[3] = zlib.crc32(_GPT_HEADER.pack(*fields))
    return _GPT_HEADER.pack(*fields).ljust(_SECTOR, b"\x00")


def repair_partition_tables(image: Path) -> None:
    """Rewrite pycdlib's isohybrid MBR partition table and GPT, in place, into a
    protective MBR + a GPT that ``sgdisk -v`` accepts.  The MBR boot code and
    disk signature stay: BIOS boots from USB through them, not the table.

    pycdlib 1.22.0 writes the isohybrid ``--uefi`` layout: MBR partition 1 at
    sector 0 spanning the ISO with the EFI partition inside it, GPT partition 1
    likewise starting at sector 0 (over the GPT itself), no protective 0xEE
    entry, an entry-array CRC over the used entries only (the UEFI spec: over
    all 128) and fresh GUIDs for the backup header and entries.  UEFI firmware
    then ignores the GPT and strict tools reject it.

    Here: MBR = a protective 0xEE entry (+ an empty active one); GPT = one EFI System partition on the El Torito
    EFI image (where pycdlib's MBR entry 2 points), both headers with the same
    disk GUID, the same entry array and CRCs per the UEFI spec.  The ISO9660
    volume stays readable at offset 0 of the whole disk, where firmware, GRUB's
    ``search --label`` and blkid find it.
    """
    with image.open("r+b") as f:
        f.seek(0, os.SEEK_END)
        total = f.tell() // _SECTOR
        f.seek(0)
        mbr = bytearray(f.read(_SECTOR))
        primary = f.read(_SECTOR)
        f.seek(_PVD_OFFSET + 80)
        volume_sectors = struct.unpack("<I", f.read(4))[0] * 2048 // _SECTOR
        ptype = mbr[446 + 16 + 4]
        esp_start, esp_count = struct.unpack_from("<II", mbr, 446 + 16 + 8)
        if mbr[510:512] != b"\x55\xaa" or ptype != 0xEF or primary[:8] != _GPT_SIGNATURE:
            raise InfraError(f"{image}: pycdlib did not write the isohybrid MBR/GPT expected",
                             hint="a pycdlib change? see builder/tools/iso9660.py")
        backup_lba = total - 1
        first, last = 1 + _GPT_RESERVED, total - 1 - _GPT_RESERVED
        if volume_sectors > last + 1 or not first <= esp_start <= esp_start + esp_count - 1 <= last:
            raise InfraError(f"{image}: no room for the backup GPT after the ISO9660 volume",
                             hint="a pycdlib change? see builder/tools/iso9660.py")
        # Keep the GUIDs pycdlib drew (pinned, so reproducible) for the disk and the EFI partition.
        disk_guid = primary[56:72]
        f.seek(2 * _SECTOR + _GPT_ENTRY_SIZE + 16)
        part_guid = f.read(16)

        name = "EFI boot".encode("utf-16-le")
        entry = struct.pack("<16s16sQQQ72s", _ESP_TYPE.bytes_le, part_guid, esp_start, esp_start + esp_count - 1, 0,
                            name)
        entries = entry.ljust(_GPT_ENTRIES * _GPT_ENTRY_SIZE, b"\x00")
        # Entry 2, active but of type 0 ("unused" to UEFI, Linux and sgdisk),
        # is for BIOSes that boot only disks with an active entry -- and for
        # pycdlib, which opens an isohybrid ISO only if one entry is active.
        # EDK2 takes the GPT only if the 0xEE entry itself is not active.
        mbr[446:510] = _mbr_entry(0x00, 0xEE, 1, min(total - 1, 0xFFFFFFFF), b"\x00\x02\x00", b"\xff\xff\xff") \
            + _mbr_entry(0x80, 0x00, 0, 1, b"\x00\x01\x00", b"\x00\x01\x00") + bytes(32)
        _write_tables(f, bytes(mbr), entries, first, last, backup_lba, disk_guid)


def _write_tables(f: BinaryIO, mbr: bytes, entries: bytes, first: int, last: int, backup_lba: int,
                  disk_guid: bytes) -> None:
    """The protective MBR, the primary GPT (header + entries) after it and the backup at the end."""
    crc = zlib.crc32(entries)
    f.seek(0)
    f.write(mbr)
    f.write(_gpt_header(1, backup_lba, first, last, disk_guid, 2, crc))
    f.write(entries)
    f.seek((backup_lba - _GPT_ARRAY_SECTORS) * _SECTOR)
    f.write(entries)
    f.write(_gpt_header(backup_lba, 1, first, last, disk_guid, backup_lba - _GPT_ARRAY_SECTORS, crc))
    f.flush()
    os.fsync(f.fileno())


def _boot_catalog_sector(f: BinaryIO, image: Path) -> int:
    """The El Torito catalog's 2048-byte sector: from the Boot Record among the volume
    descriptors (sector 16 on, up to the set terminator, type 255)."""
    for sector in range(16, 16 + 32):
        f.seek(sector * 2048)
        descriptor = f.read(2048)
        if descriptor[1:6] != b"CD001" or descriptor[0] == 255:
            break
        if descriptor[0] == 0 and descriptor[7:39].rstrip(b"\x00") == b"EL TORITO SPECIFICATION":
            return int(struct.unpack_from("<I", descriptor, 0x47)[0])
    raise InfraError(f"{image}: no El Torito boot record", hint="a pycdlib change? see builder/tools/iso9660.py")


def efi_boot_image(image: Path) -> tuple[int, int]:
    """(first 512-byte sector, sector count) of the El Torito catalog's initial entry, read
    from the ISO's bytes: the initial entry follows the catalog's 32-byte validation entry
    (El Torito 1.0, section 2)."""
    with image.open("rb") as f:
        f.seek(_boot_catalog_sector(f, image) * 2048)
        catalog = f.read(64)
    count, rba = struct.unpack_from("<HI", catalog, 32 + 6)
    if catalog[0] != 1 or catalog[30:32] != b"\x55\xaa" or catalog[32] != 0x88 or count == 0:
        raise InfraError(f"{image}: the El Torito catalog has no bootable initial entry",
                         hint="a pycdlib change? see builder/tools/iso9660.py")
    return rba * 2048 // _SECTOR, count


def write_partition_tables(image: Path, label: str, epoch: int) -> None:
    """Give a UEFI-only ISO (no isohybrid MBR: pycdlib makes one only with ISOLINUX) the
    tables ``repair_partition_tables`` leaves on a hybrid: a protective MBR (one 0xEE entry,
    not active, no boot code) and a GPT, primary and backup, with one EFI System partition
    on the El Torito EFI image.  The file grows to whole MiB with room for the backup GPT
    after the ISO9660 volume, which stays readable at offset 0.  The GUIDs are drawn from
    ``label`` and ``epoch``: the same ISO gets the same bytes."""
    esp_start, esp_count = efi_boot_image(image)
    rng = random.Random(f"isobuild-gpt:{label}:{epoch}")
    disk_guid, part_guid = (uuid.UUID(int=rng.getrandbits(128), version=4).bytes_le for _ in range(2))
    with image.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        total = -(-(size + _GPT_RESERVED * _SECTOR) // (1 << 20)) * (1 << 20) // _SECTOR
        backup_lba = total - 1
        first, last = 1 + _GPT_RESERVED, total - 1 - _GPT_RESERVED
        if not first <= esp_start <= esp_start + esp_count - 1 <= last:
            raise InfraError(f"{image}: the EFI image (sectors {esp_start}+{esp_count}) is outside the GPT's "
                             f"usable sectors {first}-{last}", hint="a pycdlib change? see builder/tools/iso9660.py")
        f.truncate(total * _SECTOR)
        name = "EFI boot".encode("utf-16-le")
        entry = struct.pack("<16s16sQQQ72s", _ESP_TYPE.bytes_le, part_guid, esp_start, esp_start + esp_count - 1, 0,
                            name)
        entries = entry.ljust(_GPT_ENTRIES * _GPT_ENTRY_SIZE, b"\x00")
        mbr = bytearray(_SECTOR)
        mbr[446:462] = _mbr_entry(0x00, 0xEE, 1, min(total - 1, 0xFFFFFFFF), b"\x00\x02\x00", b"\xff\xff\xff")
        mbr[510:512] = b"\x55\xaa"
        _write_tables(f, bytes(mbr), entries, first, last, backup_lba, disk_guid)


# --- the stage's entry point ------------------------------------------------

def _write_in_child(roots: list[Path], out: Path, label: str, epoch: int, log_path: Path, bios: bool = True) -> None:
    """``_write_iso`` with the clock, GUIDs and TZ pinned, in a forked child (runner.in_child)
    so the pinning never leaks into this process.  A fork of this interpreter, pycdlib
    already imported, starts in a millisecond; ``python -m builder.tools.iso9660`` (the same by
    hand) takes a tenth of a second -- as long as xorriso needs for a whole 80 MB ISO."""
    import pycdlib  # noqa: F401  (heavy; before the fork: the child inherits it)

    def write() -> None:
        _write_pinned(roots, out, label, epoch, bios)

    argv = [sys.executable, "-m", "builder.tools.iso9660", *(a for r in roots for a in ("--root", str(r))),
            "--out", str(out),
            "--label", label, "--epoch", str(epoch), *([] if bios else ["--efi-only"])]
    runner.in_child(write, argv, log_path)


def master(tree: Path, out: Path, spec: BootSpec, work: Path, log_path: Path, epoch: int) -> None:
    """Master ``tree`` + boot loaders into the hybrid ISO ``out`` (UEFI-only for an arch without
    BIOS modes); see the module docstring.

    ``work`` is scratch space owned by the caller (the boot files are built in
    ``work/iso-boot``); ``epoch`` is every timestamp in the ISO.
    """
    _validate_spec(tree, spec)
    if epoch < 0:
        raise UserError(f"ISO timestamp {epoch} is before 1970")
    boot = work / "iso-boot"
    shutil.rmtree(boot, ignore_errors=True)
    boot.mkdir(parents=True)
    make_boot_files(boot, spec, epoch, log_path)
    _scan([tree, boot])  # refuse clashes and odd files here, with a UserError, not in the child
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=atomic.temp_prefix(out), suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    bios = has_bios(boot_arch(spec))
    try:
        _write_in_child([tree, boot], tmp, spec.label, epoch, log_path, bios)
        if bios:
            repair_partition_tables(tmp)
        else:
            write_partition_tables(tmp, spec.label, epoch)
        os.chmod(tmp, 0o644)  # mkstemp made it 0600
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise InfraError(f"disk full writing {out}", hint="free space (isobuild clean) and re-run") from exc
        raise InfraError(f"cannot write {out}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- inspection -------------------------------------------------------------

_PLATFORMS = {0: "bios", 0xEF: "uefi"}
_MEDIA = {0: "noemul", 1: "floppy-1.2M", 2: "floppy-1.44M", 3: "floppy-2.88M", 4: "hdemul"}


def describe(iso: Path) -> dict[str, Any]:
    """What an ISO says about itself: label, extensions, El Torito entries, partition tables:
    ``hybrid_mbr`` (pycdlib's isohybrid MBR, ISOLINUX's boot code: x86_64 only),
    ``protective_mbr`` (an 0xEE entry: UEFI reads the GPT; hybrid and UEFI-only alike), ``gpt``.

    pycdlib has no public API for the boot catalog; its parsed objects are read
    directly (checked against pycdlib 1.22.0).
    """
    import pycdlib  # heavy: see _write_iso

    with iso.open("rb") as f:
        head = f.read(2 * _SECTOR)
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        entries: list[dict[str, Any]] = []
        catalog = reader.eltorito_boot_catalog
        if catalog is not None:
            pairs = [(catalog.validation_entry.platform_id, catalog.initial_entry)]
            pairs += [(sec.platform_id, e) for sec in catalog.sections for e in sec.section_entries]
            for platform, entry in pairs:
                entries.append({"platform": _PLATFORMS.get(platform, hex(platform)),
                                "emulation": _MEDIA.get(entry.boot_media_type, str(entry.boot_media_type)),
                                "load_size": entry.sector_count, "load_rba": entry.load_rba,
                                "bootable": entry.boot_indicator == 0x88})
        return {
            "label": reader.pvd.volume_identifier.decode("ascii", "replace").rstrip(),
            "rock_ridge": bool(reader.has_rock_ridge()),
            "joliet": bool(reader.has_joliet()),
            "eltorito": entries,
            "hybrid_mbr": head[510:512] == b"\x55\xaa" and reader.isohybrid_mbr is not None,
            "protective_mbr": head[510:512] == b"\x55\xaa" and 0xEE in head[446 + 4:510:16],
            "gpt": head[_SECTOR:_SECTOR + 8] == _GPT_SIGNATURE,
            "size": iso.stat().st_size,
        }
    finally:
        reader.close()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
