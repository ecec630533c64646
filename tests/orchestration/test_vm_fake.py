"""Build VMs' bookkeeping with a stand-in for QEMU (a process whose command line names the VM's
overlay, as QEMU's does): list and status ask the process table, stop kills what does not answer
QMP, distclean refuses while a VM runs, clean removes a VM and keeps the image under it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from builder.infra.errors import ExitCode
from builder.tools import vm as vmt
from tests.conftest import FakeProject, records


@pytest.fixture
def fake_vm(fake_project: FakeProject) -> Iterator[tuple[vmt.Machine, subprocess.Popen[bytes]]]:
    assert fake_project.run("kernel") == 0  # the work dir exists and is isobuild's
    m = vmt.Machine(records(fake_project.root, fake_project.work) / "vms" / "b1")
    m.directory.mkdir(parents=True)
    overlay = m.path(vmt.OVERLAY)
    overlay.write_bytes(b"")
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(overlay)])
    m.save(vmt.Record("b1", "x86_64", "debian", str(fake_project.work / "images" / "debian" / "k1" / "disk.qcow2"),
                      "k1", 10022, "bios", False, 2, 1536, 8 << 30, state="running", pid=stand_in.pid))
    yield m, stand_in
    stand_in.kill()
    stand_in.wait()


FakeVm = tuple[vmt.Machine, subprocess.Popen[bytes]]


def test_list_and_status_follow_the_process(fake_project: FakeProject, fake_vm: FakeVm,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, stand_in = fake_vm
    capsys.readouterr()
    assert fake_project.run("vm", "list", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["name"], row["state"], row["pid"]) == ("b1", "running", stand_in.pid)
    stand_in.kill()
    stand_in.wait()
    assert fake_project.run("status", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("vm", "b1")]["state"] == "dead"
    assert fake_project.run("status", "--check") in (0, ExitCode.CHECK_FAILED)  # VM rows are no stage


def test_stop_kills_a_vm_whose_qmp_does_not_answer(fake_project: FakeProject,
                                                   fake_vm: tuple[vmt.Machine, subprocess.Popen[bytes]],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    m, stand_in = fake_vm
    capsys.readouterr()
    assert fake_project.run("vm", "stop", "b1") == 0
    assert "killed" in capsys.readouterr().out
    assert stand_in.wait(10) is not None
    record = m.load()
    assert record is not None and record.state == "stopped" and m.status() == "stopped"


def test_distclean_refuses_while_a_vm_runs_and_clean_keeps_its_image(
        fake_project: FakeProject, fake_vm: tuple[vmt.Machine, subprocess.Popen[bytes]],
        capsys: pytest.CaptureFixture[str]) -> None:
    m, stand_in = fake_vm
    image = fake_project.work / "images" / "debian" / "k1"
    image.mkdir(parents=True)
    (image / "disk.qcow2").write_bytes(b"base")
    capsys.readouterr()
    assert fake_project.run("distclean") == ExitCode.USER
    assert "build VMs are running over its images" in capsys.readouterr().err
    assert m.directory.is_dir() and image.is_dir()
    assert fake_project.run("clean") == 0
    assert image.is_dir(), "the image under a VM's overlay is kept"
    assert fake_project.run("vm", "clean", "b1") == 0
    assert not m.directory.exists() and stand_in.wait(10) is not None
    assert fake_project.run("clean") == 0
    assert not image.exists(), "no VM over it: superseded"
