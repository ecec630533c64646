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
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import Project
from builder.infra.errors import UserError
from builder.stages.base import PlannedStage, Stage
from builder.stages.kpackage import KernelPackageStage
from builder.tools import chroot, rootdir

# 2: the kernel package is held; 3: zstd level 9 by default; 4: live-boot conf.d; 5: the kernel package from
# stages/kpackage, installed after the configuration (an overlay's initramfs-tools settings count); 6: the
# initramfs made under the kernel's SOURCE_DATE_EPOCH
STAGE_VERSION = 6
LAYER_VERSION = 1


# the installed glibc's version, written as the glibc stages' metadata writes it
LIBC_VERSION_QUERY = {"deb": "dpkg-query -W -f='${Version}' libc6",
                      "rpm": "rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}' glibc"}


# The guest tests (builder.stages.guesttests), when the smoke test attaches their drive: each copied
# out of the read-only squashfs, announced ("TESTSTART name": a test that crashes the guest is named),
# run with its timeout, reported as "TEST name status exit seconds" and the last lines of its output
# (a test that hangs is killed and the next one still runs).
GUEST_TESTS = """tests=/dev/disk/by-id/virtio-isobuild-tests
if [ -e "$tests" ]; then
  dir=/var/tmp/isobuild-tests  # not /run: it is mounted noexec
  mkdir -p "$dir/mnt"
  if mount -t squashfs -o ro "$tests" "$dir/mnt"; then
    while read -r name kind limit; do
      cp "$dir/mnt/tests/$name" "$dir/$name" && chmod 755 "$dir/$name"
      say "TESTSTART $name"
      start=$(date +%s)
      if [ "$kind" = sh ]; then (cd "$dir" && timeout -k 5 "$limit" sh "./$name") > "$dir/$name.out" 2>&1
      else (cd "$dir" && timeout -k 5 "$limit" "./$name") > "$dir/$name.out" 2>&1; fi
      rc=$?
      case $rc in 0) status=pass ;; 124|137) status=timeout ;; *) status=fail ;; esac
      say "TEST $name $status $rc $(( $(date +%s) - start ))"
      tail -n 5 "$dir/$name.out" | while IFS= read -r line; do say "TESTOUT $name $line"; done
    done < "$dir/mnt/manifest"
    umount "$dir/mnt"
  else
    say "TEST - error 1 0 the tests drive does not mount"
  fi
fi
"""


def smoke_script(marker_file: str, libc_marker: str | None = None, package_format: str = "deb",
                 console: str = "ttyS0") -> str:
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
    script = f"""#!/bin/sh
# isobuild boot check, started by isobuild-smoke.service only when QEMU passes
# -fw_cfg name=opt/isobuild/smoke: it does nothing on real machines.
say() {{ echo "ISOBUILD-$*" > /dev/{console}; }}
state=$(systemctl is-system-running --wait 2>/dev/null)
say "UNAME $(uname -r)"
if [ -r {marker_file} ]; then say "MARKER $(cat {marker_file})"; else say "MARKER-MISSING {marker_file}"; fi
{libc}say "SYSTEM ${{state:-unknown}}"
failed=""
for unit in $(systemctl list-units --state=failed --plain --no-legend --no-pager | cut -d' ' -f1); do
  failed="$failed$unit,"
done
say "FAILED ${{failed:-none}}"
{{GUEST_TESTS}}say DONE
"""
    return script.replace("{GUEST_TESTS}", GUEST_TESTS)


class DistroPlugin(Protocol):
    """What the rootfs stage takes of a distro plugin (builder.distros.base.Plugin is one)."""

    name: str
    family: ClassVar[str]
    glibc_format: ClassVar[str | None]
    kernel_in_bootstrap: ClassVar[bool]
    project: Project
    settings: Any

    def identity(self) -> dict[str, Any]: ...

    def prepare(self, kernel_packages: list[Path], release: str, log_path: Path) -> None: ...

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None: ...

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None: ...

    def install_local(self, root: Path, log_path: Path) -> None: ...

    def install_kernel(self, root: Path, kernel_packages: list[Path], release: str, log_path: Path,
                       epoch: int) -> None: ...

    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None: ...

    def boot_files(self, root: Path, release: str) -> tuple[str, str]: ...

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]: ...

    def cleanup(self, root: Path, log_path: Path) -> None: ...


