"""``isobuild vm``: build VMs made from a distro's disk image (``isobuild image``).

Each VM is a QEMU process of its own (builder.tools.vm) over a qcow2 overlay of the image,
reachable by SSH on a forwarded localhost port with the project's key (builder.tools.ssh).  VMs
belong to the project (``<work>/projects/<id>/vms/<name>/``) and outlive the isobuild command
that started them -- the one thing isobuild leaves running on purpose -- until ``vm stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from builder.distros.graph import Graph
from builder.infra import atomic, log, runner, state
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import Project
from builder.infra.errors import InfraError, UserError
from builder.stages import guesttests, rootfs
from builder.stages.base import ensure, records_dir
from builder.stages.image import DISK, key_dir
from builder.tools import bootmedia, qemu, qmp, ssh
from builder.tools import console as serial
from builder.tools import vm as vmt


def vms_dir(project: Project) -> Path:
    return records_dir(project) / "vms"


def machine(project: Project, name: str) -> vmt.Machine:
    return vmt.Machine(vms_dir(project) / vmt.check_name(name))


def existing(project: Project, name: str) -> tuple[vmt.Machine, vmt.Record]:
    m = machine(project, name)
    record = m.load()
    if record is None:
        known = ", ".join(x.name for x in vmt.machines(vms_dir(project))) or "none"
        raise UserError(f"no VM named {name!r} (VMs: {known})", hint=f"start one: isobuild vm start {name}")
    return m, record


@dataclass(frozen=True)
class Image:
    path: Path
    key: str
    distro: str
    arch: str
    kernel: str


def find_image(project: Project, image: str, arch: str) -> Image:
    """``--image``: a distro's last good disk image for ``arch`` (what ``isobuild image`` built for
    this project), or a qcow2 file."""
    if image.endswith(".qcow2") or "/" in image:
        path = Path(image).resolve()
        if not path.is_file():
            raise UserError(f"--image {image}: no such file", hint="give a distro name (debian) or a qcow2 file")
        return Image(path, "file", path.name, arch, "")
    graph = Graph(project, None, arch)
    plugin = graph.load(image)
    _, stage = graph.image(plugin)
    current = stage.current()
    meta = state.load(current / "metadata.json") if current else None
    if current is None or meta is None or not (current / DISK).is_file():
        raise UserError(f"no disk image of {image} for {arch} in this project",
                        hint=f"build it: isobuild image {image} --arch {arch}")
    if current.name != stage.key:
        log.get().warning("vm.image-stale", distro=image, arch=arch, image=str(current),
                          changed="; ".join(stage.changes()[:3]))
    return Image(current / DISK, current.name, image, arch, str(meta.get("kernel_release", "")))


def _ssh(m: vmt.Machine, record: vmt.Record, project: Project) -> list[str]:
    return [str(ssh.private_key(key_dir(project))), str(m.path(vmt.KNOWN_HOSTS)), str(record.port)]


def _answers(project: Project, m: vmt.Machine, record: vmt.Record, log_path: Path) -> str | None:
    """``uname -r`` from the guest over SSH, or None when SSH does not answer (yet)."""
    key, known, port = _ssh(m, record, project)
    result = runner.run(ssh.ssh_argv(Path(key), Path(known), int(port), ["uname", "-r"]), log_path=log_path,
                        check=False, capture=True, timeout=60)
    if result.returncode == 0 and not result.timed_out:
        return result.output.strip().splitlines()[-1] if result.output.strip() else ""
    return None


def _kill(pid: int | None, grace: float = 5.0) -> None:
    if pid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not atomic.pid_alive(pid) or _zombie(pid):
                return
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _cleanup_runtime(m: vmt.Machine) -> None:
    for what in (vmt.QMP, vmt.PIDFILE):
        m.path(what).unlink(missing_ok=True)


def start(project: Project, name: str, image: str, arch: str, snapshot: bool, port: int | None,
          firmware: str | None, log_path: Path) -> vmt.Record:
    """Create the VM's overlay, start QEMU, wait for SSH (bounded; on failure QEMU is stopped, the
    overlay kept, the console's tail shown)."""
    m = machine(project, name)
    if m.load() is not None:
        raise UserError(f"a VM named {name!r} exists ({m.status()})",
                        hint=f"use it (isobuild vm connect {name}), or remove it: isobuild vm clean {name}")
    target = ARCHES[arch]
    settings = project.settings.vm
    res = vmt.resources(settings)
    taken = {r.port for r in (x.load() for x in vmt.machines(vms_dir(project))) if r is not None}
    if port is not None and (port in taken or not vmt.port_free(port)):
        raise UserError(f"--port {port}: localhost port {port} is taken",
                        hint="choose another, or leave --port out to take the first free one from vm.base_port")
    img = find_image(project, image, arch)
    if not ssh.public_key(key_dir(project)):
        raise UserError(f"no SSH key for this project's VMs ({key_dir(project)})",
                        hint=f"build the image first: isobuild image {img.distro} --arch {arch}")
    virtual = int(json.loads(runner.output(["qemu-img", "info", "--output=json", img.path]))["virtual-size"])
    disk = max(res.disk or virtual, virtual)
    fw = vmt.firmware_for(target, firmware or settings.firmware)
    m.directory.mkdir(parents=True, exist_ok=True)  # a directory without a record is a start that died early
    record = vmt.Record(name, arch, img.distro, str(img.path), img.key, port or 0, fw, snapshot, res.cpus, res.memory,
                        disk)
    record.tcg_cache, record.network = settings.tcg_cache, settings.network
    m.save(record)
    try:
        launch(m, record, target, img, port, res.base_port, taken, log_path)
        wait_for_ssh(project, m, record, target.tcg_slowdown, log_path)
    except BaseException as exc:  # Ctrl-C included: no QEMU is left behind, the record says what happened
        _kill(m.pid())
        _cleanup_runtime(m)
        record = m.load() or record
        record.state, record.stopped = "failed", state.now()
        record.error = getattr(exc, "message", type(exc).__name__)
        m.save(record)
        raise
    return record


