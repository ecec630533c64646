"""builder.tools.rootdir: every write into a build root stays inside it, whatever links the root holds.

Each test builds a root whose absolute symlinks point at canary files and directories *outside*
it (stand-ins for the build host's /usr/share/zoneinfo, /etc, /dev), writes through builder.tools.rootdir,
and checks the canaries are byte-for-byte and mtime-for-mtime unchanged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder.distros.base import SMOKE_UNIT
from builder.distros.debian import DebianPlugin
from builder.infra.errors import UserError
from builder.tools.rootdir import Root, vet_overlay


class Canaries:
    def __init__(self, base: Path):
        self.base = base
        (base / "zoneinfo").mkdir(parents=True)
        (base / "zoneinfo" / "UTC").write_text("host zone file\n")
        (base / "etc").mkdir()
        (base / "etc" / "passwd").write_text("host passwd\n")
        (base / "secret").write_text("host secret\n")

    def snapshot(self) -> dict[str, tuple[bytes, int, int]]:
        out = {}
        for path in sorted(self.base.rglob("*")):
            st = path.lstat()
            out[str(path)] = (path.read_bytes() if path.is_file() else b"", st.st_mtime_ns, st.st_mode)
        return out


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Root, Canaries]:
    """A root full of links out of it, as a half-built Debian root has them."""
    canaries = Canaries(tmp_path / "host")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Etc").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Etc/UTC").write_text("root zone\n")
    (root / "etc/localtime").symlink_to(canaries.base / "zoneinfo" / "UTC")  # absolute, to the "host"
    (root / "etc/hostname").symlink_to(canaries.base / "secret")
    (root / "etc/alternatives").symlink_to(canaries.base / "etc")  # a directory link out
    (root / "lib").symlink_to("usr/lib")  # merged /usr: a link that stays inside
    (root / "usr/lib").mkdir(parents=True)
    (root / "escape").symlink_to("../../host")  # relative, climbing out
    return Root(root), canaries


def test_writes_replace_links_instead_of_following_them(hostile: tuple[Root, Canaries]) -> None:
    root, canaries = hostile
    before = canaries.snapshot()
    root.write_text("/etc/localtime", "overlay zone\n")
    root.write_text("/etc/hostname", "live\n")
    root.symlink("/etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
    assert canaries.snapshot() == before
    assert (root.path / "etc/hostname").read_text() == "live\n"
    assert not (root.path / "etc/hostname").is_symlink()
    assert os.readlink(root.path / "etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"


def test_parents_are_resolved_inside_the_root(hostile: tuple[Root, Canaries]) -> None:
    root, canaries = hostile
    before = canaries.snapshot()
    root.write_text("/etc/alternatives/passwd", "through an absolute directory link\n")
    root.write_text("/escape/secret", "through a relative link climbing out\n")
    root.write_text("/lib/x.so", "merged usr\n")
    assert canaries.snapshot() == before
    # the absolute link /etc/alternatives -> <host>/etc resolves to <root><host>/etc
    assert (root.path / str(canaries.base / "etc" / "passwd").lstrip("/")).read_text().startswith("through")
    # '..' stops at the root: ../../host/secret is <root>/host/secret
    assert (root.path / "host/secret").read_text().startswith("through a relative")
    assert (root.path / "usr/lib/x.so").read_text() == "merged usr\n"


def test_reads_and_copies_out_never_leave_the_root(hostile: tuple[Root, Canaries], tmp_path: Path) -> None:
    root, canaries = hostile
    (root.path / "boot").mkdir()
    (root.path / "boot/vmlinuz").symlink_to(canaries.base / "secret")
    with pytest.raises(FileNotFoundError):
        root.copy_out("/boot/vmlinuz", tmp_path / "out")  # <root><host>/secret: not there
    assert not (tmp_path / "out").exists()
    assert not root.exists("/etc/hostname"), "a link out of the root resolves inside it, to nothing"
    with pytest.raises(FileNotFoundError):
        root.read_text("/etc/localtime")


def test_glob_and_remove_stay_inside(hostile: tuple[Root, Canaries]) -> None:
    root, canaries = hostile
    before = canaries.snapshot()
    (root.path / "var").mkdir()
    (root.path / "var/log").symlink_to(canaries.base / "etc")  # cleanup would glob var/log/*
    for path in root.glob("/var/log/*"):
        root.remove(path)
    root.remove("/etc/alternatives")  # removes the link, not what it points at
    root.remove("/escape")
    assert canaries.snapshot() == before
    assert not (root.path / "etc/alternatives").exists() and not (root.path / "escape").is_symlink()


def test_overlay_copy_replaces_and_stays_inside(hostile: tuple[Root, Canaries], tmp_path: Path) -> None:
    root, canaries = hostile
    overlay = tmp_path / "overlay"
    (overlay / "etc/alternatives").mkdir(parents=True)
    (overlay / "etc/localtime").write_text("fixed zone\n")
    (overlay / "etc/alternatives/editor").write_text("vi\n")
    (overlay / "usr/local/bin").mkdir(parents=True)
    (overlay / "usr/local/bin/tool").write_text("#!/bin/sh\n")
    (overlay / "usr/local/bin/tool").chmod(0o755)
    (overlay / "usr/local/bin/alias").symlink_to("tool")
    before = canaries.snapshot()
    written = root.copy_overlay(vet_overlay(overlay, "test"))
    assert canaries.snapshot() == before
    assert "/etc/localtime" in written
    assert (root.path / "etc/localtime").read_text() == "fixed zone\n"
    assert stat.S_IMODE((root.path / "usr/local/bin/tool").stat().st_mode) == 0o755
    assert os.readlink(root.path / "usr/local/bin/alias") == "tool"


@pytest.mark.parametrize(("entry", "message"), [
    ("dev/sda", "nothing may go under /dev"),
    ("proc/sys/kernel/x", "nothing may go under /proc"),
    ("sys/x", "nothing may go under /sys"),
    ("run/x", "nothing may go under /run"),
    ("link-abs", "symlink to the absolute path"),
    ("deep/link-out", "leaves the root"),
    ("fifo", "a device node, fifo or socket"),
])
def test_overlay_vetting_refuses_what_could_reach_the_host(tmp_path: Path, entry: str, message: str) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    path = overlay / entry
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry == "link-abs":
        path.symlink_to("/etc/shadow")
    elif entry == "deep/link-out":
        path.symlink_to("../../outside")
    elif entry == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("x")
    with pytest.raises(UserError, match=message) as exc:
        vet_overlay(overlay, "distros/debian.yaml")
    assert exc.value.message.startswith("distros/debian.yaml: overlay entry")


def test_an_overlay_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "overlay").symlink_to("real")
    with pytest.raises(UserError, match="is not a directory"):
        vet_overlay(tmp_path / "overlay", "x")


def test_debian_configure_through_a_hostile_root(hostile: tuple[Root, Canaries], tmp_path: Path) -> None:
    """The Debian plugin's own writes (hostname, hosts, locale, timezone, smoke unit, machine-id) on a
    root whose etc/ files are links out of it: all land inside."""
    from builder import distros
    from builder.infra.config import Project, Settings

    root, canaries = hostile
    (tmp_path / "distros").mkdir()
    (tmp_path / "distros/debian.yaml").write_text("mirror: http://mirror.invalid/debian\n")
    plugin = distros.load(Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "w"))),
                          "debian")
    assert isinstance(plugin, DebianPlugin)
    (root.path / "etc/shadow").write_text("root:*:1:0:99999:7:::\n")
    (root.path / "etc/machine-id").symlink_to(canaries.base / "secret")
    (root.path / "usr/local/sbin").mkdir(parents=True)
    (root.path / "usr/local/sbin/isobuild-smoke").symlink_to(canaries.base / "etc" / "passwd")
    before = canaries.snapshot()
    plugin.configure(root.path, tmp_path / "log", "#!/bin/sh\n")
    plugin.cleanup(root.path, tmp_path / "log")
    assert canaries.snapshot() == before
    assert (root.path / "etc/shadow").read_text() == "root:!:1:0:99999:7:::\n"
    assert (root.path / "etc/systemd/system/isobuild-smoke.service").read_text() == SMOKE_UNIT
    assert (root.path / "etc/machine-id").read_text() == "" and not (root.path / "etc/machine-id").is_symlink()
