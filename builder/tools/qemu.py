"""Running QEMU: which accelerator really works, and the argv to boot.

``/dev/kvm`` can exist and answer ioctls yet hang on the first guest
instruction, so its presence proves nothing.  The probe boots a 512-byte
boot sector that writes to QEMU's isa-debug-exit port: QEMU exits with
status 99 within a second if the accelerator executes guest code.  KVM is
used only when that happens; otherwise TCG.  ``ISOBUILD_ACCEL`` forces one,
``ISOBUILD_QEMU_CPU`` the CPU model.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

from builder.infra import log, runner
from builder.infra.arch import ARCHES, Arch
from builder.infra.errors import InfraError, UserError
from builder.tools import console

_PROBE_EXIT = 99  # (0x31 << 1) | 1, from isa-debug-exit
_BOOT_SECTOR = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xEB, 0xFE])  # mov al,0x31; out 0xf4,al; jmp $


def probe_image() -> bytes:
    return _BOOT_SECTOR + bytes(510 - len(_BOOT_SECTOR)) + b"\x55\xaa"


# Under TCG on x86_64, "max" minus the fast-string features.  With ERMS/FSRM the guest
# kernel copies and clears pages with `rep movsb`, which TCG executes a byte at
# a time; and a page that last held translated code (the freed initramfs, the
# kernel's init text) stays write-protected for QEMU's self-modifying-code
# check until its last translated block is overwritten, so each of those 4096
# byte stores walks the page's block list (QEMU's memory_notdirty_write_access
# trace showed ~1M such byte stores per boot).  Debian live ISO, BIOS-CD, to
# verdict: default kernel 23-30 s on "max", 19-22 s on this; -O2 ci kernel
# 25.5 s vs 21-24 s.  An -Os kernel inlines memcpy as `rep movsb` whatever the
# CPU says, hence the ci profile's -O2.  Every arch's model: builder.infra.arch.
TCG_CPU = ARCHES["x86_64"].tcg_cpu


def cpu_model(accel: str, arch: Arch = ARCHES["x86_64"]) -> str:
    """``-cpu`` for ``accel``; ``ISOBUILD_QEMU_CPU`` overrides (say, a baseline model to test on)."""
    forced = os.environ.get("ISOBUILD_QEMU_CPU", "").strip()
    if forced:
        return forced
    return "host" if accel == "kvm" else arch.tcg_cpu


def probe_argv(arch: Arch, accel: str, image: Path) -> list[str]:
    # Same machine and CPU model as a real boot: here KVM runs the boot sector on
    # the default machine yet aborts on q35 with -cpu host (an MSR it cannot set).
    return [arch.qemu, "-accel", accel, "-machine", arch.qemu_machine, "-cpu", cpu_model(accel, arch),
            "-nodefaults", "-display", "none", "-m", "16",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={image},format=raw,if=floppy", "-monitor", "none", "-serial", "none"]


@functools.cache
def accelerator(arch: Arch, timeout: float = 5.0) -> str:
    forced = os.environ.get("ISOBUILD_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise UserError(f"ISOBUILD_ACCEL={forced!r}: expected kvm or tcg")
        return forced
    if not arch.native() or arch.name != "x86_64" or not os.path.exists("/dev/kvm"):
        return "tcg"  # a foreign arch is always emulated; the probe's boot sector is x86 code
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(probe_image())
        f.flush()
        result = runner.run(probe_argv(arch, "kvm", Path(f.name)), timeout=timeout, check=False)
    accel = "kvm" if result.returncode == _PROBE_EXIT and not result.timed_out else "tcg"
    log.get().info("qemu.accel", accel=accel, kvm_probe_exit=result.returncode, timed_out=result.timed_out)
    return accel


def guest_argv(arch: Arch, accel: str, memory: int, cpus: int = 2) -> list[str]:
    """The head of every guest's command line: machine, accelerator, CPU model, memory, no devices of
    QEMU's own choosing, no display or monitor, the serial console on stdout, no reboot."""
    return [arch.qemu, "-accel", accel, "-machine", arch.qemu_machine, "-cpu", cpu_model(accel, arch),
            "-m", str(memory), "-smp", str(cpus), "-nodefaults", "-no-user-config", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-no-reboot"]


def firmware(arch: Arch) -> list[str]:
    """``-bios`` for a direct kernel boot where the arch needs one (riscv64: OpenSBI, which then
    jumps to the kernel); an InfraError naming the file and its package when it is missing."""
    if arch.firmware is None:
        return []
    if not Path(arch.firmware).is_file():
        raise InfraError(f"{arch.firmware} not found: booting {arch.name} needs it as QEMU firmware",
                         hint=f"apt-get install {arch.firmware_package}  (or run: isobuild doctor)")
    return ["-bios", arch.firmware]


def kernel_argv(arch: Arch, kernel: Path, initrd: Path, append: str, memory: int, accel: str) -> list[str]:
    """Boot a kernel + initramfs directly, console on the serial port (our stdout)."""
    return [*guest_argv(arch, accel, memory), *firmware(arch), "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", append]


def watch(argv: list[str], expect: console.Expect, log_path: Path, timeout: float) -> console.Verdict:
    """Run a guest, read its serial console (our stdout) and return the verdict.

    QEMU is ended as soon as the verdict is known; ``timeout`` is a hard limit.
    A QEMU that exits non-zero before the guest said anything is an
    infrastructure ``error``, not a guest failure.
    """
    watcher = console.Watch(expect)
    start = time.monotonic()
    result = runner.run(argv, log_path=log_path, timeout=timeout, check=False, on_line=watcher.feed)
    verdict = watcher.verdict(result.timed_out, None if result.stopped else result.returncode)
    if not watcher.markers and not watcher.panic and not result.stopped and not result.timed_out \
            and result.returncode != 0:
        verdict.status = "error"
        verdict.reasons = [f"QEMU failed to start (exit {result.returncode}); see {log_path}"]
    verdict.seconds = time.monotonic() - start
    verdict.log = str(log_path)
    return verdict
