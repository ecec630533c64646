"""Build VMs for real: the x86_64 Debian disk image (the ci kernel, our glibc, SSH, build tools)
built from the host's mirror, VMs booted from it under QEMU and driven over SSH: exit codes,
stdout/stderr, copies, snapshots, stop, two at once, the patched kernel running, and a VM that
never reaches SSH."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.infra.errors import ExitCode
from builder.tools import vm as vmt
from tests.real.conftest import REPO, WORK, copy_project, current, run
from tests.real.test_real_guest_tests import EXAMPLES

pytestmark = pytest.mark.real


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _set(root: Path, **vm: object) -> None:
    data = yaml.safe_load((root / "isobuild.yaml").read_text())
    data["kernel"]["profile"] = "ci"
    data.setdefault("vm", {}).update(vm)
    (root / "isobuild.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project with its x86_64 image built; every VM it starts is removed at the end."""
    root = copy_project(tmp_path_factory.mktemp("vm") / "project")
    _set(root, memory=1024)
    old = os.environ.get("ISOBUILD_WORK_DIR")
    os.environ["ISOBUILD_WORK_DIR"] = str(WORK)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert run(root, "image", "debian") == 0
        yield root
    finally:
        run(root, "vm", "clean", "--all")
        os.chdir(cwd)
        if old is None:
            os.environ.pop("ISOBUILD_WORK_DIR", None)
        else:
            os.environ["ISOBUILD_WORK_DIR"] = old


def _list(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert run(root, "vm", "list", "--json") == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)}


