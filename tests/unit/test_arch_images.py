"""Distro images for arm64 and riscv64: the per-arch plumbing of the Debian plugin, the glibc stage,
the smoke stage and the isos matrix (no tool runs here)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from builder import cli, distros
from builder.distros.base import SMOKE_UNIT, smoke_unit
from builder.distros.debian import DebianPlugin
from builder.infra.arch import ARCHES
from builder.infra.config import Project, Settings
from builder.infra.errors import InfraError, UserError
from builder.stages import glibc, rootfs, smoke
from builder.tools import foreign

MIRROR = "http://mirror.invalid/archive"


def project(tmp_path: Path, distro_yaml: str = "") -> Project:
    (tmp_path / "distros").mkdir(exist_ok=True)
    (tmp_path / "distros" / "debian.yaml").write_text(f"family: debian\nmirror: {MIRROR}\n" + distro_yaml)
    return Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work")))


def debian(tmp_path: Path, arch: str, distro_yaml: str = "arches: [x86_64, arm64, riscv64]\n") -> DebianPlugin:
    plugin = distros.load(project(tmp_path, distro_yaml).with_arch(arch), "debian")
    assert isinstance(plugin, DebianPlugin)
    return plugin


def test_with_arch_plans_for_another_arch_and_keeps_everything_else(tmp_path: Path) -> None:
    p = project(tmp_path)
    assert p.with_arch(None) is p and p.with_arch("x86_64") is p
    other = p.with_arch("arm64")
    assert other.settings.arch == "arm64" and p.settings.arch == "x86_64"
    assert (other.root, other.work_dir, other.logs_dir) == (p.root, p.work_dir, p.logs_dir)


def test_suite_per_arch_riscv64_defaults_to_trixie(tmp_path: Path) -> None:
    assert debian(tmp_path, "x86_64").suite == "bookworm"
    assert debian(tmp_path, "arm64").suite == "bookworm"
    assert debian(tmp_path, "riscv64").suite == "trixie"
    moved = debian(tmp_path, "arm64", "arches: [arm64]\nsuites: {arm64: trixie}\n")
    assert moved.suite == "trixie" and moved.glibc_target().suite == "trixie"


def test_foreign_root_carries_the_arch_and_its_grub_modules(tmp_path: Path) -> None:
    native, arm = debian(tmp_path, "x86_64"), debian(tmp_path, "arm64")
    out, cache = tmp_path / "out.tar", tmp_path / "cache"
    assert not any(a.startswith("--architectures") for a in native.bootstrap_argv(out, cache))
    argv = arm.bootstrap_argv(out, cache)
    assert "--architectures=arm64" in argv
    include = next(a for a in argv if a.startswith("--include="))
    assert "grub-efi-arm64-bin" in include.split("=", 1)[1].split(",")
    assert "grub-efi-amd64-bin" not in native.packages()
    assert arm.identity()["packages"] == arm.packages()


def test_live_cmdline_names_each_arch_console(tmp_path: Path) -> None:
    assert debian(tmp_path, "x86_64").layout().cmdline == "boot=live components console=ttyS0,115200 console=tty0"
    arm = debian(tmp_path, "arm64").layout().cmdline.split()
    assert "console=ttyAMA0,115200" in arm and "console=ttyS0,115200" not in arm
    assert "systemd.default_device_timeout_sec=600" in arm
    assert "console=ttyS0,115200" in debian(tmp_path, "riscv64").layout().cmdline.split()


def test_an_arch_the_distro_is_not_configured_for_is_refused(tmp_path: Path) -> None:
    plugin = debian(tmp_path, "riscv64", "arches: [x86_64, arm64]\n")
    with pytest.raises(UserError, match="debian is not configured for riscv64") as exc:
        plugin.check()
    assert "add riscv64 to 'arches'" in (exc.value.hint or "")


def test_bad_arches_and_suites_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="arches: has an unknown architecture 'sparc64'"):
        debian(tmp_path, "x86_64", "arches: [x86_64, sparc64]\n")
    with pytest.raises(UserError, match="suites: has an unknown architecture 'ppc64el'"):
        debian(tmp_path, "x86_64", "suites: {ppc64el: trixie}\n")
    with pytest.raises(UserError, match="arches: must name at least one architecture"):
        debian(tmp_path, "x86_64", "arches: []\n")


def test_el_images_are_x86_64_only(tmp_path: Path) -> None:
    shutil.copytree(Path(__file__).resolve().parents[2] / "kickstart", tmp_path / "kickstart")
    (tmp_path / "distros").mkdir()
    (tmp_path / "distros" / "alma.yaml").write_text(
        "family: el\narches: [x86_64, arm64]\nrepositories:\n"
        "  - {name: baseos, baseurl: 'http://x.invalid/b', gpgcheck: false}\n")
    p = Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work"), arch="arm64"))
    with pytest.raises(UserError, match="alma is built for x86_64 only in this version, not arm64"):
        distros.load(p, "alma").check()


def test_bios_modes_on_arm64_are_refused_naming_its_modes() -> None:
    assert smoke.parse_modes("uefi-cd", ARCHES["arm64"]) == ["uefi-cd"]
    with pytest.raises(UserError) as exc:
        smoke.parse_modes("bios-cd,uefi-usb", ARCHES["arm64"])
    assert exc.value.message == "boot mode bios-cd: arm64 images boot in uefi-cd, uefi-usb; BIOS modes exist on " \
        "x86_64 only"
    with pytest.raises(UserError, match="riscv64 images boot in uefi-disk"):
        smoke.parse_modes("uefi-cd", ARCHES["riscv64"])
    with pytest.raises(UserError, match=r"boot mode\(s\) bios-floppy unknown"):
        smoke.parse_modes("bios-floppy", ARCHES["arm64"])
    assert smoke.modes_for(ARCHES["x86_64"]) == ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb")


def test_cli_modes_default_to_the_arch_modes() -> None:
    assert cli._modes(None, "riscv64") == ["uefi-disk"]
    assert cli._modes(None, "arm64") == ["uefi-cd", "uefi-usb"]


def test_smoke_timeouts_scale_with_the_arch() -> None:
    assert smoke.timeout_for(ARCHES["x86_64"], 300) == 300
    assert smoke.timeout_for(ARCHES["riscv64"], 300) == 300 * ARCHES["riscv64"].tcg_slowdown


def test_smoke_check_channel_and_console_per_arch() -> None:
    assert smoke_unit(ARCHES["x86_64"]) == SMOKE_UNIT == smoke_unit(ARCHES["arm64"])
    unit = smoke_unit(ARCHES["riscv64"])
    assert "ConditionPathExists=|/dev/disk/by-id/virtio-isobuild-smoke" in unit
    assert "ConditionPathExists=|/sys/firmware/qemu_fw_cfg/by_name/opt/isobuild/smoke/raw" in unit
    assert rootfs.smoke_script("/sys/x") == rootfs.smoke_script("/sys/x", console="ttyS0")
    assert "> /dev/ttyAMA0;" in rootfs.smoke_script("/sys/x", console="ttyAMA0")


def _binfmt(tmp_path: Path, entry: str | None, flags: str = "PF", state: str = "enabled") -> Path:
    d = tmp_path / "binfmt"
    d.mkdir()
    (d / "status").write_text("enabled\n")
    if entry:
        (d / entry).write_text(f"{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n")
    return d


@pytest.mark.parametrize(("entry", "flags", "state", "message"), [
    (None, "PF", "enabled", "no binfmt entry"),
    ("qemu-aarch64", "PF", "disabled", "is disabled"),
    ("qemu-aarch64", "P", "enabled", "lacks the F flag"),
])
def test_binfmt_problems_are_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str | None,
                                               flags: str, state: str, message: str) -> None:
    monkeypatch.setattr("builder.tools.foreign.shutil.which", lambda name: f"/usr/bin/{name}")
    binfmt = _binfmt(tmp_path, entry, flags, state)
    with pytest.raises(InfraError, match=message) as exc:
        foreign.require(ARCHES["arm64"], binfmt_dir=binfmt)
    assert "update-binfmts --enable qemu-aarch64" in (exc.value.hint or "")


def test_binfmt_unmounted_or_qemu_user_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert foreign.binfmt_state(ARCHES["x86_64"], tmp_path) is None  # the host's own arch needs nothing
    monkeypatch.setattr("builder.tools.foreign.shutil.which", lambda name: None)
    assert "qemu-aarch64-static not found" in str(foreign.binfmt_state(ARCHES["arm64"], tmp_path))
    monkeypatch.setattr("builder.tools.foreign.shutil.which", lambda name: f"/usr/bin/{name}")
    assert "binfmt_misc is not mounted" in str(foreign.binfmt_state(ARCHES["arm64"], tmp_path / "none"))
    assert foreign.binfmt_state(ARCHES["arm64"], _binfmt(tmp_path, "qemu-aarch64")) is None
    monkeypatch.setattr("builder.tools.foreign.shutil.which",
                        lambda name: None if name == "arch-test" else f"/usr/bin/{name}")
    with pytest.raises(InfraError, match="arch-test not found"):
        foreign.require(ARCHES["arm64"], binfmt_dir=tmp_path / "binfmt")


def test_a_series_per_upstream_version_is_data(tmp_path: Path) -> None:
    (tmp_path / "2.41").mkdir()
    (tmp_path / "series").write_text("a.patch\n")
    assert glibc.versioned(tmp_path, "2.41") == tmp_path  # no series of its own yet
    (tmp_path / "2.41" / "series").write_text("b.patch\n")
    assert glibc.versioned(tmp_path, "2.41") == tmp_path / "2.41"
    assert glibc.versioned(tmp_path, "2.36") == tmp_path
    src = glibc.GlibcSource(None, None, {}, "", "glibc", "2.41-12+deb13u4")
    assert src.upstream == "2.41"
    assert glibc.GlibcSource(None, None, {}, "", "glibc", "1:2.36-9").upstream == "2.36"


def test_the_repository_has_the_trixie_packaging_patch() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert glibc.versioned(repo / "patches" / "glibc-debian", "2.41") == repo / "patches" / "glibc-debian" / "2.41"
    assert glibc.versioned(repo / "patches" / "glibc-debian", "2.36") == repo / "patches" / "glibc-debian"


def test_isos_matrix_per_arch(tmp_path: Path) -> None:
    p = project(tmp_path, "arches: [x86_64, riscv64]\n")
    assert cli.matrix(p, None) == [("x86_64", ["debian"]), ("riscv64", ["debian"])]
    assert cli.matrix(p, "riscv64") == [("riscv64", ["debian"])]
    with pytest.raises(UserError, match="--arch arm64: no enabled distro is configured for it"):
        cli.matrix(p, "arm64")


def test_isos_refuses_one_modes_list_for_several_arches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = project(tmp_path, "arches: [x86_64, arm64]\n")
    monkeypatch.setattr(cli, "_project", lambda args: p)
    args = argparse.Namespace(arch=None, modes="uefi-cd", profile=None, keep_going=False, no_smoke=False, json=False)
    with pytest.raises(UserError, match="--modes with several arches"):
        cli.cmd_isos(args)


def test_each_arch_names_its_own_qemu_user_binfmt_entry() -> None:
    for arch in ARCHES.values():  # Debian's qemu-user-static names them after the machine (uname -m)
        assert arch.qemu_user == f"qemu-{arch.rpm_arch}", arch.name


def test_unmet_build_dependencies_in_both_dpkg_spellings() -> None:
    bookworm = "dpkg-checkbuilddeps: error: Unmet build dependencies: gawk debhelper-compat (= 13) g++-12 | clang\n"
    trixie = "dpkg-checkbuilddeps: error: unmet build dependencies: gawk binutils-for-host (>= 2.38)\n"
    assert glibc.parse_unmet(bookworm) == ["gawk", "debhelper-compat (= 13)", "g++-12 | clang"]
    assert glibc.parse_unmet(trixie) == ["gawk", "binutils-for-host (>= 2.38)"]
    assert glibc.parse_unmet("dpkg-checkbuilddeps: error: cannot read debian/control\n") is None
