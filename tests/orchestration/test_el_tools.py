"""el: the parts that run real tools (moved from tests/unit/test_el.py, which
runs no process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder import cli
from builder.commands import doctor
from builder.distros import el
from builder.infra import runner
from builder.infra.errors import InfraError, UserError
from builder.tools import dnf
from tests.unit.test_el import alma, make_live_iso


def test_pykickstart_accepts_what_the_template_renders(tmp_path: Path) -> None:
    """What ksvalidator -v RHEL9 says about the rendered kickstart, run as its own command."""
    path = tmp_path / "alma.ks"
    path.write_text(alma(tmp_path).kickstart.text)
    ksvalidator = Path(sys.executable).parent / "ksvalidator"  # installed with pykickstart in this venv
    result = subprocess.run([str(ksvalidator), "-e", "-v", "RHEL9", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_path_here_is_dnf_and_doctor_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert el.resolve_build("auto") == ("dnf", "not an EL host with mock: dnf --installroot")
    assert el.resolve_build("mock")[0] == "mock"
    assert doctor.el_build()[0] == "dnf"
    tools = {t.name: t.package for t in doctor.TOOLS}
    assert (tools["dnf"], tools["rpm"], tools["createrepo_c"], tools["rpmbuild"]) == (
        "dnf", "rpm", "createrepo-c", "rpm")
    cli.main(["doctor"])
    assert "alma, rocky with build: auto: dnf (not an EL host with mock: dnf --installroot)" in capsys.readouterr().out


@pytest.mark.parametrize("with_rootfs_img", [
    False, pytest.param(True, marks=pytest.mark.skipif(os.geteuid() != 0, reason="a loop mount needs root"))])
def test_mock_path_runs_its_commands_then_unpacks_the_root_from_the_lmc_iso(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_rootfs_img: bool) -> None:
    repo = tmp_path / "repo"
    (repo / "repodata").mkdir(parents=True)
    (repo / "repodata/repomd.xml").write_text("<repomd/>")
    plugin = alma(tmp_path, build="mock", repositories=[{"name": "baseos", "baseurl": f"file://{repo}",
                                                         "gpgcheck": False}])
    lmc_iso = make_live_iso(tmp_path, with_rootfs_img)
    ran: list[list[str]] = []
    real_run = runner.run

    def fake_run(argv: list[str], **kwargs: Any) -> runner.Result:
        args = [str(a) for a in argv]
        if args[0] != "mock":
            return real_run(argv, **kwargs)
        ran.append(args)
        if "--copyin" in args:  # what mock copies in exists and is what isobuild rendered
            assert Path(args[-2]).exists()
            if args[-1] == el.MOCK_KICKSTART:
                assert Path(args[-2]).read_text() == plugin.kickstart.text
        if "--copyout" in args:
            Path(args[-1]).write_bytes(lmc_iso.read_bytes())
        return runner.Result(args, 0, 0.0, "")

    monkeypatch.setattr(runner, "run", fake_run)
    plugin.local_repo.mkdir(parents=True)
    root = tmp_path / "work/root"
    plugin.bootstrap(root, tmp_path / "cache", tmp_path / "log")
    assert ran == plugin.mock_commands(plugin.work / "mock" / "alma.ks", plugin.work / "mock" / "isobuild-alma.iso")
    assert (root / "etc/os-release").read_text() == "ID=almalinux\n"
    assert os.readlink(root / "bin") == "usr/bin" and os.access(root / "usr/bin/hello", os.X_OK)
    assert not (plugin.work / "mock").exists(), "the scratch dir is removed"
    assert str(root) not in Path("/proc/self/mounts").read_text()


def test_private_home_points_rpm_at_var_lib_rpm(tmp_path: Path) -> None:
    env = dnf.private_home(tmp_path / "home")
    out = subprocess.run(["rpm", "--eval", "%_dbpath"], env=dict(os.environ, **env), capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "/var/lib/rpm"
    host = subprocess.run(["rpm", "--eval", "%_dbpath"], env=dict(os.environ, HOME=str(tmp_path / "plain")),
                          capture_output=True, text=True, check=True).stdout.strip()
    assert host == f"{tmp_path}/plain/.rpmdb", "Debian's rpm would keep the database in HOME without it"


def test_configure_locks_root_and_enables_the_boot_check(tmp_path: Path) -> None:
    plugin = alma(tmp_path, hostname="live", locale="C.UTF-8")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n")
    os.chmod(root / "etc/shadow", 0)
    plugin.configure(root, tmp_path / "log", "#!/bin/sh\necho check\n")
    assert (root / "etc/shadow").read_text() == "root:!:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0
    assert (root / "etc/hostname").read_text() == "live\n" and (root / "etc/locale.conf").read_text() == \
        "LANG=C.UTF-8\n"
    assert os.readlink(root / "etc/localtime") == "../usr/share/zoneinfo/Etc/UTC"
    assert (root / "etc/fstab").read_text().startswith("#")
    unit = root / "etc/systemd/system/isobuild-smoke.service"
    assert "ExecStart=/usr/local/sbin/isobuild-smoke" in unit.read_text()
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/isobuild-smoke.service") == \
        "/etc/systemd/system/isobuild-smoke.service"
    assert os.access(root / "usr/local/sbin/isobuild-smoke", os.X_OK)
    with pytest.raises(UserError, match="timezone: 'Europe/Paris' is not a zoneinfo name in the root"):
        alma(tmp_path, timezone="Europe/Paris").configure(root, tmp_path / "log", "")
    (root / "etc/shadow").unlink()
    with pytest.raises(InfraError, match="has no /etc/shadow"):
        plugin.configure(root, tmp_path / "log", "")
