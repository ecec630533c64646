"""Target architectures as data: what make, the cross compiler, dpkg and QEMU call them.

Every arch-specific fact of a build or a boot lives here, so a stage or a tool never tests an
arch by name.  The QEMU figures come from measurement on this project's reference host (2 cores,
TCG): see each field's comment.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

from builder.infra.errors import UserError


@dataclass(frozen=True)
class Arch:
    name: str
    make_arch: str  # ARCH= for the kernel's make
    kconfig_dir: str  # arch/<dir> in the kernel tree
    image: str  # kernel image path inside the build dir (what make builds and a boot loads)
    deb_arch: str
    rpm_arch: str  # dnf's $basearch
    triplet: str  # the multiarch tuple: /usr/include/<triplet>, <triplet>-gcc
    cross_package: str  # Debian package with <triplet>-gcc on another host
    qemu: str
    qemu_package: str
    qemu_machine: str
    tcg_cpu: str  # -cpu under TCG (measured; see builder.tools.qemu)
    console: str  # the serial console's device name in the guest
    firmware: str | None  # -bios for a direct kernel boot (None: QEMU's built-in firmware)
    firmware_package: str | None
    busybox_suite: str  # the Debian suite whose busybox-static the kernel boot check uses
    tcg_slowdown: float  # boot time under TCG relative to x86_64 (scales the boot timeouts)
    # --- distro images (builder.tools.iso9660, builder.tools.bootmedia, the smoke stage) ---
    grub_target: str  # grub-mkimage -O
    grub_efi_package: str  # the Debian package with GRUB's EFI modules for this arch
    efi_boot_name: str  # the removable-media loader's name under EFI/BOOT/
    modes: tuple[tuple[str, str], ...]  # (firmware, media) an image of this arch boots in
    smoke_channel: str  # how QEMU tells the boot check it runs under the smoke test: fw_cfg or drive
    live_cmdline: str  # added to a live system's kernel command line on this arch
    qemu_user: str  # the binfmt entry (and qemu-user-static binary) that runs this arch's programs elsewhere
    uefi: str  # the UEFI firmware an image boots with: ovmf, aavmf (pflash) or u-boot (builder.tools.bootmedia)
    # --- build VMs (builder.commands.vm) ---
    # whether QMP's system_powerdown reaches the guest (an ACPI power button: q35, and virt under
    # AAVMF through its GED device); riscv64's virt board has none, so vm stop asks the guest over SSH
    power_button: bool = True

    def cross_compile(self) -> str:
        """CROSS_COMPILE= for this arch on this host: empty when the host is this arch."""
        return "" if self.name == host_arch() else f"{self.triplet}-"

    def native(self) -> bool:
        return self.name == host_arch()


ARCHES: dict[str, Arch] = {
    # max minus the fast-string features (builder.tools.qemu.TCG_CPU explains)
    "x86_64": Arch("x86_64", "x86_64", "x86", "arch/x86/boot/bzImage", "amd64", "x86_64", "x86_64-linux-gnu",
                   "gcc-x86-64-linux-gnu", "qemu-system-x86_64", "qemu-system-x86", "q35", "max,-erms,-fsrm",
                   "ttyS0", None, None, "bookworm", 1.0,
                   "x86_64-efi", "grub-efi-amd64-bin", "BOOTX64.EFI",
                   (("bios", "cd"), ("bios", "usb"), ("uefi", "cd"), ("uefi", "usb")), "fw_cfg", "",
                   "qemu-x86_64", "ovmf"),
    # cortex-a57: the Debian arm64 live ISO reached systemd in 41-81 s against 122-139 s on "max"
    # (pointer authentication emulated in software); a busybox boot is 1.2-2.6 s on either
    "arm64": Arch("arm64", "arm64", "arm64", "arch/arm64/boot/Image", "arm64", "aarch64", "aarch64-linux-gnu",
                  "gcc-aarch64-linux-gnu", "qemu-system-aarch64", "qemu-system-arm", "virt", "cortex-a57",
                  "ttyAMA0", None, None, "bookworm", 2.0,
                  "arm64-efi", "grub-efi-arm64-bin", "BOOTAA64.EFI", (("uefi", "cd"), ("uefi", "usb")), "fw_cfg",
                  # a device unit waits 90 s by default: under TCG udev can be later than that
                  "systemd.default_device_timeout_sec=600", "qemu-aarch64",
                  "aavmf"),
    # OpenSBI's fw_jump from Debian's opensbi; bookworm has no riscv64, trixie does.  A full
    # live system boots 3-6 times slower than x86_64 here (systemd's first exec from squashfs).
    "riscv64": Arch("riscv64", "riscv", "riscv", "arch/riscv/boot/Image", "riscv64", "riscv64", "riscv64-linux-gnu",
                    "gcc-riscv64-linux-gnu", "qemu-system-riscv64", "qemu-system-misc", "virt", "rv64",
                    "ttyS0", "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin", "opensbi", "trixie", 4.0,
                    # U-Boot (qemu-riscv64_smode) boots from virtio-blk only: the "disk" is the ISO on it;
                    # Linux 6.1 cannot have FW_CFG_SYSFS on riscv, so the smoke test adds a drive instead
                    "riscv64-efi", "grub-efi-riscv64-bin", "BOOTRISCV64.EFI", (("uefi", "disk"),), "drive",
                    "systemd.default_device_timeout_sec=600", "qemu-riscv64",
                    "u-boot", power_button=False),
}

_MACHINE = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv64"}


@functools.cache
def host_arch() -> str:
    """This host's arch in isobuild's names (x86_64, arm64, riscv64; anything else as uname says)."""
    machine = platform.machine()
    return _MACHINE.get(machine, machine)


def get(name: str, where: str = "arch") -> Arch:
    """The arch called ``name``; a UserError naming the known ones otherwise."""
    try:
        return ARCHES[name]
    except KeyError:
        raise UserError(f"{where}: unknown architecture {name!r}",
                        hint=f"known: {', '.join(ARCHES)}") from None
