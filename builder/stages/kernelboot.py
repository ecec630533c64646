"""``isobuild kernel --boot`` / ``isobuild test kernel``: boot the built kernel
with a busybox initramfs in QEMU and check it is the patched one.

Pass means: the guest reports the exact kernel release that was built and the
marker file (by default the XSC driver's /sys/kernel/xsc/version) with a value
matching the configured pattern; no panic, Oops or BUG.  QEMU is ended by the
host once the verdict is known; a hard timeout always applies.  The verdict is
this project's record of the check.
"""

from __future__ import annotations

import re
from pathlib import Path

from builder.infra import log
from builder.infra.errors import UserError
from builder.stages.base import Check
from builder.stages.kernel import KernelStage
from builder.tools import console, initramfs, qemu


class KernelBootCheck(Check):
    kind = "kernel-boot"
    changed = "kernel changed since this boot check"
    of: KernelStage

    def __init__(self, kernel: KernelStage):
        super().__init__(kernel)

    @property
    def legacy_record(self) -> str | None:
        return f"kernel/state/boot-{self.of.instance}.json" if self.of.arch == "x86_64" else None

    def run(self, log_path: Path) -> console.Verdict:
        p = self.of.plan
        meta = self.of.built()
        if meta is None:
            why = "stale: its inputs changed since the last build" if self.of.current() else "missing"
            raise UserError(f"kernel for profile {p.layout.profile} ({p.arch.name}) is {why}",
                            hint=f"run: isobuild kernel --profile {p.layout.profile}")
        settings = p.project.settings.kernel.boot
        image = p.artifact / Path(p.arch.image).name
        initrd = p.layout.root / "boot" / f"initramfs-{p.arch.name}.cpio"
        initramfs.busybox_initramfs(initrd, settings.marker_file)
        accel = qemu.accelerator(p.arch)
        append = f"console={p.arch.console},115200 panic=-1 rdinit=/init"
        argv = qemu.kernel_argv(p.arch, image, initrd, append, settings.memory, accel)
        expect = console.Expect({"UNAME": re.escape(meta["kernel_release"]), "MARKER": settings.marker_pattern})
        with log.stage("kernel.boot", accel=accel, arch=p.arch.name, log=str(log_path)):
            verdict = qemu.watch(argv, expect, log_path, settings.timeout)
        verdict.extra = {"accel": accel, "kernel_release": meta["kernel_release"], "key": p.key}
        self.save(verdict.as_dict())
        return verdict