@dataclass(frozen=True)
class DistroLayout:
    root: Path  # <work>/distros/<name>

    def rootfs(self, key: str) -> Path:
        return self.root / "rootfs" / key

    def layer(self, key: str) -> Path:
        """The root before the kernel went in, as a tarball (see build)."""
        return self.root / "layers" / f"{key}.tar"


@dataclass
class Plan:
    plugin: DistroPlugin
    kernel: KernelPackageStage  # the kernel's package this distro installs
    glibc: Stage | None  # None: the distribution's own glibc
    layout: DistroLayout
    cache: Path
    script: str
    inputs: dict[str, Any]
    key: str
    layer_key: str | None  # of the part of the root that does not depend on the kernel (None: no such part)

    @property
    def artifact(self) -> Path:
        return self.layout.rootfs(self.key)

    @property
    def layer(self) -> Path | None:
        return self.layout.layer(self.layer_key) if self.layer_key else None


def plan(plugin: DistroPlugin, kernel: KernelPackageStage, glibc: Stage | None = None) -> Plan:
    project = plugin.project
    arch = ARCHES[kernel.arch]
    script = smoke_script(project.settings.kernel.boot.marker_file,
                          project.settings.glibc.marker if glibc else None, plugin.glibc_format or "deb", arch.console)
    identity = plugin.identity()  # reads the apt config and hashes the overlay: once per plan
    inputs = {"stage": "rootfs", "stage_version": STAGE_VERSION, "distro": identity,
              "kernel": kernel.key, "glibc": glibc.key if glibc else None, "arch": kernel.arch,
              "smoke_script": keys.compute({"script": script})}
    layer_key = None if plugin.kernel_in_bootstrap else \
        keys.compute({"layer": LAYER_VERSION, **{k: v for k, v in inputs.items() if k != "kernel"}})
    layout = DistroLayout(project.work_dir / "distros" / plugin.name)
    # per suite and arch: a cached bootstrap of one arch is never another's (nor its packages)
    cache = project.work_dir / "cache" / plugin.family / f"{identity.get('suite', 'default')}-{arch.deb_arch}"
    return Plan(plugin, kernel, glibc, layout, cache, script, inputs, keys.compute(inputs), layer_key)


class RootfsStage(PlannedStage):
    """A distro's root filesystem for one kernel and glibc (builder.stages.base.Stage)."""

    kind = "rootfs"
    work_entries = ("distros", "cache")

    def __init__(self, plugin: DistroPlugin, kernel: KernelPackageStage, glibc: Stage | None):
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
            kept = [p for p in (distro / "rootfs").glob("*") if p.name in keep or p.name == legacy]
            out += [p for p in (distro / "rootfs").glob("*") if p not in kept]
            layers = {str((state.load(p / "metadata.json") or {}).get("layer")) for p in kept}
            out += [p for p in (distro / "layers").glob("*.tar") if p.stem not in layers]
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


def _step(name: str, distro: str, durations: dict[str, float], step: Callable[[], object]) -> None:
    start = time.monotonic()
    with log.stage(f"rootfs.{name}", distro=distro):
        step()
    durations[name] = round(time.monotonic() - start, 3)


def copy_grub_modules(root: rootdir.Root, arch: Arch, dest: Path) -> None:
    """The root's GRUB EFI modules for ``arch`` (its grub-efi-<arch>-bin): the ISO's loader is made
    from them by the host's grub-mkimage, so GRUB matches the distribution it boots."""
    where = f"/usr/lib/grub/{arch.grub_target}"
    files = [f for f in root.glob(f"{where}/*") if not root.is_symlink(f) and root.resolve(f).is_file()]
    if not any(f.endswith("/linux.mod") for f in files):
        raise UserError(f"the {arch.name} root has no {where}/linux.mod: the ISO's EFI loader is made from it",
                        hint=f"keep {arch.grub_efi_package} in the root's packages")
    dest.mkdir()
    for f in files:
        root.copy_out(f, dest / f.rsplit("/", 1)[-1])


