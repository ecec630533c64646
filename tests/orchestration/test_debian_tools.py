"""debian: the parts that run real tools (moved from tests/unit/test_debian.py, which
runs no process)."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder import distros
from builder.distros.debian import DebianPlugin
from builder.infra.errors import InfraError
from builder.stages import rootfs
from builder.tools.chroot import Chroot
from tests.fakemirror import Mirror
from tests.unit.test_debian import MIRROR, busybox_root, project


def test_live_boot_skips_ifupdown_preconfiguration_only_without_ifupdown(tmp_path: Path) -> None:
    """The initramfs setting, sourced by initramfs-tools' init as a shell file, sets what live-boot's
    Netbase checks; with ifupdown in the root it is not written (and an old one is removed)."""
    plugin = distros.load(project(tmp_path, f"mirror: {MIRROR}\n"), "debian")
    assert isinstance(plugin, DebianPlugin)
    root = tmp_path / "root"
    root.mkdir()
    plugin.initramfs_settings(root)
    conf = root / "etc/initramfs-tools/conf.d/isobuild-live"
    out = subprocess.run(["sh", "-c", '. "$1"; sh -c \'echo "$NONETWORKING"\'', "sh", str(conf)],
                         capture_output=True, text=True, check=True).stdout
    assert out == "true\n"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/ifup").write_text("")
    plugin.initramfs_settings(root)
    assert not conf.exists()


def test_smoke_script_is_valid_shell_and_reports_every_marker() -> None:
    script = rootfs.smoke_script("/sys/kernel/xsc/version")
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert 'echo "ISOBUILD-$*" > /dev/ttyS0' in script
    for marker in ("UNAME", "MARKER", "MARKER-MISSING", "SYSTEM", "FAILED", "DONE"):
        assert re.search(rf'say "?{marker}( |"|$)', script, re.M), marker


def test_a_command_in_the_root_sees_its_mounts_and_the_host_never_does(tmp_path: Path) -> None:
    """/proc, /sys (read-only) and a private /dev exist for the command alone: the host's mount table
    never lists them, during the run or after, and nothing is left to unmount."""
    root = busybox_root(tmp_path / "root")
    log = tmp_path / "log"
    out = Chroot(root, log).run(["/bin/busybox", "sh", "-c", "cat /proc/self/mounts; ls /dev; "
                                 "touch /sys/x 2>/dev/null || echo sys-read-only; cat /proc/1/cmdline"],
                                capture=True).output
    assert " /proc proc " in out and " /dev tmpfs " in out and "sys-read-only" in out
    assert "null" in out.split() and "sda" not in out.split()  # a private /dev: no host disks
    assert str(root) not in Path("/proc/self/mounts").read_text()
    assert sorted(p.name for p in (root / "dev").iterdir()) == []  # the tmpfs was the namespace's


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_root_with_a_mount_inside_is_never_deleted(tmp_path: Path) -> None:
    from builder.tools import chroot

    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "mnt")], check=True)
    try:
        with pytest.raises(InfraError, match="still mounted inside"):
            chroot.remove_root(root)
        assert root.exists()
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)
    chroot.remove_root(root)
    assert not root.exists()


def test_a_bootstrapped_root_is_reused_while_command_and_mirror_are_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = Mirror.create(tmp_path / "mirror")
    mirror.publish("bookworm")
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(mirror.keyring.read_bytes())
    distro = f"mirror: {mirror.uri}\nkeyring: keyring.gpg\n"
    plugin = distros.load(project(tmp_path, distro), "debian")
    runs: list[str] = []

    def fake_bootstrap(argv: list[str], log_path: Path) -> None:
        runs.append(argv[-2])
        tree = tmp_path / f"tree{len(runs)}"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc/os-release").write_text(f"run {len(runs)}\n")
        (tree / "etc/link").symlink_to("os-release")
        with tarfile.open(argv[-2], "w") as tar:
            tar.add(tree, arcname=".")

    monkeypatch.setattr(plugin, "_run_bootstrap", fake_bootstrap)
    monkeypatch.setattr(DebianPlugin, "bootstrap_argv",
                        lambda self, out, cache: ["mmdebstrap", "--variant=minbase", "bookworm", str(out), "m"])
    cache, log_path = tmp_path / "cache/debian/bookworm", tmp_path / "log"
    plugin.bootstrap(tmp_path / "r1", cache, log_path)
    plugin.bootstrap(tmp_path / "r2", cache, log_path)
    assert len(runs) == 1, "the second root came from the cache"
    assert (tmp_path / "r2/etc/os-release").read_text() == "run 1\n"
    assert os.readlink(tmp_path / "r2/etc/link") == "os-release"
    # the suite moved on (a new signed InRelease): bootstrap again, and the stale root leaves the cache
    mirror.publish("bookworm", date="Sun, 02 Jun 2024 10:00:00 UTC")
    plugin = distros.load(project(tmp_path, distro), "debian")
    monkeypatch.setattr(plugin, "_run_bootstrap", fake_bootstrap)
    plugin.bootstrap(tmp_path / "r3", cache, log_path)
    assert len(runs) == 2 and (tmp_path / "r3/etc/os-release").read_text() == "run 2\n"
    assert len(list((tmp_path / "cache/debian/bookworm.roots").glob("*.tar"))) == 1
    assert not list((tmp_path / "cache/debian/bookworm.roots").glob(".*")), "no temp tarball is left"