def launch(m: vmt.Machine, record: vmt.Record, target: Arch, img: Image, port: int | None, base_port: int,
           taken: set[int], log_path: Path) -> None:
    """The overlay over the image, the VM's own UEFI variable store, then QEMU daemonized; a port
    another process took between the check and QEMU's bind is skipped (unless --port named it)."""
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img.path, m.path(vmt.OVERLAY),
                str(record.disk)], log_path=log_path)
    template = bootmedia.uefi_vars(target) if record.firmware == "uefi" else None
    if template is not None:
        atomic.copy_file(template, m.path(vmt.EFI_VARS))
    accel = qemu.accelerator(target)
    tried: set[int] = set()
    while True:
        record.port = port or vmt.pick_port(base_port, taken, tried)
        m.save(record)
        result = runner.run(vmt.argv(target, accel, m, record), cwd=m.directory, log_path=log_path, check=False,
                            capture=True, timeout=120, daemon=True)
        if result.returncode == 0:
            break
        if "host forwarding rule" in result.output and port is None and len(tried) < 8:
            tried.add(record.port)
            continue
        if "host forwarding rule" in result.output:
            raise UserError(f"localhost port {record.port} is taken: QEMU could not forward SSH to it",
                            hint="choose another --port")
        raise InfraError(f"QEMU did not start VM {record.name} (exit {result.returncode})",
                         details=[*[line for line in result.output.splitlines() if line.strip()][-10:],
                                  f"log: {log_path}"], hint=f"the overlay is kept: isobuild vm clean {record.name}")
    record.pid = m.pid()
    record.started, record.state = state.now(), "running"
    m.save(record)


