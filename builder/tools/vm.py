"""Build VMs as processes and records: one QEMU per VM, a directory per VM, a state record.

A VM's directory holds its qcow2 overlay over the disk image (the image itself is never
written), the UEFI variable store where the arch has one, the serial console's log, the QMP
socket, QEMU's pid file and the guest's host keys as first seen (``known_hosts``).
``state.json`` is the record: arch, image, port, pid, resources, and what isobuild last did
(``running`` after a start, ``stopped`` after a stop).  What the process table says wins: a
record that says running whose QEMU is gone is *dead* (``status``), and a pid is only taken as
the VM's when that process's command line names the VM's overlay (pids are reused).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.infra import atomic, state
from builder.infra.arch import Arch
from builder.infra.config import VmSettings, size_bytes
from builder.infra.errors import UserError
from builder.tools import bootmedia, qemu

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
RECORD = "state.json"
OVERLAY = "disk.qcow2"
CONSOLE = "console.log"
QMP = "qmp.sock"  # bound relative to the VM's directory (builder.tools.qmp explains)
PIDFILE = "qemu.pid"
KNOWN_HOSTS = "known_hosts"
EFI_VARS = "efivars.fd"
ENV = {"cpus": "ISOBUILD_VM_CPUS", "memory": "ISOBUILD_VM_MEMORY", "disk": "ISOBUILD_VM_DISK",
       "base_port": "ISOBUILD_VM_BASE_PORT"}
PORTS_TRIED = 64


def check_name(name: str) -> str:
    """A VM name: a directory name and a QEMU -name, so no path characters."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"VM name {name!r}: use 1 to 40 of A-Z a-z 0-9 _ . - (starting with a letter or digit; "
                        "no / or other path characters)")
    return name


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory: int  # MiB
    disk: int | None  # bytes; None: the image's size
    base_port: int


def resources(settings: VmSettings, environ: Mapping[str, str] | None = None) -> Resources:
    """vm.cpus/memory/disk/base_port with their ISOBUILD_VM_* overrides, each checked."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {"cpus": settings.cpus, "memory": settings.memory, "disk": settings.disk,
                              "base_port": settings.base_port}
    for what, var in ENV.items():
        text = env.get(var, "").strip()
        if not text:
            continue
        if what == "disk":
            if not re.fullmatch(r"[1-9][0-9]{0,5}[MG]", text):
                raise UserError(f"{var}={text!r}: expected a size such as 16G or 4096M")
            values[what] = text
            continue
        low, high = {"cpus": (1, 64), "memory": (256, 1 << 20), "base_port": (1024, 65000)}[what]
        if not text.isdigit() or not low <= int(text) <= high:
            raise UserError(f"{var}={text!r}: expected a whole number from {low} to {high}")
        values[what] = int(text)
    disk = size_bytes(values["disk"]) if values["disk"] else None
    return Resources(values["cpus"], values["memory"], disk, values["base_port"])


@dataclass
class Record:
    name: str
    arch: str
    distro: str
    image: str  # the disk image this VM's overlay is over
    image_key: str
    port: int
    firmware: str  # bios | uefi
    snapshot: bool
    cpus: int
    memory: int
    disk: int
    state: str = "starting"  # starting | running | stopped | failed (what isobuild last did)
    pid: int | None = None
    started: str = ""
    stopped: str = ""
    kernel: str = ""  # uname -r in the guest, once SSH answered
    tcg_cache: int = 0  # MiB of TCG translation cache (vm.tcg_cache); 0: QEMU's default
    network: str = "restricted"  # vm.network: restricted (nothing leaves QEMU) or nat
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Machine:
    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    def path(self, what: str) -> Path:
        return self.directory / what

    def load(self) -> Record | None:
        data = state.load(self.path(RECORD))
        if data is None:
            return None
        known = set(Record.__dataclass_fields__)
        return Record(**{k: v for k, v in data.items() if k in known})

    def save(self, record: Record) -> None:
        atomic.write_json(self.path(RECORD), asdict(record))

    def pid(self) -> int | None:
        """QEMU's pid, if that process is alive and is this VM's (its command line names the overlay)."""
        record = self.load()
        pid = record.pid if record else None
        if pid is None:
            try:
                pid = int(self.path(PIDFILE).read_text().strip())
            except (OSError, ValueError):
                return None
        return pid if owns(pid, self.path(OVERLAY)) else None

    def status(self) -> str:
        """running, dead (the record says running, QEMU is gone), stopped, starting, failed."""
        record = self.load()
        if record is None:
            return "unknown"
        alive = self.pid() is not None
        if alive:
            return "running" if record.state in ("running", "starting") else f"running ({record.state})"
        return "dead" if record.state in ("running", "starting") else record.state


def owns(pid: int, overlay: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(str(overlay).encode() in arg for arg in cmdline)


def rss_mib(pid: int | None) -> float | None:
    """The process's resident memory in MiB (for ``vm list``), None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machines(vms_dir: Path) -> list[Machine]:
    return [Machine(p) for p in sorted(vms_dir.glob("*")) if (p / RECORD).is_file()]


def all_machines(work_dir: Path) -> list[Machine]:
    """Every VM of every project on the work dir (<work>/projects/<id>/vms/<name>)."""
    return [m for vms in sorted((work_dir / "projects").glob("*/vms")) for m in machines(vms)]


def images_in_use(work_dir: Path) -> set[str]:
    """The image keys some VM's overlay is over (running or not): clean must keep those images."""
    return {r.image_key for r in (m.load() for m in all_machines(work_dir)) if r is not None}


