"""The real Debian ISO: mmdebstrap from the host's mirror, the patched glibc's
and the ci kernel's .debs installed with dpkg, live-boot, the pycdlib hybrid ISO, QEMU boots under
SeaBIOS and OVMF from CD and USB, and every fault the stage must report.

CI boots BIOS-CD and UEFI-USB; set ISOBUILD_FULL=1 for all four modes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from builder.infra.errors import ExitCode
from builder.tools import aptlock, iso9660
from tests.conftest import Events
from tests.real.conftest import WORK, current, run

MODES = "bios-cd,bios-usb,uefi-cd,uefi-usb" if os.environ.get("ISOBUILD_FULL") else "bios-cd,uefi-usb"

pytestmark = pytest.mark.real


def edit(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_debian_iso_builds_boots_and_describes_itself(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--modes", MODES) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    image = project / "iso/debian/isobuild-debian.iso"
    sha = (project / "iso/debian/isobuild-debian.iso.sha256").read_text().split()
    assert sha == [hashlib.sha256(image.read_bytes()).hexdigest(), image.name]
    manifest = json.loads((project / "iso/debian/isobuild-debian.manifest.json").read_text())
    kernel_meta = json.loads((current(project, "kernel-ci-x86_64") / "metadata.json").read_text())
    release = kernel_meta["kernel_release"]
    assert manifest["kernel_release"] == release
    packages = {p["package"]: p["version"] for p in manifest["packages"]}
    assert {f"linux-image-{release}", "live-boot", "systemd-sysv"} <= set(packages)
    assert [p["name"] for p in manifest["patches"]] == [p["name"] for p in kernel_meta["patches"]]
    # the kernel was installed with dpkg in the root and is held there
    squashfs = WORK / "distros/debian/rootfs" / manifest["rootfs_key"] / "filesystem.squashfs"
    status = subprocess.run(["unsquashfs", "-cat", str(squashfs), "var/lib/dpkg/status"], capture_output=True,
                            text=True, check=True).stdout
    stanza = next(s for s in status.split("\n\n") if s.startswith(f"Package: linux-image-{release}\n"))
    assert "Status: hold ok installed" in stanza
    info = iso9660.describe(image)
    assert info["label"] == "ISOBUILD_DEBIAN" and info["hybrid_mbr"]
    assert [(e["platform"], e["emulation"]) for e in info["eltorito"]] == [("bios", "noemul"), ("uefi", "noemul")]
    assert "No problems found" in subprocess.run(["sgdisk", "-v", str(image)], capture_output=True,
                                                 text=True).stdout
    for mode in MODES.split(","):
        assert f"smoke {mode}: pass" in out
    # the booted system runs the patched kernel and the patched glibc (ours, held, its banner marker)
    glibc_meta = json.loads((current(project, "glibc-x86_64") / "metadata.json").read_text())
    assert manifest["glibc"]["version"] == glibc_meta["version"] == packages["libc6"] == packages["libc-bin"]
    assert glibc_meta["version"].endswith("+isobuild1")
    libc6 = next(s for s in status.split("\n\n") if s.startswith("Package: libc6\n"))
    assert "Status: hold ok installed" in libc6
    # the first build locked the root: every package it bootstrapped is at its locked version (ours aside)
    lock = aptlock.read(project / "distros/debian.lock")[("debian", "amd64")]
    ours = {p["package"] for p in glibc_meta["packages"]}
    pins = {p.name: p.version for p in aptlock.pins(lock)}
    assert {"base-files", "systemd", "live-boot"} <= set(pins)
    assert {n: packages.get(n) for n in pins if n not in ours} == {n: v for n, v in pins.items() if n not in ours}
    results = json.loads((project / "logs/smoke-debian.json").read_text())
    assert [r["markers"] for r in results] == [
        {"UNAME": release, "MARKER": "1.0.0", "GLIBC": glibc_meta["version"], "LIBC": "XSC extensions: xsc-glibc 1.0",
         "SYSTEM": "running", "FAILED": "none"}] * len(MODES.split(","))
    assert ET.parse(project / "logs/smoke-debian.xml").getroot().get("failures") == "0"
    # no ifupdown in the image: the initramfs tells live-boot to skip its interfaces file (and the
    # udevadm trigger + settle before it), so no boot spends time on it or prints its error
    initrd_img = WORK / "distros/debian/rootfs" / manifest["rootfs_key"] / "initrd.img"
    initrd = subprocess.run(["zstd", "-dc", str(initrd_img)], capture_output=True, check=True).stdout
    assert b"conf/conf.d/isobuild-live" in initrd and b"NONETWORKING=true" in initrd
    for result in results:
        assert "Preconfiguring networking" not in Path(result["log"]).read_text(errors="replace")


def test_unchanged_inputs_rebuild_nothing_and_the_iso_is_reproducible(project: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    image = project / "iso/debian/isobuild-debian.iso"
    first = hashlib.sha256(image.read_bytes()).hexdigest()
    events = Events(project / "logs")
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    assert events.built() == set() and not {"mmdebstrap", "make", "dpkg-buildpackage"} & set(events.commands())
    image.unlink()  # the ISO stage redoes its work from the cached rootfs: the same bytes
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    assert hashlib.sha256(image.read_bytes()).hexdigest() == first
    capsys.readouterr()
    assert run(project, "status", "--profile", "ci", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("rootfs", "debian")]["state"] == "built" and rows[("iso", "debian")]["state"] == "built"


def test_a_locked_version_gone_from_the_mirror_is_named_until_the_lock_is_refreshed(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    path = project / "distros/debian.lock"
    good = path.read_text()
    real = aptlock.read(path)[("debian", "amd64")]["base-files"].version
    path.write_text(good.replace(f"debian amd64 base-files {real} ", "debian amd64 base-files 0.0-isobuild "))
    events = Events(project / "logs")
    capsys.readouterr()
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == ExitCode.USER
    err = capsys.readouterr().err
    assert "distros/debian.lock: base-files 0.0-isobuild (debian, amd64) is no longer on the mirror's bookworm" in err
    assert "hint: refresh the lock: isobuild lock debian --arch x86_64" in err
    assert events.built() == set() and "mmdebstrap" not in events.commands()
    assert run(project, "lock", "debian", "--arch", "x86_64") == 0
    out = capsys.readouterr().out
    assert f"base-files 0.0-isobuild -> {real}" in out and "debian x86_64:" in out
    assert aptlock.read(path)[("debian", "amd64")] == aptlock.parse(good, path)[("debian", "amd64")]
    events = Events(project / "logs")
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    assert events.built() == set(), "the refreshed lock is the one the root was built with: nothing to build"


def test_test_debian_reruns_only_the_boot_check(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    capsys.readouterr()
    assert run(project, "test", "debian", "--profile", "ci", "--modes", "bios-usb") == 0, capsys.readouterr().err
    assert "smoke bios-usb: pass" in capsys.readouterr().out


def test_kernel_panic_in_the_guest_fails_the_check(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the same rootfs (cmdline is not part of it), another ISO: no initramfs to run -> no root -> panic
    edit(project / "distros/debian.yaml", cmdline="console=ttyS0,115200 rdinit=/nonexistent panic=-1")
    assert run(project, "debian", "--profile", "ci", "--modes", "bios-cd") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed in bios-cd: kernel panic: Kernel panic - not syncing" in err
    assert "console log:" in err


def test_boot_timeout_shows_the_console_tail_and_log(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    edit(project / "isobuild.yaml", smoke={"timeout": 10})
    capsys.readouterr()
    assert run(project, "test", "debian", "--profile", "ci", "--modes", "bios-cd") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed in bios-cd: timed out before the guest finished its checks" in err
    assert "marker UNAME not reported" in err
    assert "console log: " in err and "  " in err.split("console log:")[0].splitlines()[-1]


def test_a_failed_systemd_unit_fails_the_check(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay = project / "overlay"
    units = overlay / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "isobuild-broken.service").write_text(
        "[Unit]\nDescription=a unit that fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n")
    (units / "multi-user.target.wants/isobuild-broken.service").symlink_to("../isobuild-broken.service")
    edit(project / "distros/debian.yaml", overlay="overlay")
    assert run(project, "debian", "--profile", "ci", "--modes", "bios-cd") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "marker FAILED: expected 'none', got 'isobuild-broken.service,'" in err
    assert "marker SYSTEM: expected 'running', got 'degraded'" in err


def test_unknown_package_is_named(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(project / "distros/debian.yaml", packages=["systemd-sysv", "live-boot", "initramfs-tools", "zstd",
                                                    "no-such-package-isobuild"])
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == ExitCode.USER
    err = capsys.readouterr().err
    assert "distros/debian.yaml: package 'no-such-package-isobuild' does not exist in bookworm" in err


def test_unreachable_mirror_is_an_infrastructure_error_before_any_build(project: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The mirror's signed InRelease is fetched in the preflight: an unreachable mirror fails in
    seconds, before the kernel, glibc or a bootstrap start."""
    good = project / "iso/debian/isobuild-debian.iso"
    edit(project / "distros/debian.yaml", mirror="http://127.0.0.1:9/archive")
    events = Events(project / "logs")
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "the Debian mirror http://127.0.0.1:9/archive is unreachable: " in err and "Connection refused" in err
    assert "hint: check the network, or set 'mirror:' in distros/debian.yaml" in err
    assert events.built() == set() and not {"make", "mmdebstrap"} & set(events.commands())
    assert not good.exists()
    assert not list((WORK / "distros/debian/rootfs").glob(".root-*")), "no half-made root left behind"


def test_stale_kernel_means_no_boot_check_of_an_old_iso(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Built first: the ISO is there and passes its check; then a kernel patch changes and the same
    check refuses the old ISO, naming the patch that changed, down the chain of keys."""
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0
    assert (project / "iso/debian/isobuild-debian.iso").is_file()
    xsc = project / "patches/kernel/0003-xsc-add-trap-guard.patch"
    xsc.write_text(xsc.read_text().replace("Say Y.", "Say Y!"))
    capsys.readouterr()
    assert run(project, "test", "debian", "--profile", "ci") == ExitCode.USER
    err = capsys.readouterr().err
    assert "the debian ISO is stale: rootfs: kernel: patches: 0003-xsc-add-trap-guard.patch changed" in err
    assert "run: isobuild debian" in err
