"""The image stage: a build VM's bootable disk (qcow2) made from a distro's root.

The root comes from the rootfs stage run for the distro's VM variant (``Plugin.for_vm``: the
distro's packages plus ``vm.packages``), so it carries our kernel and glibc exactly as the live ISO
does, and is shared by every project.  This stage unpacks that root's squashfs, lets the project's
SSH key in as root (host keys made at first boot), makes it a disk system (fstab by UUID, DHCP
through systemd-networkd, QEMU's user-mode DNS, a unit that grows the root into a larger VM disk,
GRUB's menu) and writes the disk
with builder.tools.diskimage: ext4 by ``mkfs.ext4 -d``, no loop device, no mount.  Artifact:
``<work>/images/<distro>/<key>/disk.qcow2`` with ``metadata.json``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from builder.infra import atomic, keys, log, state
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import Project, size_bytes
from builder.infra.digests import sha256_bytes, sha256_file
from builder.infra.errors import UserError
from builder.stages.base import PlannedStage, Stage, records_dir
from builder.stages.rootfs import RootfsStage
from builder.tools import chroot, diskimage, iso9660, rootdir, vm

STAGE_VERSION = 1
DISK = "disk.qcow2"
# QEMU's user-mode network: the guest's DNS server (slirp's default 10.0.2.3)
USER_NET_DNS = "10.0.2.3"

NETWORK = """# isobuild: DHCP on the VM's NIC (QEMU user-mode networking)
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

# Grows the root partition to the end of its disk and the ext4 in it (online): a VM's disk may be
# larger than the image (vm.disk).  Idempotent: with no free space it changes nothing.
GROWROOT = """#!/bin/sh
set -eu
src=$(findmnt -no SOURCE /)
name=${src#/dev/}
disk=/dev/$(basename "$(readlink -f "/sys/class/block/$name/..")")
part=$(cat "/sys/class/block/$name/partition")
sfdisk --relocate gpt-bak-std "$disk" 2>/dev/null || true
if echo ', +' | sfdisk --no-reread --no-tell-kernel -N "$part" "$disk" >/dev/null 2>&1; then
  partx -u -n "$part" "$disk"
fi
resize2fs "$src" >/dev/null 2>&1 || true
"""

GROWROOT_UNIT = """[Unit]
Description=isobuild: grow the root file system into the VM's disk
DefaultDependencies=no
After=local-fs.target
Before=multi-user.target
ConditionPathExists=/usr/sbin/sfdisk

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/isobuild-growroot

[Install]
WantedBy=multi-user.target
"""


def key_dir(project: Project) -> Path:
    """Where the project's SSH key for its VMs lives (builder.tools.ssh): with its records."""
    return records_dir(project) / "ssh"


def cmdline(arch: Arch, fs_uuid: str) -> str:
    """The installed system's kernel command line: the root by UUID, the arch's serial console
    first (so the VM's console log holds the boot) and what booting under emulation needs there."""
    words = [f"root=UUID={fs_uuid}", "ro", "console=tty0", f"console={arch.console},115200",
             *arch.live_cmdline.split()]
    return " ".join(words)


def pubkey_digest(public_key: str) -> str:
    return sha256_bytes(public_key.strip().encode())


class ImagePlugin(Protocol):
    """What the image stage takes of a distro plugin beyond the rootfs stage's (builder.distros.debian)."""

    def authorize_ssh(self, r: rootdir.Root, public_key: str) -> None: ...


@dataclass
class Plan:
    rootfs: RootfsStage
    size: int
    inputs: dict[str, Any]
    key: str
    artifact: Path


class ImageStage(PlannedStage):
    """A distro's build-VM disk image for one arch (builder.stages.base.Stage)."""

    kind = "image"
    work_entries = ("images",)

    def __init__(self, rootfs: RootfsStage, distro: str, public_key: str | None):
        super().__init__(rootfs.project, distro, rootfs.arch)
        self.rootfs = rootfs
        self.public_key = public_key  # the project's (builder.tools.ssh); None until it is made

    def make_plan(self) -> Plan:
        project: Project = self.project
        size = size_bytes(project.settings.vm.image_size)
        inputs = {"stage": "image", "stage_version": STAGE_VERSION, "rootfs": self.rootfs.key, "arch": self.arch,
                  "size": size, "ssh_key": pubkey_digest(self.public_key or "")}
        key = keys.compute(inputs)
        return Plan(self.rootfs, size, inputs, key, project.work_dir / "images" / self.instance / key)

    def upstream(self) -> dict[str, Stage]:
        return {"rootfs": self.rootfs}

    @property
    def disk(self) -> Path:
        return self.artifact / DISK

    def check(self) -> None:
        super().check()
        if not self.public_key:
            raise UserError(f"no SSH key for the {self.instance} image yet ({key_dir(self.project)})",
                            hint=f"run: isobuild image {self.instance} (it makes the key first)")
        arch = ARCHES[self.arch]
        diskimage.layout(arch, self.plan.size, "check")  # a size too small for the root is refused now
        if arch.native():
            grub_modules(self.rootfs, arch)  # the host's: missing is a host fault, found now
        if diskimage.has_bios(arch):
            diskimage.require_bios_grub()

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self, log_path)

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        return (meta.get("bytes"), str(meta.get("sha256", "")),
                f"{meta.get('virtual_size', 0) // 2**30} GiB disk, kernel {meta.get('kernel_release')}")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        keep = keep | vm.images_in_use(work_dir)  # a VM's overlay needs its image as long as the VM exists
        return [p for distro in (work_dir / "images").glob("*") for p in distro.iterdir() if p.name not in keep]


