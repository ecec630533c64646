"""Boot an ISO in several modes with plain QEMU, as isobuild's smoke stage would (the same command
lines), ``at_once`` at a time: for the benchmarks' side-by-side figures.  A boot is done at the
guest's ISOBUILD-DONE line; each console line is kept with its time since the boot started."""

from __future__ import annotations

import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.infra.arch import ARCHES
from builder.stages import smoke
from builder.tools import bootmedia, qemu


@dataclass
class Boot:
    mode: str
    started: float = 0.0  # since the batch started
    finished: float = 0.0
    done: bool = False
    lines: list[tuple[float, str]] = field(default_factory=list)


def boot_all(iso: Path, modes: list[str], scratch: Path, at_once: int, cpus: int, memory: int = 1536,
             timeout: float = 300.0) -> tuple[list[Boot], float]:
    """Every mode booted; returns the boots in the order they finished and the CPU seconds QEMU used."""
    arch = ARCHES["x86_64"]
    accel = qemu.accelerator(arch)
    gate = threading.Semaphore(at_once)
    start = time.monotonic()
    boots = [Boot(m) for m in modes]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def run(boot: Boot) -> None:
        firmware, media = boot.mode.split("-")
        with gate:
            boot.started = time.monotonic() - start
            vars_copy = scratch / f"vars-{boot.mode}.fd"
            if firmware == "uefi":
                shutil.copyfile(bootmedia.ovmf().vars, vars_copy)
            argv = bootmedia.iso_argv(arch, accel, iso, firmware, media, memory,  # type: ignore[arg-type]
                                      vars_copy if firmware == "uefi" else None, smoke.FW_CFG, cpus)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            assert proc.stdout is not None
            for raw in proc.stdout:
                text = raw.decode(errors="replace").rstrip()
                boot.lines.append((time.monotonic() - start - boot.started, text))
                if "ISOBUILD-DONE" in text:
                    boot.done = True
                    break
            killer.cancel()
            proc.kill()
            proc.wait()
            boot.finished = time.monotonic() - start

    threads = [threading.Thread(target=run, args=(b,)) for b in boots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return sorted(boots, key=lambda b: b.finished), cpu
