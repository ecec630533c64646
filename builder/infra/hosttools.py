"""Host tools the pipeline needs: who needs them, how to check, what to install.

The table is the single source for ``isobuild doctor``, the runner's
"command not found" hint and the set-up script (``doctor --install``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from builder.infra.arch import ARCHES
from builder.infra.errors import InfraError


@dataclass(frozen=True)
class Tool:
    name: str  # a command on PATH, or an absolute file path
    package: str  # Debian package that provides it
    used_by: str

    def present(self) -> bool:
        if self.name.startswith("/"):
            return Path(self.name).exists()
        return shutil.which(self.name) is not None


TOOLS: tuple[Tool, ...] = (
    Tool("make", "make", "kernel"),
    Tool("gcc", "gcc", "kernel"),
    Tool("flex", "flex", "kernel"),
    Tool("bison", "bison", "kernel"),
    Tool("bc", "bc", "kernel"),
    Tool("perl", "perl", "kernel"),
    Tool("/usr/include/openssl/ssl.h", "libssl-dev", "kernel"),
    Tool("/usr/include/libelf.h", "libelf-dev", "kernel"),
    Tool("depmod", "kmod", "kernel"),
    Tool("cpio", "cpio", "kernel"),
    Tool("xz", "xz-utils", "kernel"),
    Tool("zstd", "zstd", "kernel"),
    Tool("tar", "tar", "kernel"),
    Tool("git", "git", "kernel (git sources), patches generate"),
    Tool("quilt", "quilt", "kernel, glibc, patches check"),
    Tool("dpkg-deb", "dpkg-dev", "kernel packages (.deb)"),
    Tool("dpkg-architecture", "dpkg-dev", "glibc"),
    Tool("dpkg-buildpackage", "dpkg-dev", "glibc"),
    Tool("fakeroot", "fakeroot", "glibc"),
    Tool("rpmbuild", "rpm", "kernel packages (.rpm), glibc RPM"),
    Tool("rsync", "rsync", "kernel (headers)"),
    Tool("/usr/src/linux-source-6.1.tar.xz", "linux-source-6.1", "kernel (default source)"),
    Tool("/usr/src/glibc/debian/control", "glibc-source", "glibc (default source)"),
    Tool("patch", "patch", "glibc (is Debian's series applied?)"),
    Tool("dpkg-checkbuilddeps", "dpkg-dev", "glibc (build dependencies)"),
    Tool("qemu-system-x86_64", "qemu-system-x86", "boot check"),
    Tool("/bin/busybox", "busybox-static", "boot check (initramfs)"),
    Tool("mmdebstrap", "mmdebstrap", "debian (bootstrap)"),
    Tool("debootstrap", "debootstrap", "debian (bootstrap: debootstrap)"),
    Tool("mksquashfs", "squashfs-tools", "rootfs"),
    Tool("chroot", "coreutils", "rootfs"),
    Tool("unshare", "util-linux", "rootfs (the root's commands run in private mount and PID namespaces)"),
    Tool("newuidmap", "uidmap", "rootfs as an ordinary user (user namespaces with subordinate ids)"),
    Tool("gpgv", "gpgv", "debian (the mirror's signed Release)"),
    Tool("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring",
         "debian (the mirror's signed Release)"),
    Tool("dnf", "dnf", "alma, rocky (build: dnf)"),
    Tool("rpm", "rpm", "alma, rocky (the root's package database)"),
    Tool("createrepo_c", "createrepo-c", "alma, rocky (repository of our RPMs)"),
    Tool("/usr/lib/python3/dist-packages/dnf-plugins/download.py", "dnf-plugins-core",  # = elglibc.DOWNLOAD_PLUGIN
         "alma, rocky (glibc RPM: dnf download --source)"),
    Tool("/usr/lib/ISOLINUX/isolinux.bin", "isolinux", "iso (BIOS)"),
    Tool("/usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common", "iso (BIOS)"),
    Tool("grub-mkimage", "grub-efi-amd64-bin", "iso (UEFI)"),
    Tool("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin", "iso (UEFI)"),
    Tool("mkfs.vfat", "dosfstools", "iso (UEFI)"),
    Tool("mmd", "mtools", "iso (UEFI)"),
    Tool("mcopy", "mtools", "iso (UEFI)"),
    Tool("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf", "smoke (UEFI)"),
    # the other arches' UEFI (= bootmedia.AAVMF_CODE, bootmedia.UBOOT_RISCV64)
    Tool("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64", "smoke --arch arm64 (UEFI: AAVMF)"),
    Tool("/usr/lib/u-boot/qemu-riscv64_smode/uboot.elf", "u-boot-qemu", "smoke --arch riscv64 (UEFI: U-Boot)"),
    Tool("sfdisk", "fdisk", "image (GPT)"),
    Tool("unsquashfs", "squashfs-tools", "image (the root)"),
    Tool("mkfs.ext4", "e2fsprogs", "image (the root file system)"),
    Tool("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin", "image (x86_64 BIOS boot)"),  # = diskimage.I386_PC
    Tool("qemu-img", "qemu-utils", "image, vm (qcow2 images and overlays)"),
    Tool("ssh", "openssh-client", "vm (connect, run, copy)"),
    Tool("ssh-keygen", "openssh-client", "vm (the project's key)"),
    Tool("gpg", "gnupg", "release (signing and verifying)"),
    Tool("sgdisk", "gdisk", "tests (GPT check)"),
    Tool("chromium", "chromium", "tests (the build report renders in a browser)"),
    Tool("xorriso", "xorriso", "tests and bench (ISO reference)"),
    # every other arch's cross compiler, QEMU and firmware, from the arch table
    *(tool for arch in ARCHES.values() if arch.name != "x86_64" for tool in (
        Tool(f"{arch.triplet}-gcc", arch.cross_package, f"kernel --arch {arch.name} (cross compiler)"),
        Tool(arch.qemu, arch.qemu_package, f"boot check --arch {arch.name}"),
        *([Tool(arch.firmware, arch.firmware_package, f"boot check --arch {arch.name} (firmware)")]
          if arch.firmware and arch.firmware_package else []),
        # a foreign root's maintainer scripts run through binfmt_misc (builder.tools.foreign)
        Tool(f"{arch.qemu_user}-static", "qemu-user-static", f"debian --arch {arch.name} (the root's programs)"))),
    Tool("update-binfmts", "binfmt-support", "debian --arch arm64/riscv64 (registers qemu-user-static)"),
    Tool("arch-test", "arch-test", "debian --arch arm64/riscv64 (mmdebstrap's check of a foreign arch)"),
)


def install_hint(command: str) -> str:
    for tool in TOOLS:
        if tool.name == command or Path(tool.name).name == command:
            return f"apt-get install {tool.package}  (or run: isobuild doctor)"
    return "install it, then run: isobuild doctor"


def apt_line(tools: list[Tool]) -> str:
    packages = sorted({t.package for t in tools})
    return "apt-get install -y " + " ".join(packages) if packages else ""


def require(names: list[str], what: str) -> None:
    """InfraError naming the first of ``names`` (commands or files) that is missing, with the package
    that provides it: a missing tool is found before a build starts, not half way through it."""
    for name in names:
        present = Path(name).exists() if name.startswith("/") else shutil.which(name) is not None
        if not present:
            raise InfraError(f"{name} not found: {what} needs it", hint=install_hint(name))
