"""Build VMs without a VM: the disk layout and GRUB's boot sectors, SSH command lines, QEMU's argv,
VM records and their truthful state, port allocation, resources and their env overrides, QMP."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from builder.infra import runner
from builder.infra.arch import ARCHES
from builder.infra.config import VmSettings, size_bytes
from builder.infra.errors import UserError
from builder.stages import image
from builder.tools import bootmedia, diskimage, qmp, ssh
from builder.tools import vm as vmt

X86, ARM, RISCV = ARCHES["x86_64"], ARCHES["arm64"], ARCHES["riscv64"]


# --- the disk ------------------------------------------------------------------------------

def test_layout_x86_has_bios_boot_esp_and_root_aligned() -> None:
    lay = diskimage.layout(X86, 8 << 30, "k")
    assert [p.name for p in lay.parts] == ["bios", "esp", "root"]
    assert all(p.start % 2048 == 0 for p in lay.parts)  # MiB-aligned
    bios, esp, root = lay.parts
    assert bios.start == 2048 and esp.start == bios.start + bios.sectors and root.start == esp.start + esp.sectors
    # the root ends before the backup GPT (33 sectors) at the end of the disk
    assert (root.start + root.sectors) * 512 <= (8 << 30) - 33 * 512
    assert root.type == diskimage.ROOT_TYPES["x86_64"]


def test_layout_uefi_only_arches_have_no_bios_partition_and_their_root_type() -> None:
    for arch in (ARM, RISCV):
        lay = diskimage.layout(arch, 1 << 30, "k")
        assert [p.name for p in lay.parts] == ["esp", "root"]
        assert lay.root.type == diskimage.ROOT_TYPES[arch.name]


def test_layout_is_a_function_of_the_seed() -> None:
    assert diskimage.layout(X86, 1 << 30, "a") == diskimage.layout(X86, 1 << 30, "a")
    a, b = diskimage.layout(X86, 1 << 30, "a"), diskimage.layout(X86, 1 << 30, "b")
    assert a.fs_uuid != b.fs_uuid and a.disk_uuid != b.disk_uuid


def test_layout_refuses_a_disk_too_small_for_a_root() -> None:
    with pytest.raises(UserError, match="under 256 MiB"):
        diskimage.layout(X86, 128 << 20, "k")


def test_sfdisk_script_names_every_partition_with_type_and_uuid() -> None:
    lay = diskimage.layout(X86, 1 << 30, "k")
    script = diskimage.sfdisk_script(lay)
    assert script.startswith("label: gpt\n") and f"label-id: {lay.disk_uuid}" in script
    for p in lay.parts:
        assert f"start={p.start}, size={p.sectors}, type={p.type}, uuid={p.uuid}" in script


def test_boot_img_points_at_core_and_keeps_the_partition_table() -> None:
    boot = bytes(range(256)) * 2
    sector0 = b"\0" * 440 + b"SIGN" + b"\0\0" + b"P" * 64 + b"\x55\xaa"
    out = diskimage.patch_boot_img(boot, sector0, 2048)
    assert len(out) == 512
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048
    assert out[0x66:0x68] == b"\x90\x90"
    assert out[440:] == sector0[440:]  # disk signature, partition table, 55aa
    assert out[:0x5C] == boot[:0x5C]


def test_core_img_block_list_names_the_rest_of_it() -> None:
    core = b"C" * (512 * 40 + 100)
    out = diskimage.patch_core_img(core, 2048)
    assert len(out) == 512 * 41
    assert struct.unpack_from("<QHH", out, 500) == (2049, 40, 0x820)


def test_grub_cfg_boots_the_root_by_uuid_on_the_serial_console() -> None:
    lay = diskimage.layout(ARM, 1 << 30, "k")
    line = image.cmdline(ARM, lay.fs_uuid)
    assert line.split()[:2] == [f"root=UUID={lay.fs_uuid}", "ro"]
    assert "console=ttyAMA0,115200" in line and line.index("console=tty0") < line.index("console=ttyAMA0")
    cfg = diskimage.grub_cfg("/boot/vmlinuz-6.1", "/boot/initrd.img-6.1", line, ARM, lay.fs_uuid)
    assert f"--fs-uuid --set=root {lay.fs_uuid}" in cfg and "set timeout=0" in cfg
    assert "serial --unit=0" not in cfg  # U-Boot/AAVMF carry the console
    assert f"search --no-floppy --fs-uuid --set=root {lay.fs_uuid}" in diskimage.early_cfg(lay.fs_uuid)


def test_sizes() -> None:
    assert size_bytes("8G") == 8 << 30 and size_bytes("512M") == 512 << 20


# --- SSH ---------------------------------------------------------------------------------------

def test_remote_command_keeps_words_and_reports_signals_like_a_shell() -> None:
    assert ssh.remote_command(["sh", "-c", "echo a b; exit 7"]) == "sh -c 'echo a b; exit 7'; exit $?"
    assert ssh.remote_command(["touch", "it's"]) == "touch 'it'\"'\"'s'; exit $?"


def test_ssh_argv_is_loopback_key_only_and_batch() -> None:
    argv = ssh.ssh_argv(Path("/k/id"), Path("/v/known_hosts"), 10022, ["true"])
    assert argv[0] == "ssh" and "root@127.0.0.1" in argv and argv[-2:] == ["--", "true; exit $?"]
    joined = " ".join(argv)
    for option in ("BatchMode=yes", "IdentitiesOnly=yes", "StrictHostKeyChecking=accept-new",
                   "UserKnownHostsFile=/v/known_hosts", "-p 10022", "-i /k/id", "-F /dev/null"):
        assert option in joined
    assert "-T" in argv and "-t" not in argv
    assert "-t" in ssh.ssh_argv(Path("/k"), Path("/h"), 1, None, tty=True)
    scp = ssh.scp_argv(Path("/k"), Path("/h"), 10023, "a", ssh.remote("/root/a"))
    assert scp[0] == "scp" and "-P" in scp and scp[scp.index("-P") + 1] == "10023" and "-p" not in scp[1:-2][3:4]
    assert scp[-1] == "root@127.0.0.1:/root/a"


def test_public_key_is_none_until_both_halves_exist(tmp_path: Path) -> None:
    assert ssh.public_key(tmp_path) is None
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAA x\n")
    assert ssh.public_key(tmp_path) is None
    (tmp_path / "id_ed25519").write_text("private")
    assert ssh.public_key(tmp_path) == "ssh-ed25519 AAAA x"


@pytest.mark.parametrize(("guest_offset", "sets"), [(0, False), (90, False), (-86400 * 74, True), (3600, True)])
def test_a_guest_clock_far_from_the_hosts_is_set_to_it(monkeypatch: pytest.MonkeyPatch, guest_offset: int,
                                                        sets: bool) -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str], **_: Any) -> runner.Result:
        calls.append(argv)
        return runner.Result(argv, 0, 0.0, f"{int(time.time()) + guest_offset}\n" if "+%s" in argv[-1] else "")

    monkeypatch.setattr(runner, "run", fake)
    skew = ssh.sync_clock(Path("/k"), Path("/h"), 10022)
    assert skew is not None and abs(skew - guest_offset) < 5
    setters = [c for c in calls if " -s " in c[-1]]
    assert len(setters) == (1 if sets else 0)
    if sets:
        assert setters[0][-1].startswith("date -u -s @") and all("127.0.0.1" in " ".join(c) for c in calls)


def test_a_guest_that_does_not_say_its_time_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run", lambda argv, **_: runner.Result(argv, 255, 0.0, "Connection refused"))
    assert ssh.sync_clock(Path("/k"), Path("/h"), 10022) is None


# --- names, resources, ports -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "-x", "a b", "x" * 41, "a\nb"])
def test_vm_names_with_path_characters_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="VM name"):
        vmt.check_name(name)


def test_vm_names() -> None:
    assert vmt.check_name("build-1.arm64_x") == "build-1.arm64_x"


def test_resources_come_from_settings_then_the_environment() -> None:
    settings = VmSettings()
    assert vmt.resources(settings, {}) == vmt.Resources(2, 1536, None, 10022)
    env = {"ISOBUILD_VM_CPUS": "1", "ISOBUILD_VM_MEMORY": "768", "ISOBUILD_VM_DISK": "16G",
           "ISOBUILD_VM_BASE_PORT": "20022"}
    assert vmt.resources(settings, env) == vmt.Resources(1, 768, 16 << 30, 20022)


@pytest.mark.parametrize(("var", "value"), [("ISOBUILD_VM_CPUS", "two"), ("ISOBUILD_VM_CPUS", "0"),
                                            ("ISOBUILD_VM_MEMORY", "12"), ("ISOBUILD_VM_DISK", "8T"),
                                            ("ISOBUILD_VM_BASE_PORT", "80"), ("ISOBUILD_VM_BASE_PORT", "70000")])
def test_bad_resource_overrides_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(UserError, match=var):
        vmt.resources(VmSettings(), {var: value})


def test_vm_settings_validate() -> None:
    assert "smaller than image_size" in str(VmSettings(disk="4G").validate())
    assert "base_port" in str(VmSettings(base_port=65001).validate())
    assert VmSettings(disk="16G").validate() is None


def test_pick_port_skips_recorded_and_bound_ports() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if port > 65000:
            pytest.skip("the kernel gave an ephemeral port at the top of the range")
        assert vmt.pick_port(port, set()) != port
        assert vmt.pick_port(port, {port + 1}) not in (port, port + 1)


# --- QEMU's command line ---------------------------------------------------------------------

def _record(**kw: Any) -> vmt.Record:
    base: dict[str, Any] = {"name": "b1", "arch": "x86_64", "distro": "debian", "image": "/w/disk.qcow2",
                            "image_key": "k" * 64, "port": 10022, "firmware": "bios", "snapshot": False,
                            "cpus": 2, "memory": 1536, "disk": 8 << 30}
    return vmt.Record(**{**base, **kw})


def test_argv_daemonizes_with_console_qmp_overlay_and_loopback_ssh(tmp_path: Path) -> None:
    m = vmt.Machine(tmp_path / "b1")
    argv = vmt.argv(X86, "tcg", m, _record())
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64" and "-daemonize" in argv
    assert f"-pidfile {m.path('qemu.pid')}" in joined
    assert "-qmp unix:qmp.sock,server=on,wait=off" in joined  # relative: builder.tools.qmp
    assert f"file,id=console,path={m.path('console.log')}" in joined and "-serial chardev:console" in joined
    assert f"file={m.path('disk.qcow2')},format=qcow2" in joined and "bootindex=0" in joined
    assert "user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:10022-:22" in joined  # loopback only, nothing out
    assert "user,id=net,hostfwd=tcp:127.0.0.1:10022-:22" in " ".join(vmt.argv(X86, "tcg", m, _record(network="nat")))
    assert "-snapshot" not in argv and "pflash" not in joined
    assert "-snapshot" in vmt.argv(X86, "tcg", m, _record(snapshot=True))
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert vmt.argv(X86, "tcg", m, _record(tcg_cache=256))[2] == "tcg,tb-size=256"
    assert vmt.argv(X86, "kvm", m, _record(tcg_cache=256))[2] == "kvm"


def test_argv_uefi_takes_the_firmware_and_the_vms_own_variable_store(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def uefi_argv(arch: Any, vars_copy: Path | None) -> list[str]:
        seen.append(vars_copy)
        return ["-FW"]

    monkeypatch.setattr(bootmedia, "uefi_vars", lambda arch: Path("/fw/VARS.fd"))
    monkeypatch.setattr(bootmedia, "uefi_argv", uefi_argv)
    m = vmt.Machine(tmp_path / "a1")
    argv = vmt.argv(ARM, "tcg", m, _record(arch="arm64", firmware="uefi"))
    assert "-FW" in argv and seen == [m.path("efivars.fd")] and argv[0] == "qemu-system-aarch64"


def test_firmware_for_uefi_only_arches() -> None:
    assert vmt.firmware_for(X86, "bios") == "bios" and vmt.firmware_for(X86, "uefi") == "uefi"
    assert vmt.firmware_for(ARM, "bios") == "uefi" and vmt.firmware_for(RISCV, "bios") == "uefi"


# --- records and state ---------------------------------------------------------------------

def test_a_vm_whose_qemu_is_gone_is_dead_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = vmt.Machine(tmp_path / "b1")
    m.directory.mkdir()
    m.save(_record(state="running", pid=os.getpid()))
    assert m.status() == "dead"  # our pid is alive but it is not this VM's QEMU (its cmdline has no overlay)
    monkeypatch.setattr(vmt, "owns", lambda pid, overlay: True)
    assert m.status() == "running"
    m.save(_record(state="stopped", pid=None))
    (m.path("qemu.pid")).write_text(str(os.getpid()))
    assert m.status() == "running (stopped)"  # the process table wins over the record
    monkeypatch.setattr(vmt, "owns", lambda pid, overlay: False)
    assert m.status() == "stopped"


def test_owns_reads_the_command_line(tmp_path: Path) -> None:
    assert not vmt.owns(os.getpid(), tmp_path / "nowhere.qcow2")
    assert not vmt.owns(2**22 + 12345, tmp_path / "x")


def test_machines_and_records_round_trip(tmp_path: Path) -> None:
    for name in ("b", "a"):
        m = vmt.Machine(tmp_path / name)
        m.directory.mkdir()
        m.save(_record(name=name))
    (tmp_path / "junk").mkdir()
    assert [m.name for m in vmt.machines(tmp_path)] == ["a", "b"]
    loaded = vmt.machines(tmp_path)[0].load()
    assert loaded is not None and loaded.name == "a" and loaded.port == 10022


def test_console_tail(tmp_path: Path) -> None:
    m = vmt.Machine(tmp_path)
    m.path("console.log").write_bytes(b"".join(b"line %d\r\n" % i for i in range(40)))
    assert vmt.console_tail(m, 3) == ["line 37", "line 38", "line 39"]


# --- QMP -----------------------------------------------------------------------------------

def _fake_qemu(path: Path, replies: dict[str, Any], seen: list[str]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            f.flush()
            for line in f:
                name = json.loads(line)["execute"]
                seen.append(name)
                f.write(b'{"event": "SOMETHING"}\n')  # events are skipped
                f.write(json.dumps(replies.get(name, {"return": {}})).encode() + b"\n")
                f.flush()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_qmp_executes_after_negotiating_capabilities(tmp_path: Path) -> None:
    seen: list[str] = []
    thread = _fake_qemu(tmp_path / "qmp.sock", {"query-status": {"return": {"status": "running"}}}, seen)
    assert qmp.execute(tmp_path / "qmp.sock", "query-status") == {"status": "running"}
    thread.join(5)
    assert seen == ["qmp_capabilities", "query-status"]


def test_qmp_error_and_missing_socket(tmp_path: Path) -> None:
    seen: list[str] = []
    _fake_qemu(tmp_path / "qmp.sock", {"system_powerdown": {"error": {"desc": "no ACPI"}}}, seen)
    with pytest.raises(qmp.QmpError, match="no ACPI"):
        qmp.execute(tmp_path / "qmp.sock", "system_powerdown")
    with pytest.raises(qmp.QmpError, match="does not answer"):
        qmp.execute(tmp_path / "gone.sock", "system_powerdown")


def test_qmp_reaches_a_socket_in_a_directory_deeper_than_a_socket_path_allows(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 30] * 5)
    deep.mkdir(parents=True)
    old = Path.cwd()
    os.chdir(deep)  # QEMU binds it relative to the VM's directory
    try:
        seen: list[str] = []
        thread = _fake_qemu(Path("qmp.sock"), {}, seen)
    finally:
        os.chdir(old)
    assert len(str(deep / "qmp.sock")) > 108
    assert qmp.execute(deep / "qmp.sock", "system_powerdown") == {}
    thread.join(5)


def test_clean_drops_images_no_project_nor_vm_points_at(tmp_path: Path) -> None:
    for key in ("kept", "old", "under-a-vm"):
        (tmp_path / "images" / "debian" / key).mkdir(parents=True)
    (tmp_path / "images" / "debian" / ".tree-abc.123.tmp").mkdir()
    m = vmt.Machine(tmp_path / "projects" / "p1" / "vms" / "b1")
    m.directory.mkdir(parents=True)
    m.save(_record(image_key="under-a-vm", state="stopped"))
    targets = image.ImageStage.clean_targets(tmp_path, {"kept"})
    assert sorted(p.name for p in targets) == [".tree-abc.123.tmp", "old"]
    assert vmt.running(tmp_path) == []
    assert "images" in image.ImageStage.work_entries


# --- waiting for a booting guest ------------------------------------------------------------

@pytest.mark.parametrize(("console", "found"), [
    ("systemd[1]: Started journald.\nsystemd[1]: unhandled signal 11 code 0x1 at 0x0000000000000004\nCPU: 1\n",
     "systemd[1]: unhandled signal 11 code 0x1 at 0x0000000000000004"),
    ("[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
     "Kernel panic - not syncing: VFS: Unable to mount root fs"),
    ("Debian GNU/Linux 12 isobuild ttyS0\nisobuild login:\n", None),
])
def test_a_boot_crash_is_read_off_the_console(tmp_path: Path, console: str, found: str | None) -> None:
    m = vmt.Machine(tmp_path)
    m.path(vmt.CONSOLE).write_text(console)
    assert vmt.crashed(m) == found
    assert vmt.crashed(vmt.Machine(tmp_path / "none")) is None


def test_waiting_ends_when_ssh_answers_the_guest_crashes_or_qemu_is_gone(tmp_path: Path) -> None:
    m = vmt.Machine(tmp_path)
    m.path(vmt.CONSOLE).write_text("booting\n")
    tries: list[int] = []

    def third_time() -> bool:
        tries.append(1)
        return len(tries) == 3

    assert vmt.wait_for_ssh(m, third_time, lambda: True, 60, poll=0.01).outcome == "up" and len(tries) == 3
    assert vmt.wait_for_ssh(m, lambda: False, lambda: False, 60, poll=0.01).outcome == "exited"
    assert vmt.wait_for_ssh(m, lambda: False, lambda: True, 0.05, poll=0.01).outcome == "timeout"
    m.path(vmt.CONSOLE).write_text("[ 2.0] Kernel panic - not syncing: Attempted to kill init!\n")
    booted = vmt.wait_for_ssh(m, lambda: True, lambda: True, 60, poll=0.01)
    assert (booted.outcome, booted.line) == ("crashed", "Kernel panic - not syncing: Attempted to kill init!")
    with pytest.raises(KeyboardInterrupt):
        vmt.wait_for_ssh(m, lambda: False, lambda: True, 60, cancelled=lambda: True)
