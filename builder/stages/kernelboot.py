"""``isobuild kernel --boot`` / ``isobuild test kernel``: boot the built kernel
with a busybox initramfs in QEMU and check it is the patched one.

Pass means: the guest reports the exact kernel release that was built and the
marker file (by default the XSC driver's /sys/kernel/xsc/version) with a value
matching the configured pattern; no panic, Oops or BUG.  QEMU is ended by the
host once the verdict is known; a hard timeout always applies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from builder.infra import atomic, log, state
from builder.infra.errors import CheckFailed, InfraError, UserError
from builder.stages.kernel import Plan
from builder.tools import console, initramfs, qemu


def boot(p: Plan, log_path: Path) -> console.Verdict:
    meta = state.load(p.artifact / "metadata.json")
    if meta is None:
        current = state.load(p.layout.current / "metadata.json")
        why = "stale: its inputs changed since the last build" if current else "missing"
        raise UserError(f"kernel for profile {p.layout.profile} is {why}", hint="run: isobuild kernel")
    settings = p.project.settings.kernel.boot
    image = p.artifact / Path(p.arch.image).name
    initrd = p.layout.root / "boot" / "initramfs.cpio"
    initramfs.busybox_initramfs(initrd, settings.marker_file)
    accel = qemu.accelerator(p.arch)
    append = f"console={p.arch.console},115200 panic=-1 rdinit=/init"
    argv = qemu.kernel_argv(p.arch, image, initrd, append, settings.memory, accel)
    expect = console.Expect({"UNAME": re.escape(meta["kernel_release"]), "MARKER": settings.marker_pattern})
    with log.stage("kernel.boot", accel=accel, log=str(log_path)):
        verdict = qemu.watch(argv, expect, log_path, settings.timeout)
    verdict.extra = {"accel": accel, "kernel_release": meta["kernel_release"], "key": p.key}
    record: dict[str, Any] = {"stage": "kernel-boot", "profile": p.layout.profile, "key": p.key,
                              "finished": state.now(), **verdict.as_dict()}
    atomic.write_json(p.layout.root / "state" / f"boot-{p.layout.profile}.json", record)
    return verdict


def raise_for(verdict: console.Verdict) -> None:
    if verdict.status == "pass":
        return
    details = verdict.reasons + ["console tail:"] + [f"  {line}" for line in verdict.tail[-15:]] + \
        [f"full console log: {verdict.log}"]
    if verdict.status == "error":
        raise InfraError("boot check could not run: " + "; ".join(verdict.reasons), details=details)
    raise CheckFailed("boot check failed: " + verdict.reasons[0], details=details,
                      hint="see the console log; the kernel artifact itself is kept")
