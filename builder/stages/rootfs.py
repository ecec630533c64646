"""The rootfs stage: a distro plugin's root filesystem as a live squashfs.

Keyed by the distro's settings, the mirror, the kernel's key and the boot
check script; the artifact (``<work>/distros/<name>/rootfs/<key>/``) holds
``filesystem.squashfs``, the kernel and initramfs to boot it, the package
manifest and ``metadata.json``.  The unpacked root is a temporary directory
deleted once the squashfs is made, never while anything is mounted in it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from builder.infra import atomic, keys, log, state
from builder.infra.config import Project
from builder.infra.errors import UserError
from builder.stages.base import PlannedStage, Stage
from builder.stages.kernel import KernelStage
from builder.tools import chroot, rootdir

STAGE_VERSION = 4  # 2: the kernel package is held; 3: zstd level 9 by default; 4: live-boot conf.d


# the installed glibc's version, written as the glibc stages' metadata writes it
LIBC_VERSION_QUERY = {"deb": "dpkg-query -W -f='${Version}' libc6",
                      "rpm": "rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}' glibc"}


def smoke_script(marker_file: str, libc_marker: str | None = None, package_format: str = "deb") -> str:
    """The in-guest check: inert unless QEMU passed -fw_cfg name=opt/isobuild/smoke (see the unit).

    With ``libc_marker`` it also reports the installed glibc version (libc6's
    or glibc's, by ``package_format``) and the line of libc.so.6's banner (the
    library run as a program) holding the marker.
    """
    libc = "" if libc_marker is None else f"""say "GLIBC $({LIBC_VERSION_QUERY[package_format]} 2>/dev/null)"
for lib in /lib/*-linux-gnu/libc.so.6 /lib64/libc.so.6; do
  if [ -x "$lib" ]; then say "LIBC $("$lib" | grep -m1 -F -- '{libc_marker}')"; break; fi
done
"""
    return f"""#!/bin/sh
# isobuild boot check, started by isobuild-smoke.service only when QEMU passes
# -fw_cfg name=opt/isobuild/smoke: it does nothing on real machines.
say() {{ echo "ISOBUILD-$*" > /dev/ttyS0; }}
state=$(systemctl is-system-running --wait 2>/dev/null)
say "UNAME $(uname -r)"
if [ -r {marker_file} ]; then say "MARKER $(cat {marker_file})"; else say "MARKER-MISSING {marker_file}"; fi
{libc}say "SYSTEM ${{state:-unknown}}"
failed=""
for unit in $(systemctl list-units --state=failed --plain --no-legend --no-pager | cut -d' ' -f1); do
  failed="$failed$unit,"
done
say "FAILED ${{failed:-none}}"
say DONE
"""


class DistroPlugin(Protocol):
    """What the rootfs stage takes of a distro plugin (builder.distros.base.Plugin is one)."""

    name: str
    family: ClassVar[str]
    glibc_format: ClassVar[str | None]
    project: Project
    settings: Any

    def identity(self) -> dict[str, Any]: ...

    def prepare(self, kernel_dir: Path, release: str, log_path: Path) -> None: ...

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None: ...

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None: ...

    def install_kernel(self, root: Path, kernel_dir: Path, release: str, log_path: Path) -> None: ...

    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None: ...

    def boot_files(self, root: Path, release: str) -> tuple[str, str]: ...

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]: ...

    def cleanup(self, root: Path, log_path: Path) -> None: ...


@dataclass(frozen=True)
class DistroLayout:
    root: Path  # <work>/distros/<name>

    def rootfs(self, key: str) -> Path:
        return self.root / "rootfs" / key


@dataclass
class Plan:
    plugin: DistroPlugin
    kernel: KernelStage
    glibc: Stage | None  # None: the distribution's own glibc
    layout: DistroLayout
    cache: Path
    script: str
    inputs: dict[str, Any]
    key: str

    @property
    def artifact(self) -> Path:
        return self.layout.rootfs(self.key)


def plan(plugin: DistroPlugin, kernel: KernelStage, glibc: Stage | None = None) -> Plan:
    project = plugin.project
    script = smoke_script(project.settings.kernel.boot.marker_file,
                          project.settings.glibc.marker if glibc else None, plugin.glibc_format or "deb")
    identity = plugin.identity()  # reads the apt config and hashes the overlay: once per plan
    inputs = {"stage": "rootfs", "stage_version": STAGE_VERSION, "distro": identity,
              "kernel": kernel.key, "glibc": glibc.key if glibc else None, "arch": kernel.arch,
              "smoke_script": keys.compute({"script": script})}
    layout = DistroLayout(project.work_dir / "distros" / plugin.name)
    cache = project.work_dir / "cache" / plugin.family / str(identity.get("suite", "default"))
    return Plan(plugin, kernel, glibc, layout, cache, script, inputs, keys.compute(inputs))


class RootfsStage(PlannedStage):
    """A distro's root filesystem for one kernel and glibc (builder.stages.base.Stage)."""

    kind = "rootfs"
    work_entries = ("distros", "cache")

    def __init__(self, plugin: DistroPlugin, kernel: KernelStage, glibc: Stage | None):
        super().__init__(plugin.project, plugin.name, kernel.arch)
        self.plugin, self.kernel, self.glibc = plugin, kernel, glibc

    def make_plan(self) -> Plan:
        return plan(self.plugin, self.kernel, self.glibc)

    @property
    def legacy_record(self) -> str | None:
        return f"distros/{self.plugin.name}/state/rootfs.json" if self.arch == "x86_64" else None

    def upstream(self) -> dict[str, Stage]:
        return {"kernel": self.kernel, **({"glibc": self.glibc} if self.glibc is not None else {})}

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self.plan, log_path)

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        return (meta.get("sizes", {}).get("filesystem.squashfs"), "",
                f"{len(meta.get('packages', []))} packages, kernel {meta.get('kernel_release')}")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        out: list[Path] = []
        for distro in (work_dir / "distros").glob("*"):
            legacy = (state.load(distro / "state" / "rootfs.json") or {}).get("last_good")
            out += [p for p in (distro / "rootfs").glob("*") if p.name not in keep and p.name != legacy]
            out += list(distro.glob("iso-work"))  # scratch of isobuild before 0.2
        return out


# zstd's level when none is set: measured here on the Debian root (212 MB), level 9 takes
# 2.1 s and makes 69 MB where mksquashfs's own default, 15, takes 12.5 s for 65 MB.
DEFAULT_ZSTD_LEVEL = 9


def squashfs_argv(root: Path, out: Path, compression: str, level: int | None) -> list[str]:
    # the times come from SOURCE_DATE_EPOCH (squashfs_env): mksquashfs refuses it together with
    # -mkfs-time/-all-time, and CI systems often export it
    argv = ["mksquashfs", str(root), str(out), "-noappend", "-comp", compression, "-no-progress"]
    if level is None and compression == "zstd":
        level = DEFAULT_ZSTD_LEVEL
    if level is not None:
        argv += ["-Xcompression-level", str(level)]
    # last: -e takes every argument after it as a path to exclude (an option after it
    # would silently become an exclude: the level was ignored that way)
    return [*argv, "-e", "boot"]


def squashfs_env(epoch: int) -> dict[str, str]:
    """mksquashfs sets the filesystem's and every inode's time from it: reproducible images."""
    return {"SOURCE_DATE_EPOCH": str(epoch)}


def build(p: Plan, log_path: Path) -> dict[str, Any]:
    kernel_meta = p.kernel.built()
    if kernel_meta is None:
        raise UserError(f"kernel for profile {p.kernel.instance} ({p.kernel.arch}) is missing or stale",
                        hint=f"run: isobuild kernel --profile {p.kernel.instance}")
    release = str(kernel_meta["kernel_release"])
    epoch = int(kernel_meta["make_env"]["SOURCE_DATE_EPOCH"])
    glibc_meta = None
    if p.glibc is not None:
        glibc_meta = p.glibc.built()
        if glibc_meta is None:
            # Debian's glibc stage has its own verb; an EL distro's glibc-rpm is built by its own
            hint = "run: isobuild glibc" if p.plugin.glibc_format == "deb" else f"run: isobuild {p.plugin.name}"
            raise UserError(f"the glibc packages for {p.plugin.name} are missing or stale ({p.glibc.artifact})",
                            hint=hint)
    plugin = p.plugin
    started = state.now()
    durations: dict[str, float] = {}
    # named with our pid: a killed run's build root is swept by the next run (atomic.sweep)
    root = p.layout.root / "rootfs" / f".root-{p.key[:16]}.{os.getpid()}.tmp"
    chroot.remove_root(root, log_path)
    with atomic.new_dir(p.artifact) as out:
        try:
            steps: list[tuple[str, Callable[[], None]]] = [
                ("prepare", lambda: plugin.prepare(p.kernel.artifact, release, log_path)),
                ("bootstrap", lambda: plugin.bootstrap(root, p.cache, log_path)),
            ]
            if p.glibc is not None and glibc_meta is not None:
                # before the kernel: its initramfs then carries the patched libc
                glibc_dir, meta_ = p.glibc.artifact, glibc_meta
                steps.append(("glibc", lambda: plugin.install_glibc(root, glibc_dir, meta_, log_path)))
            steps += [
                ("kernel", lambda: plugin.install_kernel(root, p.kernel.artifact, release, log_path)),
                ("configure", lambda: plugin.configure(root, log_path, p.script)),
            ]
            for name, step in steps:
                start = time.monotonic()
                with log.stage(f"rootfs.{name}", distro=plugin.name):
                    step()
                durations[name] = round(time.monotonic() - start, 3)
            manifest = plugin.manifest(root, log_path)
            kernel, initrd = plugin.boot_files(root, release)
            inside = rootdir.Root(root)  # /boot/vmlinuz-* may be a link: followed inside the root only
            inside.copy_out(kernel, out / "vmlinuz")
            inside.copy_out(initrd, out / "initrd.img")
            plugin.cleanup(root, log_path)
            start = time.monotonic()
            with log.stage("rootfs.squashfs", distro=plugin.name):
                sq = p.inputs["distro"].get("squashfs") or ["zstd", None]
                # in the namespaces: as an ordinary user the root's files are owned by subordinate ids
                chroot.host(squashfs_argv(root, out / "filesystem.squashfs", sq[0], sq[1]), log_path,
                            env=squashfs_env(epoch))
            durations["squashfs"] = round(time.monotonic() - start, 3)
        finally:
            chroot.remove_root(root, log_path)
        metadata = {
            "stage": "rootfs", "key": p.key, "distro": plugin.name, "inputs": p.inputs,
            "kernel_release": release, "kernel_key": p.kernel.key, "epoch": epoch,
            "glibc": None if glibc_meta is None else {
                "version": glibc_meta["version"], "key": glibc_meta["key"],
                "marker": plugin.project.settings.glibc.marker, "patches": glibc_meta["patches"]},
            "packages": manifest, "durations": durations, "started": started, "finished": state.now(),
            "log": str(log_path),
            "sizes": {f.name: f.stat().st_size for f in out.iterdir()},
        }
        atomic.write_json(out / "metadata.json", metadata)
    return metadata