def wait_for_ssh(project: Project, m: vmt.Machine, record: vmt.Record, slowdown: float, log_path: Path) -> None:
    limit = project.settings.vm.ssh_timeout * slowdown
    kernel: list[str] = []

    def answers() -> bool:
        release = _answers(project, m, record, log_path)
        kernel.extend([release] if release is not None else [])
        return release is not None

    with log.stage("vm.wait-ssh", vm=record.name, port=record.port, limit=limit):
        booted = vmt.wait_for_ssh(m, answers, lambda: m.pid() is not None, limit)
    console = [*vmt.console_tail(m), f"console: {m.path(vmt.CONSOLE)}"]
    kept = f"the overlay is kept for a look: {m.path(vmt.OVERLAY)}"
    if booted.outcome == "crashed":
        raise InfraError(f"VM {record.name}: the guest crashed while it booted: {booted.line}; QEMU stopped",
                         details=console, hint=kept)
    if booted.outcome == "exited":
        raise InfraError(f"VM {record.name}: QEMU exited while the guest booted", details=console, hint=kept)
    if booted.outcome == "timeout":
        raise InfraError(f"VM {record.name}: SSH did not answer on 127.0.0.1:{record.port} within {limit:.0f} s; "
                         "QEMU stopped", details=console,
                         hint=f"the overlay is kept for a look ({m.path(vmt.OVERLAY)}); vm.ssh_timeout sets the limit")
    record.kernel = kernel[-1]
    record.extra["ssh_seconds"] = round(booted.seconds, 1)
    key, known, port = _ssh(m, record, project)
    skew = ssh.sync_clock(Path(key), Path(known), int(port), log_path)
    record.extra["clock_skew"] = skew
    if skew is not None and abs(skew) > ssh.CLOCK_SLACK:
        log.get().warning("vm.clock-set", vm=record.name, skew_seconds=skew)
    m.save(record)


def require_running(m: vmt.Machine, record: vmt.Record) -> int:
    """The VM's QEMU pid; a UserError when the VM is stopped or dead."""
    pid = m.pid()
    if pid is None:
        status = m.status()
        why = "its QEMU is gone (dead)" if status == "dead" else f"it is {status}"
        raise UserError(f"VM {record.name} is not running: {why}",
                        hint=f"start a new one: isobuild vm clean {record.name} && isobuild vm start {record.name}")
    return pid


def run(project: Project, name: str, command: list[str]) -> int:
    """The command in the guest, its stdout and stderr streamed to ours (kept apart); its exit code."""
    if not command:
        raise UserError("vm run: no command given", hint=f"isobuild vm run {name} -- CMD [ARG...]")
    m, record = existing(project, name)
    require_running(m, record)
    key, known, port = _ssh(m, record, project)
    rc = runner.attached(ssh.ssh_argv(Path(key), Path(known), int(port), command))
    if rc == 255:
        log.get().warning("vm.run.ssh-255", name=name, note="ssh exits 255 on a connection error; a command "
                          "exiting 255 looks the same")
    return rc


def connect(project: Project, name: str) -> int:
    m, record = existing(project, name)
    require_running(m, record)
    key, known, port = _ssh(m, record, project)
    return runner.attached(ssh.ssh_argv(Path(key), Path(known), int(port), None, tty=sys.stdin.isatty()))


def copy(project: Project, name: str, src: str, dest: str, into: bool, log_path: Path) -> None:
    """copy-in (host ``src`` -> guest ``dest``) or copy-out (guest ``src`` -> host ``dest``)."""
    m, record = existing(project, name)
    require_running(m, record)
    if into and not os.path.exists(src):
        raise UserError(f"copy-in: {src}: no such file or directory on the host")
    if not into and not Path(dest).absolute().parent.is_dir():
        raise UserError(f"copy-out: {Path(dest).absolute().parent}: no such directory on the host")
    key, known, port = _ssh(m, record, project)
    pair = (src, ssh.remote(dest)) if into else (ssh.remote(src), dest)
    result = runner.run(ssh.scp_argv(Path(key), Path(known), int(port), *pair), log_path=log_path, check=False,
                        capture=True)
    if result.returncode != 0:
        lines = [line for line in result.output.splitlines() if line.strip()][-5:]
        raise UserError(f"copy-{'in' if into else 'out'} {src} -> {dest} failed (scp exit {result.returncode})",
                        details=lines, hint="check the paths (guest paths are absolute or relative to /root)")