def grub_modules(rootfs: RootfsStage, arch: Arch) -> Path:
    """GRUB's EFI modules the disk's loader is made from: the host's for its own arch, else the
    root's (the rootfs stage keeps them beside the squashfs), as for the ISO."""
    return iso9660.host_grub_dir(arch) if arch.native() else rootfs.artifact / "grub"


def configure(root: rootdir.Root, arch: Arch, lay: diskimage.Layout, release: str) -> None:
    """What makes the live root a disk system (written from outside, nothing mounted)."""
    root.write_text("/etc/fstab", f"# isobuild disk image\nUUID={lay.fs_uuid} / ext4 errors=remount-ro 0 1\n")
    root.write_text("/etc/systemd/network/80-isobuild-dhcp.network", NETWORK)
    for wants, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                        ("sockets.target.wants", "systemd-networkd.socket")):
        root.symlink(f"/etc/systemd/system/{wants}/{unit}", f"/lib/systemd/system/{unit}")
    root.remove("/etc/resolv.conf")
    root.write_text("/etc/resolv.conf", f"# isobuild: QEMU user-mode networking's DNS\nnameserver {USER_NET_DNS}\n")
    root.write_text("/usr/local/sbin/isobuild-growroot", GROWROOT, 0o755)
    root.write_text("/etc/systemd/system/isobuild-growroot.service", GROWROOT_UNIT)
    root.symlink("/etc/systemd/system/multi-user.target.wants/isobuild-growroot.service",
                 "/etc/systemd/system/isobuild-growroot.service")
    root.write_text("/boot/grub/grub.cfg", diskimage.grub_cfg(
        f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}", cmdline(arch, lay.fs_uuid), arch, lay.fs_uuid))


def build(stage: ImageStage, log_path: Path) -> dict[str, Any]:
    """Unpack the VM root's squashfs, make it a disk system, write the disk (see the module docstring)."""
    rootfs = stage.rootfs
    meta = rootfs.built()
    if meta is None:
        raise UserError(f"the {stage.instance} VM root ({stage.arch}) is missing or stale",
                        hint=f"run: isobuild image {stage.instance} --arch {stage.arch}")
    arch = ARCHES[stage.arch]
    release = str(meta["kernel_release"])
    epoch = int(meta["epoch"])
    durations: dict[str, float] = {}
    started = time.monotonic()
    parent = stage.project.work_dir / "images" / stage.instance
    parent.mkdir(parents=True, exist_ok=True)
    tree = parent / f".tree-{stage.key[:16]}.{os.getpid()}.tmp"  # swept after a killed run (tools/sweep)
    chroot.remove_root(tree, log_path)
    lay = diskimage.layout(arch, stage.plan.size, stage.key)
    with atomic.new_dir(stage.artifact) as out:
        try:
            t = time.monotonic()
            with log.stage("image.unpack", distro=stage.instance):
                chroot.host(["unsquashfs", "-no-progress", "-quiet", "-d", str(tree),
                             str(rootfs.artifact / "filesystem.squashfs")], log_path)
            root = rootdir.Root(tree)
            root.mkdir("/boot", 0o755)
            root.copy_in(rootfs.artifact / "vmlinuz", f"/boot/vmlinuz-{release}")
            root.copy_in(rootfs.artifact / "initrd.img", f"/boot/initrd.img-{release}")
            configure(root, arch, lay, release)
            plugin: ImagePlugin = stage.rootfs.plugin  # type: ignore[assignment]
            plugin.authorize_ssh(root, str(stage.public_key))
            durations["unpack"] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            diskimage.make(tree, out / DISK, arch, lay, grub_modules(rootfs, arch), epoch, log_path)
            durations["disk"] = round(time.monotonic() - t, 3)
        finally:
            chroot.remove_root(tree, log_path)
        metadata = {
            "stage": "image", "key": stage.key, "distro": stage.instance, "arch": stage.arch, "inputs": stage.inputs,
            "kernel_release": release, "rootfs_key": rootfs.key, "fs_uuid": lay.fs_uuid, "disk_uuid": lay.disk_uuid,
            "cmdline": cmdline(arch, lay.fs_uuid), "virtual_size": lay.size, "bytes": (out / DISK).stat().st_size,
            "sha256": sha256_file(out / DISK), "glibc": meta.get("glibc"), "packages": len(meta.get("packages", [])),
            "durations": durations, "seconds": round(time.monotonic() - started, 1), "finished": state.now(),
            "log": str(log_path),
        }
        atomic.write_json(out / "metadata.json", metadata)
    return metadata
