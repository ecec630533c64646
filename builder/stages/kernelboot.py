"""``isobuild kernel --boot`` / ``isobuild test kernel``: boot the built kernel
with a busybox initramfs in QEMU and check it is the patched one.

The initramfs runs a static busybox of the kernel's arch (builder.tools.busybox);
QEMU boots the kernel directly: q35 for x86_64, ``virt`` for arm64 and riscv64
(OpenSBI as firmware), each with the CPU model measured fastest under TCG
(builder.infra.arch), the timeout scaled by the arch's TCG slowdown.

Pass means: the guest reports the exact kernel release that was built and the
marker file (by default the XSC driver's /sys/kernel/xsc/version) with a value
matching the configured pattern; no panic, Oops or BUG.  QEMU is ended by the
host once the verdict is known; a hard timeout always applies.  The verdict is
this project's record of the check.
"""

from __future__ import annotations

import re
from pathlib import Path

from builder.infra import arch as arch_mod
from builder.infra import hosttools, log
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError
from builder.stages.base import Check
from builder.stages.kernel import KernelStage
from builder.tools import aptsources, busybox, console, initramfs, qemu


def busybox_for(kernel: KernelStage, log_path: Path | None = None) -> Path:
    """The static busybox for the kernel's arch (builder.tools.busybox): the host's own, or the
    archive's busybox-static of that arch from the arch's suite (kernel.boot.busybox_suites)."""
    arch = arch_mod.get(kernel.arch)
    settings = kernel.project.settings.kernel.boot
    suite = settings.busybox_suites.get(arch.name, arch.busybox_suite)
    if arch.native():
        return busybox.HOST_BUSYBOX
    mirror = settings.mirror or aptsources.archive_mirror(suite)
    return busybox.for_arch(arch, mirror, suite, kernel.project.work_dir / "cache" / "debian-archive", log_path)


def timeout_for(kernel: KernelStage) -> float:
    """kernel.boot.timeout scaled by how much slower the arch boots under TCG than x86_64."""
    arch = arch_mod.get(kernel.arch)
    return kernel.project.settings.kernel.boot.timeout * arch.tcg_slowdown


class KernelBootCheck(Check):
    kind = "kernel-boot"
    changed = "kernel changed since this boot check"
    of: KernelStage

    def __init__(self, kernel: KernelStage):
        super().__init__(kernel)
        self._busybox: Path | None = None

    @property
    def legacy_record(self) -> str | None:
        return f"kernel/state/boot-{self.of.instance}.json" if self.of.arch == "x86_64" else None

    def prepare(self) -> Path:
        """Everything a boot needs besides the kernel, checked before any build: QEMU for the arch,
        its firmware, the busybox (downloaded and verified now for a foreign arch, once per check)."""
        if self._busybox is None:
            arch = arch_mod.get(self.of.arch)
            hosttools.require([arch.qemu], f"the {arch.name} boot check")
            qemu.firmware(arch)
            self._busybox = busybox_for(self.of)
        return self._busybox

    def run(self, log_path: Path) -> console.Verdict:
        p = self.of.plan
        meta = self.of.built()
        if meta is None:
            why = "stale: its inputs changed since the last build" if self.of.current() else "missing"
            raise UserError(f"kernel for profile {p.layout.profile} ({p.arch.name}) is {why}",
                            hint=f"run: isobuild kernel --profile {p.layout.profile} --arch {p.arch.name}")
        settings = p.project.settings.kernel.boot
        image = p.artifact / Path(p.arch.image).name
        box = self.prepare()
        initrd = p.layout.root / "boot" / f"initramfs-{p.arch.name}.cpio"
        initramfs.busybox_initramfs(initrd, settings.marker_file, box)
        accel = qemu.accelerator(p.arch)
        append = f"console={p.arch.console},115200 panic=-1 rdinit=/init"
        argv = qemu.kernel_argv(p.arch, image, initrd, append, settings.memory, accel)
        expect = console.Expect({"UNAME": re.escape(meta["kernel_release"]), "MARKER": settings.marker_pattern})
        timeout = timeout_for(self.of)
        with log.stage("kernel.boot", accel=accel, arch=p.arch.name, timeout=timeout, log=str(log_path)):
            verdict = qemu.watch(argv, expect, log_path, timeout)
        verdict.extra = {"accel": accel, "arch": p.arch.name, "cpu": qemu.cpu_model(accel, p.arch),
                         "kernel_release": meta["kernel_release"], "key": p.key,
                         "busybox": str(box), "busybox_sha256": sha256_file(box)}
        self.save(verdict.as_dict())
        return verdict