def running(work_dir: Path) -> list[Machine]:
    return [m for m in all_machines(work_dir) if m.pid() is not None]


def port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` on loopback now (QEMU's hostfwd will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(base: int, taken: set[int], tried: set[int] | None = None) -> int:
    """The first port from ``base`` that no VM record holds and nothing listens on."""
    for port in range(base, min(base + PORTS_TRIED, 65536)):
        if port in taken or port in (tried or set()):
            continue
        if port_free(port):
            return port
    raise UserError(f"no free localhost port in {base}-{base + PORTS_TRIED - 1} for a VM's SSH",
                    hint="stop VMs you no longer need (isobuild vm list), or set vm.base_port / ISOBUILD_VM_BASE_PORT")


def argv(arch: Arch, accel: str, machine: Machine, record: Record, *, daemonize: bool = True,
         forwards: tuple[str, ...] = ()) -> list[str]:
    """QEMU's command line for a VM: daemonized, the serial console to a file, QMP on a socket,
    the overlay on virtio-blk first in the boot order, user-mode networking with the guest's SSH
    forwarded from ``127.0.0.1:<port>`` only (and, ``restricted``, no way out of QEMU), a virtio
    RNG; the arch's firmware (builder.tools.bootmedia: SeaBIOS or OVMF on x86_64, AAVMF on arm64,
    OpenSBI + U-Boot on riscv64).  ``daemonize=False``: QEMU stays isobuild's child (a package
    build's VM, which must die with isobuild); ``forwards``: guestfwd rules (builder.tools.relay)."""
    accel_opt = f"tcg,tb-size={record.tcg_cache}" if accel == "tcg" and record.tcg_cache else accel
    out = [arch.qemu, "-accel", accel_opt, "-machine", arch.qemu_machine, "-cpu", qemu.cpu_model(accel, arch),
           "-m", str(record.memory), "-smp", str(record.cpus), "-nodefaults", "-no-user-config",
           "-display", "none", "-name", f"isobuild-vm-{record.name}",
           "-chardev", f"file,id=console,path={bootmedia.opt(machine.path(CONSOLE))}", "-serial", "chardev:console",
           "-monitor", "none", "-qmp", f"unix:{QMP},server=on,wait=off",
           "-pidfile", str(machine.path(PIDFILE)), *(["-daemonize"] if daemonize else [])]
    if record.firmware == "uefi":
        out += bootmedia.uefi_argv(arch, machine.path(EFI_VARS) if bootmedia.uefi_vars(arch) else None)
    out += ["-drive", f"file={bootmedia.opt(machine.path(OVERLAY))},format=qcow2,if=none,id=disk,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk,bootindex=0",
            "-netdev", f"user,id=net,{'restrict=on,' if record.network == 'restricted' else ''}"
                       f"hostfwd=tcp:127.0.0.1:{record.port}-:22" + "".join(f",{f}" for f in forwards),
            "-device", "virtio-net-pci,netdev=net", "-device", "virtio-rng-pci"]
    if record.snapshot:
        out.append("-snapshot")
    return out


def firmware_for(arch: Arch, wanted: str) -> str:
    """bios or uefi for ``arch``: an arch without BIOS modes boots UEFI whatever was asked."""
    if wanted == "bios" and not any(f == "bios" for f, _ in arch.modes):
        return "uefi"
    return wanted


def console_tail(machine: Machine, lines: int = 25) -> list[str]:
    try:
        text = machine.path(CONSOLE).read_bytes().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip("\r") for line in text.splitlines()[-lines:]]


# --- waiting for a booting guest --------------------------------------------------------------

SSH_POLL = 3.0  # seconds between SSH attempts while a VM boots
# what the console shows when the guest cannot come up: the kernel's panic, or systemd (PID 1) killed
# -- seen here on a riscv64 guest under TCG, once in a few boots: systemd 257 "unhandled signal 11"
BOOT_CRASH = re.compile(r"Kernel panic - not syncing|Attempted to kill init|systemd\[1\]: (unhandled signal|Caught <)"
                        r"|Freezing execution")


def crashed(m: Machine) -> str | None:
    """The console line that says the guest died while booting, if one does."""
    try:
        text = m.path(CONSOLE).read_bytes().decode(errors="replace")
    except OSError:
        return None
    found = BOOT_CRASH.search(text)
    return text[found.start():].split("\n", 1)[0].strip() if found else None


@dataclass(frozen=True)
class Booted:
    """How waiting for a guest's SSH ended: ``up``, ``crashed`` (``line`` says how), ``exited`` (QEMU
    is gone) or ``timeout``; ``seconds`` waited."""

    outcome: str
    seconds: float
    line: str = ""


def wait_for_ssh(m: Machine, answers: Callable[[], bool], alive: Callable[[], bool], limit: float,
                 cancelled: Callable[[], bool] = lambda: False, poll: float = SSH_POLL) -> Booted:
    """Ask ``answers()`` (one SSH attempt) until it says yes, ``limit`` seconds at most; between attempts
    a console line that says the guest died, or QEMU gone (``alive()``), ends the wait at once.
    ``cancelled()`` true raises KeyboardInterrupt (Ctrl-C seen by another thread)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if cancelled():
            raise KeyboardInterrupt
        line = crashed(m)
        if line is not None:
            return Booted("crashed", time.monotonic() - started, line)
        if not alive():
            return Booted("exited", time.monotonic() - started)
        if answers():
            return Booted("up", time.monotonic() - started)
        time.sleep(poll)
    return Booted("timeout", time.monotonic() - started)