# where `vm test` puts the guest tests' drive image in the guest (the runner mounts it as it mounts the
# smoke boot's drive: a regular file is looped by mount)
TESTS_IN_GUEST = "/var/tmp/isobuild-tests.img"


def tests_script() -> str:
    """The boot check's guest-test runner (builder.stages.rootfs.GUEST_TESTS) over SSH: the drive is
    a copied image, the reports go to stdout."""
    body = rootfs.GUEST_TESTS.replace("tests=/dev/disk/by-id/virtio-isobuild-tests", f"tests={TESTS_IN_GUEST}", 1)
    return f'say() {{ echo "ISOBUILD-$*"; }}\n{body}rm -f {TESTS_IN_GUEST}\nsay DONE\n'


def guest_tests(project: Project, name: str, wanted: list[str] | None, profile: str | None,
                log_path: Path) -> serial.Verdict:
    """The project's guest tests (tests/guest), built for the VM's distro and arch like the smoke
    boot's, run in the running VM: each with its timeout, reported per test."""
    m, record = existing(project, name)
    require_running(m, record)
    graph = Graph(project, profile, record.arch)
    stages = graph.distro(graph.load(record.distro))
    if stages.guest_tests is None:
        where = project.settings.smoke.guest_tests
        raise UserError(f"vm test: no guest tests here ({where or 'smoke.guest_tests is null'})",
                        hint="add tests under tests/guest/")
    chosen = guesttests.choose(stages.guest_tests.plan.tests, wanted)
    for stage in (stages.guest_tests.libc_dev, stages.guest_tests):
        if stage.built() is None:  # built already: used as is, without waiting for the work-dir lock
            ensure(stage)
    key, known, port = _ssh(m, record, project)
    expect = serial.Expect({}, tests=[t.name for t in chosen])
    watch = serial.Watch(expect)
    start_t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="isobuild-vm-tests-") as scratch:
        drive = guesttests.drive(stages.guest_tests, wanted, Path(scratch))
        copied = runner.run(ssh.scp_argv(Path(key), Path(known), int(port), str(drive.image),
                                         ssh.remote(TESTS_IN_GUEST)), log_path=log_path, check=False, capture=True)
        if copied.returncode != 0:
            raise InfraError(f"vm test: copying the tests into {name} failed (scp exit {copied.returncode})",
                             details=copied.output.splitlines()[-5:])
        limit = (project.settings.smoke.test_timeout + 10) * max(1, len(chosen)) + 60
        result = runner.run(ssh.ssh_argv(Path(key), Path(known), int(port), ["sh", "-c", tests_script()]),
                            log_path=log_path, check=False, timeout=limit, on_line=watch.feed)
    verdict = watch.verdict(result.timed_out, None if result.stopped else result.returncode)
    verdict.seconds = time.monotonic() - start_t
    verdict.log = str(log_path)
    verdict.extra = {"mode": f"vm-{name}", "vm": name, "arch": record.arch, "kernel": record.kernel}
    return verdict


def console(project: Project, name: str, follow: bool) -> None:
    m, _ = existing(project, name)
    path = m.path(vmt.CONSOLE)
    out = sys.stdout.buffer
    offset = 0
    while True:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            out.write(chunk)
            out.flush()
            offset += len(chunk)
        if not follow or m.pid() is None:
            return
        time.sleep(0.5)


