"""Target architectures as data: what make, dpkg and QEMU call them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    make_arch: str
    kconfig_dir: str  # arch/<dir> in the kernel tree
    image: str  # kernel image path inside the build dir
    deb_arch: str
    qemu: str
    qemu_machine: str
    console: str
    rpm_arch: str  # dnf's $basearch
    triplet: str  # the multiarch tuple: /usr/include/<triplet>, <triplet>-gcc


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "x86_64", "x86", "arch/x86/boot/bzImage", "amd64", "qemu-system-x86_64", "q35", "ttyS0",
                   "x86_64", "x86_64-linux-gnu"),
}