def _vm_run(root: Path, capfd: pytest.CaptureFixture[str], *command: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = run(root, "vm", "run", "b1", "--", *command)
    out, err = capfd.readouterr()
    return code, out, err


def test_the_image_is_built_once_and_carries_our_kernel(vms: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((current(vms, "image-debian-x86_64") / "metadata.json").read_text())
    assert meta["virtual_size"] == 8 << 30 and meta["kernel_release"].endswith("-isobuild")
    assert meta["sha256"] == _sha(current(vms, "image-debian-x86_64") / "disk.qcow2")
    capsys.readouterr()
    assert run(vms, "image", "debian") == 0
    assert "is up to date" in capsys.readouterr().out
    assert run(vms, "status", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("image", "debian")]["state"] == "built"
    assert rows[("rootfs", "debian.vm")]["state"] == "built"


def test_a_vm_runs_the_patched_kernel_and_commands_with_their_exit_codes(
        vms: Path, capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    meta = json.loads((current(vms, "image-debian-x86_64") / "metadata.json").read_text())
    assert run(vms, "vm", "start", "b1") == 0, capfd.readouterr().err
    code, out, _ = _vm_run(vms, capfd, "uname", "-r")
    assert (code, out.strip()) == (0, meta["kernel_release"])
    code, out, _ = _vm_run(vms, capfd, "cat", "/sys/kernel/xsc/version")
    assert code == 0 and re.fullmatch(r"\d+\.\d+\.\d+", out.strip()), out
    assert _vm_run(vms, capfd, "true")[0] == 0
    assert _vm_run(vms, capfd, "sh", "-c", "exit 7")[0] == 7
    assert _vm_run(vms, capfd, "sh", "-c", "kill -KILL $$")[0] == 128 + signal.SIGKILL
    code, out, err = _vm_run(vms, capfd, "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
    assert (code, out) == (3, "to-stdout\n") and "to-stderr" in err and "to-stdout" not in err
    # one argument stays one word in the guest
    code, out, _ = _vm_run(vms, capfd, "printf", "%s|", "a b", "c")
    assert out == "a b|c|"
    # copy-in / copy-out round trip
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 << 20))
    assert run(vms, "vm", "copy-in", "b1", str(blob), "/root/blob") == 0
    code, out, _ = _vm_run(vms, capfd, "sha256sum", "/root/blob")
    assert out.split()[0] == _sha(blob)
    back = tmp_path / "back"
    assert run(vms, "vm", "copy-out", "b1", "/root/blob", str(back)) == 0
    assert _sha(back) == _sha(blob)
    assert run(vms, "vm", "copy-out", "b1", "/root/nonexistent", str(tmp_path / "x")) == ExitCode.USER
    # no password logins, host keys made at first boot (not the image's)
    code, out, _ = _vm_run(vms, capfd, "sh", "-c", "sshd -T | grep -i '^passwordauthentication'; "
                           "btime=$(awk '/^btime/ {print $2}' /proc/stat); "
                           "[ $(stat -c %Y /etc/ssh/ssh_host_ed25519_key) -ge $btime ] && echo host-key-made-at-boot")
    assert "passwordauthentication no" in out and "host-key-made-at-boot" in out
    assert _list(vms, capfd)["b1"]["state"] == "running"
    # connect: a login shell (here reading its commands from a pipe, no terminal), its exit code back
    connected = subprocess.run([sys.executable, "-m", "builder", "-c", str(vms / "isobuild.yaml"), "vm", "connect",
                                "b1"], input="echo connected-as-$(id -un)\nexit 5\n", capture_output=True, text=True,
                               cwd=REPO, timeout=120, check=False)
    assert connected.returncode == 5 and "connected-as-root" in connected.stdout, connected.stderr
    # the serial console's log holds the boot
    capfd.readouterr()
    assert run(vms, "vm", "console", "b1") == 0
    assert "Linux version 6.1" in capfd.readouterr().out


def test_the_guest_tests_run_in_a_vm_and_a_failing_one_is_named(vms: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    if _list(vms, capfd).get("b1", {}).get("state") != "running":
        assert run(vms, "vm", "start", "b1") == 0
    shutil.copytree(REPO / "tests" / "guest", vms / "tests" / "guest", dirs_exist_ok=True)
    assert run(vms, "vm", "test", "b1") == 0, capfd.readouterr().err
    [result] = json.loads((vms / "logs" / "smoke-vm-b1.json").read_text())
    assert [(t["name"], t["status"]) for t in result["tests"]] == [(n, "pass") for n in EXAMPLES]
    (vms / "tests" / "guest" / "zz_broken.sh").write_text("#!/bin/sh\necho 'broken on purpose'\nexit 3\n")
    capfd.readouterr()
    try:
        assert run(vms, "vm", "test", "b1", "--tests", "zz_broken,xsc_version") == ExitCode.CHECK_FAILED
    finally:
        (vms / "tests" / "guest" / "zz_broken.sh").unlink()
    err = capfd.readouterr().err
    assert "guest test zz_broken: fail (exit 3, " in err and "broken on purpose" in err


def test_two_vms_at_once_and_a_snapshot_discards_writes(vms: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capsys = capfd
    if _list(vms, capsys).get("b1", {}).get("state") != "running":
        assert run(vms, "vm", "start", "b1") == 0
    os.environ["ISOBUILD_VM_DISK"] = "10G"  # larger than the image: the root grows into it at boot
    try:
        assert run(vms, "vm", "start", "s1", "--snapshot") == 0, capfd.readouterr().err
    finally:
        del os.environ["ISOBUILD_VM_DISK"]
    capfd.readouterr()
    assert run(vms, "vm", "run", "s1", "--", "df", "-B1M", "--output=size", "/") == 0
    assert int(capfd.readouterr().out.split()[-1]) > 9000
    listed = _list(vms, capsys)
    assert listed["b1"]["state"] == listed["s1"]["state"] == "running"
    assert listed["b1"]["port"] != listed["s1"]["port"]
    assert listed["s1"]["snapshot"] is True and int(str(listed["s1"]["rss_mib"])) > 0
    overlay = Path(str(listed["s1"]["dir"])) / vmt.OVERLAY
    before = _sha(overlay)
    capfd.readouterr()
    assert run(vms, "vm", "run", "s1", "--", "sh", "-c", "head -c 8M /dev/urandom > /root/junk && sync") == 0
    assert run(vms, "vm", "run", "b1", "--", "uname", "-r") == 0  # both answer at once
    assert run(vms, "vm", "stop", "s1") == 0
    assert _sha(overlay) == before  # -snapshot: QEMU never wrote the overlay


def test_stop_leaves_no_qemu_and_a_killed_qemu_shows_dead(vms: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capsys = capfd
    if _list(vms, capsys).get("b1", {}).get("state") != "running":
        assert run(vms, "vm", "start", "b1") == 0
    pid = int(str(_list(vms, capsys)["b1"]["pid"]))
    overlay = Path(str(_list(vms, capsys)["b1"]["dir"])) / vmt.OVERLAY
    assert run(vms, "vm", "run", "b1", "--", "sh", "-c", "head -c 4M /dev/urandom > /root/kept && sync") == 0
    before = _sha(overlay)
    capsys.readouterr()
    assert run(vms, "vm", "stop", "b1") == 0
    assert "powered off" in capsys.readouterr().out  # ACPI through QMP, not a kill
    assert not Path(f"/proc/{pid}").exists() or not vmt.owns(pid, overlay)
    assert _list(vms, capsys)["b1"]["state"] == "stopped"
    assert _sha(overlay) != before or overlay.stat().st_size > 0
    assert run(vms, "vm", "run", "b1", "--", "true") == ExitCode.USER
    # the same image boots with OVMF too; a VM whose QEMU dies is "dead", in vm list and in status
    assert run(vms, "vm", "start", "d1", "--snapshot", "--firmware", "uefi") == 0
    assert run(vms, "vm", "run", "d1", "--", "test", "-d", "/sys/firmware/efi") == 0
    pid = int(str(_list(vms, capsys)["d1"]["pid"]))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _list(vms, capsys)["d1"]["state"] == "dead"
    assert run(vms, "status", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("vm", "d1")]["state"] == "dead"
    assert run(vms, "vm", "run", "d1", "--", "true") == ExitCode.USER
    assert run(vms, "vm", "clean", "d1") == 0
    assert "d1" not in _list(vms, capsys)


def test_a_vm_that_never_reaches_ssh_is_stopped_with_its_console_tail(vms: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _set(vms, ssh_timeout=10)
    try:
        assert run(vms, "vm", "start", "slow") == ExitCode.INFRA
    finally:
        _set(vms, ssh_timeout=300)
    err = capsys.readouterr().err
    assert "SSH did not answer on 127.0.0.1:" in err and "QEMU stopped" in err and "console:" in err
    listed = _list(vms, capsys)["slow"]
    assert listed["state"] == "failed" and listed["pid"] is None
    assert (Path(str(listed["dir"])) / vmt.OVERLAY).is_file()  # kept for a look
    assert run(vms, "vm", "clean", "slow") == 0


FOREIGN = {"arm64": ("bookworm", "aarch64"), "riscv64": ("trixie", "riscv64")}


@pytest.mark.skipif(not os.environ.get("ISOBUILD_FULL"), reason="arm64/riscv64 VMs: ISOBUILD_FULL=1 (a foreign VM "
                    "root under qemu-user and a boot under TCG: 10-40 minutes cold each)")
@pytest.mark.parametrize("arch", list(FOREIGN))
def test_a_foreign_arch_vm_boots_its_image_and_answers(tmp_path: Path, arch: str,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    root = copy_project(tmp_path / "project")
    _set(root, memory=1024)
    suite, machine = FOREIGN[arch]
    if suite != "bookworm":  # this mirror lags trixie's glibc source (see test_real_images)
        data = yaml.safe_load((root / "isobuild.yaml").read_text())
        data["glibc"]["allow_downgrade"] = True
        (root / "isobuild.yaml").write_text(yaml.safe_dump(data))
    old = os.environ.get("ISOBUILD_WORK_DIR")
    os.environ["ISOBUILD_WORK_DIR"] = str(WORK)
    try:
        assert run(root, "image", "debian", "--arch", arch) == 0, capfd.readouterr().err
        assert run(root, "vm", "start", "f1", "--arch", arch) == 0, capfd.readouterr().err
        capfd.readouterr()
        assert run(root, "vm", "run", "f1", "--", "sh", "-c", "uname -m; uname -r; cat /sys/kernel/xsc/version") == 0
        out = capfd.readouterr().out.split()
        meta = json.loads((current(root, f"image-debian-{arch}") / "metadata.json").read_text())
        assert out[0] == machine and out[1] == meta["kernel_release"] and re.fullmatch(r"\d+\.\d+\.\d+", out[2])
        assert run(root, "vm", "run", "f1", "--", "sh", "-c", "exit 7") == 7
        capfd.readouterr()
        # the kernel reads the board's clock itself (arm64 through UEFI's rtc-efi, riscv64 goldfish)
        assert run(root, "vm", "run", "f1", "--", "cat", "/sys/class/rtc/rtc0/since_epoch") == 0
        assert abs(int(capfd.readouterr().out.strip()) - time.time()) < 300
        assert run(root, "vm", "stop", "f1") == 0
        assert "powered off" in capfd.readouterr().out
    finally:
        run(root, "vm", "clean", "--all")
        if old is None:
            os.environ.pop("ISOBUILD_WORK_DIR", None)
        else:
            os.environ["ISOBUILD_WORK_DIR"] = old