def stop(project: Project, name: str, log_path: Path, timeout: float | None = None) -> str:
    """ACPI poweroff through QMP (where the arch's board has no power button: ``systemctl poweroff``
    over SSH), QEMU killed after ``timeout`` (vm.stop_timeout x the arch's slowdown); returns how it
    ended."""
    m, record = existing(project, name)
    pid = m.pid()
    if pid is None:
        was = m.status()
        _cleanup_runtime(m)
        if record.state in ("running", "starting"):
            record.state, record.stopped = "stopped", state.now()
            m.save(record)
        return f"was not running ({was})"
    limit = timeout if timeout is not None else project.settings.vm.stop_timeout * ARCHES[record.arch].tcg_slowdown
    start_t = time.monotonic()
    how = "killed"
    with log.stage("vm.stop", vm=name, pid=pid):
        try:
            if ARCHES[record.arch].power_button:
                qmp.execute(m.path(vmt.QMP), "system_powerdown")
            else:  # no ACPI power button on this arch's board: the guest is asked over SSH
                key, known, port = _ssh(m, record, project)
                runner.run(ssh.ssh_argv(Path(key), Path(known), int(port), ["systemctl", "poweroff"]),
                           log_path=log_path, check=False, timeout=60)
            while time.monotonic() - start_t < limit:
                if not atomic.pid_alive(pid) or _zombie(pid):
                    how = "powered off"
                    break
                time.sleep(0.5)
        except qmp.QmpError as exc:
            log.get().warning("vm.stop.qmp", name=name, error=exc.message)
        if how != "powered off":
            _kill(pid)
    _cleanup_runtime(m)
    record = m.load() or record
    record.state, record.stopped = "stopped", state.now()
    record.extra["stop"] = {"how": how, "seconds": round(time.monotonic() - start_t, 1)}
    m.save(record)
    return f"{how} in {time.monotonic() - start_t:.1f} s"


def clean(project: Project, name: str | None, every: bool) -> list[str]:
    """Remove a VM (or all): QEMU killed if it runs (its disk goes too), then its directory."""
    if every:
        targets = vmt.machines(vms_dir(project))
    else:
        if name is None:
            raise UserError("vm clean: name a VM or pass --all")
        m, _ = existing(project, name)
        targets = [m]
    gone = []
    for m in targets:
        _kill(m.pid())
        atomic_remove(m.directory)
        gone.append(m.name)
    return gone


def atomic_remove(directory: Path) -> None:
    """A VM directory, renamed away first so a half-removed VM never looks like one."""
    trash = atomic.temp_path(directory, "gone")
    os.replace(directory, trash)
    shutil.rmtree(trash)


def rows(project: Project) -> list[dict[str, object]]:
    """One row per VM of the project: what ``vm list`` prints and ``status`` adds."""
    out = []
    for m in vmt.machines(vms_dir(project)):
        record = m.load()
        if record is None:
            continue
        pid = m.pid()
        rss = vmt.rss_mib(pid)
        out.append({"name": record.name, "state": m.status(), "arch": record.arch, "port": record.port,
                    "pid": pid, "rss_mib": round(rss) if rss is not None else None, "distro": record.distro,
                    "image_key": record.image_key[:12], "snapshot": record.snapshot, "kernel": record.kernel,
                    "cpus": record.cpus, "memory": record.memory, "started": record.started,
                    "dir": str(m.directory)})
    return out


def render(rows_: list[dict[str, object]]) -> str:
    if not rows_:
        return "no VMs (isobuild vm start NAME)"
    head = f"{'NAME':<16} {'STATE':<10} {'ARCH':<8} {'PORT':>6} {'PID':>8} {'RSS':>7}  IMAGE"
    lines = [head]
    for r in rows_:
        rss = f"{r['rss_mib']}M" if r["rss_mib"] is not None else "-"
        lines.append(f"{r['name']!s:<16} {r['state']!s:<10} {r['arch']!s:<8} {r['port']!s:>6} "
                     f"{(r['pid'] or '-')!s:>8} {rss:>7}  {r['distro']}/{r['image_key']}"
                     f"{' (snapshot)' if r['snapshot'] else ''}")
    return "\n".join(lines)