def build(p: Plan, log_path: Path) -> dict[str, Any]:
    """The root: its kernel-free part (bootstrap, our glibc, the configuration, the overlay, the boot
    check) from the layer cache when it was made before, else made and kept there; then the kernel's
    package (its initramfs made in the root), the cleanup and the squashfs.  A new kernel thus redoes
    only what depends on it.  A plugin whose bootstrap installs the kernel itself (EL) does it all."""
    kernel_meta = p.kernel.kernel.built()
    if kernel_meta is None or p.kernel.built() is None:
        raise UserError(f"kernel for profile {p.kernel.kernel.instance} ({p.kernel.arch}) is missing or stale",
                        hint=f"run: isobuild kernel --profile {p.kernel.kernel.instance}")
    release = str(kernel_meta["kernel_release"])
    epoch = int(kernel_meta["make_env"]["SOURCE_DATE_EPOCH"])
    packages = p.kernel.files()
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
    # named with our pid: a killed run's build root is swept by the next run (tools/sweep)
    root = p.layout.root / "rootfs" / f".root-{p.key[:16]}.{os.getpid()}.tmp"
    chroot.remove_root(root, log_path)

    def kernel_free_part() -> None:
        _step("bootstrap", plugin.name, durations, lambda: plugin.bootstrap(root, p.cache, log_path))
        if p.glibc is not None and glibc_meta is not None:
            glibc_dir, meta_ = p.glibc.artifact, glibc_meta
            _step("glibc", plugin.name, durations, lambda: plugin.install_glibc(root, glibc_dir, meta_, log_path))
        _step("local-packages", plugin.name, durations, lambda: plugin.install_local(root, log_path))

    with atomic.new_dir(p.artifact) as out:
        try:
            _step("prepare", plugin.name, durations, lambda: plugin.prepare(packages, release, log_path))
            layer = p.layer
            if layer is None:  # the kernel comes with the bootstrap: nothing to keep apart from it
                kernel_free_part()
                _step("kernel", plugin.name, durations,
                      lambda: plugin.install_kernel(root, packages, release, log_path, epoch))
                _step("configure", plugin.name, durations, lambda: plugin.configure(root, log_path, p.script))
            else:
                if layer.exists():
                    root.mkdir(parents=True)
                    _step("layer", plugin.name, durations, lambda: chroot.unpack(layer, root, log_path))
                else:
                    kernel_free_part()
                    _step("configure", plugin.name, durations, lambda: plugin.configure(root, log_path, p.script))
                    tmp = atomic.temp_path(layer)
                    layer.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        _step("keep-layer", plugin.name, durations,
                              lambda: chroot.pack(root, tmp, log_path))
                        os.replace(tmp, layer)
                    finally:
                        tmp.unlink(missing_ok=True)
                _step("kernel", plugin.name, durations,
                      lambda: plugin.install_kernel(root, packages, release, log_path, epoch))
            manifest = plugin.manifest(root, log_path)
            kernel, initrd = plugin.boot_files(root, release)
            inside = rootdir.Root(root)  # /boot/vmlinuz-* may be a link: followed inside the root only
            inside.copy_out(kernel, out / "vmlinuz")
            inside.copy_out(initrd, out / "initrd.img")
            arch = ARCHES[p.kernel.arch]
            if not arch.native():
                _step("grub-modules", plugin.name, durations, lambda: copy_grub_modules(inside, arch, out / "grub"))
            plugin.cleanup(root, log_path)
            sq = p.inputs["distro"].get("squashfs") or ["zstd", None]
            # in the namespaces: as an ordinary user the root's files are owned by subordinate ids
            _step("squashfs", plugin.name, durations, lambda: chroot.host(
                squashfs_argv(root, out / "filesystem.squashfs", sq[0], sq[1]), log_path, env=squashfs_env(epoch)))
        finally:
            chroot.remove_root(root, log_path)
        metadata = {
            "stage": "rootfs", "key": p.key, "distro": plugin.name, "inputs": p.inputs,
            "kernel_release": release, "kernel_key": p.kernel.kernel.key, "epoch": epoch, "layer": p.layer_key,
            "glibc": None if glibc_meta is None else {
                "version": glibc_meta["version"], "key": glibc_meta["key"],
                "marker": plugin.project.settings.glibc.marker, "patches": glibc_meta["patches"]},
            "packages": manifest, "durations": durations, "started": started, "finished": state.now(),
            "log": str(log_path),
            "sizes": {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()},
        }
        atomic.write_json(out / "metadata.json", metadata)
    return metadata
